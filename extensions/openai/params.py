"""Turn validated request fields into the engine's GenerationRequest (request > model defaults > settings)."""
from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Any, Mapping

from pydantic import BaseModel

from extensions.openai.errors import APIError
from extensions.openai.schemas import SamplingFields
from modules.config import GenerationSettings
from modules.errors import InvalidParameter
from modules.generation import GenerationRequest, SamplingParams
from modules.loaders.base import ModelInfo

log = logging.getLogger(__name__)

SAMPLER_FIELDS = (
    "temperature", "top_p", "top_k", "min_p", "typical_p",
    "repetition_penalty", "presence_penalty", "frequency_penalty",
)  # fmt: skip


def check_unknown(req: BaseModel, strict: bool) -> None:
    """Unknown fields are logged at debug level, or a 400 with --strict-api."""
    unknown = sorted(req.model_extra or {})
    if not unknown:
        return
    if strict:
        raise APIError(400, f"unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
    log.debug("ignoring unknown request fields: %s", ", ".join(unknown))


def sampling_params(req: SamplingFields, info: ModelInfo, defaults: GenerationSettings) -> SamplingParams:
    """Sampler settings: the request's values, else the model's generation_config, else settings.yaml."""
    values: dict[str, Any] = {}
    for name in SAMPLER_FIELDS:
        value = getattr(req, name)
        if value is None:
            value = info.generation_defaults.get(name, getattr(defaults, name))
        values[name] = value
    seed = req.seed if req.seed is not None else defaults.seed
    return SamplingParams(
        **values,
        logit_bias=MappingProxyType(_logit_bias(req.logit_bias)),
        seed=None if seed is None or seed < 0 else seed,  # -1 (text-generation-webui) means random
    )


def generation_request(
    req: SamplingFields,
    prompt_ids: list[int],
    info: ModelInfo,
    defaults: GenerationSettings,
    *,
    max_tokens: int | None,
    logprobs: int | None,
    extra_stop: tuple[str, ...] = (),
    trim_leading_space: bool = False,
) -> GenerationRequest:
    """The engine request for one prompt; validated, so a bad value is a 400 naming its parameter."""
    room = info.context_length - len(prompt_ids)
    gen = GenerationRequest(
        prompt_ids=tuple(prompt_ids),
        sampling=sampling_params(req, info, defaults),
        max_tokens=None if max_tokens is None else min(max_tokens, max(room, 1)),
        min_tokens=req.min_tokens or 0,
        n=req.n if req.n is not None else 1,
        stop=req.stop_list + extra_stop,
        stop_token_ids=tuple(req.stop_token_ids or ()),
        ban_eos=bool(req.ignore_eos or req.ban_eos_token),
        logprobs=logprobs,
        model_id=info.name,
        skip_special_tokens=req.skip_special_tokens if req.skip_special_tokens is not None else True,
        trim_leading_space=trim_leading_space,
    )
    if max_tokens is not None and max_tokens < 1:
        raise InvalidParameter(f"max_tokens must be at least 1, got {max_tokens}", param="max_tokens")
    gen.validate(info.vocab_size)
    return gen


def _logit_bias(raw: Mapping[str, float] | None) -> dict[int, float]:
    bias: dict[int, float] = {}
    for key, value in (raw or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise InvalidParameter(f"logit_bias keys must be token ids, got {key!r}", param="logit_bias") from None
        bias[token] = float(value)
    return bias
