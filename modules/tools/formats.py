"""Tool-call formats: how a model writes its calls, detected from its chat template; their grammar and text.

A reply of calls is `start call call_end (between call call_end)* end`, each call a JSON object
{"name": ..., "<args_key>": {...}} with the name first. Hermes/Qwen wrap each call in <tool_call> tags, Mistral
writes a list after [TOOL_CALLS], Llama 3.x a bare object with "parameters"; templates that do not render tools
get Hearth's own instruction (FALLBACK_INSTRUCTION) and the plain JSON format.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from modules.constraints.grammar import JSON_OPTIONS, Grammar
from modules.tools.spec import Tool, ToolChoice


@dataclass(frozen=True)
class CallFormat:
    """The text around a model's tool calls."""

    name: str
    start: str  # opens the first call
    between: str  # opens each further call
    call_end: str  # closes each call
    end: str  # after the last call
    args_key: str = "arguments"

    def render(self, calls: Iterable[tuple[str, Any]]) -> str:
        """Calls (name, arguments as a mapping or JSON text) as the model would write them."""
        parts = []
        for i, (name, arguments) in enumerate(calls):
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except ValueError:
                    pass
            body = json.dumps({"name": name, self.args_key: arguments}, ensure_ascii=False)
            parts.append((self.between if i else self.start) + body + self.call_end)
        return "".join(parts) + (self.end if parts else "")


HERMES = CallFormat("hermes", "<tool_call>\n", "\n<tool_call>\n", "\n</tool_call>", "")
MISTRAL = CallFormat("mistral", "[TOOL_CALLS][", ", ", "", "]")
LLAMA3 = CallFormat("llama3", "", "\n", "", "", args_key="parameters")
JSON_CALLS = CallFormat("json", "", "\n", "", "")
FORMATS = {f.name: f for f in (HERMES, MISTRAL, LLAMA3, JSON_CALLS)}
MARKERS = ("</tool_call>", "<tool_call>", "[TOOL_CALLS]")  # tags a tokenizer may hold as one (special) token

FALLBACK_INSTRUCTION = """\
You can call these functions. Each is given with a JSON schema of its arguments:
{tools}

To call functions, reply with nothing but one JSON object per call, each on its own line:
{{"name": "<function name>", "arguments": {{<the arguments>}}}}
Otherwise, reply in plain text."""


def detect_format(template_source: str | None) -> CallFormat | None:
    """The call format a chat template teaches its model, or None when it shows none Hearth knows."""
    source = template_source or ""
    if "<tool_call>" in source:
        return HERMES
    if "[TOOL_CALLS]" in source:
        return MISTRAL
    if "<|python_tag|>" in source or ('"parameters"' in source and "ipython" in source):
        return LLAMA3
    return None


def fallback_instruction(tools: tuple[Tool, ...]) -> str:
    """Hearth's system-prompt text describing `tools` and the JSON call format, for templates without tools."""
    lines = [json.dumps(t.as_openai()["function"], ensure_ascii=False) for t in tools]
    return FALLBACK_INSTRUCTION.format(tools="\n".join(lines))


def call_grammar(fmt: CallFormat, tools: tuple[Tool, ...], choice: ToolChoice,
                 marker_ids: Mapping[str, int] | None = None) -> Grammar:  # fmt: skip
    """The grammar of a reply made of calls in `fmt`: any tool (required) or the named one, one or several.

    `marker_ids`: tags (MARKERS) the tokenizer holds as one token; the grammar then takes that token as well as
    the spelled-out text (llguidance never matches a special token by its text)."""
    ids = marker_ids or {}
    lit = lambda text: _lit(text, ids)  # noqa: E731
    chosen = [t for t in tools if choice.mode != "named" or t.name == choice.name]
    options = [_call_schema(fmt, t) for t in chosen]
    schema = dict(options[0]) if len(options) == 1 else {"anyOf": options}
    schema["x-guidance"] = JSON_OPTIONS
    call = f"call: %json {json.dumps(schema, ensure_ascii=False)}"
    first = " ".join(p for p in (lit(fmt.start), "call", lit(fmt.call_end)) if p)
    more = " ".join(p for p in (lit(fmt.between), "call", lit(fmt.call_end)) if p)
    body = f"{first} ({more})*" if choice.parallel else first
    start = " ".join(p for p in (body, lit(fmt.end)) if p)
    from llguidance import LLMatcher

    return Grammar(LLMatcher.grammar_from_lark(f"start: {start}\n{call}\n"), "tools", "tool_calls")


def _call_schema(fmt: CallFormat, tool: Tool) -> dict:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, fmt.args_key: dict(tool.parameters)},
        "required": ["name", fmt.args_key],
        "additionalProperties": False,
    }


def _lit(text: str, marker_ids: Mapping[str, int]) -> str:
    """`text` as Lark: quoted strings, with each tag in `marker_ids` also accepted as its token."""
    parts, rest = [], text
    while rest:
        found = min(((rest.find(m), m) for m in marker_ids if m in rest), default=None)
        if found is None:
            parts.append(json.dumps(rest, ensure_ascii=False))
            break
        at, marker = found
        if at:
            parts.append(json.dumps(rest[:at], ensure_ascii=False))
        parts.append(f"(<[{marker_ids[marker]}]> | {json.dumps(marker)})")
        rest = rest[at + len(marker):]
    return " ".join(parts)
