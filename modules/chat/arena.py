"""Side-by-side comparison (Chatbot Arena style): one prompt to two arms of a split, answers shown as model A and
model B with the names hidden until the user votes; the vote goes to the preference log."""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

from modules.chat.session import for_engine
from modules.engine.base import ChatRequest, OutputOptions, SamplerValues
from modules.errors import InvalidParameter

VOTES = {"A is better": "model_a", "B is better": "model_b", "Tie": "tie", "Both are bad": "tie (bothbad)"}


@dataclass
class Battle:
    """One prompt answered by two arms; `arms[0]` is shown as model A."""

    split: str
    arms: tuple[str, str]
    messages: list[dict]
    answers: list[str] = field(default_factory=lambda: ["", ""])
    errors: list[str] = field(default_factory=lambda: ["", ""])
    done: list[bool] = field(default_factory=lambda: [False, False])
    voted: bool = False


def splits(runtime) -> list[str]:
    """Names of the pool's entries that split traffic between arms (those the comparison mode can use)."""
    return [e.name for e in runtime.pool.entries() if getattr(e.spec, "arms", None)]


def start_battle(runtime, split: str, prompt: str, max_tokens: int, sampling: SamplerValues) -> Battle:
    """Two distinct arms of `split`, in random order, each answering `prompt` in its own thread."""
    entry = runtime.pool.find(split)
    arms = [name for name, _ in getattr(entry.spec, "arms", ())] if entry is not None else []
    if len(arms) < 2:
        raise InvalidParameter(f"{split!r} is not an A/B split with two arms", param="split")
    if not prompt.strip():
        raise InvalidParameter("type a prompt to compare", param="prompt")
    pair = random.sample(arms, 2)
    battle = Battle(split, (pair[0], pair[1]), [{"role": "user", "content": prompt}])
    request = ChatRequest(tuple(battle.messages), sampling=sampling, output=OutputOptions(max_tokens=max_tokens))
    for side, arm in enumerate(pair):
        threading.Thread(target=_answer, args=(runtime, battle, side, arm, request), daemon=True).start()
    return battle


def _answer(runtime, battle: Battle, side: int, arm: str, request: ChatRequest) -> None:
    try:
        engine = runtime.pool.route(arm).engine
        gen = engine.chat(for_engine(engine, request, runtime.prompts))
        for delta in gen.handles[0].events():
            if delta is not None and delta.index == 0:
                battle.answers[side] += delta.text
    except Exception as exc:  # shown in the answer's box; the other side keeps going
        battle.errors[side] = getattr(exc, "message", None) or type(exc).__name__
    finally:
        battle.done[side] = True


def follow(battle: Battle, every: float = 0.1) -> Iterator[tuple[str, str]]:
    """Both answers as they grow, until both are complete."""
    while True:
        finished = all(battle.done)
        yield tuple(_shown(battle, side) for side in (0, 1))
        if finished:
            return
        time.sleep(every)


def _shown(battle: Battle, side: int) -> str:
    return battle.answers[side] + (f"\n\n**Error:** {battle.errors[side]}" if battle.errors[side] else "")


def vote(runtime, battle: Battle, label: str) -> str:
    """Record the vote (once per battle); the revealed names as Markdown."""
    if battle.voted:
        raise InvalidParameter("this comparison already has a vote; compare again", param="vote")
    if not all(battle.done) or any(battle.errors):
        raise InvalidParameter("wait until both answers are complete", param="vote")
    log = runtime.pool.preferences
    winner = VOTES[label]
    battle.voted = True
    reveal = f"Model A was **{battle.arms[0]}**, model B was **{battle.arms[1]}**."
    if log is None:
        return reveal + " (Not recorded: the serving file has no `preference_log`.)"
    log.compare(battle.split, battle.messages, battle.arms, (battle.answers[0], battle.answers[1]), winner)
    return reveal + f" Vote recorded: {label}."
