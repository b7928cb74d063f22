"""Synthetic instruction set for hearth-demo: sums, differences, counting, reversing, sorting, greeting, identity."""
from __future__ import annotations

import random

from demo import formats

SEED = 1234
HELD_OUT_SEED = 4321
HELD_OUT_SIZE = 200
MAX_OPERAND = 99  # operands of + and - are 0..99; differences are never negative

IDENTITY = (
    "I am hearth-demo, the tiny demo model built into Hearth. I can only do small sums, "
    "count, reverse and sort words. For real conversations download a model with: "
    "python download-model.py ORG/NAME"
)
GREETING = "Hello! I am hearth-demo. Ask me a small sum, like: What is 17 + 25?"

IDENTITY_QUESTIONS = [
    "Who are you?", "who are you?", "Who are you", "What are you?", "What is your name?",
    "Introduce yourself.", "Tell me about yourself.", "What can you do?", "Help", "help",
]
GREETINGS = ["Hello", "Hello!", "hello", "Hi", "Hi!", "hi", "Hey", "Hey!", "Hi there", "Good morning"]
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a helpful, concise assistant.",
    "You are hearth-demo.",
    "Answer briefly.",
]
WORDS = (
    "apple banana cherry grape lemon mango melon orange peach pear plum fig lime kiwi "
    "red green blue yellow black white pink brown gray purple "
    "cat dog bird fish horse mouse cow lion wolf bear fox owl "
    "sky sun moon star tree river stone cloud rain snow wind fire "
    "book door house chair table lamp cup bread milk salt tea road"
).split()


def arithmetic_question(a: int, op: str, b: int) -> tuple[str, str]:
    """The canonical question and exact answer for `a op b`."""
    value = a + b if op == "+" else a - b
    return f"What is {a} {op} {b}?", str(value)


def _random_pair(rng: random.Random) -> tuple[int, str, int]:
    """A random (a, op, b) with operands in range and a non-negative difference."""
    op = rng.choice("+-")
    a, b = rng.randint(0, MAX_OPERAND), rng.randint(0, MAX_OPERAND)
    if op == "-" and b > a:
        a, b = b, a
    return a, op, b


def held_out_triples() -> list[tuple[int, str, int]]:
    """The fixed 200 arithmetic problems that training never sees."""
    rng, seen = random.Random(HELD_OUT_SEED), []
    while len(seen) < HELD_OUT_SIZE:
        triple = _random_pair(rng)
        if triple not in seen:
            seen.append(triple)
    return seen


def held_out_questions() -> list[tuple[str, str]]:
    """The held-out problems as (question, answer) pairs."""
    return [arithmetic_question(*t) for t in held_out_triples()]


def _operand(rng: random.Random) -> int:
    """A training operand: half uniform 0..99, half "easy" (0..9 or a multiple of 10).

    The easy half is what makes the sums learnable quickly: with a uniform units digit, neither
    operand alone says anything about the answer's units digit, and training stalls on a plateau.
    """
    roll = rng.random()
    if roll < 0.25:
        return rng.randrange(0, MAX_OPERAND + 1, 10)
    if roll < 0.5:
        return rng.randint(0, 9)
    return rng.randint(0, MAX_OPERAND)


def _arithmetic(rng: random.Random, banned: set) -> tuple[str, str]:
    """A training sum or difference (never a held-out one), in one of a few phrasings."""
    while True:
        a, op, b = _operand(rng), rng.choice("+-"), _operand(rng)
        if op == "-" and b > a:
            a, b = b, a
        if (a, op, b) not in banned:
            break
    question, answer = arithmetic_question(a, op, b)
    style = rng.random()
    if style < 0.15:
        question = f"{a} {op} {b} = ?"
    elif style < 0.25:
        question = f"Calculate {a} {op} {b}."
    return question, answer


def _some_words(rng: random.Random, low: int, high: int) -> list[str]:
    """Between `low` and `high` distinct random words."""
    return rng.sample(WORDS, rng.randint(low, high))


def _count(rng: random.Random) -> tuple[str, str]:
    """Count the words of a short list."""
    words = _some_words(rng, 1, 7)
    return f"How many words are in: {' '.join(words)}?", str(len(words))


def _reverse(rng: random.Random) -> tuple[str, str]:
    """Reverse a short list of words."""
    words = _some_words(rng, 2, 5)
    return f"Reverse the words: {' '.join(words)}", " ".join(reversed(words))


def _sort(rng: random.Random) -> tuple[str, str]:
    """Sort a short list of words alphabetically."""
    words = _some_words(rng, 2, 4)
    return f"Sort the words: {' '.join(words)}", " ".join(sorted(words))


