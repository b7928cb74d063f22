"""The three modes: instruct (template only), chat (persona + "Name: text" dialogue), chat-instruct (the chat
wrapped in an instruction). Also `continue`, truncation to the context length, and stop strings."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jinja2

from modules.errors import InvalidParameter, TemplateError
from modules.prompts.conversation import Message, fit_to_context, fold_system, tools_as_user_text
from modules.prompts.sandbox import TemplateRaised, render_template
from modules.prompts.tools import ToolSupport, with_tools
from modules.prompts.types import ModelPromptInfo, PromptOptions, RenderedPrompt

# The chat layout text-generation-webui users know: context, then "Name: message" lines, then "Bot:".
DEFAULT_CHAT_TEMPLATE = """\
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
        {%- if message['content'] %}{{- message['content'] + '\\n\\n' }}{%- endif %}
        {%- if user_bio %}{{- user_bio + '\\n\\n' }}{%- endif %}
    {%- elif message['role'] == 'tool' %}
        {{- '[Tool result: ' + message['content'] + ']\\n' }}
    {%- elif message['role'] == 'user' %}
        {{- name1 + ': ' + message['content'] + '\\n' }}
    {%- else %}
        {{- name2 + ': ' + message['content'] + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- name2 + ':' }}
{%- endif %}"""

CONTINUE_MARK = "<<hearth-continue-here>>"
_PROBE = ("hearth-probe-user-one", "hearth-probe-reply-one", "hearth-probe-user-two", "hearth-probe-reply-two")
_TOOL_PROBE = "hearth-probe-tool-result"
_BRACKETS = ("<>", "[]", "()", "{}")

RenderFn = Callable[[list[Message], bool], str]


@dataclass(frozen=True)
class Template:
    """A compiled template chosen for one render, and what it is called in logs and responses."""

    name: str
    source_kind: str  # "request", "request-string", "model", "guess", "fallback", "default"
    compiled: jinja2.Template
    param: str | None  # the request field to blame when it fails
    accepts_tool: bool  # renders "tool" messages itself
    tools: ToolSupport = ToolSupport()  # renders the tools offered and assistant calls, in which format


@dataclass(frozen=True)
class Persona:
    """Who speaks in chat modes, with {{user}}/{{char}} already substituted."""

    name1: str
    name2: str
    context: str
    greeting: str
    user_bio: str
    command: str  # chat-instruct command, still holding <|character|> and <|prompt|>


def accepts_tool_role(compiled: jinja2.Template) -> bool:
    """True if the template renders a "tool" message's text (rather than failing or dropping it)."""
    probe = [
        {"role": "user", "content": _PROBE[0]},
        {"role": "assistant", "content": _PROBE[1]},
        {"role": "tool", "content": _TOOL_PROBE},
    ]
    try:
        text = render_template(compiled, messages=probe, add_generation_prompt=False, **_probe_vars())
    except TemplateError:
        return False
    return _TOOL_PROBE in text


def render_prompt(
    messages: list[Message],
    options: PromptOptions,
    model: ModelPromptInfo,
    instruct: Template | None,
    chat: Template | None,
    persona: Persona | None,
) -> RenderedPrompt:
    """Build the prompt for `options.mode` from normalized messages and the chosen template(s)."""
    base = {"bos_token": model.bos_token, "eos_token": model.eos_token, "tools": None, "documents": None}
    call_format = None
    if options.tools or any(m.get("tool_calls") for m in messages):
        support = instruct.tools if options.mode == "instruct" and instruct else None
        messages, base["tools"], call_format = with_tools(messages, options.tools, support)
    instruct_fn = _renderer(instruct, base) if instruct else None
    chat_fn = _renderer(chat, {**base, **_persona_vars(persona)}) if chat and persona else None
    if options.mode == "instruct":
        head, body, outer = _instruct_parts(messages, instruct)
        compose = _instruct_composer(instruct_fn, options)
        stops, shown = stop_strings(instruct_fn), instruct
    else:
        head, body, outer = _chat_parts(messages, options, chat, persona)
        compose = _chat_composer(chat_fn, instruct_fn, options, persona, outer)
        stops = (stop_strings(instruct_fn) if instruct_fn else []) + stop_strings(chat_fn)
        shown = instruct if options.mode == "chat-instruct" else chat
    _check_continue(head + body, options)
    text, dropped, tokens = fit_to_context(
        head, body, compose, model.count_tokens, model.context_length, max(0, options.reserve_tokens)
    )
    trim = options.mode != "instruct" and not options.continue_
    return RenderedPrompt(text, shown.name, shown.source_kind, _dedupe(stops), dropped, tokens, trim,
                          call_format.name if call_format else None)  # fmt: skip


def _renderer(template: Template, variables: dict[str, Any]) -> RenderFn:
    def render(messages: list[Message], add_generation_prompt: bool) -> str:
        call = dict(variables, add_generation_prompt=add_generation_prompt)
        try:
            return render_template(template.compiled, param=template.param, messages=messages, **call)
        except TemplateError as exc:
            # Templates such as Gemma 2's reject a system message: fold it into the first user turn and retry.
            folded = fold_system(messages) if isinstance(exc.__cause__, TemplateRaised) else None
            if folded is None:
                raise
            return render_template(template.compiled, param=template.param, messages=folded, **call)

    return render


