"""Characters: characters/*.yaml|*.yml|*.json in text-generation-webui's formats (plus Pygmalion/Tavern JSON)."""
from __future__ import annotations

from pathlib import Path

from modules.prompts.files import FileProblem, check_name, discover, read_data
from modules.prompts.types import Character

SUFFIXES = (".yaml", ".yml", ".json")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

# Field names text-generation-webui accepts, in the order it tries them.
_BOT_NAME_KEYS = ("name", "bot", "<|bot|>", "char_name")
_USER_NAME_KEYS = ("your_name", "user", "<|user|>")

# Used in chat modes when characters/ has no Assistant file.
BUILTIN_ASSISTANT = Character(
    name="AI",
    greeting="Hello! What can I do for you?",
    context="The following is a conversation between a curious user and a helpful, knowledgeable AI assistant.",
    picture=None,
)


def load_characters(folder: Path) -> tuple[dict[str, Character], list[str]]:
    """Read every character in `folder`: file stem -> Character, plus one problem message per unusable file."""
    characters: dict[str, Character] = {}
    files, problems = discover(folder, SUFFIXES)
    for stem, path in files.items():
        try:
            characters[stem] = parse_character(read_data(path), path)
        except FileProblem as exc:
            problems.append(str(exc))
    return characters, problems


def parse_character(data: object, path: Path) -> Character:
    """Build a Character from parsed file data; FileProblem naming the file if it is not a character."""
    where = f"{path.parent.name}/{path.name}"
    if isinstance(data, dict) and isinstance(data.get("data"), dict) and "first_mes" in data["data"]:
        data = data["data"]  # Tavern card v2 keeps its fields under "data"
    if not isinstance(data, dict):
        raise FileProblem(f"{where}: is not a character (expected a mapping with name, greeting and context)")
    name = _first_text(data, _BOT_NAME_KEYS) or path.stem
    if "context" in data:
        context, greeting = _text(data, "context", where), _text(data, "greeting", where)
    elif "char_persona" in data:  # Pygmalion-style JSON, as text-generation-webui reads it
        context, greeting = _pygmalion_context(data, name, where), _text(data, "char_greeting", where)
    elif "first_mes" in data:  # TavernAI card JSON
        context, greeting = _tavern_context(data, name, where), _text(data, "first_mes", where)
    else:
        context, greeting = "", _text(data, "greeting", where)
    example = _text(data, "example_dialogue", where) or _text(data, "mes_example", where)
    return Character(
        name=name,
        greeting=greeting,
        context=context.strip(),
        picture=_picture(data, path),
        example_dialogue=example.strip(),
        user_name=_first_text(data, _USER_NAME_KEYS),
    )


def replace_names(text: str, name1: str, name2: str) -> str:
    """Substitute {{user}}/{{char}} (and the older <USER>/<BOT>) as text-generation-webui does."""
    text = text.replace("{{user}}", name1).replace("{{char}}", name2)
    return text.replace("<USER>", name1).replace("<BOT>", name2)


def _pygmalion_context(data: dict, name: str, where: str) -> str:
    lines = []
    if persona := _text(data, "char_persona", where):
        lines.append(f"{name}'s Persona: {persona}")
    if scenario := _text(data, "world_scenario", where):
        lines.append(f"Scenario: {scenario}")
    return "\n".join(lines)


def _tavern_context(data: dict, name: str, where: str) -> str:
    lines = []
    if description := _text(data, "description", where):
        lines.append(description)
    if personality := _text(data, "personality", where):
        lines.append(f"{name}'s Personality: {personality}")
    if scenario := _text(data, "scenario", where):
        lines.append(f"Scenario: {scenario}")
    return "\n".join(lines)


def _text(data: dict, key: str, where: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise FileProblem(f"{where}: '{key}' must be text")
    return value


def _first_text(data: dict, keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = data.get(key)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    return None


def _picture(data: dict, path: Path) -> Path | None:
    """The character's picture: a `picture` file named in the data, else <stem>.png/.jpg/.jpeg/.webp."""
    root = path.parent.resolve()
    named = data.get("picture")
    candidates = [path.parent / named] if check_name(named) else []
    candidates += [path.with_suffix(suffix) for suffix in PICTURE_SUFFIXES]
    for candidate in candidates:
        if candidate.is_file() and candidate.resolve().is_relative_to(root):
            return candidate
    return None
