"""Model management (admin key when set): list, info, load, unload, stop-generation."""
from __future__ import annotations

import logging

from flask import Blueprint, jsonify

from extensions.openai.errors import APIError
from extensions.openai.schemas import LoadModelRequest
from extensions.openai.state import parse, state
from modules.errors import ModelNotFound

bp = Blueprint("model_admin", __name__)
log = logging.getLogger(__name__)

LOAD_ARGS = {"loader", "cpu", "dtype", "bf16", "trust_remote_code", "threads", "max_batch_size", "prefill_chunk",
             "prefix_cache_mb", "device_map"}  # fmt: skip
PROMPT_SETTINGS = {"instruction_template", "instruction_template_str"}


@bp.get("/v1/internal/model/list")
def model_list():
    """Names of every model in the models folder."""
    return jsonify({"model_names": [e.name for e in state().runtime.models.list()]})


@bp.get("/v1/internal/model/info")
def model_info():
    """The loaded model: name, loader, context, dtype, device and the instruction template in use."""
    runtime = state().runtime
    info = runtime.models.info
    if info is None:
        return jsonify({"model_name": "None", "lora_names": [], "loading": runtime.models.loading})
    return jsonify(
        {"model_name": info.name, "lora_names": [], "loader": info.loader, "context_length": info.context_length,
         "dtype": info.dtype, "device": info.device, "parameters": info.parameters,
         "max_batch_size": runtime.models.loader.capabilities.max_batch,
         "instruction_template": detected_template(runtime), "settings": dict(runtime.models.prompt_settings),
         "loading": runtime.models.loading}
    )  # fmt: skip


def detected_template(runtime) -> str:
    """The instruction template a plain instruct request would use now."""
    from modules.chat_prompt import model_prompt_info
    from modules.prompts import PromptOptions

    loader = runtime.models.loader
    options = PromptOptions(instruction_template=runtime.models.prompt_settings.get("instruction_template"))
    rendered = runtime.prompts.render([{"role": "user", "content": "x"}], options, model_prompt_info(loader))
    return f"{rendered.template_name} ({rendered.template_source})"


@bp.post("/v1/internal/model/load")
def model_load():
    """Load a model; running requests finish first; if it fails the previous model keeps serving."""
    runtime = state().runtime
    req = parse(LoadModelRequest)
    options, ignored = _load_options(req.args or {}, state().config.strict)
    settings = req.settings or {}
    unknown = sorted(set(settings) - PROMPT_SETTINGS)
    if unknown:
        raise APIError(400, f"unknown setting {unknown[0]!r} (known: {', '.join(sorted(PROMPT_SETTINGS))})",
                       param=f"settings.{unknown[0]}")  # fmt: skip
    if "instruction_template" in settings:
        runtime.prompts.load_template(settings["instruction_template"])  # unknown name: 400 before loading
    try:
        runtime.models.resolve(req.model_name)
    except ModelNotFound as exc:
        raise ModelNotFound(exc.message, param="model_name") from None
    info = runtime.models.load(req.model_name, options, prompt_settings=settings)
    return jsonify({"status": "ok", "model_name": info.name, "loader": info.loader,
                    "context_length": info.context_length, "ignored_args": ignored})  # fmt: skip


def _load_options(args: dict, strict: bool) -> tuple[dict, list[str]]:
    """The loader options Hearth takes, and the names of the rest.

    Other loaders' arguments (text-generation-webui's example sends load_in_4bit and n_gpu_layers) are ignored and
    reported, so scripts written for text-generation-webui keep working; --strict-api makes them a 400.
    """
    unknown = sorted(set(args) - LOAD_ARGS)
    if unknown and strict:
        raise APIError(400, f"unsupported loader argument {unknown[0]!r} (supported: {', '.join(sorted(LOAD_ARGS))})",
                       param=f"args.{unknown[0]}")  # fmt: skip
    if unknown:
        log.warning("model load: ignoring loader arguments Hearth does not take: %s", ", ".join(unknown))
    options = {key: value for key, value in args.items() if key in LOAD_ARGS}
    if options.pop("bf16", False):
        options["dtype"] = "bfloat16"
    return options, unknown


@bp.post("/v1/internal/model/unload")
def model_unload():
    """Unload the model after running requests finish."""
    unloaded = state().runtime.models.unload()
    return jsonify({"status": "ok", "unloaded": unloaded})


@bp.post("/v1/internal/stop-generation")
def stop_generation():
    """Stop every running and waiting generation; streams end with finish_reason 'stop'."""
    cancelled = state().runtime.scheduler.cancel_all()
    return jsonify({"status": "ok", "cancelled": cancelled})
