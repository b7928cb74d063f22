"""text-generation-webui's token routes: /v1/internal/encode, /decode, /token-count, /logits."""
from __future__ import annotations

from flask import Blueprint, jsonify

from extensions.openai.docs import documented
from extensions.openai.params import check_unknown, sampler_values
from extensions.openai.responses import token_text
from extensions.openai.schemas import DecodeRequest, EncodeRequest, LogitsRequest
from extensions.openai.state import parse, serving_engine, state

bp = Blueprint("tokens", __name__)


@bp.post("/v1/internal/encode")
@documented("Tokenize text", EncodeRequest, tag="Internal")
def encode():
    """Token ids of `text`, as /v1/completions would tokenize it (BOS included when the model adds one)."""
    req = parse(EncodeRequest)
    ids = serving_engine(None).encode(req.text)
    return jsonify({"tokens": ids, "length": len(ids)})


@bp.post("/v1/internal/decode")
@documented("Detokenize ids", DecodeRequest, tag="Internal")
def decode():
    """Text of token ids."""
    req = parse(DecodeRequest)
    return jsonify({"text": serving_engine(None).decode(req.tokens)})


@bp.post("/v1/internal/token-count")
@documented("Count tokens", EncodeRequest, tag="Internal")
def token_count():
    """Number of tokens in `text`."""
    req = parse(EncodeRequest)
    return jsonify({"length": len(serving_engine(None).encode(req.text))})


@bp.post("/v1/internal/logits")
@documented("Next-token probabilities, raw or after samplers", LogitsRequest, tag="Internal")
def logits():
    """The most likely next tokens and their probabilities, raw or after the request's sampler settings."""
    st = state()
    req = parse(LogitsRequest)
    check_unknown(req, st.config.strict)
    engine = serving_engine(req.model)
    top = engine.next_token_probs(req.prompt, sampler_values(req) if req.use_samplers else None, req.top_logits)
    result: dict[str, float] = {}
    for candidate in top:
        result.setdefault(token_text(candidate.token), candidate.probability)
    detail = [{"id": c.id, "token": token_text(c.token), "probability": c.probability} for c in top]
    return jsonify({"logits": result, "top_tokens": detail})
