"""POST /v1/embeddings and POST /v1/moderations, computed in the request thread (never on the model worker)."""
from __future__ import annotations

import base64
import time

from flask import Blueprint, jsonify

from extensions.openai.docs import documented
from extensions.openai.errors import APIError
from extensions.openai.params import check_unknown
from extensions.openai.schemas import EmbeddingsRequest, ModerationRequest
from extensions.openai.state import parse, state
from modules.errors import HearthError

bp = Blueprint("embeddings", __name__)


@bp.post("/v1/embeddings")
@documented("Embeddings (sentence-transformers; float or base64)", EmbeddingsRequest)
def embeddings():
    """OpenAI embeddings: float lists or base64 little-endian float32."""
    st = state()
    req = parse(EmbeddingsRequest)
    check_unknown(req, st.config.strict)
    engine = _embedding_engine(st, req.model)
    if engine is not None:
        return jsonify(_proxied(engine, req))
    embedder = st.embeddings.get(req.model)
    texts = _texts(req.input, embedder)
    result = embedder.embed(texts, req.dimensions)
    data = []
    for index, vector in enumerate(result.vectors):
        if req.encoding_format == "base64":
            value = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
        else:
            value = vector.tolist()
        data.append({"object": "embedding", "index": index, "embedding": value})
    tokens = sum(result.token_counts)
    return jsonify({"object": "list", "data": data, "model": embedder.name,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})  # fmt: skip


def _embedding_engine(st, model: str | None):
    """The engine of the pool entry `model` names when it computes embeddings itself (an API model), else None."""
    entry = st.runtime.pool.find(model) if model else None
    try:
        if entry is None or not entry.engine.capabilities.embeddings:
            return None
    except HearthError:  # a local entry with nothing loaded: the embedding models answer, as before
        return None
    return entry.engine


def _proxied(engine, req: EmbeddingsRequest) -> dict:
    """Embeddings from an API model's upstream, in OpenAI's shape."""
    raw = [req.input] if isinstance(req.input, str) else req.input
    if not raw or not all(isinstance(x, str) and x for x in raw):
        raise APIError(400, "input must be a non-empty string or list of non-empty strings for an API model",
                       param="input")  # fmt: skip
    vectors, tokens = engine.embed(list(raw), req.dimensions)
    data = []
    for index, vector in enumerate(vectors):
        value = vector
        if req.encoding_format == "base64":
            import numpy as np

            value = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": value})
    return {"object": "list", "data": data, "model": engine.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip


def _texts(raw, embedder) -> list[str]:
    """Input as texts: strings as they are, token ids decoded with the embedding model's own vocabulary."""
    if isinstance(raw, str):
        raw = [raw]
    if not raw:
        raise APIError(400, "input must not be empty", param="input")
    if all(isinstance(x, int) for x in raw):
        return [embedder.decode(raw)]
    texts = [x if isinstance(x, str) else embedder.decode(x) for x in raw]
    if any(not t for t in texts):
        raise APIError(400, "input must not contain empty strings", param="input")
    return texts


@bp.post("/v1/moderations")
@documented("Embedding-based moderation", ModerationRequest)
def moderations():
    """text-generation-webui's embedding-based moderation, in OpenAI's response shape."""
    st = state()
    req = parse(ModerationRequest)
    texts = [req.input] if isinstance(req.input, str) else list(req.input)
    if not texts:
        raise APIError(400, "input must not be empty", param="input")
    results = st.moderator().moderate(texts)
    body = []
    for r in results:
        applied = {name: ["text"] for name in r.categories}
        body.append({"flagged": r.flagged, "categories": r.categories, "category_scores": r.scores,
                     "category_applied_input_types": applied})  # fmt: skip
    return jsonify({"id": f"modr-{time.time_ns()}", "model": "text-moderation-hearth", "results": body})
