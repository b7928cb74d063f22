"""Settings: settings.yaml (sectioned, or text-generation-webui's flat keys) + CLI overrides -> one frozen object.

The only reader of settings.yaml. Nothing here imports torch, Flask or Gradio.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from modules.errors import SettingsError
from modules.samplers import SamplerFields

log = logging.getLogger(__name__)

DEFAULT_CHAT_INSTRUCT_COMMAND = (
    'Continue the chat dialogue below. Write a single reply for the character "<|character|>".\n\n<|prompt|>'
)


@dataclass(frozen=True)
class ServerSettings:
    """Where and how the UI and API listen."""

    listen: bool = False
    listen_host: str = ""  # "" -> 127.0.0.1, or 0.0.0.0 with --listen
    listen_port: int = 7860
    nowebui: bool = False
    api: bool = False
    api_port: int = 5000
    api_key: str = ""
    admin_key: str = ""
    ssl_keyfile: str = ""
    ssl_certfile: str = ""
    extensions: tuple[str, ...] = ()
    strict_api: bool = False
    max_body_mb: float = 8.0

    @property
    def host(self) -> str:
        """The interface to bind: loopback unless --listen."""
        if self.listen_host:
            return self.listen_host
        return "0.0.0.0" if self.listen else "127.0.0.1"


@dataclass(frozen=True)
class ModelSettings:
    """Which model to load and how."""

    model: str = ""  # "" -> the only model in model_dir, else the built-in demo model
    model_dir: str = "models"
    loader: str = ""  # "" -> detected from the folder
    cpu: bool = False
    dtype: str = "auto"
    trust_remote_code: bool = False
    threads: int = 0  # torch intra-op threads; 0 -> all cores
    adapt_threads: bool = True  # on CPU: compute with fewer threads while other work holds some of the cores
    max_batch_size: int = 8
    max_queue: int = 64
    stream_interval_ms: float = 40.0  # with 4+ sequences decoding, a stream takes its tokens at most this often
    gather_ms: float = 20.0  # a request arriving with others waits up to this long, so they prefill together
    prefill_chunk: int = 512
    prefix_cache_mb: int = 1024  # keys/values of finished requests kept for the next chat turn; 0 disables
    cpu_prepack: bool = True  # on CPU: pack linear weights for oneDNN once (1.5-2x faster decoding)
    lean_decode: bool = True  # Llama-family decode steps skip transformers' per-call machinery (same logits)
    ctx_size: int = 0  # llama.cpp: KV cache tokens shared by the running sequences; 0 -> the model's, at most 8192
    gpu_layers: int = -1  # llama.cpp: layers offloaded to a GPU (-1 all; a CPU build offloads none)
    flash_attn: str = "auto"  # llama.cpp: auto | on | off
    cache_type: str = "f16"  # llama.cpp: K/V cache type (f16, bf16, f32, q8_0, q4_0)
    no_mmap: bool = False  # llama.cpp: read the weights into memory instead of mapping the file
    mlock: bool = False  # llama.cpp: lock the weights in RAM
    load_on_demand: bool = False
    serve: str = ""  # a serving file (YAML): several named models at once; see modules/serving.py
    max_loaded: int = 0  # models on-demand loading keeps loaded; 0 -> the serving file's count, else 1
    device: str = "local"  # "api": `model` is served by the OpenAI-compatible server at api_base (one API entry)
    api_base: str = ""
    api_key_env: str = ""  # the env var holding the upstream's token (never the token itself)
    swap_timeout: float = 60.0  # seconds a model swap waits for running requests before cancelling them

    def loader_options(self) -> dict[str, Any]:
        """Options handed to Loader.load(): settings.yaml's value of every load option the registry defines."""
        from modules.loaders.registry import LOAD_OPTIONS

        return {o.name: getattr(self, o.name) for o in LOAD_OPTIONS if hasattr(self, o.name)}


@dataclass(frozen=True)
class GenerationSettings(SamplerFields):
    """Sampler defaults for requests that leave a value unset (modules/samplers.py's fields, then these)."""

    max_new_tokens: int = 512
    seed: int = -1  # -1: random


@dataclass(frozen=True)
class ChatSettings:
    """Prompt-format defaults for the UI and the API."""

    mode: str = "instruct"
    character: str = "Assistant"
    name1: str = "You"
    user_bio: str = ""
    instruction_template: str = ""  # "" -> the model's own, else guessed
    chat_instruct_command: str = DEFAULT_CHAT_INSTRUCT_COMMAND
    user_data_dir: str = "user_data"


SECTIONS = {
    "server": ServerSettings,
    "model": ModelSettings,
    "generation": GenerationSettings,
    "chat": ChatSettings,
}


@dataclass(frozen=True)
class Settings:
    """Everything configurable, built once in main() and passed down."""

    server: ServerSettings = field(default_factory=ServerSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    chat: ChatSettings = field(default_factory=ChatSettings)
    extensions: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    root: Path = Path(".")  # the folder holding characters/, instruction-templates/, presets/

    def path(self, relative: str) -> Path:
        """A settings path resolved against the application root (absolute paths stay as they are)."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self.root / p


def load_settings(path: Path | None, overrides: Mapping[str, Any] | None = None, root: Path = Path(".")) -> Settings:
    """Read `path` (may be None or absent), apply `section.key` overrides, validate, freeze."""
    raw = _read_yaml(path) if path is not None else {}
    sections, extensions = _split(raw, path)
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        if section == "extensions":
            name, param = key.split(".", 1)
            extensions.setdefault(name, {})[param] = value
        else:
            sections.setdefault(section, {})[key] = value
    built = {name: _build(cls, sections.get(name, {}), name) for name, cls in SECTIONS.items()}
    frozen_ext = MappingProxyType({k: MappingProxyType(dict(v)) for k, v in extensions.items()})
    return Settings(**built, extensions=frozen_ext, root=root)


def _read_yaml(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise SettingsError(f"settings file {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SettingsError(f"{path}: invalid YAML ({first_line})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: the top level must be a mapping of keys to values")
    return data


def _split(raw: dict, path: Path | None) -> tuple[dict[str, dict], dict[str, dict]]:
    """Sort keys into sections; accept TGW's flat keys (`max_new_tokens: 512`, `openai-port: 5001`)."""
    sections: dict[str, dict] = {name: {} for name in SECTIONS}
    extensions: dict[str, dict] = {}
    owners = _field_owners()
    for key, value in raw.items():
        key = str(key)
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise SettingsError(f"{path}: '{key}' must be a mapping")
            sections[key].update(value)
        elif key == "extensions" and isinstance(value, dict):
            for name, params in value.items():
                extensions.setdefault(str(name), {}).update(params or {})
        elif key in owners:
            sections[owners[key]][key] = value
        elif "-" in key:  # TGW extension parameter: "<extension>-<param>"
            name, param = key.split("-", 1)
            extensions.setdefault(name, {})[param] = value
        else:
            log.warning("%s: ignoring unknown setting %r", path, key)
    return sections, extensions


def _field_owners() -> dict[str, str]:
    owners: dict[str, str] = {}
    for name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            owners.setdefault(f.name, name)
    return owners


def _build(cls, values: dict, section: str):
    from pydantic import TypeAdapter, ValidationError

    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SettingsError(f"unknown setting {section}.{unknown[0]} (known: {', '.join(sorted(known))})")
    try:
        return TypeAdapter(cls).validate_python(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise SettingsError(f"invalid setting {section}.{where}: {err['msg']}") from None