def _instruct_parts(messages: list[Message], template: Template) -> tuple[list, list, list]:
    if not messages:
        raise InvalidParameter("messages must not be empty", param="messages")
    if not template.accepts_tool:
        messages = tools_as_user_text(messages)
    lead = _leading_system_count(messages)
    return messages[:lead], messages[lead:], []


def _chat_parts(messages: list[Message], options: PromptOptions, chat: Template, persona: Persona):
    lead = _leading_system_count(messages)
    system_texts = [m["content"] for m in messages[:lead] if m["content"].strip()]
    body = messages[lead:] if chat.accepts_tool else tools_as_user_text(messages[lead:])
    # Request system messages add to the character's context in chat mode; in chat-instruct they become
    # the system message of the outer instruction (text-generation-webui's custom system message).
    in_context = system_texts if options.mode == "chat" else []
    context = "\n\n".join(part for part in [persona.context.strip(), *in_context] if part)
    head = [{"role": "system", "content": context}] if context or persona.user_bio.strip() else []
    outer = [{"role": "system", "content": "\n\n".join(system_texts)}] if system_texts and not in_context else []
    if persona.greeting and (not body or body[0]["role"] != "assistant"):
        body = [{"role": "assistant", "content": persona.greeting}] + body
    return head, body, outer


def _instruct_composer(render: RenderFn, options: PromptOptions) -> Callable[[list[Message]], str]:
    def compose(messages: list[Message]) -> str:
        if options.continue_:
            return _continued(render, messages)
        return render(messages, options.add_generation_prompt)

    return compose


def _chat_composer(chat, instruct, options: PromptOptions, persona: Persona, outer: list[Message]):
    def compose(messages: list[Message]) -> str:
        if options.mode == "chat":
            return _continued(chat, messages) if options.continue_ else chat(messages, options.add_generation_prompt)
        inner = chat(messages[:-1] if options.continue_ else messages, False)
        command = persona.command.replace("<|character|>", persona.name2).replace("<|prompt|>", inner)
        wrapped = outer + [{"role": "user", "content": command}]
        if not (options.continue_ or options.add_generation_prompt):
            return instruct(wrapped, False)
        # As text-generation-webui: the reply opens with the bot's "Name:" cue, inside the assistant turn.
        opened = f"{persona.name2}: {messages[-1]['content']}" if options.continue_ else f"{persona.name2}:"
        return _continued(instruct, wrapped + [{"role": "assistant", "content": opened}])

    return compose


def _continued(render: RenderFn, messages: list[Message]) -> str:
    """Render so the text ends inside the last (assistant) message, ready to be extended."""
    last = messages[-1]
    text = render(messages[:-1] + [{**last, "content": CONTINUE_MARK}], False)
    cut = text.find(CONTINUE_MARK)
    if cut < 0:  # the template drops a trailing assistant message: open a new turn instead
        return render(messages[:-1], True) + last["content"]
    return text[:cut] + last["content"]


def stop_strings(render: RenderFn | None) -> list[str]:
    """Stop strings for a template, found as text-generation-webui does.

    Render two fake exchanges and look at the text between messages: the leading special token
    (<...>, [...], (...), {...}) if there is one, else everything up to the first colon ("\\nYou:").
    """
    if render is None:
        return []
    fake = [{"role": role, "content": text} for role, text in zip(("user", "assistant") * 2, _PROBE)]
    try:
        prompt = render(fake, False)
    except TemplateError:
        return []
    starts = [prompt.find(text) for text in _PROBE]
    if min(starts) < 0:
        return []
    ends = [start + len(text) for start, text in zip(starts, _PROBE)]
    gaps = [prompt[ends[0]:starts[1]], prompt[ends[1]:starts[2]], prompt[ends[3]:]]
    return [stop for stop in map(_stop_from_gap, gaps) if stop is not None]


def _stop_from_gap(gap: str) -> str | None:
    stripped = gap.strip()
    stop = None
    for opening, closing in _BRACKETS:
        if stripped.startswith(opening) and closing in stripped:
            stop = stripped.split(closing)[0] + closing
            break
    else:
        if ":" in gap:
            stop = gap.split(":")[0] + ":"
    return stop if stop is not None and len(stop.strip()) >= 2 else None


def _dedupe(stops: list[str]) -> tuple[str, ...]:
    """Drop empty and repeated strings, and strings that start with another stop string."""
    unique = list(dict.fromkeys(s for s in stops if s and s.strip()))
    return tuple(s for s in unique if not any(s != other and s.startswith(other) for other in unique))


def _check_continue(messages: list[Message], options: PromptOptions) -> None:
    if options.continue_ and (not messages or messages[-1]["role"] != "assistant"):
        raise InvalidParameter("continue needs the conversation to end with an assistant message", param="continue_")


def _leading_system_count(messages: list[Message]) -> int:
    count = 0
    while count < len(messages) and messages[count]["role"] == "system":
        count += 1
    return count


def _persona_vars(persona: Persona) -> dict[str, str]:
    return {
        "name1": persona.name1,
        "name2": persona.name2,
        "user": persona.name1,  # lets a chat template say {{user}} / {{char}}
        "char": persona.name2,
        "user_bio": persona.user_bio,
    }


def _probe_vars() -> dict[str, Any]:
    names = {"name1": "You", "name2": "AI", "user": "You", "char": "AI"}
    return {"bos_token": "", "eos_token": "", "user_bio": "", **names}
