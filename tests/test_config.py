"""settings.yaml + CLI overrides -> one frozen Settings."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from modules.config import Settings, load_settings
from modules.errors import SettingsError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, text) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    return path


def test_shipped_settings_load_and_match_defaults():
    settings = load_settings(ROOT / "settings.yaml")
    assert settings.server == Settings().server and settings.model == Settings().model
    assert settings.generation == Settings().generation
    assert settings.extensions["openai"]["debug"] == 0


def test_sections_flat_keys_and_extension_keys(tmp_path):
    path = write(tmp_path, "model:\n  max_batch_size: 4\nmax_new_tokens: 99\nopenai-port: 5123\nmode: chat\n")
    settings = load_settings(path)
    assert settings.model.max_batch_size == 4
    assert settings.generation.max_new_tokens == 99
    assert settings.chat.mode == "chat"
    assert settings.extensions["openai"]["port"] == 5123


def test_cli_overrides_win(tmp_path):
    path = write(tmp_path, "server:\n  api_port: 6000\n")
    settings = load_settings(path, {"server.api_port": 7000, "extensions.openai.debug": 1})
    assert settings.server.api_port == 7000 and settings.extensions["openai"]["debug"] == 1


def test_settings_are_immutable():
    settings = load_settings(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.server.api_port = 1
    with pytest.raises(TypeError):
        settings.extensions["x"] = {}


@pytest.mark.parametrize(
    "text, message",
    [
        ("server:\n  api_port: lots\n", "server.api_port"),
        ("model:\n  max_batch_sise: 4\n", "max_batch_sise"),
        ("server: [1, 2]\n", "must be a mapping"),
        ("a: [unclosed\n", "invalid YAML"),
        ("- just\n- a list\n", "mapping"),
    ],
)
def test_invalid_settings_name_the_problem(tmp_path, text, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(write(tmp_path, text))


def test_unknown_flat_keys_are_ignored_with_a_warning(tmp_path, caplog):
    settings = load_settings(write(tmp_path, "show_controls: true\n"))
    assert settings.server.api_port == 5000 and "show_controls" in caplog.text


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "nope.yaml")


def test_host_is_loopback_unless_listen():
    assert load_settings(None).server.host == "127.0.0.1"
    assert load_settings(None, {"server.listen": True}).server.host == "0.0.0.0"
    assert load_settings(None, {"server.listen_host": "10.0.0.2"}).server.host == "10.0.0.2"
