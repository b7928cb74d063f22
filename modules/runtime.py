"""The runtime: everything the UI and the API share, built once in server.py:main() and passed down."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from modules.config import Settings
from modules.engine.local import LocalEngine
from modules.handle import Pacing
from modules.loaders.registry import detect_loader
from modules.model_dir import ModelEntry
from modules.model_manager import ModelManager
from modules.pool import ModelPool
from modules.scheduler import Scheduler
from modules.serving import ServingConfig

log = logging.getLogger(__name__)

DEMO_MODEL = "hearth-demo"


@dataclass
class Runtime:
    """Settings, the model pool and the prompt store; knows nothing of Flask or Gradio."""

    settings: Settings
    pool: ModelPool
    prompts: object  # modules.prompts.PromptStore

    @property
    def models(self) -> ModelManager:
        """The default local entry's model manager (what single-model code and the UI's defaults use)."""
        return self.pool.local.manager

    @property
    def scheduler(self) -> Scheduler:
        """The default local entry's scheduler."""
        return self.pool.local.scheduler

    def close(self) -> None:
        """Stop every worker and free every model."""
        self.pool.close()


def builtin_models(root: Path) -> tuple[ModelEntry, ...]:
    """Models shipped with Hearth (the demo model), if present."""
    demo = root / "demo" / DEMO_MODEL
    loader = detect_loader(demo)
    return (ModelEntry(DEMO_MODEL, demo, loader, builtin=True),) if loader else ()


def build_runtime(settings: Settings, serving: ServingConfig | None = None) -> Runtime:
    """Create the model pool (one scheduler per entry) and the prompt store; no model is loaded here."""
    from modules.prompts import PromptStore

    pacing = Pacing(interval=settings.model.stream_interval_ms / 1000)

    prompts = PromptStore(
        settings.path("instruction-templates"),
        settings.path("characters"),
        settings.path("models/config.yaml"),
    )
    model_dir, builtin = settings.path(settings.model.model_dir), builtin_models(settings.root)

    def make_engine(name: str | None) -> LocalEngine:
        scheduler = Scheduler(max_queue=settings.model.max_queue, gather_s=settings.model.gather_ms / 1000,
                              pacing=pacing)  # fmt: skip
        return LocalEngine(ModelManager(settings.model, model_dir, scheduler, builtin), prompts, settings, name)

    preferences = None
    if serving is not None and serving.preference_log:
        from modules.preferences import PreferenceLog

        preferences = PreferenceLog(settings.path(serving.preference_log))
    pool = ModelPool(settings.model, make_engine, serving, preferences)
    return Runtime(settings=settings, pool=pool, prompts=prompts)
