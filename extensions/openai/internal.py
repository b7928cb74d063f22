"""text-generation-webui's /v1/internal routes: health (more in later modules)."""
from __future__ import annotations

from flask import Blueprint, jsonify

from extensions.openai.docs import documented
from extensions.openai.state import state

bp = Blueprint("internal", __name__)


@bp.get("/v1/internal/health")
@documented("Liveness, the entries' models and queues", tag="Internal")
def health():
    """{"status": "ok"} plus what is loaded and how busy the scheduler is; `entries`: every pool entry's state
    (an API model's upstreams with their cool-downs)."""
    runtime = state().runtime
    info = runtime.models.info
    return jsonify(
        {"status": "ok", "model": info.name if info else None, "loading": runtime.models.loading,
         **runtime.scheduler.stats(), "entries": runtime.pool.health()}
    )  # fmt: skip
