"""Message lists: checking what a request sent, adapting tool turns, and dropping the oldest turns to fit."""
from __future__ import annotations

from typing import Any, Callable

from modules.errors import ContextTooLong, InvalidParameter
from modules.prompts.types import ROLES

Message = dict[str, Any]
_EXTRA_KEYS = ("name", "tool_call_id", "tool_calls")


def normalize_messages(messages: Any) -> list[Message]:
    """Copy the request's messages as plain data; "developer" becomes "system"; bad input -> InvalidParameter."""
    if not isinstance(messages, (list, tuple)):
        raise InvalidParameter("messages must be a list", param="messages")
    result = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidParameter(f"messages[{i}] must be an object with role and content", param="messages")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidParameter(f"messages[{i}] has an unknown role {role!r}", param="messages")
        content = message.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise InvalidParameter(f"messages[{i}].content must be text", param="messages")
        copy = {"role": "system" if role == "developer" else role, "content": content}
        copy.update({k: plain(message[k]) for k in _EXTRA_KEYS if message.get(k) is not None})
        result.append(copy)
    return result


def plain(value: Any) -> Any:
    """Rebuild a value from JSON types only, so templates never see objects with methods of their own."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return str(value)


def tools_as_user_text(messages: list[Message]) -> list[Message]:
    """Turn "tool" messages into labelled user text for templates that do not know the role.

    A converted result joins a neighbouring user message, so strict user/assistant alternation holds.
    """
    result: list[Message] = []
    for message in messages:
        if message["role"] == "tool":
            label = f"Tool result ({message['name']}):" if message.get("name") else "Tool result:"
            message = {"role": "user", "content": f"{label}\n{message['content']}", "from_tool": True}
        previous = result[-1] if result else None
        if message["role"] == "user" and previous and previous["role"] == "user" and (
            message.get("from_tool") or previous.get("from_tool")
        ):
            result[-1] = {**previous, "content": f"{previous['content']}\n\n{message['content']}"}
        else:
            result.append(message)
    return [{k: v for k, v in m.items() if k != "from_tool"} for m in result]


def fold_system(messages: list[Message]) -> list[Message] | None:
    """Move a leading system message into the first user message; None if there is nothing to fold into."""
    if len(messages) < 2 or messages[0]["role"] != "system" or messages[1]["role"] != "user":
        return None
    first = messages[1]
    return [{**first, "content": f"{messages[0]['content']}\n\n{first['content']}"}] + messages[2:]


def turn_groups(body: list[Message]) -> list[list[Message]]:
    """Split messages into turns, each starting at a user message (leading non-user messages form the first)."""
    groups: list[list[Message]] = []
    for message in body:
        if message["role"] == "user" or not groups:
            groups.append([message])
        else:
            groups[-1].append(message)
    return groups


def drop_oldest(head: list[Message], groups: list[list[Message]], count: int) -> tuple[list[Message], int]:
    """head + the turns after the first `count`, keeping dropped turns' system messages; (messages, dropped)."""
    kept_system = [m for group in groups[:count] for m in group if m["role"] == "system"]
    dropped = sum(len(group) for group in groups[:count]) - len(kept_system)
    return head + kept_system + [m for group in groups[count:] for m in group], dropped


def fit_to_context(
    head: list[Message],
    body: list[Message],
    compose: Callable[[list[Message]], str],
    count_tokens: Callable[[str], int],
    limit: int,
    reserve: int,
) -> tuple[str, int, int]:
    """Render with as few of the oldest turns dropped as needed; (text, dropped messages, tokens).

    The latest turn and every system message always stay; ContextTooLong if even that does not fit.
    """
    groups = turn_groups(body)

    def attempt(count: int) -> tuple[str, int, int]:
        messages, dropped = drop_oldest(head, groups, count)
        text = compose(messages)
        return text, dropped, count_tokens(text)

    first = attempt(0)
    if limit <= 0 or first[2] + reserve <= limit:
        return first
    best, low, high = None, 1, len(groups) - 1
    while low <= high:  # fewest dropped turns that fit; prompt length falls as turns are dropped
        middle = (low + high) // 2
        result = attempt(middle)
        if result[2] + reserve <= limit:
            best, high = result, middle - 1
        else:
            low = middle + 1
    if best is None:
        smallest = attempt(len(groups) - 1) if len(groups) > 1 else first
        raise ContextTooLong(
            f"the prompt needs {smallest[2]} tokens (plus {reserve} kept for the reply) even with the oldest "
            f"turns left out, but the model's context holds {limit}",
            param="messages",
        )
    return best
