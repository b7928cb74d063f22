"""The preference log: answers served through A/B splits, ratings of them, and side-by-side votes, as JSON lines.

One file (`preference_log:` in the serving file), appended to; nothing is written unless it is configured, since
it holds users' prompts and answers. Three kinds of line:
- {"type": "response", "id", "split", "arm", "model", "messages" | "prompt", "response", "created"}
- {"type": "feedback", "id", "rating": 1 | -1, "created"}
- {"type": "comparison", "id", "split", "messages", "model_a", "model_b", "response_a", "response_b",
   "winner": "model_a" | "model_b" | "tie" | "tie (bothbad)", "created"}  (Chatbot Arena's battle fields)
`pairs()` turns them into TRL's conversational preference format (prompt / chosen / rejected message lists).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from modules.errors import InvalidParameter

log = logging.getLogger(__name__)

WINNERS = ("model_a", "model_b", "tie", "tie (bothbad)")


class PreferenceLog:
    """Appends records to one JSONL file and remembers which response ids it holds."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._ids = {r["id"] for r in self.records() if r.get("type") in ("response", "comparison") and "id" in r}

    def record_response(self, id: str, split: str, arm: str, model: str, request: dict, response: str) -> None:
        """Log one answer served through split `split` by `arm` (`model`: the entry that answered)."""
        self._append({"type": "response", "id": id, "split": split, "arm": arm, "model": model, **request,
                      "response": response})  # fmt: skip

    def feedback(self, id: str, rating: int) -> bool:
        """Record a rating (1 or -1) of a logged response or comparison; False when the id is unknown."""
        if rating not in (1, -1) or isinstance(rating, bool):
            raise InvalidParameter("rating must be 1 or -1", param="rating")
        with self._lock:
            known = id in self._ids
        if known:
            self._append({"type": "feedback", "id": id, "rating": rating})
        return known

    def compare(self, split: str, messages: list[dict], arms: tuple[str, str], responses: tuple[str, str],
                winner: str) -> str:  # fmt: skip
        """Log a side-by-side vote; returns its id."""
        if winner not in WINNERS:
            raise InvalidParameter(f"winner must be one of {', '.join(WINNERS)}", param="winner")
        id = f"cmp-{uuid.uuid4().hex}"
        self._append({"type": "comparison", "id": id, "split": split, "messages": messages, "model_a": arms[0],
                      "model_b": arms[1], "response_a": responses[0], "response_b": responses[1],
                      "winner": winner})  # fmt: skip
        return id

    def records(self) -> Iterator[dict]:
        """Every record in the file (lines that do not parse are skipped with a warning)."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except ValueError:
                log.warning("%s:%d is not a JSON line; skipped", self.path, number)
                continue
            if isinstance(record, dict):
                yield record

    def pairs(self) -> list[dict]:
        """Preference pairs in TRL's conversational format, from votes and from oppositely rated answers."""
        records = list(self.records())
        pairs = [_vote_pair(r) for r in records if r.get("type") == "comparison"]
        return [p for p in pairs if p is not None] + _rating_pairs(records)

    def _append(self, record: dict[str, Any]) -> None:
        record["created"] = int(time.time())
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # prompts are private
            with os.fdopen(fd, "a", encoding="utf-8") as f:
                f.write(line)
            if record["type"] in ("response", "comparison"):
                self._ids.add(record["id"])


def _prompt_messages(record: dict) -> list[dict] | None:
    if isinstance(record.get("messages"), list):
        return record["messages"]
    if isinstance(record.get("prompt"), str):  # a completion: the prompt as one user turn
        return [{"role": "user", "content": record["prompt"]}]
    return None


def _vote_pair(record: dict) -> dict | None:
    winner = record.get("winner")
    if winner not in ("model_a", "model_b"):
        return None  # ties carry no preference
    chosen, rejected = ("response_a", "response_b") if winner == "model_a" else ("response_b", "response_a")
    return {"prompt": record["messages"], "chosen": [{"role": "assistant", "content": record[chosen]}],
            "rejected": [{"role": "assistant", "content": record[rejected]}]}  # fmt: skip


def _rating_pairs(records: list[dict]) -> list[dict]:
    """Answers to the same prompt rated +1 and -1 make a pair (the latest rating of each answer counts)."""
    ratings = {r["id"]: r["rating"] for r in records if r.get("type") == "feedback" and "id" in r}
    by_prompt: dict[str, tuple[list, list, list]] = {}
    for r in records:
        if r.get("type") != "response" or r.get("id") not in ratings:
            continue
        messages = _prompt_messages(r)
        if messages is None:
            continue
        key = json.dumps(messages, sort_keys=True)
        good, bad, _ = by_prompt.setdefault(key, ([], [], messages))
        (good if ratings[r["id"]] > 0 else bad).append(r["response"])
    pairs = []
    for good, bad, messages in by_prompt.values():
        for chosen, rejected in zip(good, bad):
            pairs.append({"prompt": messages, "chosen": [{"role": "assistant", "content": chosen}],
                          "rejected": [{"role": "assistant", "content": rejected}]})  # fmt: skip
    return pairs
