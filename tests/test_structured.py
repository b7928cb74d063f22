"""Structured output and tool calling, enforced by grammar masks (llguidance) on tiny random models.

The models are random: every unconstrained greedy reply below is shown to be invalid first, so a valid reply
is the constraint's doing, not the model's.
"""
from __future__ import annotations

import json
import random
import re
import threading

import jsonschema
import pytest
import requests

import openai_spec
from conftest import LiveServer, make_runtime
from tiny_models import build_tool_llama

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 2, "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 10}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"], "additionalProperties": False}}}  # fmt: skip
ADD = {"type": "function", "function": {"name": "add", "description": "Add two numbers", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                     "b": {"type": "integer", "minimum": 0, "maximum": 99}},
    "required": ["a", "b"], "additionalProperties": False}}}  # fmt: skip
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY = {"temperature": 0, "max_tokens": 200}


@pytest.fixture(scope="module")
def server(models_root, tmp_path_factory):
    """A live API over a runtime serving tiny-tools (a Qwen-style template with tools) and tiny-llama."""
    import shutil

    root = tmp_path_factory.mktemp("structured")
    build_tool_llama(root / "tiny-tools")
    shutil.copytree(models_root / "tiny-llama", root / "tiny-llama")
    runtime = make_runtime(root)
    runtime.models.load("tiny-tools")
    runtime.pool.load("tiny-llama", "plain")
    from extensions.openai.app import create_app

    live = LiveServer(create_app(runtime, {"keepalive": 1}))
    yield live
    live.stop()
    runtime.close()


def chat(server, **body) -> requests.Response:
    return requests.post(server.url("/v1/chat/completions"), json={"messages": ASK, **GREEDY, **body}, timeout=120)


def stream(server, **body) -> list[dict]:
    r = chat(server, stream=True, **body)
    assert r.status_code == 200, r.text
    chunks = openai_spec.stream_chunks(r.text)
    for chunk in chunks if openai_spec.available() else ():  # the spec lies beside the repository (../shared)
        openai_spec.validate(chunk, "CreateChatCompletionStreamResponse")
    return chunks


def streamed_text(chunks: list[dict]) -> tuple[str, str]:
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    return text, finish[-1]


def reassembled_calls(chunks: list[dict]) -> list[dict]:
    calls: list[dict] = []
    for chunk in chunks:
        for part in (chunk["choices"][0]["delta"].get("tool_calls") or []) if chunk["choices"] else []:
            if part["index"] == len(calls):
                assert part["id"].startswith("call_") and part["type"] == "function"
                calls.append({"name": part["function"]["name"], "arguments": part["function"]["arguments"]})
            else:
                assert "id" not in part and "name" not in part["function"]
                calls[part["index"]]["arguments"] += part["function"]["arguments"]
    return calls


def body_of(r: requests.Response) -> dict:
    assert r.status_code == 200, r.text
    body = r.json()
    if openai_spec.available():
        openai_spec.validate(body, "CreateChatCompletionResponse")
    return body


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


# ---- response_format ---------------------------------------------------------------------------------------
def test_json_schema_valid_streaming_and_not(server):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    free = body_of(chat(server))["choices"][0]["message"]["content"]
    assert not is_json(free)  # the model alone does not write JSON
    body = body_of(chat(server, response_format=fmt))
    choice = body["choices"][0]
    jsonschema.validate(json.loads(choice["message"]["content"]), PERSON)
    assert choice["finish_reason"] == "stop"
    text, finish = streamed_text(stream(server, response_format=fmt))
    assert (text, finish) == (choice["message"]["content"], "stop")
    sampled = body_of(chat(server, response_format=fmt, temperature=1.0, seed=7, n=3))
    for c in sampled["choices"]:
        jsonschema.validate(json.loads(c["message"]["content"]), PERSON)


@pytest.mark.parametrize("kind", ["json_object", "json"])
def test_json_object_modes(server, kind):
    body = body_of(chat(server, response_format={"type": kind}))
    choice = body["choices"][0]
    assert isinstance(json.loads(choice["message"]["content"]), dict) and choice["finish_reason"] == "stop"
    text, finish = streamed_text(stream(server, response_format={"type": kind}))
    assert (text, finish) == (choice["message"]["content"], "stop")


