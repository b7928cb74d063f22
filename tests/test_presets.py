"""modules.presets: text-generation-webui's flat YAML presets, the shipped ones, saving, stop-string parsing."""
from __future__ import annotations

import pytest

from conftest import ROOT

from modules.errors import InvalidParameter
from modules.presets import (
    PresetError,
    load_preset,
    parse_preset,
    parse_stop_strings,
    preset_names,
    sampling_params,
    save_preset,
)

PRESETS = ROOT / "presets"


def test_shipped_presets_load():
    names = preset_names(PRESETS)
    assert {"Default", "Deterministic", "Creative"} <= set(names)
    for name in names:
        preset = load_preset(PRESETS, name)
        assert preset.ignored == ()
        preset.sampling().validate()
    assert load_preset(PRESETS, "Deterministic").sampling().greedy
    creative, default = load_preset(PRESETS, "Creative").sampling(), load_preset(PRESETS, "Default").sampling()
    assert creative.temperature > default.temperature == 1.0 and not default.greedy


def test_text_generation_webui_presets_load_unchanged(tmp_path):
    enigma_yaml = "temperature: 0.98\ntop_p: 0.37\nrepetition_penalty: 1.18\ntop_k: 100\n"
    (tmp_path / "Midnight Enigma.yaml").write_text(enigma_yaml)
    (tmp_path / "Debug-deterministic.yaml").write_text("do_sample: False\n")
    (tmp_path / "tfs-with-top-a.yaml").write_text("temperature: 0.7\ntfs: 0.95\ntop_a: 0.2\nrepetition_penalty: 1.15\n")
    enigma = load_preset(tmp_path, "Midnight Enigma").sampling(seed=5)
    assert (enigma.temperature, enigma.top_p, enigma.top_k, enigma.repetition_penalty) == (0.98, 0.37, 100, 1.18)
    assert enigma.seed == 5 and isinstance(enigma.top_k, int)
    assert load_preset(tmp_path, "Debug-deterministic").sampling().greedy
    tfs = load_preset(tmp_path, "tfs-with-top-a")
    assert tfs.ignored == ("tfs", "top_a") and tfs.values["temperature"] == 0.7


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"temperature": "hot"}, "temperature must be a number"),
        ({"top_p": 1.5}, "top_p must be in"),
        ({"temperature": -1}, "temperature must be in"),
        ([1, 2], "mapping"),
    ],
)
def test_bad_presets_name_the_problem(data, fragment):
    with pytest.raises(PresetError, match=fragment):
        parse_preset("bad", data)


def test_unreadable_and_missing_presets(tmp_path):
    (tmp_path / "broken.yaml").write_text("temperature: [1,\n")
    with pytest.raises(PresetError, match="broken.yaml"):
        load_preset(tmp_path, "broken")
    with pytest.raises(PresetError, match="no preset named"):
        load_preset(tmp_path, "../presets/Default")
    assert preset_names(tmp_path / "missing") == []


def test_save_preset_round_trip(tmp_path):
    values = {"temperature": 0.5, "top_k": 40.0, "min_p": 0.1, "unrelated": 3}
    path = save_preset(tmp_path, "Mine", values)
    assert path == tmp_path / "Mine.yaml" and "unrelated" not in path.read_text()
    loaded = load_preset(tmp_path, "Mine")
    assert dict(loaded.values) == {"temperature": 0.5, "top_k": 40, "min_p": 0.1}
    for bad in ("../evil", ".hidden", "", "a/b"):
        with pytest.raises(PresetError):
            save_preset(tmp_path, bad, values)
    with pytest.raises(PresetError, match="top_p"):
        save_preset(tmp_path, "Bad", {"top_p": 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Mine.yaml"]


def test_sampling_params_seed_and_validation():
    assert sampling_params({"temperature": 0.7}, -1).seed is None
    assert sampling_params({"temperature": 0.7}, 42).seed == 42
    with pytest.raises(InvalidParameter, match="min_p"):
        sampling_params({"min_p": 2})


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", ()),
        ('"\\n", "###"', ("\n", "###")),
        ("'You:', 'AI:'", ("You:", "AI:")),
        ("###\nEND", ("###", "END")),
    ],
)
def test_stop_strings(text, expected):
    assert parse_stop_strings(text) == expected


def test_bad_stop_strings():
    with pytest.raises(InvalidParameter, match="quoted"):
        parse_stop_strings('"unclosed')
    with pytest.raises(InvalidParameter, match="strings"):
        parse_stop_strings('"a", 1')
