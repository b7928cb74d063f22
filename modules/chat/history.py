"""Saved chats: one JSON file per chat under <user_data>/history/<mode>/<character>/<id>.json.

Every write goes to a temporary file in the same folder, is flushed to disk, then renamed over the old file,
so a crash or a kill leaves either the old chat or the new one, never half of one. Names that come from the UI
are checked and never allowed to leave the history folder. A damaged file is reported and skipped.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from modules.chat.conversation import Conversation, HistoryError
from modules.prompts import MODES

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 64 * 1024 * 1024  # larger files are reported, not read
_NAME = re.compile(r"^[^\x00-\x1f/\\:*?\"<>|]{1,120}$")  # also safe on Windows file systems


@dataclass(frozen=True)
class HistoryEntry:
    """One saved chat as listed: its id (the file name), when it was last saved, and a preview."""

    id: str
    updated: float
    messages: int
    preview: str

    @property
    def label(self) -> str:
        """What a picker shows: the id and the first words of the chat."""
        return f"{self.id} · {self.preview}" if self.preview else self.id


@dataclass(frozen=True)
class HistoryListing:
    """The chats of one character and mode, newest first, and the files that had to be skipped."""

    entries: list[HistoryEntry]
    problems: list[str]


def check_name(name: object, what: str = "name") -> str:
    """`name` if it can name a file inside one folder, else HistoryError (separators, '..', leading dot...)."""
    if not isinstance(name, str) or not _NAME.match(name) or name.strip() != name or name.startswith("."):
        raise HistoryError(f"{what} {name!r} cannot be used as a file name")
    return name


class HistoryStore:
    """Lists, reads, writes, renames and deletes saved chats below `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def folder(self, mode: str, character: str) -> Path:
        """The folder holding one character's chats in one mode (checked to stay below root)."""
        if mode not in MODES:
            raise HistoryError(f"mode must be one of {', '.join(MODES)}")
        folder = self.root / mode / check_name(character, "character")
        if not folder.resolve().is_relative_to(self.root.resolve()):
            raise HistoryError(f"character {character!r} leads outside the history folder")
        return folder

    def path(self, mode: str, character: str, conversation_id: str) -> Path:
        """The file of one chat."""
        return self.folder(mode, character) / f"{check_name(conversation_id, 'chat name')}.json"

    def list(self, mode: str, character: str) -> HistoryListing:
        """Every readable chat, newest first; unreadable files are named in `problems` and skipped."""
        folder = self.folder(mode, character)
        entries, problems = [], []
        files = sorted(folder.glob("*.json")) if folder.is_dir() else []
        for path in files:
            if path.name.startswith("."):
                continue
            try:
                conversation = self._read(path, mode, character)
            except HistoryError as exc:
                problems.append(f"{path.name}: {exc.message}")
                log.warning("skipping saved chat %s: %s", path, exc.message)
                continue
            entries.append(_entry(conversation))
        entries.sort(key=lambda e: e.updated, reverse=True)
        return HistoryListing(entries, problems)

    def load(self, mode: str, character: str, conversation_id: str) -> Conversation:
        """Read one chat; HistoryError if it is missing or damaged."""
        return self._read(self.path(mode, character, conversation_id), mode, character)

    def latest(self, mode: str, character: str) -> Conversation | None:
        """The most recently saved readable chat, or None."""
        listing = self.list(mode, character)
        for entry in listing.entries:
            try:
                return self.load(mode, character, entry.id)
            except HistoryError:
                continue
        return None

    def save(self, conversation: Conversation) -> Path:
        """Write the chat atomically (temporary file in the same folder, fsync, rename)."""
        path = self.path(conversation.mode, conversation.character, conversation.id)
        conversation.updated = time.time()
        data = json.dumps(conversation.to_dict(), ensure_ascii=False, indent=1)
        atomic_write(path, data)
        return path

    def rename(self, mode: str, character: str, old_id: str, new_id: str) -> None:
        """Give a chat a new name; HistoryError if the name is taken or unusable."""
        source, target = self.path(mode, character, old_id), self.path(mode, character, new_id)
        if not source.is_file():
            raise HistoryError(f"there is no saved chat named {old_id!r}")
        if target.exists():
            raise HistoryError(f"a chat named {new_id!r} already exists")
        os.rename(source, target)

    def delete(self, mode: str, character: str, conversation_id: str) -> None:
        """Delete a chat; HistoryError if there is none of that name."""
        path = self.path(mode, character, conversation_id)
        try:
            path.unlink()
        except FileNotFoundError:
            raise HistoryError(f"there is no saved chat named {conversation_id!r}") from None

    def unused_id(self, mode: str, character: str, wanted: str) -> str:
        """`wanted`, or `wanted-2`, `wanted-3`... whichever has no file yet."""
        candidate, n = wanted, 1
        while self.path(mode, character, candidate).exists():
            n += 1
            candidate = f"{wanted}-{n}"
        return candidate

    def _read(self, path: Path, mode: str, character: str) -> Conversation:
        try:
            if path.is_symlink() and not path.resolve().is_relative_to(self.root.resolve()):
                raise HistoryError("points outside the history folder")
            if path.stat().st_size > MAX_FILE_BYTES:
                raise HistoryError(f"larger than {MAX_FILE_BYTES // 2**20} MB")
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise HistoryError(f"there is no saved chat named {path.stem!r}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HistoryError(f"damaged ({type(exc).__name__}: {exc})") from None
        return Conversation.from_dict(data, path.stem, mode, character)


def history_store(settings) -> HistoryStore:
    """The store under settings.chat.user_data_dir/history."""
    return HistoryStore(settings.path(settings.chat.user_data_dir) / "history")


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` with `text` so readers see the old or the new content, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _entry(conversation: Conversation) -> HistoryEntry:
    first = next((m["content"] for m in conversation.messages if m["role"] == "user"), "")
    preview = " ".join(first.split())
    preview = preview if len(preview) <= 40 else preview[:39] + "…"
    return HistoryEntry(conversation.id, conversation.updated, len(conversation.messages), preview)
