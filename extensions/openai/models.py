"""GET /v1/models and /v1/models/{id}, with text-generation-webui's /v1/engines aliases."""
from __future__ import annotations

from flask import Blueprint, jsonify

from extensions.openai.docs import documented
from extensions.openai.state import state
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


def _objects() -> list[dict]:
    """The pool's entries (named, with what they serve), then the other models of the folder."""
    pool = state().runtime.pool
    folder = {e.name: e for e in pool.folder_models()}
    objects, listed = [], set()
    for entry in pool.entries():
        if entry.name is None:
            continue
        if entry.manager is None:  # an API model or a split
            kind = entry.spec.kind
            objects.append({"id": entry.name, "object": "model", "created": 0, "owned_by": kind, "loaded": True,
                            "loader": kind, "model": None, "version": entry.version})  # fmt: skip
            listed.add(entry.name)
            continue
        model = entry.manager.entry  # the ModelEntry loaded, or the serving file's folder when unloaded
        model = model or folder.get(entry.spec.model if entry.spec else "")
        base = model_object(model, entry.loader is not None) if model else {
            "id": entry.name, "object": "model", "created": 0, "owned_by": "user", "loaded": False, "loader": None}
        objects.append({**base, "id": entry.name, "model": model.name if model else None, "version": entry.version})
        listed.add(entry.name)
    # The loaded models first, as text-generation-webui documents; then the rest of the folder.
    return objects + [model_object(e, False) for name, e in folder.items() if name not in listed]


@bp.get("/v1/models")
@bp.get("/v1/engines")
@documented("List models: the pool's entries, then the rest of the models folder")
def list_models():
    """The pool's entries, loaded first, then every other model in the models folder."""
    return jsonify({"object": "list", "data": _objects()})


@bp.get("/v1/models/<path:model_id>")
@bp.get("/v1/engines/<path:model_id>")
@documented("One model")
def get_model(model_id: str):
    """One model by id; 404 listing the names when there is none of that name."""
    for obj in _objects():
        if obj["id"] == model_id:
            return jsonify(obj)
    raise state().runtime.pool.unknown(model_id)
