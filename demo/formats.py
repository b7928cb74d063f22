"""The prompt layouts hearth-demo is trained on: exactly what Hearth renders for it in its three modes.

- instruct: the model's own ChatML template over the messages;
- chat: the character's context, then "Name: text" lines, ending with "Bot:" (text-generation-webui's layout);
- chat-instruct: that dialogue wrapped in ChatML by the chat-instruct command, the reply opened with "Bot:".

tests/test_demo_model.py checks these against Hearth's own renderer, so the two cannot drift apart silently.
"""
from __future__ import annotations

import functools
import random
from pathlib import Path

from modules.prompts.characters import parse_character, replace_names
from modules.prompts.chat import Persona
from modules.prompts.files import read_data
from modules.prompts.types import DEFAULT_CHAT_INSTRUCT_COMMAND, Character

ROOT = Path(__file__).resolve().parent.parent
# The names and sentences random characters are made of, so the model learns to look past any persona.
BOT_NAMES = ["AI", "Assistant", "Bot", "Ember", "Sam", "Luna", "Max", "Nova", "Iris", "Otto", "Kai", "Hearth"]
USER_NAMES = ["You", "User", "Alex", "Anon", "Kim", "Jo", "Ravi", "Mia"]
TRAITS = ["cheerful", "patient", "curious", "calm", "friendly", "clever", "kind", "quiet", "helpful", "brave"]
ROLES = ["assistant", "teacher", "robot", "librarian", "baker", "sailor", "tinkerer", "gardener", "wizard", "guide"]
HABITS = [
    "loves numbers", "answers briefly", "likes to help {{user}}", "speaks plainly", "knows a lot about words",
    "lives in a small village", "enjoys puzzles", "is always polite", "works in a quiet workshop",
]
GREETINGS = ["Hello! What can I do for you?", "Hi {{user}}! Ask me anything.", "Welcome back.", "Good day to you.",
             "*waves* Hello there!", "Ready when you are."]  # fmt: skip


def chatml(messages: list[dict], add_generation_prompt: bool) -> str:
    """ChatML, identical to the model's chat_template.jinja (train.check_tokenizer checks it)."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def transcript(persona: Persona, exchanges: list[tuple[str, str]], question: str) -> str:
    """The chat-mode dialogue: context, the greeting, past exchanges and the question, without the "Bot:" cue."""
    lines = [f"{persona.name2}: {persona.greeting}\n"] if persona.greeting else []
    for asked, answered in exchanges:
        lines += [f"{persona.name1}: {asked}\n", f"{persona.name2}: {answered}\n"]
    lines.append(f"{persona.name1}: {question}\n")
    head = f"{persona.context}\n\n" if persona.context else ""
    return head + "".join(lines)


def chat_prompt(persona: Persona, exchanges: list[tuple[str, str]], question: str) -> str:
    """The whole chat-mode prompt; the model answers after "Bot:" (with a leading space, as real models do)."""
    return transcript(persona, exchanges, question) + f"{persona.name2}:"


def chat_instruct_prompt(persona: Persona, exchanges: list[tuple[str, str]], question: str,
                         system: str | None = None) -> str:  # fmt: skip
    """The chat-instruct prompt: the dialogue inside the command, as a ChatML user turn; the reply opens "Bot:"."""
    command = persona.command.replace("<|character|>", persona.name2)
    command = command.replace("<|prompt|>", transcript(persona, exchanges, question))
    outer = [{"role": "system", "content": system}] if system else []
    return chatml(outer + [{"role": "user", "content": command}], True) + f"{persona.name2}:"


@functools.lru_cache(maxsize=None)
def _shipped_character(stem: str) -> Character:
    """A character file in characters/, parsed by Hearth (read once, not once per training example)."""
    path = ROOT / "characters" / f"{stem}.yaml"
    return parse_character(read_data(path), path)


def _persona(name1: str, name2: str, context: str, greeting: str) -> Persona:
    """Hearth's Persona with {{user}}/{{char}} replaced, no user bio and the default chat-instruct command."""
    return Persona(name1, name2, replace_names(context, name1, name2), replace_names(greeting, name1, name2).strip(),
                   "", DEFAULT_CHAT_INSTRUCT_COMMAND)  # fmt: skip


def shipped_persona(stem: str, name1: str = "You") -> Persona:
    """A character shipped in characters/, its example dialogue after the context as Hearth puts it."""
    character = _shipped_character(stem)
    context = character.context
    if character.example_dialogue:
        context = f"{context}\n\n{character.example_dialogue}".strip()
    return _persona(name1, character.name, context, character.greeting)


def random_persona(rng: random.Random) -> Persona:
    """A made-up character: a name pair, one to three sentences of context, usually a greeting."""
    name1, name2 = rng.choice(USER_NAMES), rng.choice(BOT_NAMES)
    sentences = [f"{{{{char}}}} is a {rng.choice(TRAITS)} {rng.choice(ROLES)} who {rng.choice(HABITS)}."
                 for _ in range(rng.randint(0, 3))]  # fmt: skip
    greeting = rng.choice(GREETINGS) if rng.random() < 0.8 else ""
    return _persona(name1, name2, " ".join(sentences), greeting)


def persona(rng: random.Random) -> Persona:
    """Mostly the shipped Assistant (the UI's default), sometimes Example, else a random character."""
    roll = rng.random()
    if roll < 0.4:
        return shipped_persona("Assistant", rng.choice(["You", "You", rng.choice(USER_NAMES)]))
    if roll < 0.5:
        return shipped_persona("Example")
    return random_persona(rng)
