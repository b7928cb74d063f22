"""Resolving a request against its engine's defaults: sampler values, generation limits, prompt choices.

One order everywhere: the request's value, else the pool entry's settings, else the model's generation_config,
else settings.yaml (Hearth's defaults).
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from modules.config import ChatSettings, GenerationSettings
from modules.engine.base import OutputOptions, PromptChoices, SamplerValues
from modules.errors import InvalidParameter
from modules.generation import GenerationRequest, SamplingParams
from modules.loaders.base import ModelInfo
from modules.samplers import SAMPLER_NAMES


def sampling_params(values: SamplerValues, info: ModelInfo, defaults: GenerationSettings,
                    entry: Mapping[str, Any] | None = None) -> SamplingParams:  # fmt: skip
    """Sampler settings: the request's values, else the entry's, else the model's generation_config, else Hearth's."""
    entry = entry or {}
    resolved: dict[str, Any] = {}
    for name in SAMPLER_NAMES:
        value = getattr(values, name)
        if value is None:
            value = entry.get(name, info.generation_defaults.get(name, getattr(defaults, name)))
        resolved[name] = value
    seed = values.seed if values.seed is not None else entry.get("seed", defaults.seed)
    return SamplingParams(
        **resolved,
        logit_bias=MappingProxyType(logit_bias(values.logit_bias)),
        seed=None if seed is None or seed < 0 else seed,  # -1 (text-generation-webui) means random
    )


def generation_request(prompt_ids: list[int], values: SamplerValues, output: OutputOptions, info: ModelInfo,
                       defaults: GenerationSettings, entry: Mapping[str, Any] | None = None, *,
                       extra_stop: tuple[str, ...] = (), trim_leading_space: bool = False,
                       constraint: object | None = None) -> GenerationRequest:  # fmt: skip
    """The scheduler request for one prompt; validated, so a bad value is InvalidParameter naming it."""
    max_tokens = output.max_tokens if output.max_tokens is not None else defaults.max_new_tokens
    if max_tokens < 1:
        raise InvalidParameter(f"max_tokens must be at least 1, got {max_tokens}", param="max_tokens")
    room = info.context_length - len(prompt_ids)
    gen = GenerationRequest(
        prompt_ids=tuple(prompt_ids),
        sampling=sampling_params(values, info, defaults, entry),
        max_tokens=min(max_tokens, max(room, 1)),
        min_tokens=output.min_tokens,
        n=output.n,
        stop=output.stop + extra_stop,
        stop_token_ids=output.stop_token_ids,
        ban_eos=output.ban_eos,
        logprobs=output.logprobs,
        model_id=info.name,
        skip_special_tokens=output.skip_special_tokens,
        trim_leading_space=trim_leading_space,
        constraint=constraint,
    )
    gen.validate(info.vocab_size)
    return gen


def logit_bias(raw: Mapping[Any, float] | None) -> dict[int, float]:
    """OpenAI's {"token id": bias} as {int: float}; InvalidParameter for a key that is not a token id."""
    bias: dict[int, float] = {}
    for key, value in (raw or {}).items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise InvalidParameter(f"logit_bias keys must be token ids, got {key!r}", param="logit_bias") from None
        bias[token] = float(value)
    return bias


def prompt_options(choices: PromptChoices, chat: ChatSettings, entry: Mapping[str, Any], reserve: int = 0):
    """PromptOptions: the request's choices, else the entry's settings (model/load, serving file), else settings.yaml."""
    from modules.prompts import PromptOptions

    if choices.instruction_template or choices.instruction_template_str:
        template, template_str = choices.instruction_template, choices.instruction_template_str
    else:
        template = entry.get("instruction_template") or chat.instruction_template or None
        template_str = entry.get("instruction_template_str")
    return PromptOptions(
        mode=choices.mode or chat.mode,
        instruction_template=template,
        instruction_template_str=template_str,
        chat_template_str=choices.chat_template_str,
        character=choices.character or chat.character,
        name1=choices.name1 or chat.name1,
        name2=choices.name2,
        context=choices.context,
        greeting=choices.greeting,
        user_bio=choices.user_bio if choices.user_bio is not None else chat.user_bio,
        chat_instruct_command=choices.chat_instruct_command or chat.chat_instruct_command,
        continue_=choices.continue_,
        reserve_tokens=reserve,
    )
