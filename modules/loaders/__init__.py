"""Loader registry: name -> "module:Class", imported only when a model of that kind is loaded."""
from __future__ import annotations

import importlib

from modules.errors import ModelLoadError

LOADERS = {
    "transformers": "modules.loaders.transformers_loader:TransformersLoader",
}

# Formats that are recognised in the models folder but whose loaders are not part of this release.
PLANNED = {
    "llama.cpp": "GGUF models need the llama.cpp loader, which this version of Hearth does not include yet",
    "exllamav2": "EXL2 models need the ExLlamaV2 loader, which this version of Hearth does not include yet",
}


def get_loader_class(name: str):
    """The loader class registered as `name`; ModelLoadError if unknown or unavailable."""
    if name in PLANNED:
        raise ModelLoadError(PLANNED[name])
    target = LOADERS.get(name)
    if target is None:
        raise ModelLoadError(f"unknown loader {name!r} (available: {', '.join(sorted(LOADERS))})")
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"the {name} loader cannot be imported ({exc})") from exc
    return getattr(module, class_name)
