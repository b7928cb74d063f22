"""Tools in prompts: which templates render them (probed once per template), and the fallback when one does not.

A template that renders `tools` and shows a call format Hearth knows (modules.tools.formats) gets the request's
tools as its `tools` variable. Otherwise Hearth adds FALLBACK_INSTRUCTION to the system message and the model
answers in the plain JSON format. Earlier assistant calls (`tool_calls`) reach templates that do not render them
as text in the format in force, so the model sees its own calls either way.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

import jinja2

from modules.errors import TemplateError
from modules.prompts.sandbox import render_template
from modules.tools.formats import FORMATS, JSON_CALLS, CallFormat, detect_format, fallback_instruction
from modules.tools.spec import Tool

_PROBE_TOOL = "hearth_probe_tool"
_PROBE_CALL = "hearth_probe_call"


@dataclass(frozen=True)
class ToolSupport:
    """What a template does with tools: renders the list, renders assistant calls, and in which format."""

    renders_tools: bool = False
    renders_calls: bool = False
    format: str | None = None  # a modules.tools.formats name


def probe_tool_support(compiled: jinja2.Template, source: str) -> ToolSupport:
    """Render small probes to see what the template does with tools (once per compiled template)."""
    tool = Tool(_PROBE_TOOL, "probe", {"type": "object", "properties": {}}).as_openai()
    user = {"role": "user", "content": "hello"}
    call = {"type": "function", "id": "call_probe", "function": {"name": _PROBE_CALL, "arguments": {}}}
    turns = [user, {"role": "assistant", "content": "", "tool_calls": [call]}]
    fmt = detect_format(source)
    return ToolSupport(
        renders_tools=_PROBE_TOOL in _try(compiled, [user], [tool]),
        renders_calls=_PROBE_CALL in _try(compiled, turns, None),
        format=fmt.name if fmt else None,
    )


def _try(compiled: jinja2.Template, messages: list, tools) -> str:
    try:
        return render_template(compiled, messages=messages, tools=tools, add_generation_prompt=True, bos_token="",
                               eos_token="", documents=None)  # fmt: skip
    except TemplateError:
        return ""


def with_tools(messages: list[dict], tools: tuple[Tool, ...], support: ToolSupport | None):
    """(messages, the template's `tools` variable, call format) for a conversation offering `tools`.

    `support` is None for the chat modes, whose dialogue templates never render tools."""
    native = support is not None and support.renders_tools and support.format is not None
    fmt = FORMATS[support.format] if native else JSON_CALLS
    if tools and not native:
        messages = _with_instruction(messages, fallback_instruction(tools))
    calls_native = native and support.renders_calls
    messages = [_template_calls(m) if calls_native else _calls_as_text(m, fmt) for m in messages]
    return messages, ([t.as_openai() for t in tools] if tools and native else None), (fmt if tools else None)


def _with_instruction(messages: list[dict], instruction: str) -> list[dict]:
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        return [{**first, "content": f"{first['content']}\n\n{instruction}".strip()}] + messages[1:]
    return [{"role": "system", "content": instruction}] + messages


def _template_calls(message: dict) -> dict:
    """Assistant calls as chat templates expect them: arguments as a mapping, not JSON text."""
    if not message.get("tool_calls"):
        return message
    calls = []
    for call in message["tool_calls"]:
        function = dict(call.get("function") or {})
        function["arguments"] = _arguments(function.get("arguments"))
        calls.append({**call, "function": function})
    return {**message, "tool_calls": calls}


def _calls_as_text(message: dict, fmt: CallFormat) -> dict:
    """Assistant calls written into the message's text, for templates that do not render them."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    pairs = [((c.get("function") or {}).get("name", ""), _arguments((c.get("function") or {}).get("arguments")))
             for c in calls]  # fmt: skip
    text = "\n".join(p for p in (message.get("content") or "", fmt.render(pairs)) if p)
    return {k: v for k, v in {**message, "content": text}.items() if k != "tool_calls"}


def _arguments(value: Any) -> Any:
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        return parsed if isinstance(parsed, Mapping) else value
    return value if value is not None else {}
