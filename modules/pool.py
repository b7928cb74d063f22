"""The model pool: named entries resident at once, each with its own scheduler worker and batch.

A request's `model` picks the entry: its name, `NAME:VERSION` (DeepInfra), or nothing for the default. Without a
serving file the pool holds one entry named after the model it serves (today's `--model X`), and names that are
not local models go to it, as OpenAI clients often send a placeholder such as `gpt-3.5-turbo`.
"""
from __future__ import annotations

import difflib
import logging
import threading
import time
from typing import Any, Callable, Mapping

from modules.config import ModelSettings
from modules.engine.base import Engine
from modules.engine.fallback import FallbackEngine
from modules.engine.kinds import BuildContext, build_engine
from modules.engine.local import LocalEngine
from modules.errors import InvalidParameter, ModelNotFound, ModelNotLoaded, QueueFull, SettingsError
from modules.loaders.base import Loader, ModelInfo
from modules.model_manager import ModelManager
from modules.scheduler import Scheduler
from modules.serving import EntrySpec, ServingConfig, check_entry_name

log = logging.getLogger(__name__)


class PoolEntry:
    """One named place that answers requests: a local model (its engine has its own scheduler worker and batch),
    an API model or a split; `engine` is what serves it, with the entry's fallbacks when it has some."""

    def __init__(self, engine: Engine, spec=None):
        self.own_engine = engine
        self.engine: Engine = engine  # wrapped in a FallbackEngine by the pool when the spec names fallbacks
        self.manager: ModelManager | None = getattr(engine, "manager", None)  # load, swap, unload (local only)
        self.spec = spec
        self.version = spec.version if spec else ""
        self.last_used = time.monotonic()

    @property
    def fixed_name(self) -> str | None:
        """The configured name; None for the entry named after its model (the pool of one of `--model X`)."""
        return getattr(self.own_engine, "fixed_name", self.own_engine.name)

    @property
    def name(self) -> str | None:
        """The name clients send as `model`; None for an unnamed entry with nothing loaded."""
        return self.own_engine.name

    @property
    def scheduler(self) -> Scheduler | None:
        """The entry's own scheduler (one worker thread, one batch); None for entries without a local model."""
        return self.manager.scheduler if self.manager is not None else None

    @property
    def loader(self) -> Loader | None:
        """The model this entry serves now, or None."""
        return self.manager.loader if self.manager is not None else None

    @property
    def model_name(self) -> str | None:
        """The models-folder name of the model loaded here, or None."""
        if self.manager is None or self.manager.entry is None:
            return None
        return self.manager.entry.name

    def idle(self) -> bool:
        """True when nothing is queued or running on this entry's worker (arrivals are announced to the default)."""
        if self.scheduler is None:
            return True
        stats = self.scheduler.stats()
        return not (stats["waiting"] or stats["active"])

    def health(self) -> dict:
        """What /v1/internal/health shows of this entry."""
        info: dict = {"name": self.name, "kind": getattr(self.spec, "kind", "local")}
        if self.manager is not None:
            info.update(model=self.model_name, loading=self.manager.loading, **self.scheduler.stats())
        upstreams = self.own_engine.health()
        if upstreams:
            info["upstreams"] = upstreams
        fallback = getattr(self.spec, "fallback", ())
        if fallback:
            info["fallback"] = list(fallback)
        return info

    def close(self) -> None:
        """Stop the worker and free the model (or the engine's connections)."""
        if self.scheduler is not None:
            self.scheduler.close()
            loader = self.scheduler.loader
            if loader is not None:
                loader.unload()
        self.own_engine.close()


