"""Validated request bodies -> the engine's plain requests (the engine resolves what is left unset)."""
from __future__ import annotations

import logging

from pydantic import BaseModel

from extensions.openai.errors import APIError
from extensions.openai.prompting import flatten_messages
from extensions.openai.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from modules.constraints.grammar import for_response_format
from modules.engine import base as engine
from modules.tools.spec import Tool, ToolChoice

log = logging.getLogger(__name__)


def check_unknown(req: BaseModel, strict: bool) -> None:
    """Unknown fields are logged at debug level, or a 400 with --strict-api."""
    unknown = sorted(req.model_extra or {})
    if not unknown:
        return
    if strict:
        raise APIError(400, f"unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
    log.debug("ignoring unknown request fields: %s", ", ".join(unknown))


def sampler_values(req: SamplingFields) -> engine.SamplerValues:
    """The request's sampler fields, None where unset."""
    return engine.SamplerValues(
        temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, min_p=req.min_p, typical_p=req.typical_p,
        repetition_penalty=req.repetition_penalty, presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty, no_repeat_ngram_size=req.no_repeat_ngram_size, seed=req.seed,
        logit_bias=req.logit_bias,
    )  # fmt: skip


def output_options(req: SamplingFields, max_tokens: int | None, logprobs: int | None) -> engine.OutputOptions:
    """Length, stop and logprob options of a request."""
    return engine.OutputOptions(
        max_tokens=max_tokens,
        min_tokens=req.min_tokens or 0,
        n=req.n if req.n is not None else 1,
        stop=req.stop_list,
        stop_token_ids=tuple(req.stop_token_ids or ()),
        ban_eos=bool(req.ignore_eos or req.ban_eos_token),
        logprobs=logprobs,
        skip_special_tokens=req.skip_special_tokens if req.skip_special_tokens is not None else True,
    )


def chat_request(req: ChatCompletionRequest) -> engine.ChatRequest:
    """The engine's chat request (max_tokens: max_completion_tokens, max_tokens or max_new_tokens; 0 is a 400)."""
    given = [v for v in (req.max_completion_tokens, req.max_tokens, req.max_new_tokens) if v is not None]
    prompt = engine.PromptChoices(
        mode=req.mode, instruction_template=req.instruction_template,
        instruction_template_str=req.instruction_template_str, chat_template_str=req.chat_template_str,
        character=req.character, name1=req.name1, name2=req.name2, context=req.context, greeting=req.greeting,
        user_bio=req.user_bio, chat_instruct_command=req.chat_instruct_command, continue_=req.continue_,
    )  # fmt: skip
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    tools = tuple(_tool(t.function) for t in req.tools or ())
    return engine.ChatRequest(tuple(flatten_messages(req.messages)), prompt, sampler_values(req),
                              output_options(req, given[0] if given else None, logprobs), user=req.user,
                              tools=tools, tool_choice=_tool_choice(req, bool(tools)),
                              constraint=for_response_format(req.response_format))  # fmt: skip


def _tool(function) -> Tool:
    parameters = function.parameters if function.parameters is not None else {"type": "object", "properties": {}}
    return Tool(function.name, function.description or "", parameters)


def _tool_choice(req: ChatCompletionRequest, has_tools: bool) -> ToolChoice:
    """OpenAI's default: "auto" with tools, "none" without."""
    parallel = req.parallel_tool_calls is not False
    choice = req.tool_choice
    if choice is None:
        return ToolChoice("auto" if has_tools else "none", parallel=parallel)
    if isinstance(choice, str):
        return ToolChoice(choice, parallel=parallel)
    return ToolChoice("named", choice.function.name, parallel=parallel)


def completion_request(req: CompletionRequest, max_tokens: int) -> engine.CompletionRequest:
    """The engine's completion request: every prompt as text or a tuple of token ids."""
    prompts = tuple(p if isinstance(p, str) else tuple(p) for p in _prompt_list(req.prompt))
    return engine.CompletionRequest(prompts, req.suffix, req.echo, sampler_values(req),
                                    output_options(req, max_tokens, req.logprobs), user=req.user)  # fmt: skip


def _prompt_list(prompt) -> list:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise APIError(400, "prompt must not be empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    return list(prompt)