def test_cut_by_max_tokens_is_length(server):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    body = body_of(chat(server, response_format=fmt, max_tokens=3))
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length" and choice["message"]["content"].startswith("{")


@pytest.mark.parametrize("fmt,keyword", [
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}},
     '"uniqueItems"'),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "not": {"required": ["a"]}}}},
     '"not"'),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}, "strin"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}}}, "missing"),
    ({"type": "json_schema"}, "json_schema"),
    ({"type": "xml"}, "xml"),
])  # fmt: skip
def test_unenforceable_or_invalid_schema_is_400(server, fmt, keyword):
    for streamed in (False, True):
        r = chat(server, response_format=fmt, stream=streamed)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "response_format" and keyword in error["message"], error
        assert error["type"] == "invalid_request_error"


def test_regex_and_schema_through_the_engine_entry_point(server):
    """Takeoff's /generate json_schema and regex_string: CompletionRequest.constraint built from either."""
    from extensions.openai.state import ApiState  # noqa: F401  (the runtime is the server's)
    from modules.constraints.grammar import Grammar
    from modules.engine.base import CompletionRequest, OutputOptions, SamplerValues
    from modules.errors import InvalidParameter

    engine = server.app.extensions["hearth"].runtime.pool.route(None).engine
    pattern = r"[0-9]{3}-[a-z]{2,5}( [A-Z][a-z]{1,6})?"
    out = OutputOptions(max_tokens=40)
    free = engine.complete(CompletionRequest(("Code:",), output=out, sampling=SamplerValues(temperature=0)))
    assert not re.fullmatch(pattern, free.handles[0].result().choices[0].text)
    for seed in range(3):
        req = CompletionRequest(("Code:",), output=out, sampling=SamplerValues(temperature=1.0, seed=seed),
                                constraint=Grammar.regex(pattern, param="regex_string"))  # fmt: skip
        choice = engine.complete(req).handles[0].result().choices[0]
        assert re.fullmatch(pattern, choice.text) and choice.finish_reason.value == "stop", choice.text
    req = CompletionRequest(("Person:",), output=OutputOptions(max_tokens=200),
                            constraint=Grammar.json_schema(PERSON, param="json_schema"))  # fmt: skip
    jsonschema.validate(json.loads(engine.complete(req).handles[0].result().choices[0].text), PERSON)
    with pytest.raises(InvalidParameter) as bad:
        engine.complete(CompletionRequest(("x",), constraint=Grammar.regex("[a-", param="regex_string")))
    assert bad.value.param == "regex_string" and "regex" in str(bad.value)


def test_batch_rows_without_a_constraint_are_untouched(server):
    """Eight requests decoded together: the constrained rows are valid, the others equal their solo replies."""
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    prompts = [f"Tell me about person {i}" for i in range(8)]
    solo = {i: body_of(chat(server, messages=[{"role": "user", "content": p}], max_tokens=24))
            for i, p in enumerate(prompts) if i % 2}  # fmt: skip
    results: dict[int, dict] = {}

    def run(i: int) -> None:
        extra = {"response_format": fmt} if i % 2 == 0 else {"max_tokens": 24}
        results[i] = body_of(chat(server, messages=[{"role": "user", "content": prompts[i]}], **extra))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, body in results.items():
        content = body["choices"][0]["message"]["content"]
        if i % 2 == 0:
            jsonschema.validate(json.loads(content), PERSON)
        else:
            assert content == solo[i]["choices"][0]["message"]["content"]


def test_openai_sdk_parse(server):
    from openai import OpenAI
    from pydantic import BaseModel, Field

    class Person(BaseModel):
        name: str = Field(min_length=2, max_length=8)
        age: int = Field(ge=0, le=120)

    client = OpenAI(base_url=server.url("/v1"), api_key="x", max_retries=0)
    done = client.chat.completions.parse(model="tiny-tools", messages=ASK, response_format=Person, temperature=0,
                                         max_tokens=200)  # fmt: skip
    person = done.choices[0].message.parsed
    assert isinstance(person, Person) and 2 <= len(person.name) <= 8

    class Add(BaseModel):
        """Add two numbers."""

        a: int = Field(ge=0, le=99)
        b: int = Field(ge=0, le=99)

    import openai

    done = client.chat.completions.parse(model="tiny-tools", messages=ASK, tools=[openai.pydantic_function_tool(Add)],
                                         tool_choice="required", parallel_tool_calls=False, temperature=0,
                                         max_tokens=200)  # fmt: skip
    (call,) = done.choices[0].message.tool_calls
    assert call.function.name == "Add" and isinstance(call.function.parsed_arguments, Add)
    assert done.choices[0].finish_reason == "tool_calls"


