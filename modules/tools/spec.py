"""The tools a chat request offers and how the model must use them (tool_choice, parallel_tool_calls)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from modules.errors import InvalidParameter

CHOICE_MODES = ("none", "auto", "required", "named")


@dataclass(frozen=True)
class Tool:
    """A function the model may call: its name, description and JSON schema of its arguments."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def as_openai(self) -> dict:
        """The tool as OpenAI's {"type": "function", "function": {...}}, the shape chat templates expect."""
        function = {"name": self.name, "description": self.description, "parameters": dict(self.parameters)}
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolChoice:
    """none: no calls; auto: the model decides; required: at least one call; named: exactly that function."""

    mode: str = "auto"
    name: str | None = None  # the function, when mode is "named"
    parallel: bool = True  # more than one call in a reply

    def check(self, tools: tuple[Tool, ...]) -> None:
        """InvalidParameter naming tool_choice when it asks for what `tools` cannot give."""
        if self.mode not in CHOICE_MODES:
            raise InvalidParameter(f"tool_choice must be none, auto, required or a function, got {self.mode!r}",
                                   param="tool_choice")  # fmt: skip
        if self.mode in ("required", "named") and not tools:
            raise InvalidParameter(f"tool_choice {self.mode!r} needs tools", param="tool_choice")
        if self.mode == "named" and self.name not in {t.name for t in tools}:
            raise InvalidParameter(f"tool_choice names function {self.name!r}, which is not in tools",
                                   param="tool_choice")  # fmt: skip

    @property
    def enforced(self) -> bool:
        """True when a grammar makes the reply tool calls (required, named)."""
        return self.mode in ("required", "named")


def check_tools(tools: tuple[Tool, ...]) -> None:
    """InvalidParameter naming tools for a duplicate or badly named function or a non-object schema."""
    seen = set()
    for i, tool in enumerate(tools):
        if not tool.name or not all(c.isalnum() or c in "_-." for c in tool.name) or len(tool.name) > 64:
            raise InvalidParameter(f"tools[{i}].function.name must be 1-64 letters, digits, _ - or ., got "
                                   f"{tool.name!r}", param="tools")  # fmt: skip
        if tool.name in seen:
            raise InvalidParameter(f"tools[{i}]: function {tool.name!r} is given twice", param="tools")
        seen.add(tool.name)
        if not isinstance(tool.parameters, Mapping):
            raise InvalidParameter(f"tools[{i}].function.parameters must be a JSON schema object", param="tools")
