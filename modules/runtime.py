"""The runtime: everything the UI and the API share, built once in server.py:main() and passed down."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from modules.config import Settings
from modules.handle import Pacing
from modules.model_dir import LOADER_TRANSFORMERS, ModelEntry
from modules.model_manager import ModelManager
from modules.scheduler import Scheduler

log = logging.getLogger(__name__)

DEMO_MODEL = "hearth-demo"


@dataclass
class Runtime:
    """Settings, models, the scheduler and the prompt store; knows nothing of Flask or Gradio."""

    settings: Settings
    models: ModelManager
    scheduler: Scheduler
    prompts: object  # modules.prompts.PromptStore

    def close(self) -> None:
        """Stop the worker and free the model."""
        self.scheduler.close()
        loader = self.scheduler.loader
        if loader is not None:
            loader.unload()


def builtin_models(root: Path) -> tuple[ModelEntry, ...]:
    """Models shipped with Hearth (the demo model), if present."""
    demo = root / "demo" / DEMO_MODEL
    if (demo / "config.json").is_file():
        return (ModelEntry(DEMO_MODEL, demo, LOADER_TRANSFORMERS, builtin=True),)
    return ()


def build_runtime(settings: Settings) -> Runtime:
    """Create the scheduler, model manager and prompt store (no model is loaded here)."""
    from modules.prompts import PromptStore

    pacing = Pacing(interval=settings.model.stream_interval_ms / 1000)
    scheduler = Scheduler(max_queue=settings.model.max_queue, gather_s=settings.model.gather_ms / 1000, pacing=pacing)
    models = ModelManager(
        settings.model, settings.path(settings.model.model_dir), scheduler, builtin_models(settings.root)
    )
    prompts = PromptStore(
        settings.path("instruction-templates"),
        settings.path("characters"),
        settings.path("models/config.yaml"),
    )
    return Runtime(settings=settings, models=models, scheduler=scheduler, prompts=prompts)
