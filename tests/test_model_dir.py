"""Model discovery, loader detection, and names that try to escape the models folder."""
from __future__ import annotations

import json
import os

import pytest

from modules.errors import ModelNotFound
from modules.model_dir import ModelEntry, detect_loader, list_models, resolve_model, safe_child


@pytest.fixture
def model_dir(tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    (root / "hf-model").mkdir()
    (root / "hf-model" / "config.json").write_text("{}")
    (root / "exl2-model").mkdir()
    (root / "exl2-model" / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "exl2"}}))
    (root / "exl2-old").mkdir()
    (root / "exl2-old" / "config.json").write_text("{}")
    (root / "exl2-old" / "measurement.json").write_text("{}")
    (root / "llama-7b.Q4_K_M.gguf").write_bytes(b"GGUF")
    (root / "gguf-folder").mkdir()
    (root / "gguf-folder" / "m.gguf").write_bytes(b"GGUF")
    (root / "notes.txt").write_text("not a model")
    (root / "empty-folder").mkdir()
    (root / "config.yaml").write_text("")
    return root


def test_lists_models_with_loaders(model_dir):
    found = {e.name: e.loader for e in list_models(model_dir)}
    assert found == {
        "hf-model": "transformers",
        "exl2-model": "exllamav2",
        "exl2-old": "exllamav2",
        "llama-7b.Q4_K_M.gguf": "llama.cpp",
        "gguf-folder": "llama.cpp",
    }


def test_builtin_models_listed_last_and_shadowed(model_dir, tmp_path):
    demo = ModelEntry("demo", tmp_path, "transformers", builtin=True)
    shadowed = ModelEntry("hf-model", tmp_path, "transformers", builtin=True)
    names = [e.name for e in list_models(model_dir, (demo, shadowed))]
    assert names[-1] == "demo" and names.count("hf-model") == 1
    assert resolve_model(model_dir, "demo", (demo,)).builtin


def test_detect_loader_none_for_non_models(model_dir):
    assert detect_loader(model_dir / "notes.txt") is None
    assert detect_loader(model_dir / "empty-folder") is None


@pytest.mark.parametrize("name", ["../etc", "..", ".", "/etc/passwd", "a/b", "a\\b", "", "x\x00y", "C:evil"])
def test_traversal_names_refused(model_dir, name):
    with pytest.raises(ModelNotFound):
        resolve_model(model_dir, name)


def test_symlink_pointing_out_refused_and_not_listed(model_dir, tmp_path):
    outside = tmp_path / "outside-model"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    os.symlink(outside, model_dir / "sneaky")
    with pytest.raises(ModelNotFound, match="outside"):
        resolve_model(model_dir, "sneaky")
    assert "sneaky" not in [e.name for e in list_models(model_dir)]


def test_symlink_inside_folder_allowed(model_dir):
    os.symlink(model_dir / "hf-model", model_dir / "alias")
    assert safe_child(model_dir, "alias") == model_dir / "alias"


def test_unknown_and_non_model_names(model_dir):
    with pytest.raises(ModelNotFound, match="not found"):
        resolve_model(model_dir, "missing")
    with pytest.raises(ModelNotFound, match="not a model"):
        resolve_model(model_dir, "notes.txt")
