"""GET /v1/models and /v1/models/{id}, with text-generation-webui's /v1/engines aliases."""
from __future__ import annotations

from flask import Blueprint, jsonify

from extensions.openai.state import state
from modules.errors import ModelNotFound
from modules.model_dir import ModelEntry

bp = Blueprint("models", __name__)


def model_object(entry: ModelEntry, loaded: bool) -> dict:
    """An OpenAI `model` object, with Hearth's `loaded` and `loader` fields."""
    try:
        created = int(entry.path.stat().st_mtime)
    except OSError:
        created = 0
    owner = "hearth" if entry.builtin else "user"
    return {"id": entry.name, "object": "model", "created": created, "owned_by": owner,
            "loaded": loaded, "loader": entry.loader}  # fmt: skip


def _entries() -> tuple[list[ModelEntry], str | None]:
    models = state().runtime.models
    loaded = models.info.name if models.info is not None else None
    entries = models.list()
    # The loaded model first, as text-generation-webui documents.
    entries.sort(key=lambda e: e.name != loaded)
    return entries, loaded


@bp.get("/v1/models")
@bp.get("/v1/engines")
def list_models():
    """Every model in the models folder, the loaded one first."""
    entries, loaded = _entries()
    return jsonify({"object": "list", "data": [model_object(e, e.name == loaded) for e in entries]})


@bp.get("/v1/models/<path:model_id>")
@bp.get("/v1/engines/<path:model_id>")
def get_model(model_id: str):
    """One model by id; 404 if there is none of that name."""
    entries, loaded = _entries()
    for entry in entries:
        if entry.name == model_id:
            return jsonify(model_object(entry, entry.name == loaded))
    raise ModelNotFound(f"the model '{model_id}' does not exist", param="model")
