"""The loader registry: detection, one typed definition of load options (CLI, load API, serving file, docs)."""
from __future__ import annotations

import pytest
import requests

from conftest import ROOT, LiveServer, make_runtime


def test_detection_order(tmp_path, llama_dir):
    from modules.loaders.registry import detect_loader

    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "exl2").mkdir()
    (tmp_path / "exl2" / "config.json").write_text('{"quantization_config": {"quant_method": "exl2"}}')
    (tmp_path / "notes.txt").write_text("hi")
    assert detect_loader(tmp_path / "m.gguf") == "llama.cpp" and detect_loader(tmp_path / "exl2") == "exllamav2"
    assert detect_loader(llama_dir) == "transformers" and detect_loader(tmp_path / "notes.txt") is None


def test_planned_and_unknown_loaders_are_clear_load_errors():
    from modules.errors import ModelLoadError
    from modules.loaders.registry import get_loader_class

    with pytest.raises(ModelLoadError, match="EXL2 models need the ExLlamaV2 loader"):
        get_loader_class("exllamav2")
    with pytest.raises(ModelLoadError, match="available: llama.cpp, transformers"):
        get_loader_class("vllm")
    assert get_loader_class("transformers").name == "transformers"
    assert get_loader_class("llama.cpp").name == "llama.cpp"  # importable without llama_cpp (imported at load)


def test_cli_flags_come_from_the_option_definitions():
    from modules.cli import build_parser, overrides_from_args
    from modules.loaders.registry import LOAD_OPTIONS

    parser = build_parser()
    help_text = parser.format_help()
    for option in LOAD_OPTIONS:
        flag = "--" + option.name.replace("_", "-")
        assert (flag in help_text) == option.flag
    args = parser.parse_args(["--threads", "0", "--max-batch-size", "3", "--dtype", "bfloat16", "--cpu"])
    assert overrides_from_args(args) == {"model.threads": 0, "model.max_batch_size": 3, "model.dtype": "bfloat16",
                                         "model.cpu": True}  # fmt: skip
    with pytest.raises(SystemExit):
        parser.parse_args(["--max-batch-size", "0"])


@pytest.mark.parametrize(
    "args, param",
    [
        ({"max_batch_size": "four"}, "args.max_batch_size"),
        ({"max_batch_size": 0}, "args.max_batch_size"),
        ({"dtype": "float8"}, "args.dtype"),
        ({"cpu": 1}, "args.cpu"),
        ({"loader": "vllm"}, "args.loader"),
    ],
)
def test_load_api_checks_option_types(models_root, args, param):
    from extensions.openai.app import create_app

    runtime = make_runtime(models_root)
    client = create_app(runtime).test_client()
    try:
        response = client.post("/v1/internal/model/load", json={"model_name": "tiny-llama", "args": args})
        assert response.status_code == 400 and response.json["error"]["param"] == param
        assert runtime.models.info is None
    finally:
        runtime.close()


def test_serving_file_options_are_checked():
    from modules.errors import SettingsError
    from modules.serving import parse_serving

    with pytest.raises(SettingsError, match="models.a.max_batch_size must be int"):
        parse_serving({"models": {"a": {"model": "x", "max_batch_size": "8"}}})
    spec = parse_serving({"models": {"a": {"model": "x", "dtype": "float32", "loader": "transformers"}}}).entries[0]
    assert dict(spec.options) == {"dtype": "float32", "loader": "transformers"}


def test_docs_list_every_load_option():
    from modules.loaders.registry import options_markdown

    assert options_markdown() in (ROOT / "docs" / "api.md").read_text(encoding="utf-8")


def test_engine_capabilities_follow_the_registry(api_runtime):
    from modules.errors import InvalidParameter

    caps = api_runtime.pool.default.engine.capabilities
    assert caps.templates and caps.token_ids and caps.logits and caps.prompt_logprobs and caps.max_batch == 8
    refused = type(caps)(logprobs=False)
    with pytest.raises(InvalidParameter) as exc:
        refused.require("logprobs", "logprobs", "logprobs")
    assert exc.value.param == "logprobs" and "not supported" in exc.value.message