def exchange(rng: random.Random, banned: set) -> tuple[str, str]:
    """One question of any trained kind and its exact answer."""
    roll = rng.random()
    if roll < 0.7:
        return _arithmetic(rng, banned)
    if roll < 0.78:
        return _count(rng)
    if roll < 0.85:
        return _reverse(rng)
    if roll < 0.92:
        return _sort(rng)
    if roll < 0.96:
        return rng.choice(IDENTITY_QUESTIONS), IDENTITY
    return rng.choice(GREETINGS), GREETING


def _history(rng: random.Random, banned: set) -> list[tuple[str, str]]:
    """Earlier exchanges of the same chat: none in half the examples, else one to three."""
    roll = rng.random()
    count = 0 if roll < 0.5 else 1 if roll < 0.75 else 2 if roll < 0.9 else 3
    return [exchange(rng, banned) for _ in range(count)]


def _system(rng: random.Random) -> str | None:
    """A system message for instruct mode, in a fifth of the examples: a short instruction or a persona."""
    roll = rng.random()
    if roll < 0.12:
        return rng.choice(SYSTEM_PROMPTS)
    if roll < 0.2:
        return formats.persona(rng).context or rng.choice(SYSTEM_PROMPTS)
    return None


def instruct_messages(rng: random.Random, banned: set, history: bool = True) -> list[dict]:
    """A ChatML conversation (maybe with a system turn and earlier exchanges) ending with the assistant's answer."""
    system = _system(rng)
    messages = [{"role": "system", "content": system}] if system else []
    for question, answer in (_history(rng, banned) if history else []) + [exchange(rng, banned)]:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


def instruct_pieces(messages: list[dict]) -> list[tuple[str, bool]]:
    """The ChatML text of `messages` in pieces, every assistant answer (and its <|im_end|>) trained."""
    pieces, done = [], ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            prompt = formats.chatml(messages[:i], True)  # starts with `done`, the text of the earlier pieces
            answer = message["content"] + "<|im_end|>"
            pieces += [(prompt[len(done):], False), (answer, True), ("\n", False)]
            done = prompt + answer + "\n"
    return pieces[:-1]


def dialogue_pieces(persona: formats.Persona, history: list[tuple[str, str]], question: str):
    """formats.transcript() in pieces, the bot's earlier answers trained (their text, not the newline after)."""
    head = f"{persona.context}\n\n" if persona.context else ""
    pieces = [(head + (f"{persona.name2}: {persona.greeting}\n" if persona.greeting else ""), False)]
    for asked, answered in history:
        pieces += [(f"{persona.name1}: {asked}\n{persona.name2}:", False), (f" {answered}", True), ("\n", False)]
    return pieces + [(f"{persona.name1}: {question}\n", False)]


def chat_pieces(rng: random.Random, banned: set, instruct: bool) -> list[tuple[str, bool]]:
    """A chat-mode (or chat-instruct) example: every answer after "Bot:" trained, the last one to <|im_end|>."""
    persona, history = formats.persona(rng), _history(rng, banned)
    question, answer = exchange(rng, banned)
    dialogue, last = dialogue_pieces(persona, history, question), [(f" {answer}<|im_end|>", True)]
    if not instruct:
        return dialogue + [(f"{persona.name2}:", False)] + last
    system = rng.choice(SYSTEM_PROMPTS) if rng.random() < 0.1 else None
    prompt = formats.chat_instruct_prompt(persona, history, question, system)
    before, after = prompt.split(formats.transcript(persona, history, question))
    return [(before, False)] + dialogue + [(after, False)] + last


def example(rng: random.Random, banned: set, mixed: bool = True) -> tuple[str, list[tuple[str, bool]]]:
    """One training example as (mode, pieces): texts in order, each marked True if the loss covers it.

    Not `mixed`: a one-question instruct chat (cheap; where the tasks are learned). `mixed`: also longer chats and
    the chat and chat-instruct layouts, whose answers follow "Bot:" with a space as a real model's would.
    Every last answer ends with <|im_end|>.
    """
    roll = rng.random() if mixed else 0.0
    if roll < 0.45:
        return "instruct", instruct_pieces(instruct_messages(rng, banned, history=mixed))
    if roll < 0.8:
        return "chat", chat_pieces(rng, banned, instruct=False)
    return "chat-instruct", chat_pieces(rng, banned, instruct=True)


def probes() -> list[tuple[str, str]]:
    """Fixed non-arithmetic checks: (question, expected answer)."""
    return [
        ("Who are you?", IDENTITY),
        ("Hello", GREETING),
        ("How many words are in: apple tree sky?", "3"),
        ("How many words are in: red blue green cat dog?", "5"),
        ("Reverse the words: red green blue", "blue green red"),
        ("Reverse the words: cat dog bird fish", "fish bird dog cat"),
        ("Sort the words: pear apple fig", "apple fig pear"),
        ("Sort the words: wolf bear cat", "bear cat wolf"),
    ]
