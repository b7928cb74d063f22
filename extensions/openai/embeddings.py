"""POST /v1/embeddings and POST /v1/moderations, computed in the request thread (never on the model worker)."""
from __future__ import annotations

import base64
import time
from dataclasses import dataclass

from flask import Blueprint, jsonify

from extensions.openai.docs import documented
from extensions.openai.errors import APIError
from extensions.openai.params import check_unknown
from extensions.openai.schemas import EmbeddingsRequest, ModerationRequest
from extensions.openai.state import ApiState, parse, state
from modules.errors import HearthError

bp = Blueprint("embeddings", __name__)


@bp.post("/v1/embeddings")
@documented("Embeddings (sentence-transformers; float or base64)", EmbeddingsRequest)
def embeddings():
    """OpenAI embeddings: float lists or base64 little-endian float32."""
    st = state()
    req = parse(EmbeddingsRequest)
    check_unknown(req, st.config.strict)
    result = embed(st, req.model, req.input, req.dimensions)
    data = [{"object": "embedding", "index": index, "embedding": encoded(vector, req.encoding_format)}
            for index, vector in enumerate(result.vectors)]  # fmt: skip
    return jsonify({"object": "list", "data": data, "model": result.model,
                    "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens}})  # fmt: skip


@dataclass(frozen=True)
class Embedded:
    """Embedding vectors (numpy arrays or float lists), the model that made them and the tokens it counted."""

    model: str
    vectors: list
    tokens: int


def embed(st: ApiState, model: str | None, raw, dimensions: int | None = None, param: str = "input") -> Embedded:
    """Vectors of `raw` (texts, or token ids for a local model) from the API model `model` names when it embeds
    itself, else from a sentence-transformers model: the one path of /v1/embeddings and Takeoff's /embed."""
    engine = _embedding_engine(st, model)
    if engine is not None:
        vectors, tokens = engine.embed(_api_texts(raw, param), dimensions)
        return Embedded(engine.name, list(vectors), tokens)
    embedder = st.embeddings.get(model)
    result = embedder.embed(_texts(raw, embedder, param), dimensions)
    return Embedded(embedder.name, list(result.vectors), sum(result.token_counts))


def _embedding_engine(st, model: str | None):
    """The engine of the pool entry `model` names when it computes embeddings itself (an API model), else None."""
    entry = st.runtime.pool.find(model) if model else None
    try:
        if entry is None or not entry.engine.capabilities.embeddings:
            return None
    except HearthError:  # a local entry with nothing loaded: the embedding models answer, as before
        return None
    return entry.engine


def encoded(vector, encoding_format: str = "float"):
    """A vector as OpenAI sends it: a float list, or base64 of little-endian float32."""
    import numpy as np

    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist() if isinstance(vector, np.ndarray) else list(vector)


def _api_texts(raw, param: str) -> list[str]:
    """An API model's input: a non-empty string or list of non-empty strings (token ids mean nothing upstream)."""
    raw = [raw] if isinstance(raw, str) else raw
    if not raw or not all(isinstance(x, str) and x for x in raw):
        raise APIError(400, f"{param} must be a non-empty string or list of non-empty strings for an API model",
                       param=param)  # fmt: skip
    return list(raw)


def _texts(raw, embedder, param: str) -> list[str]:
    """Input as texts: strings as they are, token ids decoded with the embedding model's own vocabulary."""
    if isinstance(raw, str):
        raw = [raw]
    if not raw:
        raise APIError(400, f"{param} must not be empty", param=param)
    if all(isinstance(x, int) for x in raw):
        return [embedder.decode(raw)]
    texts = [x if isinstance(x, str) else embedder.decode(x) for x in raw]
    if any(not t for t in texts):
        raise APIError(400, f"{param} must not contain empty strings", param=param)
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
