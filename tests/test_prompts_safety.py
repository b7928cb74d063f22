"""Hostile templates and names: sandbox escapes fail with a clear TemplateError, names never leave their folders."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modules.errors import CharacterNotFound, TemplateError, TemplateNotFound
from modules.prompts import ModelPromptInfo, PromptOptions, PromptStore

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = [{"role": "user", "content": "hi"}]
MODEL = ModelPromptInfo("m", None, "<s>", "</s>", context_length=0)

ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ raise_exception.__globals__['__builtins__'] }}",
    "{{ cycler.__init__.__globals__.os.system('touch PWNED') }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ strftime_now.__code__ }}",
    "{{ '{0.__class__.__mro__}'.format('') }}",
    "{{ messages[0].__class__.__init__.__globals__ }}",
    "{% set ns = namespace(_secret=1) %}{{ ns }}",
    "{{ messages.append({'role': 'user', 'content': 'injected'}) }}",
    "{{ messages[0].update({'content': 'changed'}) }}",
]

EXHAUSTION = [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ 'x' * 1000000000 }}",
    "{{ [1] * 100000000 }}",
    "{{ 10 ** 1000000 }}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
]


@pytest.fixture(scope="module")
def store():
    return PromptStore(ROOT / "instruction-templates", ROOT / "characters", ROOT / "models" / "config.yaml")


@pytest.mark.parametrize("source", ESCAPES)
def test_attribute_walks_fail_clearly(store, source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(TemplateError) as err:
        store.render(messages, PromptOptions(instruction_template_str=source), MODEL)
    assert err.value.param == "instruction_template_str"
    assert "template" in err.value.message
    assert not (tmp_path / "PWNED").exists()
    assert messages == [{"role": "user", "content": "hi"}]  # the caller's data is untouched


@pytest.mark.parametrize("source", EXHAUSTION)
def test_resource_exhaustion_is_stopped(store, source):
    started = time.monotonic()
    with pytest.raises(TemplateError):
        store.render(MESSAGES, PromptOptions(instruction_template_str=source), MODEL)
    assert time.monotonic() - started < 5


def test_hostile_model_template(store):
    model = ModelPromptInfo("m", ESCAPES[0], "<s>", "</s>")
    with pytest.raises(TemplateError, match="may not do"):
        store.render(MESSAGES, PromptOptions(), model)


def test_hostile_chat_template_string(store):
    with pytest.raises(TemplateError) as err:
        store.render(MESSAGES, PromptOptions(mode="chat", chat_template_str=ESCAPES[0]), MODEL)
    assert err.value.param == "chat_template_str"


def test_syntax_error_names_the_line(store):
    with pytest.raises(TemplateError) as err:
        store.render(MESSAGES, PromptOptions(instruction_template_str="ok\n{% if %}"), MODEL)
    assert "line 2" in err.value.message and err.value.param == "instruction_template_str"


def test_hostile_template_file_fails_at_render_not_load(tmp_path):
    (tmp_path / "Evil.jinja").write_text(ESCAPES[0], encoding="utf-8")
    (tmp_path / "Fine.jinja").write_text("{{ messages[0]['content'] }}", encoding="utf-8")
    store = PromptStore(tmp_path, tmp_path / "none", tmp_path / "none.yaml")
    assert store.template_names() == ["Evil", "Fine"]
    with pytest.raises(TemplateError):
        store.render(MESSAGES, PromptOptions(instruction_template="Evil"), MODEL)
    assert store.render(MESSAGES, PromptOptions(instruction_template="Fine"), MODEL).text == "hi"


def test_names_with_content_are_data_not_code(store):
    options = PromptOptions(mode="chat", name1="{{ ''.__class__ }}", name2="{% raw %}", context="{{ 7*7 }}")
    result = store.render(MESSAGES, options, MODEL)
    assert "{{ ''.__class__ }}: hi" in result.text and "{{ 7*7 }}" in result.text and "49" not in result.text


BAD_NAMES = ["../Alpaca", "..", "/etc/passwd", "..\\Alpaca", "sub/Alpaca", "Alpaca\x00", "", ".hidden", None, 3]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_template_names_never_leave_the_folder(store, name):
    with pytest.raises(TemplateNotFound):
        store.load_template(name)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_character_names_never_leave_the_folder(store, name):
    with pytest.raises(CharacterNotFound):
        store.load_character(name)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlinks_out_of_the_folder_are_skipped(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "Secret.yaml").write_text("instruction_template: secret\n", encoding="utf-8")
    (outside / "Spy.yaml").write_text("name: Spy\ncontext: secret\n", encoding="utf-8")
    templates, characters = tmp_path / "templates", tmp_path / "characters"
    templates.mkdir()
    characters.mkdir()
    try:
        (templates / "Secret.yaml").symlink_to(outside / "Secret.yaml")
        (characters / "Spy.yaml").symlink_to(outside / "Spy.yaml")
    except OSError:
        pytest.skip("symlinks not permitted here")
    store = PromptStore(templates, characters, tmp_path / "none.yaml")
    assert store.template_names() == [] and store.character_names() == []
    assert any("Secret.yaml" in p and "outside" in p for p in store.problems())
    with pytest.raises(TemplateNotFound):
        store.load_template("Secret")


def test_broken_guess_table_is_reported(tmp_path):
    (tmp_path / "config.yaml").write_text(
        ".*good:\n  instruction_template: ChatML\n'(unclosed':\n  instruction_template: Alpaca\n", encoding="utf-8"
    )
    store = PromptStore(ROOT / "instruction-templates", tmp_path, tmp_path / "config.yaml")
    assert store.guess_template("good-model") == "ChatML"
    assert any("config.yaml" in p and "(unclosed" in p for p in store.problems())


def test_imports_without_torch():
    code = ("import sys; import modules.prompts; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
