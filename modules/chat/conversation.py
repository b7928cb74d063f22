"""A saved chat: its messages, character and mode, and text-generation-webui's edit operations on them.

Pure data and list edits; nothing here generates text or touches files.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from modules.errors import HearthError
from modules.prompts import MODES

FORMAT = "hearth-chat"
VERSION = 1
ROLES = ("system", "user", "assistant")
TGW_GREETING_MARK = "<|BEGIN-VISIBLE-CHAT|>"  # text-generation-webui's user half of the greeting pair


class HistoryError(HearthError):
    """A saved chat could not be read, written, found or named."""


def new_id(now: float | None = None) -> str:
    """A file name for a new chat, text-generation-webui style: 20250131-14-05-09."""
    return time.strftime("%Y%m%d-%H-%M-%S", time.localtime(now))


@dataclass
class Conversation:
    """One chat with one character in one mode; `messages` are {"role", "content"} dicts, oldest first."""

    mode: str
    character: str
    id: str = field(default_factory=new_id)
    messages: list[dict] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    @classmethod
    def new(cls, mode: str, character: str, greeting: str = "") -> Conversation:
        """An empty chat; chat modes open with the character's greeting, as in text-generation-webui."""
        conversation = cls(mode=mode, character=character)
        if mode != "instruct" and greeting.strip():
            conversation.messages.append({"role": "assistant", "content": greeting})
        return conversation

    # ----- queries

    def last(self, role: str) -> dict | None:
        """The last message if it has `role`, else None."""
        if self.messages and self.messages[-1]["role"] == role:
            return self.messages[-1]
        return None

    def last_reply(self) -> str:
        """The text of the latest assistant message (the greeting counts), or ""."""
        replies = [m["content"] for m in self.messages if m["role"] == "assistant"]
        return replies[-1] if replies else ""

    def has_exchange(self) -> bool:
        """True once the user has said something (a chat holding only the greeting is not worth listing)."""
        return any(m["role"] == "user" for m in self.messages)

    # ----- edits

    def add_user(self, text: str) -> None:
        """Append the user's message."""
        self.messages.append({"role": "user", "content": text})

    def drop_reply_for_regenerate(self) -> bool:
        """Remove the last reply so it can be generated again; False if there is no user message to answer."""
        if self._last_is_removable_reply():
            self.messages.pop()
        return self.last("user") is not None

    def remove_last(self) -> str:
        """Remove the last exchange (reply and the message it answered); return that message's text."""
        if self._last_is_removable_reply():
            self.messages.pop()
        user = self.last("user")
        if user is None:
            return ""
        self.messages.pop()
        return user["content"]

    def _last_is_removable_reply(self) -> bool:
        # The greeting (an assistant message opening the chat) is never removed or regenerated.
        return self.last("assistant") is not None and len(self.messages) > 1

    # ----- files

    def to_dict(self) -> dict[str, Any]:
        """The JSON form saved to disk (the file name is the id)."""
        return {
            "format": FORMAT, "version": VERSION, "mode": self.mode, "character": self.character,
            "created": self.created, "updated": self.updated, "messages": [dict(m) for m in self.messages],
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any, conversation_id: str, mode: str, character: str) -> Conversation:
        """Parse a saved chat (Hearth's format or text-generation-webui's); HistoryError if it is malformed."""
        if not isinstance(data, dict):
            raise HistoryError("not a JSON object")
        if "internal" in data and "messages" not in data:
            messages = _from_tgw(data["internal"])
        else:
            messages = _checked_messages(data.get("messages"))
        if data.get("mode", mode) not in MODES:
            raise HistoryError(f"unknown mode {data.get('mode')!r}")
        now = time.time()
        created, updated = _number(data.get("created"), now), _number(data.get("updated"), now)
        return cls(mode, character, conversation_id, messages, created, updated)


def _checked_messages(raw: Any) -> list[dict]:
    if not isinstance(raw, list):
        raise HistoryError("'messages' must be a list")
    messages = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(
            message.get("content"), str
        ):
            raise HistoryError(f"message {i} must be {{'role': user|assistant|system, 'content': text}}")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def _from_tgw(internal: Any) -> list[dict]:
    """text-generation-webui's [[user, bot], ...] pairs as messages."""
    if not isinstance(internal, list) or not all(
        isinstance(p, list) and len(p) >= 2 and all(isinstance(t, str) for t in p[:2]) for p in internal
    ):
        raise HistoryError("'internal' must be a list of [user, reply] pairs")
    messages = []
    for user, reply in (p[:2] for p in internal):
        if user and user != TGW_GREETING_MARK:
            messages.append({"role": "user", "content": user})
        if reply:
            messages.append({"role": "assistant", "content": reply})
    return messages


def _number(value: Any, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default