class ModelPool:
    """Every entry, routing by name, and loads/unloads per entry; the default entry serves requests without `model`."""

    def __init__(self, settings: ModelSettings, make_engine: Callable[[str | None], LocalEngine],
                 serving: ServingConfig | None = None, preferences=None):  # fmt: skip
        self.settings = settings
        self.serving = serving
        self.preferences = preferences  # modules.preferences.PreferenceLog, when the serving file names one
        self._make_engine = make_engine  # a new entry's engine, with its own scheduler
        self._lock = threading.RLock()  # guards the entry list; loads run outside it
        self._demand = threading.Lock()  # one on-demand load at a time
        self._adding = threading.Lock()  # one new entry being loaded at a time
        if serving is None:
            self._entries = [self._new_entry(None)]
            self._default = self._entries[0]
        else:
            context = BuildContext(make_engine, self._served_engine, preferences)
            self._entries = [PoolEntry(build_engine(spec, context), spec) for spec in serving.entries]
            for entry in self._entries:
                if entry.spec.fallback:
                    entry.engine = FallbackEngine(entry.own_engine, lambda e=entry: self._fallbacks(e))
            self._default = next(e for e in self._entries if e.fixed_name == serving.default)
        local = [e for e in self.entries() if e.manager is not None]
        # The models folder is listed (and single-model code finds its manager) through a local entry; a pool of
        # API models only gets an idle one for that.
        self._local = local[0] if local else self._new_entry(None)

    @property
    def default(self) -> PoolEntry:
        """The entry serving requests that name no model."""
        return self._default

    @property
    def local(self) -> PoolEntry:
        """The default entry if it holds a local model, else the first that does (or an idle, unnamed one)."""
        return self._default if self._default.manager is not None else self._local

    @property
    def strict(self) -> bool:
        """True with a serving file: an unknown `model` is a 404 instead of going to the default entry."""
        return self.serving is not None

    @property
    def max_loaded(self) -> int:
        """How many entries on-demand loading may keep loaded (0 in settings: the serving file's count, else 1)."""
        if self.settings.max_loaded:
            return self.settings.max_loaded
        return len(self.serving.entries) if self.serving else 1

    def entries(self) -> list[PoolEntry]:
        """Every entry, the default first."""
        with self._lock:
            return [self._default] + [e for e in self._entries if e is not self._default]

    def names(self) -> list[str]:
        """Names of the entries that have one."""
        return [e.name for e in self.entries() if e.name is not None]

    def find(self, requested: str) -> PoolEntry | None:
        """The entry called `requested`, or matching `NAME:VERSION` (NAME: entry or model folder); else None."""
        entries = self.entries()
        for entry in entries:
            if entry.name == requested:
                return entry
        name, sep, version = requested.rpartition(":")
        if sep and name:
            for entry in entries:
                if entry.version == version and name in (entry.name, entry.model_name, getattr(entry.spec, "model", 0)):
                    return entry
        return None

    def route(self, requested: str | None) -> PoolEntry:
        """The entry that answers a request naming `requested`; 404 for unknown names, on-demand loads if enabled."""
        entry = self.find(requested) if requested else self._default
        if entry is not None:
            entry.last_used = time.monotonic()
            return entry
        local = [e.name for e in self.folder_models()]
        if requested in local:
            if self.settings.load_on_demand:
                return self._load_on_demand(requested)
            loaded = ", ".join(self.names()) or "none"
            raise ModelNotFound(f"model {requested!r} is not loaded (loaded: {loaded}); load it with "
                                "POST /v1/internal/model/load", param="model")  # fmt: skip
        if self.strict:
            raise self.unknown(requested)
        self._default.last_used = time.monotonic()
        return self._default

    def unknown(self, requested: str, param: str = "model") -> ModelNotFound:
        """ModelNotFound listing the names that exist, with a close match when there is one."""
        names = self.names()
        close = difflib.get_close_matches(requested, names + [e.name for e in self.folder_models()], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return ModelNotFound(f"the model {requested!r} does not exist (served: {', '.join(names) or 'none'}){hint}",
                             param=param)  # fmt: skip

    def folder_models(self):
        """Every model in the models folder, then built-in ones."""
        return self.local.manager.list()

    def health(self) -> list[dict]:
        """Every entry's state: its model and queue, or its upstreams and their cool-downs."""
        return [e.health() for e in self.entries()]

    def _served_engine(self, name: str) -> Engine:
        """The engine that serves entry `name` (an A/B arm), with its fallbacks."""
        entry = self.find(name)
        if entry is None:
            raise self.unknown(name)
        return entry.engine

    def _fallbacks(self, entry: PoolEntry) -> list[Engine]:
        """The own engines of the entries `entry` falls back to, in order (one level: no chains, no loops)."""
        found = [self.find(name) for name in entry.spec.fallback]
        return [e.own_engine for e in found if e is not None]

    def load(self, model: str, name: str | None = None, options: Mapping[str, Any] | None = None,
             prompt_settings: Mapping[str, Any] | None = None) -> tuple[PoolEntry, ModelInfo]:  # fmt: skip
        """Load `model` into entry `name` (the default when None; a new entry for a new name).

        The entry's old model serves until the new one is ready and keeps serving if the load fails; other
        entries are untouched."""
        self.local.manager.resolve(model)  # ModelNotFound before a worker is started for nothing
        entry = self._existing(name)
        if entry is not None and entry.manager is None:
            raise InvalidParameter(f"entry {entry.name!r} serves no local model (it is {entry.spec.kind!r}); "
                                   "load into another name", param="name")  # fmt: skip
        if entry is None:
            with self._adding:  # one new entry at a time, so two loads of one new name make one entry
                entry = self._existing(name)
                if entry is None:
                    return self._add(name, model, options, prompt_settings)
        info = entry.manager.load(model, options, prompt_settings)
        entry.last_used = time.monotonic()
        return entry, info

    def load_all(self) -> None:
        """Load every entry of the serving file (at start); an unknown model folder fails before any load."""
        local = [e for e in self.entries() if e.spec is not None and e.manager is not None]
        for entry in local:
            self.local.manager.resolve(entry.spec.model)
        for entry in local:
            spec = entry.spec
            entry.manager.load(spec.model, dict(spec.options), spec.prompt_settings)

    def unload(self, name: str | None = None) -> bool:
        """Unload entry `name` (the default when None); entries added at run time leave the pool. False if empty."""
        entry = self._default if name is None else self.find(name)
        if entry is None:
            raise self.unknown(name, param="name")
        if entry.manager is None:
            raise InvalidParameter(f"entry {entry.name!r} serves no local model (it is {entry.spec.kind!r})",
                                   param="name")  # fmt: skip
        unloaded = entry.manager.unload()
        if entry.spec is None and entry.fixed_name is not None:
            with self._lock:
                self._entries.remove(entry)
            entry.close()
        return unloaded

    def cancel_all(self) -> int:
        """Cancel every running and waiting generation of every entry."""
        return sum(e.scheduler.cancel_all() for e in self.entries() if e.scheduler is not None)

    def close(self) -> None:
        """Stop every worker and free every model."""
        for entry in {id(e): e for e in [*self.entries(), self._local]}.values():
            entry.close()

    def _new_entry(self, name: str | None, spec: EntrySpec | None = None) -> PoolEntry:
        return PoolEntry(self._make_engine(name), spec)

    def _existing(self, name: str | None) -> PoolEntry | None:
        """The entry a load names: the default for None, the entry called `name`, or None for a new name."""
        if name is None:
            return self._default
        try:
            check_entry_name(name)
        except SettingsError as exc:
            raise InvalidParameter(exc.message, param="name") from None
        found = self.find(name)
        return found if found is not None and found.name == name else None

    def _add(self, name: str, model: str, options, prompt_settings) -> tuple[PoolEntry, ModelInfo]:
        """A new entry called `name` serving `model`; nothing is added if the load fails."""
        entry = self._new_entry(name)
        try:
            info = entry.manager.load(model, options, prompt_settings)
        except BaseException:
            entry.close()
            raise
        with self._lock:
            self._entries.append(entry)
        return entry, info

    def _load_on_demand(self, model: str) -> PoolEntry:
        """Load a folder model for a request naming it, making room by the least recently used idle entry."""
        with self._demand:
            entry = self.find(model)
            if entry is not None:  # loaded meanwhile by another request
                return entry
            loaded = [e for e in self.entries() if e.loader is not None]
            if len(loaded) < self.max_loaded:
                return self.load(model, model)[0]
            victim = self._least_recently_used(loaded)
            if victim.fixed_name is None:  # the unnamed entry follows its model: swap it in place
                return self.load(model, None)[0]
            log.info("unloading entry %s (least recently used) to load %s", victim.name, model)
            self.unload(victim.name)
            return self.load(model, model)[0]

    def _least_recently_used(self, loaded: list[PoolEntry]) -> PoolEntry:
        # The unnamed entry swaps in place (its requests finish first), as --load-on-demand always did.
        candidates = [e for e in loaded if e.fixed_name is None or e.idle()]
        if not candidates:
            raise QueueFull(f"{len(loaded)} models are loaded and busy (max_loaded {self.max_loaded}); retry shortly")
        return min(candidates, key=lambda e: e.last_used)
