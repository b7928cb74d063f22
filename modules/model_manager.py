"""Load, swap and unload models; the scheduler keeps serving the old model until the new one is ready."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from modules.config import ModelSettings
from modules.errors import ModelLoadError, ModelNotFound
from modules.loaders.registry import LoaderSpec, get_loader_class, get_spec
from modules.loaders.base import Loader, ModelInfo
from modules.model_dir import ModelEntry, list_models, resolve_model
from modules.scheduler import Scheduler

log = logging.getLogger(__name__)


class ModelManager:
    """The models folder and the one loaded model; load/unload are serialized."""

    def __init__(self, settings: ModelSettings, model_dir: Path, scheduler: Scheduler, builtin=()):
        self.settings = settings
        self.model_dir = model_dir
        self.scheduler = scheduler
        self.builtin: tuple[ModelEntry, ...] = tuple(builtin)
        self._lock = threading.Lock()  # one load or unload at a time
        self._loading: str | None = None
        self.entry: ModelEntry | None = None
        self.load_options: dict[str, Any] = {}
        self.prompt_settings: Mapping[str, Any] = MappingProxyType({})  # e.g. the instruction template to use

    @property
    def loader(self) -> Loader | None:
        """The model serving requests now, or None."""
        return self.scheduler.loader

    @property
    def info(self) -> ModelInfo | None:
        """Facts about the loaded model, or None."""
        loader = self.loader
        return loader.info if loader is not None else None

    @property
    def loading(self) -> str | None:
        """Name of a model being loaded right now, if any."""
        return self._loading

    def list(self) -> list[ModelEntry]:
        """Every model in the models folder, then built-in ones."""
        return list_models(self.model_dir, self.builtin)

    def resolve(self, name: str) -> ModelEntry:
        """The entry for `name`; ModelNotFound if unknown or escaping the folder."""
        return resolve_model(self.model_dir, name, self.builtin)

    def default_name(self) -> str | None:
        """The model to load at start: the configured one, else the only one in the folder, else a built-in."""
        if self.settings.model:
            return self.settings.model
        local = [e for e in self.list() if not e.builtin]
        if len(local) == 1:
            return local[0].name
        if not local and self.builtin:
            return self.builtin[0].name
        return None

    def load(
        self, name: str, options: Mapping[str, Any] | None = None, prompt_settings: Mapping[str, Any] | None = None
    ) -> ModelInfo:
        """Load `name` and make it the serving model; on failure the previous model keeps serving."""
        entry = self.resolve(name)
        merged = {**self.settings.loader_options(), **(options or {})}
        loader_name = merged.pop("loader", None) or self.settings.loader or entry.loader
        spec = get_spec(loader_name)
        with self._lock:
            self._loading = name
            try:
                info = self._swap_in(entry, spec, merged)
                self.prompt_settings = MappingProxyType(dict(prompt_settings or {}))
                return info
            finally:
                self._loading = None

    def unload(self) -> bool:
        """Unload the serving model (after running requests finish); False if none was loaded."""
        with self._lock:
            old = self._swap(None)
            self.entry = None
            self.prompt_settings = MappingProxyType({})
            if old is None:
                return False
            old.unload()
            log.info("Unloaded %s", old.info.name)
            return True

    def _swap_in(self, entry: ModelEntry, spec: LoaderSpec, options: dict) -> ModelInfo:
        if spec.check is not None:
            spec.check(entry.path)
        loader_cls = get_loader_class(spec.name)
        started = time.monotonic()
        log.info("Loading %s with the %s loader", entry.name, loader_cls.name)
        # The old model keeps serving while the new one loads; a failure leaves it untouched.
        try:
            new = loader_cls.load(entry.path, entry.name, options)
        except ModelLoadError:
            raise
        except Exception as exc:  # an unexpected loader failure is still a load error to the caller
            raise ModelLoadError(f"{entry.name}: {type(exc).__name__}: {exc}") from exc
        old = self._swap(new)
        if old is not None:
            old.unload()
        self.entry, self.load_options = entry, options
        log.info("%s ready in %.1f s", entry.name, time.monotonic() - started)
        return new.info

    def _swap(self, new: Loader | None) -> Loader | None:
        """Let queued and running requests finish (cancelled after swap_timeout), then put `new` in place."""
        return self.scheduler.swap_loader(new, self.settings.swap_timeout)


def ensure_known(manager: ModelManager, name: str) -> ModelEntry:
    """Resolve `name` or raise ModelNotFound with the list of available models."""
    try:
        return manager.resolve(name)
    except ModelNotFound as exc:
        names = ", ".join(e.name for e in manager.list()) or "none"
        raise ModelNotFound(f"{exc.message} (available: {names})", param="model") from None
