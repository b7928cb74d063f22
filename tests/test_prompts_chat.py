"""Modes (instruct, chat, chat-instruct), template choice, continue, truncation, stop strings, tool messages."""
import logging
import threading
from pathlib import Path

import pytest

from modules.errors import ContextTooLong, InvalidParameter, TemplateError, TemplateNotFound
from modules.prompts import ModelPromptInfo, PromptOptions, PromptStore

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL = Path(__file__).resolve().parent / "data" / "official_templates"
CHATML = OFFICIAL.joinpath("teknium-OpenHermes-2.5-Mistral-7B.jinja").read_text(encoding="utf-8")

HISTORY = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "How are you?"},
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module: it is read-only after loading and safe to share."""
    characters = tmp_path_factory.mktemp("characters")
    (characters / "Assistant.yaml").write_text(
        "name: AI\ngreeting: Hello there.\ncontext: The AI helps {{user}}.\n", encoding="utf-8"
    )
    return PromptStore(ROOT / "instruction-templates", characters, ROOT / "models" / "config.yaml")


def model(name="unknown-model", template=None, **kw):
    kw.setdefault("context_length", 0)
    return ModelPromptInfo(name, template, "<s>", "</s>", **kw)


# ----- instruct mode and the choice of template


def test_instruct_uses_the_models_own_template(store):
    result = store.render(HISTORY, PromptOptions(), model(template=CHATML))
    assert (result.template_name, result.template_source) == ("model", "model")
    assert result.text == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
        "<|im_start|>user\nHow are you?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert result.stop == ("<|im_end|>",)
    assert result.dropped_messages == 0 and result.prompt_tokens == (len(result.text) + 3) // 4


def test_choice_order(store):
    chatml_model = model("Llama-2-7b-chat-hf", template=CHATML)
    pick = lambda options, m: (lambda r: (r.template_name, r.template_source))(store.render(HISTORY, options, m))  # noqa: E731
    assert pick(PromptOptions(instruction_template_str="{{ 'x' }}", instruction_template="Alpaca"), chatml_model) == (
        "custom", "request-string")
    assert pick(PromptOptions(instruction_template="Alpaca"), chatml_model) == ("Alpaca", "request")
    assert pick(PromptOptions(), chatml_model) == ("model", "model")
    assert pick(PromptOptions(), model("Llama-2-7b-chat-hf")) == ("Llama-v2", "guess")
    assert pick(PromptOptions(), model("my-own-model")) == ("Alpaca", "fallback")


def test_fallback_is_alpaca(store):
    result = store.render([{"role": "user", "content": "Say hi."}], PromptOptions(), model())
    assert result.text == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nSay hi.\n\n### Response:\n"
    )
    assert result.stop == ("\n\n### Response:", "\n\n### Instruction:")


def test_fallback_works_without_any_template_files(tmp_path):
    store = PromptStore(tmp_path / "no-templates", tmp_path / "no-characters", tmp_path / "no-config.yaml")
    result = store.render([{"role": "user", "content": "x"}], PromptOptions(), model())
    assert (result.template_name, result.template_source) == ("Alpaca", "fallback")
    assert "### Instruction:\nx" in result.text


def test_guess_naming_a_missing_template_falls_back(tmp_path, caplog):
    (tmp_path / "config.yaml").write_text(".*special:\n  instruction_template: Nowhere\n", encoding="utf-8")
    store = PromptStore(ROOT / "instruction-templates", tmp_path, tmp_path / "config.yaml")
    with caplog.at_level(logging.WARNING, logger="modules.prompts.store"):
        result = store.render(HISTORY, PromptOptions(), model("special-7b"))
    assert result.template_source == "fallback" and "Nowhere" in caplog.text


def test_template_choice_is_logged(store, caplog):
    with caplog.at_level(logging.INFO, logger="modules.prompts.store"):
        store.render(HISTORY, PromptOptions(), model("Meta-Llama-3-8B-Instruct"))
    assert "Llama-v3 (guess)" in caplog.text and "Meta-Llama-3-8B-Instruct" in caplog.text


def test_unknown_template_name(store):
    with pytest.raises(TemplateNotFound) as err:
        store.render(HISTORY, PromptOptions(instruction_template="NoSuchTemplate"), model())
    assert err.value.param == "instruction_template"


def test_developer_role_is_a_system_message(store):
    messages = [{"role": "developer", "content": "Be brief."}] + HISTORY
    result = store.render(messages, PromptOptions(instruction_template="ChatML"), model())
    assert result.text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_system_rejected_by_model_template_is_folded(store):
    """A model template that refuses system messages (Gemma 2) gets it folded into the first user turn."""
    gemma2 = OFFICIAL.joinpath("google-gemma-2-2b-it.jinja").read_text(encoding="utf-8")
    messages = [{"role": "system", "content": "Be brief."}] + HISTORY
    result = store.render(messages, PromptOptions(), ModelPromptInfo("gemma-2-2b-it", gemma2, "<bos>", "<eos>"))
    assert result.text.startswith("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n")
    assert result.stop == ("<end_of_turn>",)


def test_template_rejecting_the_conversation_is_a_clear_error(store):
    bad_turns = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(TemplateError) as err:
        store.render(bad_turns, PromptOptions(), model(template=OFFICIAL.joinpath(
            "meta-llama-Llama-2-7b-chat-hf.jinja").read_text(encoding="utf-8")))
    assert "alternate" in err.value.message and err.value.param == "messages"


def test_invalid_input(store):
    with pytest.raises(InvalidParameter) as err:
        store.render(HISTORY, PromptOptions(mode="story"), model())
    assert err.value.param == "mode"
    with pytest.raises(InvalidParameter) as err:
        store.render([{"role": "wizard", "content": "x"}], PromptOptions(), model())
    assert err.value.param == "messages"
    with pytest.raises(InvalidParameter):
        store.render([], PromptOptions(), model())


# ----- chat and chat-instruct


def test_chat_mode(store):
    result = store.render(HISTORY, PromptOptions(mode="chat"), model())
    assert result.text == "The AI helps You.\n\nAI: Hello there.\nYou: Hi\nAI: Hello\nYou: How are you?\nAI:"
    assert (result.template_name, result.template_source) == ("chat", "default")
    assert result.stop == ("\nAI:", "\nYou:")
    assert result.trim_reply_start  # "AI:" makes models begin with a space, which the reply drops
    assert not store.render(HISTORY, PromptOptions(), model()).trim_reply_start  # instruct mode keeps it


def test_chat_mode_overrides(store):
    options = PromptOptions(mode="chat", name1="Ann", name2="Bot", context="{{char}} serves {{user}}.",
                            greeting="", user_bio="{{user}} likes tea.")
    result = store.render(HISTORY, options, model())
    assert result.text == "Bot serves Ann.\n\nAnn likes tea.\n\nAnn: Hi\nBot: Hello\nAnn: How are you?\nBot:"
    assert result.stop == ("\nBot:", "\nAnn:")


def test_chat_mode_request_system_joins_the_context(store):
    messages = [{"role": "system", "content": "Answer in French."}] + HISTORY
    result = store.render(messages, PromptOptions(mode="chat"), model())
    assert result.text.startswith("The AI helps You.\n\nAnswer in French.\n\nAI: Hello there.\n")


def test_greeting_not_repeated_when_history_starts_with_the_bot(store):
    messages = [{"role": "assistant", "content": "Hello there."}] + HISTORY
    result = store.render(messages, PromptOptions(mode="chat"), model())
    assert result.text.count("Hello there.") == 1


def test_custom_chat_template_string(store):
    options = PromptOptions(mode="chat", chat_template_str="{% for m in messages %}{{ m.role }}:{{ m.content }}|{% endfor %}{{ char }}>")
    result = store.render(HISTORY, options, model())
    assert result.text == "system:The AI helps You.|assistant:Hello there.|user:Hi|assistant:Hello|user:How are you?|AI>"
    assert (result.template_name, result.template_source) == ("custom-chat", "request-string")


def test_chat_instruct_mode(store):
    messages = [{"role": "system", "content": "Stay in character."}] + HISTORY
    result = store.render(messages, PromptOptions(mode="chat-instruct", instruction_template="ChatML"), model())
    assert result.text == (
        "<|im_start|>system\nStay in character.<|im_end|>\n"
        "<|im_start|>user\nContinue the chat dialogue below. Write a single reply for the character \"AI\".\n\n"
        "The AI helps You.\n\nAI: Hello there.\nYou: Hi\nAI: Hello\nYou: How are you?\n<|im_end|>\n"
        "<|im_start|>assistant\nAI:"  # the reply opens with the bot's name, as in text-generation-webui
    )
    assert result.trim_reply_start
    assert (result.template_name, result.template_source) == ("ChatML", "request")
    assert result.stop == ("<|im_end|>", "\nAI:", "\nYou:")


def test_chat_instruct_custom_command(store):
    options = PromptOptions(mode="chat-instruct", instruction_template="Alpaca",
                            chat_instruct_command="Reply as <|character|> to {{user}}:\n<|prompt|>")
    result = store.render(HISTORY[:1], options, model())
    assert "### Instruction:\nReply as AI to You:\nThe AI helps You.\n\nAI: Hello there.\nYou: Hi\n\n\n### Response:\n" \
        in result.text


# ----- continue


def test_continue_instruct(store):
    messages = HISTORY + [{"role": "assistant", "content": "I am fine, "}]
    result = store.render(messages, PromptOptions(instruction_template="Llama-v3", continue_=True),
                          ModelPromptInfo("m", None, "<|begin_of_text|>", "<|eot_id|>", context_length=0))
    assert result.text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\nI am fine, ")
    assert "<|eot_id|>" not in result.text[-30:]


def test_continue_with_template_that_has_no_generation_prompt(store):
    messages = HISTORY + [{"role": "assistant", "content": "Fine"}]
    result = store.render(messages, PromptOptions(instruction_template="Mistral", continue_=True), model())
    assert result.text == "<s> [INST] Hi [/INST] Hello</s> [INST] How are you? [/INST] Fine"


def test_continue_chat(store):
    messages = HISTORY + [{"role": "assistant", "content": "Doing"}]
    result = store.render(messages, PromptOptions(mode="chat", continue_=True), model())
    assert result.text.endswith("You: How are you?\nAI: Doing")


def test_continue_the_greeting(store):
    result = store.render([], PromptOptions(mode="chat", continue_=True), model())
    assert result.text == "The AI helps You.\n\nAI: Hello there."


def test_continue_chat_instruct(store):
    messages = HISTORY + [{"role": "assistant", "content": "Doing"}]
    options = PromptOptions(mode="chat-instruct", instruction_template="ChatML", continue_=True)
    result = store.render(messages, options, model())
    assert result.text.endswith("You: How are you?\n<|im_end|>\n<|im_start|>assistant\nAI: Doing")
    assert not result.trim_reply_start
    assert result.text.count("Doing") == 1  # the reply being continued is not also in the dialogue


def test_continue_needs_an_assistant_message(store):
    with pytest.raises(InvalidParameter) as err:
        store.render(HISTORY, PromptOptions(continue_=True), model())
    assert err.value.param == "continue_"


# ----- truncation


def long_history(turns):
    messages = [{"role": "system", "content": "SYSTEM"}]
    for i in range(turns):
        messages += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    return messages + [{"role": "user", "content": "last question"}]


def test_truncation_drops_oldest_turns_and_keeps_system(store):
    messages = long_history(20)
    full = store.render(messages, PromptOptions(instruction_template="ChatML"), model(count_tokens=len)).prompt_tokens
    limit = full - 100
    result = store.render(messages, PromptOptions(instruction_template="ChatML"),
                          model(count_tokens=len, context_length=limit))
    assert result.prompt_tokens <= limit and result.prompt_tokens == len(result.text)
    assert result.text.startswith("<|im_start|>system\nSYSTEM<|im_end|>\n")
    assert "last question" in result.text and "question 0\n" not in result.text
    assert result.dropped_messages % 2 == 0 and result.dropped_messages > 0  # whole turns
    kept_first = result.dropped_messages // 2
    assert f"<|im_start|>user\nquestion {kept_first}<|im_end|>" in result.text
    # Dropping one turn fewer would not have fitted.
    bigger = messages[:1] + messages[1 + result.dropped_messages - 2:]
    assert len(store.render(bigger, PromptOptions(instruction_template="ChatML"), model()).text) > limit


def test_truncation_counts_the_reserve(store):
    messages = long_history(5)
    full = store.render(messages, PromptOptions(instruction_template="ChatML"), model(count_tokens=len)).prompt_tokens
    fits = store.render(messages, PromptOptions(instruction_template="ChatML"), model(count_tokens=len, context_length=full))
    assert fits.dropped_messages == 0
    reserved = store.render(messages, PromptOptions(instruction_template="ChatML", reserve_tokens=50),
                            model(count_tokens=len, context_length=full))
    assert reserved.dropped_messages > 0 and reserved.prompt_tokens + 50 <= full


def test_truncation_in_chat_mode_keeps_the_context(store):
    messages = long_history(10)[1:]
    result = store.render(messages, PromptOptions(mode="chat"), model(count_tokens=len, context_length=120))
    assert result.text.startswith("The AI helps You.\n\n") and result.text.endswith("You: last question\nAI:")
    assert result.dropped_messages > 0 and "AI: Hello there." not in result.text  # the greeting went first


def test_context_too_long(store):
    messages = [{"role": "system", "content": "S" * 500}, {"role": "user", "content": "hi"}]
    with pytest.raises(ContextTooLong) as err:
        store.render(messages, PromptOptions(instruction_template="ChatML"), model(count_tokens=len, context_length=100))
    assert err.value.param == "messages"


def test_truncation_keeps_the_message_being_continued(store):
    messages = long_history(10) + [{"role": "assistant", "content": "partial"}]
    result = store.render(messages, PromptOptions(instruction_template="ChatML", continue_=True),
                          model(count_tokens=len, context_length=200))
    assert result.text.endswith("last question<|im_end|>\n<|im_start|>assistant\npartial")


# ----- stop strings and tool messages


@pytest.mark.parametrize("name, stops", [
    ("Llama-v3", ("<|eot_id|>",)),
    ("Llama-v2", ("[/INST]", "</s>")),
    ("Mistral", ("[/INST]", "</s>")),
    ("Gemma", ("<end_of_turn>",)),
    ("Vicuna-v1.1", (" ASSISTANT:", "</s>")),
    ("Zephyr", ("</s>",)),
    ("Command-R", ("<|END_OF_TURN_TOKEN|>",)),
    ("DeepSeek", ("<｜Assistant｜>", "<｜end▁of▁sentence｜>")),
])
def test_instruct_stop_strings(store, name, stops):
    eos = "<｜end▁of▁sentence｜>" if name == "DeepSeek" else "</s>"
    result = store.render(HISTORY, PromptOptions(instruction_template=name), ModelPromptInfo("m", None, "<s>", eos))
    assert result.stop == stops
    assert all(s.strip() for s in result.stop)


def test_tool_messages_pass_through_templates_that_know_them(store):
    messages = HISTORY + [{"role": "assistant", "content": "Checking."}, {"role": "tool", "content": "{\"t\": 21}"}]
    qwen = store.render(messages, PromptOptions(instruction_template="Qwen"), model())
    assert "<|im_start|>user\n<tool_response>\n{\"t\": 21}\n</tool_response><|im_end|>\n" in qwen.text
    chat = store.render(messages, PromptOptions(mode="chat"), model())
    assert "[Tool result: {\"t\": 21}]\nAI:" in chat.text


def test_tool_messages_become_labelled_user_text_otherwise(store):
    messages = HISTORY + [{"role": "assistant", "content": "Checking."}, {"role": "tool", "content": "21 C"},
                          {"role": "user", "content": "So?"}]
    result = store.render(messages, PromptOptions(instruction_template="Mistral"), model())
    assert result.text.endswith(" Checking.</s> [INST] Tool result:\n21 C\n\nSo? [/INST]")


def test_concurrent_renders(store):
    """Many threads rendering with different templates each get their own, correct prompt."""
    names = ["ChatML", "Llama-v3", "Alpaca", "Gemma", "Mistral"]
    expected = {n: store.render(HISTORY, PromptOptions(instruction_template=n), model()).text for n in names}
    errors = []

    def work(i):
        for j in range(40):
            name = names[(i + j) % len(names)]
            custom = f"{{{{ 'thread-{i}-{j}' }}}}"
            try:
                assert store.render(HISTORY, PromptOptions(instruction_template=name), model()).text == expected[name]
                assert store.render(HISTORY, PromptOptions(instruction_template_str=custom), model()).text == f"thread-{i}-{j}"
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
