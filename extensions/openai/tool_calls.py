"""Tool calls in chat responses: message.tool_calls in bodies, delta.tool_calls in stream chunks (OpenAI's shapes).

Both are built from the same parser events (modules.tools.parser), so a stream's deltas add up to the body.
"""
from __future__ import annotations

from typing import Callable

from modules.tools.parser import ArgsPart, CallStart, Event, ParsedReply, ToolCallParser


def event_delta(event: Event) -> dict:
    """The chunk delta for one parser event."""
    if isinstance(event, str):
        return {"content": event}
    if isinstance(event, CallStart):
        call = {"index": event.index, "id": event.id, "type": "function",
                "function": {"name": event.name, "arguments": ""}}  # fmt: skip
        return {"tool_calls": [call]}
    assert isinstance(event, ArgsPart)
    return {"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]}


def finish_with_calls(finish: str | None, parser: ToolCallParser) -> str | None:
    """"tool_calls" for a reply that ended by itself after making calls."""
    return "tool_calls" if finish == "stop" and parser.calls else finish


def with_tool_calls(body: dict, texts: list[str], make_parser: Callable[[], ToolCallParser]) -> dict:
    """A chat.completion body whose choices' text is read for tool calls (content null when only calls)."""
    for choice, text in zip(body["choices"], texts):
        parser = make_parser()
        reply = ParsedReply()
        reply.add(parser.feed(text))
        reply.add(parser.finish())
        if not reply.calls:
            continue
        message = choice["message"]
        message["content"] = reply.content if reply.content.strip() else None
        message["tool_calls"] = [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in reply.calls
        ]  # fmt: skip
        choice["finish_reason"] = finish_with_calls(choice["finish_reason"], parser)
    return body
