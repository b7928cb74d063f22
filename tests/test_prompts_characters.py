"""Characters: the shipped ones, text-generation-webui's YAML and JSON files unchanged, pictures, broken files."""
import json
from pathlib import Path

import pytest

from modules.errors import CharacterNotFound
from modules.prompts import ModelPromptInfo, PromptOptions, PromptStore

ROOT = Path(__file__).resolve().parent.parent
MODEL = ModelPromptInfo("some-model", None, "<s>", "</s>", context_length=0)

# A character file as text-generation-webui users write them (block scalars, {{char}}/{{user}}, your_name).
TGW_YAML = """\
name: Marisol
your_name: Captain
greeting: |-
  *Marisol salutes.* Ready when you are, {{user}}.
context: |
  {{char}} is the first mate of a small sailing ship. {{char}} is loyal to {{user}} and speaks like a sailor.
"""

# text-generation-webui's JSON (Pygmalion-style) character format.
TGW_JSON = {
    "char_name": "Orin",
    "char_persona": "Orin is a retired lighthouse keeper who collects sea glass.",
    "char_greeting": "Ah, a visitor! Mind the stairs.",
    "world_scenario": "A stormy evening in the lighthouse.",
    "example_dialogue": "{{user}}: What's that?\n{{char}}: Green sea glass, from a bottle older than me.",
}


@pytest.fixture
def chars(tmp_path):
    folder = tmp_path / "characters"
    folder.mkdir()
    return folder


def store_for(folder: Path) -> PromptStore:
    return PromptStore(ROOT / "instruction-templates", folder, ROOT / "models" / "config.yaml")


def test_shipped_characters():
    store = store_for(ROOT / "characters")
    assert {"Assistant", "Example"} <= set(store.character_names())
    assistant = store.load_character("Assistant")
    assert assistant.name and assistant.greeting and assistant.context
    example = store.load_character("Example")
    assert "{{char}}" in example.context and example.example_dialogue
    assert example.picture == ROOT / "characters" / "Example.png"
    assert example.picture.read_bytes().startswith(b"\x89PNG")
    assert store.problems() == []


def test_example_renders_with_names_substituted():
    store = store_for(ROOT / "characters")
    result = store.render([{"role": "user", "content": "Hi!"}], PromptOptions(mode="chat", character="Example"), MODEL)
    assert "{{" not in result.text and "Ember is a cheerful tinkerer" in result.text
    assert "You: Why does the lantern flicker?" in result.text  # example dialogue follows the context
    assert result.text.endswith("You: Hi!\nEmber:")


def test_tgw_yaml_character_works_unchanged(chars):
    (chars / "Marisol.yaml").write_text(TGW_YAML, encoding="utf-8")
    store = store_for(chars)
    character = store.load_character("Marisol")
    assert character.name == "Marisol" and character.user_name == "Captain"
    result = store.render([{"role": "user", "content": "Status?"}], PromptOptions(mode="chat", character="Marisol"), MODEL)
    assert result.text == (
        "Marisol is the first mate of a small sailing ship. Marisol is loyal to Captain and speaks like a sailor.\n\n"
        "Marisol: *Marisol salutes.* Ready when you are, Captain.\n"
        "Captain: Status?\n"
        "Marisol:"
    )


def test_tgw_json_character(chars):
    (chars / "Orin.json").write_text(json.dumps(TGW_JSON), encoding="utf-8")
    character = store_for(chars).load_character("Orin")
    assert character.name == "Orin"
    assert character.greeting == "Ah, a visitor! Mind the stairs."
    assert character.context == (
        "Orin's Persona: Orin is a retired lighthouse keeper who collects sea glass.\n"
        "Scenario: A stormy evening in the lighthouse."
    )
    assert character.example_dialogue.startswith("{{user}}: What's that?")


def test_tavern_card_json(chars):
    card = {"spec": "chara_card_v2", "data": {"name": "Vex", "description": "A sly fox.", "personality": "curious",
                                              "scenario": "", "first_mes": "Psst.", "mes_example": ""}}
    (chars / "Vex.json").write_text(json.dumps(card), encoding="utf-8")
    character = store_for(chars).load_character("Vex")
    assert (character.name, character.greeting) == ("Vex", "Psst.")
    assert character.context == "A sly fox.\nVex's Personality: curious"


def test_name_defaults_to_file_stem_and_picture_by_stem(chars):
    (chars / "Nameless.yml").write_text("greeting: hi\ncontext: ctx\n", encoding="utf-8")
    (chars / "Nameless.jpg").write_bytes(b"\xff\xd8\xff")
    character = store_for(chars).load_character("Nameless")
    assert character.name == "Nameless" and character.picture == chars / "Nameless.jpg"


def test_picture_outside_folder_is_ignored(chars, tmp_path):
    (tmp_path / "secret.png").write_bytes(b"x")
    (chars / "Sneaky.yaml").write_text("name: S\ncontext: c\npicture: ../secret.png\n", encoding="utf-8")
    assert store_for(chars).load_character("Sneaky").picture is None


def test_broken_character_files_are_reported_and_the_rest_load(chars):
    (chars / "Good.yaml").write_text("name: Good\ngreeting: hi\ncontext: c\n", encoding="utf-8")
    (chars / "Broken.yaml").write_text("name: [oops\n", encoding="utf-8")
    (chars / "List.yaml").write_text("- a\n- b\n", encoding="utf-8")
    (chars / "BadJson.json").write_text("{not json", encoding="utf-8")
    (chars / "WrongType.yaml").write_text("name: X\ncontext: [1, 2]\n", encoding="utf-8")
    store = store_for(chars)
    assert store.character_names() == ["Good"]
    problems = "\n".join(store.problems())
    for name in ("Broken.yaml", "List.yaml", "BadJson.json", "WrongType.yaml"):
        assert name in problems


def test_unknown_character(chars):
    store = store_for(chars)
    with pytest.raises(CharacterNotFound) as err:
        store.load_character("Nobody")
    assert err.value.param == "character"
    with pytest.raises(CharacterNotFound):
        store.render([{"role": "user", "content": "x"}], PromptOptions(mode="chat", character="Nobody"), MODEL)


def test_builtin_assistant_when_folder_is_empty(chars):
    result = store_for(chars).render([{"role": "user", "content": "Hi"}], PromptOptions(mode="chat"), MODEL)
    assert result.text.endswith("You: Hi\nAI:")
