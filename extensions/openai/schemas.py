"""Pydantic request models for the HTTP edge, ordered like OpenAI's docs, plus text-generation-webui extras.

Types are checked here (strict: "5" is not a number); ranges are checked by the engine's own validation so the
UI and the API reject the same values with the same messages.
"""
from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from modules.samplers import BY_NAME

StopField = Union[str, list[str], None]
Number = Union[int, float]


def sampler_field(name: str):
    """A request's sampler field, described (range, default) from modules/samplers.py's table; unset is None."""
    sampler = BY_NAME[name]
    extra: dict[str, Any] = {"exclusiveMinimum" if sampler.low_open else "minimum": sampler.low}
    if sampler.high is not None:
        extra["maximum"] = sampler.high
    what = f"{sampler.help}; " if sampler.help else ""
    return Field(default=None, json_schema_extra=extra, description=f"{what}unset: the pool entry's setting, else "
                 f"the model's generation_config, else settings.yaml (Hearth's default {sampler.default:g})")


class StreamOptions(BaseModel):
    """stream_options: include a final usage chunk."""

    model_config = ConfigDict(strict=True, extra="allow")
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = ConfigDict(strict=True, extra="allow", populate_by_name=True)

    model: str | None = None
    frequency_penalty: Number | None = sampler_field("frequency_penalty")
    logit_bias: dict[str, Number] | None = None
    max_tokens: int | None = None
    n: int | None = None
    presence_penalty: Number | None = sampler_field("presence_penalty")
    seed: int | None = None
    stop: StopField = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Number | None = sampler_field("temperature")
    top_p: Number | None = sampler_field("top_p")
    user: str | None = None
    # text-generation-webui / vLLM extras
    top_k: int | None = sampler_field("top_k")
    min_p: Number | None = sampler_field("min_p")
    typical_p: Number | None = sampler_field("typical_p")
    repetition_penalty: Number | None = sampler_field("repetition_penalty")
    no_repeat_ngram_size: int | None = sampler_field("no_repeat_ngram_size")
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    ban_eos_token: bool | None = None
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool | None = None
    max_new_tokens: int | None = None  # text-generation-webui's name for max_tokens

    @property
    def stop_list(self) -> tuple[str, ...]:
        """`stop` as a tuple of strings."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CalledFunction(BaseModel):
    """The function of an assistant message's tool call; arguments as JSON text (OpenAI) or an object."""

    model_config = ConfigDict(strict=True, extra="allow")
    name: str
    arguments: Union[str, dict[str, Any]] = "{}"


class MessageToolCall(BaseModel):
    """A tool call of an earlier assistant message."""

    model_config = ConfigDict(strict=True, extra="allow")
    id: str | None = None
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(BaseModel):
    """One message; content is a string or a list of parts (only text parts are supported)."""

    model_config = ConfigDict(strict=True, extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Union[str, list[dict[str, Any]], None] = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(BaseModel):
    """A function the model may call; `parameters` is a JSON schema of its arguments."""

    model_config = ConfigDict(strict=True, extra="allow")
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(BaseModel):
    """One entry of `tools`."""

    model_config = ConfigDict(strict=True, extra="allow")
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    """{"name": ...} of a named tool_choice."""

    model_config = ConfigDict(strict=True, extra="allow")
    name: str


class NamedToolChoice(BaseModel):
    """tool_choice naming one function."""

    model_config = ConfigDict(strict=True, extra="allow")
    type: Literal["function"]
    function: FunctionName


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    max_completion_tokens: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    functions: list[dict[str, Any]] | None = None
    function_call: Union[str, dict[str, Any], None] = None
    parallel_tool_calls: bool | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None
    # text-generation-webui prompt-format extras
    mode: Literal["instruct", "chat", "chat-instruct"] | None = None
    instruction_template: str | None = None
    instruction_template_str: str | None = None
    chat_template_str: str | None = None
    character: str | None = None
    name1: str | None = Field(default=None, alias="user_name")
    name2: str | None = Field(default=None, alias="bot_name")
    context: str | None = None
    greeting: str | None = None
    user_bio: str | None = None
    chat_instruct_command: str | None = None
    continue_: bool = False


PromptField = Union[str, list[str], list[int], list[list[int]]]


class CompletionRequest(SamplingFields):
    """POST /v1/completions."""

    prompt: PromptField
    best_of: int | None = None
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None


EmbeddingInput = Union[str, list[str], list[int], list[list[int]]]


class EmbeddingsRequest(BaseModel):
    """POST /v1/embeddings."""

    model_config = ConfigDict(strict=True, extra="allow")
    input: EmbeddingInput
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class ModerationRequest(BaseModel):
    """POST /v1/moderations (text only)."""

    model_config = ConfigDict(strict=True, extra="allow")
    input: Union[str, list[str]]
    model: str | None = None


class EncodeRequest(BaseModel):
    """POST /v1/internal/encode and /v1/internal/token-count."""

    model_config = ConfigDict(strict=True, extra="allow")
    text: str


class DecodeRequest(BaseModel):
    """POST /v1/internal/decode."""

    model_config = ConfigDict(strict=True, extra="allow")
    tokens: list[int]


class LogitsRequest(SamplingFields):
    """POST /v1/internal/logits: next-token candidates, raw or after the sampler settings."""

    prompt: str
    use_samplers: bool = False
    top_logits: int = 50


class LoadModelRequest(BaseModel):
    """POST /v1/internal/model/load."""

    model_config = ConfigDict(strict=True, extra="allow")
    model_name: str
    name: str | None = None  # the pool entry to load into (a new name adds one); None: the default entry
    args: dict[str, Any] | None = None
    settings: dict[str, Any] | None = None


class UnloadModelRequest(BaseModel):
    """POST /v1/internal/model/unload (the body is optional)."""

    model_config = ConfigDict(strict=True, extra="allow")
    name: str | None = None  # the pool entry to unload; None: the default entry
