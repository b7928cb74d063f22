"""text-generation-webui's token routes: /v1/internal/encode, /decode, /token-count, /logits."""
from __future__ import annotations

from flask import Blueprint, jsonify

from extensions.openai.errors import APIError
from extensions.openai.params import check_unknown, sampling_params
from extensions.openai.responses import token_text
from extensions.openai.schemas import DecodeRequest, EncodeRequest, LogitsRequest
from extensions.openai.state import parse, serving_entry, serving_loader, state

bp = Blueprint("tokens", __name__)


@bp.post("/v1/internal/encode")
def encode():
    """Token ids of `text`, as /v1/completions would tokenize it (BOS included when the model adds one)."""
    req = parse(EncodeRequest)
    ids = serving_loader(None).encode(req.text, add_special_tokens=True)
    return jsonify({"tokens": ids, "length": len(ids)})


@bp.post("/v1/internal/decode")
def decode():
    """Text of token ids."""
    req = parse(DecodeRequest)
    loader = serving_loader(None)
    bad = next((t for t in req.tokens if not 0 <= t < loader.info.vocab_size), None)
    if bad is not None:
        raise APIError(400, f"token id {bad} is outside the vocabulary (size {loader.info.vocab_size})", param="tokens")
    return jsonify({"text": loader.decode(req.tokens, skip_special_tokens=False)})


@bp.post("/v1/internal/token-count")
def token_count():
    """Number of tokens in `text`."""
    req = parse(EncodeRequest)
    return jsonify({"length": len(serving_loader(None).encode(req.text, add_special_tokens=True))})


@bp.post("/v1/internal/logits")
def logits():
    """The most likely next tokens and their probabilities, raw or after the request's sampler settings."""
    st = state()
    req = parse(LogitsRequest)
    check_unknown(req, st.config.strict)
    entry, loader = serving_entry(req.model)
    if not 1 <= req.top_logits <= loader.info.vocab_size:
        raise APIError(400, f"top_logits must be in [1, {loader.info.vocab_size}]", param="top_logits")
    ids = loader.encode(req.prompt, add_special_tokens=True)
    if not ids:
        raise APIError(400, "the prompt is empty", param="prompt")
    if len(ids) >= loader.info.context_length:
        raise APIError(413, "the prompt does not fit the model's context", param="prompt", code="context_length_exceeded")
    sampling = None
    if req.use_samplers:
        sampling = sampling_params(req, loader.info, st.runtime.settings.generation)
        sampling.validate(loader.info.vocab_size)
    top = entry.scheduler.run_exclusive(lambda model: model.next_token_probs(ids, sampling, req.top_logits))
    result: dict[str, float] = {}
    for token_id, prob in top:
        result.setdefault(token_text(loader.token_bytes(token_id)), prob)
    detail = [{"id": t, "token": token_text(loader.token_bytes(t)), "probability": p} for t, p in top]
    return jsonify({"logits": result, "top_tokens": detail})