def test_langchain_structured_output_and_bind_tools(server):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class Answer(BaseModel):
        """An answer with a confidence."""

        answer: str = Field(max_length=12)
        confidence: int = Field(ge=0, le=10)

    llm = ChatOpenAI(base_url=server.url("/v1"), api_key="x", model="tiny-tools", temperature=0, max_tokens=200,
                     max_retries=0)  # fmt: skip
    for method in ("json_schema", "function_calling"):
        answer = llm.with_structured_output(Answer, method=method).invoke("Why is the sky blue?")
        assert isinstance(answer, Answer) and len(answer.answer) <= 12, method
    bound = llm.bind_tools([WEATHER, ADD], tool_choice="add")
    message = bound.invoke("What is 2 + 3?")
    (call,) = message.tool_calls
    assert call["name"] == "add" and set(call["args"]) == {"a", "b"}


# ---- tools ---------------------------------------------------------------------------------------------------
def test_required_tool_calls_streamed_equals_whole(server):
    body = body_of(chat(server, tools=[WEATHER, ADD], tool_choice="required", max_tokens=400))
    choice = body["choices"][0]
    message = choice["message"]
    assert choice["finish_reason"] == "tool_calls" and message["content"] is None and message["tool_calls"]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, ADD)}
    for call in message["tool_calls"]:
        assert call["id"].startswith("call_") and call["type"] == "function"
        jsonschema.validate(json.loads(call["function"]["arguments"]), schemas[call["function"]["name"]])
    chunks = stream(server, tools=[WEATHER, ADD], tool_choice="required", max_tokens=400)
    text, finish = streamed_text(chunks)
    assert finish == "tool_calls" and text == ""  # never the raw markup as content
    whole = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in message["tool_calls"]]
    assert reassembled_calls(chunks) == whole


def test_named_choice_without_parallel_calls(server):
    named = {"type": "function", "function": {"name": "add"}}
    for seed in range(3):
        body = body_of(chat(server, tools=[WEATHER, ADD], tool_choice=named, parallel_tool_calls=False,
                            temperature=1.0, seed=seed))  # fmt: skip
        (call,) = body["choices"][0]["message"]["tool_calls"]
        assert call["function"]["name"] == "add"
        jsonschema.validate(json.loads(call["function"]["arguments"]), ADD["function"]["parameters"])


def test_none_and_auto(server):
    none = body_of(chat(server, tools=[WEATHER], tool_choice="none", max_tokens=20))["choices"][0]
    assert "tool_calls" not in none["message"] and none["finish_reason"] == "length"
    auto = body_of(chat(server, tools=[WEATHER], max_tokens=20))["choices"][0]
    assert auto["message"]["content"] and auto["finish_reason"] == "length"  # the random model chose to write text
    prompt = requests.post(server.url("/v1/internal/chat-prompt"), json={"messages": ASK, "tools": [WEATHER]},
                           timeout=30).json()["prompt"]  # fmt: skip
    assert "<tools>" in prompt and '"get_weather"' in prompt
    prompt = requests.post(server.url("/v1/internal/chat-prompt"),
                           json={"messages": ASK, "tools": [WEATHER], "tool_choice": "none"}, timeout=30).json()
    assert "<tools>" not in prompt["prompt"]


