"""The local engine: renders, tokenizes and submits to its own scheduler, whose worker runs a loaded model."""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Callable, TypeVar

from modules.chat_prompt import PreparedPrompt, model_prompt_info, prepare_prompt
from modules.config import Settings
from modules.engine.base import (
    Capabilities, ChatRequest, CompletionRequest, Engine, Generation, PromptChoices, PromptPreview, SamplerValues,
    TokenProb,
)
from modules.engine.params import generation_request, prompt_options, sampling_params
from modules.errors import ContextTooLong, HearthError, InvalidParameter, ModelChanged, ModelNotLoaded
from modules.loaders.base import Loader
from modules.loaders.registry import capabilities_of
from modules.model_manager import ModelManager
from modules.samplers import SAMPLER_NAMES
from modules.tools.formats import FORMATS, MARKERS, call_grammar
from modules.tools.parser import ToolCallParser
from modules.tools.spec import check_tools

log = logging.getLogger(__name__)
T = TypeVar("T")
FIM_TOKENS = (("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"), ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"))


class LocalEngine(Engine):
    """One pool entry's model on this machine: a ModelManager (load, swap, unload) and its scheduler."""

    def __init__(self, manager: ModelManager, prompts, settings: Settings, name: str | None = None):
        self.manager = manager
        self.prompts = prompts  # modules.prompts.PromptStore
        self.settings = settings
        self.fixed_name = name  # None: named after the model it serves

    @property
    def name(self) -> str | None:
        """The entry's name, or the loaded model's for an unnamed engine."""
        if self.fixed_name is not None:
            return self.fixed_name
        info = self.manager.info
        return info.name if info is not None else None

    @property
    def capabilities(self) -> Capabilities:
        """What the loader declares in the registry, and what the loaded model reports (logits, batch size)."""
        loader = self.loader()
        declared = capabilities_of(loader.info.loader)
        flags = {f: f in declared for f in ("templates", "token_ids", "logprobs", "prompt_logprobs", "logits")}
        flags["logits"] = flags["logits"] and loader.capabilities.logits
        caps = loader.capabilities
        return Capabilities(**flags, max_batch=caps.max_batch, constraints=caps.constraints)

    def loader(self) -> Loader:
        """The loaded model, or ModelNotLoaded naming the entry."""
        loader = self.manager.loader
        if loader is None:
            what = f"entry {self.fixed_name!r} has no model loaded" if self.fixed_name else "no model is loaded"
            raise ModelNotLoaded(f"{what}; load one with POST /v1/internal/model/load")
        return loader

    def chat(self, request: ChatRequest) -> Generation:
        """Render with the chosen template, tokenize, submit; prepared again if the model changed meanwhile."""
        return _once_more_on_model_change(lambda: self._chat(request))

    def preview(self, request: ChatRequest) -> PromptPreview:
        """The prompt `request` renders to and its token count."""
        loader = self.loader()
        return _preview(self._prepare(request, loader), loader)

    def complete(self, request: CompletionRequest) -> Generation:
        """Tokenize (or take token ids), check the context, score echoed prompts, submit every prompt."""
        return _once_more_on_model_change(lambda: self._complete(request))

    def next_token_probs(self, prompt: str, sampling: SamplerValues | None, top: int) -> list[TokenProb]:
        """The `top` likeliest next tokens after `prompt`, on the worker, between decode steps."""
        loader = self.loader()
        info = loader.info
        self.capabilities.require("logits", "prompt", "next-token probabilities")
        if not 1 <= top <= info.vocab_size:
            raise InvalidParameter(f"top_logits must be in [1, {info.vocab_size}]", param="top_logits")
        ids = loader.encode(prompt, add_special_tokens=True)
        if not ids:
            raise InvalidParameter("the prompt is empty", param="prompt")
        if len(ids) >= info.context_length:
            raise ContextTooLong("the prompt does not fit the model's context", param="prompt")
        params = None
        if sampling is not None:
            params = sampling_params(sampling, info, self.settings.generation, self.manager.prompt_settings)
            params.validate(info.vocab_size)
        found = self.manager.scheduler.run_exclusive(lambda model: model.next_token_probs(ids, params, top))
        return [TokenProb(t, loader.token_bytes(t), p) for t, p in found]

    def sampler_defaults(self) -> tuple[dict, dict]:
        """(every sampler's value for a request that sets none, the ones the entry or the model chose)."""
        loader = self.loader()
        entry = self.manager.prompt_settings
        resolved = sampling_params(SamplerValues(), loader.info, self.settings.generation, entry)
        own = {k: v for k, v in {**loader.info.generation_defaults, **entry}.items() if k in SAMPLER_NAMES}
        return {name: getattr(resolved, name) for name in SAMPLER_NAMES}, own

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, BOS included when the model adds one."""
        return self.loader().encode(text, add_special_tokens=True)

    def decode(self, ids: list[int]) -> str:
        """Text of token ids (special tokens kept); InvalidParameter for ids outside the vocabulary."""
        loader = self.loader()
        _check_ids(ids, loader.info.vocab_size, "tokens")
        return loader.decode(ids, skip_special_tokens=False)

    def detected_template(self) -> tuple[str, str]:
        """(template, source) a plain instruct request would use now."""
        choices = PromptChoices(mode="instruct", character="Assistant")
        options = prompt_options(choices, self.settings.chat, self.manager.prompt_settings)
        rendered = self.prompts.render([{"role": "user", "content": "x"}], options, model_prompt_info(self.loader()))
        return rendered.template_name, rendered.template_source

    # ---- request threads ----------------------------------------------------------------------------------
    def _chat(self, request: ChatRequest) -> Generation:
        loader = self.loader()
        self._check(request.output)
        check_tools(request.tools)
        request.tool_choice.check(request.tools)
        prepared = self._prepare(request, loader)
        grammar = self._chat_grammar(request, prepared, loader)
        output, calls = request.output, prepared.tool_format is not None
        if calls:  # call markup may be special tokens (Mistral's [TOOL_CALLS]): keep them for the parser
            output = dataclasses.replace(output, skip_special_tokens=False)
        gen = generation_request(prepared.ids, request.sampling, output, loader.info, self.settings.generation,
                                 self.manager.prompt_settings, extra_stop=() if grammar else prepared.stop,
                                 trim_leading_space=prepared.trim_reply_start, constraint=grammar)  # fmt: skip
        handle = self.manager.scheduler.submit(gen)
        parser = None
        if calls:
            names = [t.name for t in request.tools]
            parser = functools.partial(ToolCallParser, FORMATS[prepared.tool_format], names)
        return Generation(self.name or loader.info.name, [handle], loader.token_bytes,
                          (loader.info.dtype, prepared.template), preview=_preview(prepared, loader),
                          tool_parser=parser)  # fmt: skip

    def _chat_grammar(self, request: ChatRequest, prepared: PreparedPrompt, loader: Loader):
        """The compiled grammar of a chat reply: the calls a tool_choice enforces, else the request's constraint.

        With tools offered freely (auto) and a response_format, the reply follows the format (no calls)."""
        choice = request.tool_choice
        if request.tools and choice.enforced:
            grammar = call_grammar(FORMATS[prepared.tool_format], request.tools, choice, _marker_ids(loader))
        elif request.constraint is not None:
            grammar = request.constraint
        else:
            return None
        return self._compile(grammar, loader)

    def _compile(self, grammar, loader: Loader):
        self.capabilities.require("constraints", grammar.param, "constrained output")
        return loader.compile_grammar(grammar)

    def _check(self, output) -> None:
        """Refuse what the loader cannot do, naming the parameter."""
        caps = self.capabilities
        if output.logprobs is not None:
            caps.require("logprobs", "logprobs", "logprobs")
        if output.stop_token_ids:
            caps.require("token_ids", "stop_token_ids", "stop_token_ids")

    def _prepare(self, request: ChatRequest, loader: Loader) -> PreparedPrompt:
        max_tokens = request.output.max_tokens or self.settings.generation.max_new_tokens
        reserve = min(max(max_tokens, 0), loader.info.context_length // 2)  # room for the reply when dropping turns
        options = prompt_options(request.prompt, self.settings.chat, self.manager.prompt_settings, reserve)
        if request.tool_choice.mode != "none":  # with "none" the tools stay out of the prompt: no calls to make
            options = dataclasses.replace(options, tools=request.tools)
        messages = [dict(m) for m in request.messages]
        try:
            return prepare_prompt(self.prompts, messages, options, loader)
        except ContextTooLong:
            if not request.shrink_reply or reserve == 0:
                raise
        # Even the latest turn leaves less room than max_tokens: reply in whatever room is left.
        return prepare_prompt(self.prompts, messages, dataclasses.replace(options, reserve_tokens=0), loader)

    def _complete(self, request: CompletionRequest) -> Generation:
        loader = self.loader()
        info = loader.info
        self._check(request.output)
        if request.echo and request.output.logprobs is not None:
            self.capabilities.require("prompt_logprobs", "logprobs", "logprobs of an echoed prompt")
        if any(not isinstance(p, str) for p in request.prompts):
            self.capabilities.require("token_ids", "prompt", "a prompt of token ids")
        prompts = [self._prompt_ids(loader, p, request.suffix) for p in request.prompts]
        for ids, _ in prompts:
            if len(ids) >= info.context_length:
                raise ContextTooLong(f"the prompt is {len(ids)} tokens but the model's context is "
                                     f"{info.context_length}", param="prompt")  # fmt: skip
        echoes = [self._echo(loader, ids, text, request.output.logprobs) for ids, text in prompts] if request.echo \
            else None  # fmt: skip
        result = Generation(self.name or info.name, [], loader.token_bytes, (info.dtype,), echoes=echoes,
                            prompt_tokens=sum(len(ids) for ids, _ in prompts))  # fmt: skip
        if request.output.max_tokens == 0 and request.echo:  # score the prompt only (lm-evaluation-harness)
            return result
        grammar = self._compile(request.constraint, loader) if request.constraint is not None else None
        gens = [generation_request(ids, request.sampling, request.output, info, self.settings.generation,
                                   self.manager.prompt_settings, constraint=grammar) for ids, _ in prompts]  # fmt: skip
        try:
            result.handles += [self.manager.scheduler.submit(g) for g in gens]
        except HearthError:  # e.g. the queue filled up or the model changed: the prompts already queued go too
            result.cancel()
            raise
        return result

    def _prompt_ids(self, loader: Loader, prompt, suffix: str | None) -> tuple[list[int], str]:
        """(token ids, prompt text) for one prompt; with `suffix`, a fill-in-the-middle prompt."""
        if not isinstance(prompt, str):
            _check_ids(prompt, loader.info.vocab_size, "prompt")
        text = prompt if isinstance(prompt, str) else loader.decode(list(prompt), skip_special_tokens=False)
        if suffix is not None:
            return loader.encode(_fim_prompt(loader, text, suffix)), text
        if isinstance(prompt, str):
            return loader.encode(prompt, add_special_tokens=True), text
        return list(prompt), text

    def _echo(self, loader: Loader, ids: list[int], text: str, top: int | None) -> tuple[str, list]:
        """The prompt text to echo and, when logprobs are asked, each prompt token's logprob (on the worker)."""
        if top is None:
            return text, []
        items = self.manager.scheduler.run_exclusive(lambda model: model.prompt_logprobs(ids, top))
        info = loader.info
        bos_text = info.bos_token or "\x00"
        if ids and ids[0] == info.bos_token_id and not text.startswith(bos_text):
            items = items[1:]  # a BOS the tokenizer added is not part of the echoed text
        return text, items


def _preview(prepared: PreparedPrompt, loader: Loader) -> PromptPreview:
    return PromptPreview(prepared.text, len(prepared.ids), prepared.template, prepared.template_source,
                         prepared.stop, loader.info.context_length, prepared.dropped_messages)  # fmt: skip


def _marker_ids(loader: Loader) -> dict[str, int]:
    """Tool-call tags the tokenizer holds as one token (the call grammar accepts that token too)."""
    found = {}
    for marker in MARKERS:
        ids = loader.encode(marker)
        if len(ids) == 1:
            found[marker] = ids[0]
    return found


def _check_ids(ids, vocab_size: int, param: str) -> None:
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidParameter(f"token id {bad} is outside the vocabulary (size {vocab_size})", param=param)


def _fim_prompt(loader: Loader, prefix: str, suffix: str) -> str:
    for pre, suf, mid in FIM_TOKENS:
        if all(len(loader.encode(t)) == 1 for t in (pre, suf, mid)):
            return f"{pre}{prefix}{suf}{suffix}{mid}"
    raise InvalidParameter("suffix needs a fill-in-the-middle model (one with <|fim_prefix|> tokens)", param="suffix")


def _once_more_on_model_change(start: Callable[[], T]) -> T:
    """`start()` once more if the model was swapped while the request was prepared (ModelChanged at submit).

    Scheduler.submit() waits out a swap, so the second try renders and tokenizes for the new model."""
    try:
        return start()
    except ModelChanged:
        log.info("the model changed while a request was prepared; preparing it again")
        return start()
