"""What Hearth knows about each loader, in one place: how it recognises its models, its options, its capabilities.

The CLI flags, the load API's `args`, the serving file's entry options, the UI's Model tab fields and docs/api.md's
option table are all derived from LOAD_OPTIONS; the models folder is sorted by LOADERS' `detect`; nothing outside
this module compares loader names. Imports nothing heavy (server.py --help reads it).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from modules.errors import InvalidParameter, ModelLoadError

DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class LoadOption:
    """One load option: its type, choices, lower bound and help text (its default is settings.yaml's model section)."""

    name: str
    kind: type  # bool, int or str
    help: str
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    flag: bool = True  # a server.py flag (--name-with-dashes)
    ui: bool = True  # a field in the UI's Model tab

    def check(self, value: Any, param: str) -> Any:
        """`value` if it has this option's type and range; InvalidParameter naming `param` otherwise."""
        ok = isinstance(value, self.kind) and not (self.kind is int and isinstance(value, bool))
        if not ok:
            raise InvalidParameter(f"{param} must be {self.kind.__name__}, got {value!r}", param=param)
        if self.choices and value not in self.choices:
            raise InvalidParameter(f"{param} must be one of {', '.join(self.choices)}, got {value!r}", param=param)
        if self.minimum is not None and value < self.minimum:
            raise InvalidParameter(f"{param} must be at least {self.minimum}, got {value}", param=param)
        return value


LOAD_OPTIONS = (
    LoadOption("dtype", str, "weights dtype (auto: float32 on CPU, bf16/fp16 on GPU)", DTYPES),
    LoadOption("cpu", bool, "run on the CPU even if a GPU is present"),
    LoadOption("trust_remote_code", bool, "allow model folders to run their own code"),
    LoadOption("threads", int, "CPU threads: torch's, or llama.cpp's for GGUF (0 = all cores)", minimum=0),
    LoadOption("adapt_threads", bool, "on CPU: fewer threads while other work holds some cores", flag=False, ui=False),
    LoadOption("max_batch_size", int, "sequences decoded together (default 8)", minimum=1),
    LoadOption("prefill_chunk", int, "prompt tokens prefilled per step", minimum=1, flag=False, ui=False),
    LoadOption("prefix_cache_mb", int, "MB of finished requests' keys/values kept for reuse", minimum=0, flag=False,
               ui=False),  # fmt: skip
    LoadOption("cpu_prepack", bool, "pack linear weights for oneDNN once (CPU)", flag=False, ui=False),
    LoadOption("lean_decode", bool, "Llama-family decode steps without transformers' per-call machinery",
               flag=False, ui=False),  # fmt: skip
    LoadOption("device_map", str, "accelerate's device_map on GPUs (default auto)", flag=False, ui=False),
    LoadOption("ctx_size", int, "llama.cpp: KV cache tokens, shared by the sequences decoded together (0 = the "
               "model's context, at most 8192)", minimum=0),  # fmt: skip
    LoadOption("gpu_layers", int, "llama.cpp: layers offloaded to a GPU (-1 = all; needs a GPU build)", minimum=-1),
    LoadOption("flash_attn", str, "llama.cpp: flash attention", ("auto", "on", "off")),
    LoadOption("cache_type", str, "llama.cpp: K/V cache type (quantized V needs flash attention)",
               ("f16", "bf16", "f32", "q8_0", "q4_0")),  # fmt: skip
    LoadOption("no_mmap", bool, "llama.cpp: read the weights into memory instead of mapping the file"),
    LoadOption("mlock", bool, "llama.cpp: lock the weights in RAM (never swapped out)"),
)
OPTIONS_BY_NAME = {o.name: o for o in LOAD_OPTIONS}


@dataclass(frozen=True)
class LoaderSpec:
    """A loader: its name, where its class lives, which models are its, what it can do."""

    name: str
    target: str  # "module:Class", imported only when a model of this kind is loaded
    detect: Callable[[Path], bool]  # True for a models-folder entry of this kind
    capabilities: frozenset[str]  # names of modules.engine.base.Capabilities' flags the loader supports
    missing: str = ""  # why it cannot load yet (a planned loader); "" when it can
    check: Callable[[Path], None] | None = None  # quick checks of a folder before loading (ModelLoadError)


def _is_gguf(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".gguf"
    return path.is_dir() and any(path.glob("*.gguf"))


def _is_exl2(path: Path) -> bool:
    from modules.loaders.hf_files import quant_method

    config = path / "config.json"
    return config.is_file() and ((path / "measurement.json").is_file() or quant_method(config) == "exl2")


def _is_hf(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _check_gguf(path: Path) -> None:
    from modules.loaders.gguf_files import model_file

    model_file(path)


def _check_hf(path: Path) -> None:
    from modules.loaders.hf_files import check_model_folder

    check_model_folder(path)


# In detection order: the first whose `detect` accepts a folder entry is its loader.
LOADERS = (
    LoaderSpec("llama.cpp", "modules.loaders.llama_cpp_loader:LlamaCppLoader", _is_gguf,
               frozenset({"logits", "logprobs", "prompt_logprobs", "token_ids", "templates"}), check=_check_gguf),
    LoaderSpec("exllamav2", "", _is_exl2, frozenset(), "EXL2 models need the ExLlamaV2 loader, which this version "
               "of Hearth does not include yet"),  # fmt: skip
    LoaderSpec("transformers", "modules.loaders.transformers_loader:TransformersLoader", _is_hf,
               frozenset({"logits", "logprobs", "prompt_logprobs", "token_ids", "templates"}), check=_check_hf),
)
BY_NAME = {spec.name: spec for spec in LOADERS}


def loader_names(available_only: bool = False) -> list[str]:
    """Every loader's name (or only those this version can load), sorted."""
    return sorted(s.name for s in LOADERS if not (available_only and s.missing))


def detect_loader(path: Path) -> str | None:
    """The name of the loader that fits a models-folder entry, or None if it is not a model."""
    return next((spec.name for spec in LOADERS if spec.detect(path)), None)


def get_spec(name: str) -> LoaderSpec:
    """The loader called `name`; ModelLoadError if unknown or not available in this version."""
    spec = BY_NAME.get(name)
    if spec is None:
        raise ModelLoadError(f"unknown loader {name!r} (available: {', '.join(loader_names(True))})")
    if spec.missing:
        raise ModelLoadError(spec.missing)
    return spec


def get_loader_class(name: str):
    """The loader class registered as `name`; ModelLoadError if unknown or unavailable."""
    module_name, class_name = get_spec(name).target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"the {name} loader cannot be imported ({exc})") from exc
    return getattr(module, class_name)


def capabilities_of(name: str) -> frozenset[str]:
    """What the loader called `name` declares it can do (empty for an unknown one)."""
    spec = BY_NAME.get(name)
    return spec.capabilities if spec else frozenset()


def checked_options(options: Mapping[str, Any], where: str = "args") -> dict[str, Any]:
    """Load options (and `loader`) with their types and ranges checked; InvalidParameter naming `where.key`."""
    checked = {}
    for key, value in options.items():
        param = f"{where}.{key}"
        if key == "loader":
            if value is not None and value not in BY_NAME:
                raise InvalidParameter(f"{param} must be one of {', '.join(loader_names())}, got {value!r}",
                                       param=param)  # fmt: skip
            checked[key] = value
        elif key in OPTIONS_BY_NAME:
            checked[key] = OPTIONS_BY_NAME[key].check(value, param)
        else:
            raise InvalidParameter(f"unknown load option {key!r} (known: {', '.join(option_names())})", param=param)
    return checked


def option_names() -> list[str]:
    """`loader` and every load option's name."""
    return ["loader", *(o.name for o in LOAD_OPTIONS)]


def options_markdown() -> str:
    """docs/api.md's table of load options."""
    rows = ["| option | type | what it does |", "|---|---|---|",
            f"| `loader` | one of {', '.join(loader_names())} | detected from the folder when absent |"]  # fmt: skip
    for o in LOAD_OPTIONS:
        kind = f"one of {', '.join(o.choices)}" if o.choices else o.kind.__name__
        rows.append(f"| `{o.name}` | {kind} | {o.help} |")
    return "\n".join(rows)