def test_follow_up_turn_renders_calls_and_results(server):
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                            "arguments": '{"city": "Paris", "unit": "c"}'}}
    messages = ASK + [{"role": "assistant", "content": None, "tool_calls": [call]},
                      {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees"}]  # fmt: skip
    prompt = requests.post(server.url("/v1/internal/chat-prompt"), json={"messages": messages, "tools": [WEATHER]},
                           timeout=30).json()["prompt"]  # fmt: skip
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>' in prompt
    assert "<tool_response>\n18 degrees\n</tool_response>" in prompt
    body = body_of(chat(server, messages=messages, tools=[WEATHER], max_tokens=10))
    assert body["choices"][0]["message"]["content"]


def test_template_without_tools_gets_the_fallback_instruction(server):
    prompt = requests.post(server.url("/v1/internal/chat-prompt"),
                           json={"model": "plain", "messages": ASK, "tools": [ADD], "max_tokens": 60},
                           timeout=30).json()["prompt"]  # fmt: skip
    assert "You can call these functions" in prompt and '"name": "add"' in prompt
    body = body_of(chat(server, model="plain", tools=[ADD], tool_choice="required", parallel_tool_calls=False,
                        max_tokens=60))  # fmt: skip
    (call,) = body["choices"][0]["message"]["tool_calls"]
    jsonschema.validate(json.loads(call["function"]["arguments"]), ADD["function"]["parameters"])
    chunks = stream(server, model="plain", tools=[ADD], tool_choice="required", parallel_tool_calls=False,
                    max_tokens=60)  # fmt: skip
    assert reassembled_calls(chunks) == [{"name": "add", "arguments": call["function"]["arguments"]}]


@pytest.mark.parametrize("body,param", [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "uniqueItems": True}}}],
      "tool_choice": "required"}, "tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools"),
])  # fmt: skip
def test_bad_tools_are_400(server, body, param):
    r = chat(server, **body)
    assert r.status_code == 400 and r.json()["error"]["param"].startswith(param), r.text


def test_parser_split_points_do_not_matter(server):
    """The calls a model wrote, fed to the parser in random pieces, give the events of the whole text."""
    from modules.tools.formats import HERMES, JSON_CALLS, MISTRAL
    from modules.tools.parser import ParsedReply, ToolCallParser

    engine = server.app.extensions["hearth"].runtime.pool.route(None).engine
    from modules.engine.base import ChatRequest, OutputOptions, SamplerValues
    from modules.tools.spec import Tool, ToolChoice

    tools = tuple(Tool(t["function"]["name"], "", t["function"]["parameters"]) for t in (WEATHER, ADD))
    gen = engine.chat(ChatRequest(tuple(ASK), sampling=SamplerValues(temperature=1.0, seed=5),
                                  output=OutputOptions(max_tokens=200), tools=tools,
                                  tool_choice=ToolChoice("required")))  # fmt: skip
    generated = gen.handles[0].result().choices[0].text
    cases = [(HERMES, generated), (HERMES, "Let me check.\n" + generated + "\n"),
             (HERMES, 'text <tool_call> {"name": "unknown", "arguments": {}} </tool_call> more'),
             (HERMES, '<tool_call>\n{"name": "add", "arguments": {"a": "}\\"{", "b": [1, {"c": 2}]}}\n</tool_call>'),
             (MISTRAL, '[TOOL_CALLS][{"name": "add", "arguments": {"a": 1}}, '
                       '{"name": "get_weather", "arguments": {}}]'),
             (JSON_CALLS, '{"name": "add", "arguments": {"a": 1}}\n{"name": "add", "arguments": {"a": 2}}'),
             (JSON_CALLS, '{"answer": 42}')]  # fmt: skip
    rng = random.Random(0)
    for fmt, text in cases:
        def parse(cuts):
            ids = iter(range(100))
            parser = ToolCallParser(fmt, ["get_weather", "add"], make_id=lambda: f"call_{next(ids)}")
            reply, last = ParsedReply(), 0
            for cut in sorted(cuts) + [len(text)]:
                reply.add(parser.feed(text[last:cut]))
                last = cut
            reply.add(parser.finish())
            return reply

        whole = parse([])
        for _ in range(200):
            assert parse(rng.sample(range(len(text)), rng.randint(1, min(12, len(text))))) == whole, text
    assert [c["name"] for c in parse_calls(HERMES, generated)]
    assert parse_calls(HERMES, cases[2][1]) == []


def parse_calls(fmt, text):
    from modules.tools.parser import ParsedReply, ToolCallParser

    parser = ToolCallParser(fmt, ["get_weather", "add"])
    reply = ParsedReply()
    reply.add(parser.feed(text))
    reply.add(parser.finish())
    return reply.calls


def test_parameters_tab_grammar_applies_to_the_chat(server, tmp_path):
    """The UI's field: a JSON schema or a GBNF grammar, read by the Parameters tab, constrains the chat's reply."""
    import gradio as gr

    from modules.chat import ChatOptions, ChatSession, new_conversation
    from modules.chat.history import HistoryStore
    from modules.ui import params_tab

    runtime = server.app.extensions["hearth"].runtime
    with gr.Blocks():
        tab = params_tab.build(runtime)
    base = {**{s: 0.0 if k == "temperature" else s.value for k, s in tab.sliders.items()}, tab.max_new_tokens: 200,
            tab.seed: 1, tab.stop: "", tab.ban_eos: False}  # fmt: skip
    gbnf = 'root ::= "The answer is " [0-9] [0-9]? "."'
    for grammar, check in ((json.dumps(PERSON), lambda text: jsonschema.validate(json.loads(text), PERSON)),
                           (gbnf, lambda text: re.fullmatch(r"The answer is [0-9][0-9]?\.", text).group())):
        conversation = new_conversation(runtime.prompts, "instruct", "Assistant")
        session = ChatSession(runtime, HistoryStore(tmp_path), conversation)
        list(session.send("Tell me", ChatOptions(), tab.read({**base, tab.grammar: grammar})))
        check(session.conversation.last_reply())
    free = ChatSession(runtime, HistoryStore(tmp_path), new_conversation(runtime.prompts, "instruct", "Assistant"))
    list(free.send("Tell me", ChatOptions(), tab.read({**base, tab.grammar: ""})))
    assert not is_json(free.conversation.last_reply())
    from modules.errors import InvalidParameter

    with pytest.raises(InvalidParameter) as bad:
        tab.read({**base, tab.grammar: "root ::= ("})
    assert bad.value.param == "grammar"


@pytest.mark.parametrize("fmt_name", ["hermes", "mistral", "llama3", "json"])
def test_each_call_format_grammar_takes_its_own_rendering(fmt_name):
    """A format's grammar accepts the calls as the format renders them, and the parser reads them back."""
    from modules.constraints.compiler import GrammarCompiler
    from modules.tools.formats import FORMATS, call_grammar
    from modules.tools.spec import Tool, ToolChoice
    from tiny_models import build_tokenizer

    fmt = FORMATS[fmt_name]
    tools = tuple(Tool(t["function"]["name"], "", t["function"]["parameters"]) for t in (WEATHER, ADD))
    calls = [("get_weather", {"city": "Oslo", "unit": "c"}), ("add", '{"a": 2, "b": 40}')]
    text = fmt.render(calls)
    tokenizer = build_tokenizer()
    compiled = GrammarCompiler(tokenizer, len(tokenizer) + 5, [tokenizer.eos_token_id]).compile(
        call_grammar(fmt, tools, ToolChoice("required")))
    matcher = compiled.new_matcher().ll
    assert matcher.consume_tokens(tokenizer.encode(text, add_special_tokens=False)) and matcher.is_accepting()
    single = compiled.new_matcher().ll  # parallel_tool_calls false: one call only
    one = GrammarCompiler(tokenizer, len(tokenizer), [2]).compile(
        call_grammar(fmt, tools, ToolChoice("named", "add", parallel=False))).new_matcher().ll
    assert not one.consume_tokens(tokenizer.encode(text, add_special_tokens=False))  # get_weather is not "add"
    assert single.consume_tokens(tokenizer.encode(fmt.render(calls[1:]), add_special_tokens=False))
    assert [(c["name"], json.loads(c["arguments"])) for c in parse_calls(fmt, text)] == [
        ("get_weather", {"city": "Oslo", "unit": "c"}), ("add", {"a": 2, "b": 40})]


@pytest.mark.parametrize("source,name", [
    ("{{ '<tool_call>' }}{{ tools | tojson }}", "hermes"),
    ("{% if tools %}[AVAILABLE_TOOLS]{{ tools|tojson }}[/AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]", "mistral"),
    ("{{ '<|python_tag|>' }}{% if tools %}{{ tools }}{% endif %}", "llama3"),
    ("{{ messages }}", None),
])  # fmt: skip
def test_call_format_detected_from_the_template(source, name):
    from modules.tools.formats import detect_format

    found = detect_format(source)
    assert (found.name if found else None) == name


def test_mask_forbids_padded_logits():
    """Logits wider than the tokenizer's vocabulary: the extra ids are never allowed."""
    import numpy as np

    from modules.loaders.grammar_mask import _mask_bias

    words = np.array([[0b101, -1]], dtype=np.int32)  # tokens 0 and 2 of the first word, all 32 of the second
    bias = _mask_bias(words, 70)
    allowed = [i for i in range(70) if bias[0, i] == 0]
    assert allowed == [0, 2, *range(32, 64)] and np.isneginf(bias[0, 64:]).all()
