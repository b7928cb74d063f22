"""Model management (admin key when set): list, info, load, unload, stop-generation; per pool entry."""
from __future__ import annotations

import logging

from flask import Blueprint, jsonify, request

from extensions.openai.docs import documented
from extensions.openai.errors import APIError
from extensions.openai.schemas import LoadModelRequest, UnloadModelRequest
from extensions.openai.state import parse, state
from modules.errors import ModelNotFound
from modules.loaders.registry import checked_options, option_names
from modules.serving import ENTRY_SETTINGS, checked_settings

bp = Blueprint("model_admin", __name__)
log = logging.getLogger(__name__)


@bp.get("/v1/internal/model/list")
@documented("Models in the models folder (admin)", tag="Models")
def model_list():
    """Names of every model in the models folder."""
    return jsonify({"model_names": [e.name for e in state().runtime.pool.folder_models()]})


@bp.get("/v1/internal/model/info")
@documented("Every pool entry and its model", tag="Models")
def model_info():
    """The default entry's model (text-generation-webui's fields) and, under `entries`, every pool entry."""
    runtime = state().runtime
    entries = [entry_info(e, e is runtime.pool.default) for e in runtime.pool.entries()]
    default = entries[0]
    if default["model_name"] == "None":
        return jsonify({"model_name": "None", "lora_names": [], "loading": default["loading"], "entries": entries})
    return jsonify({**{k: v for k, v in default.items() if k not in ("name", "default")}, "entries": entries})


def entry_info(entry, default: bool) -> dict:
    """One entry: its name, version and model, with the settings passed when it was loaded."""
    head = {"name": entry.name, "default": default, "version": entry.version}
    manager = entry.manager
    if manager is None:  # an API model or a split: no local model to describe
        return {**head, "model_name": entry.spec.kind, "kind": entry.spec.kind, "lora_names": [], "loading": False}
    info = manager.info
    if info is None:
        return {**head, "model_name": "None", "lora_names": [], "loading": manager.loading}
    return {**head, "model_name": info.name, "lora_names": [], "loader": info.loader,
            "context_length": info.context_length, "dtype": info.dtype, "device": info.device,
            "parameters": info.parameters, "max_batch_size": manager.loader.capabilities.max_batch,
            "instruction_template": detected_template(entry.engine), "settings": dict(manager.prompt_settings),
            "load_options": dict(manager.load_options), "loading": manager.loading}  # fmt: skip


def detected_template(engine) -> str:
    """The instruction template a plain instruct request to this entry would use now."""
    name, source = engine.detected_template()
    return f"{name} ({source})"


@bp.post("/v1/internal/model/load")
@documented("Load a model into a pool entry (admin)", LoadModelRequest, tag="Models")
def model_load():
    """Load a model into an entry (`name`, default: the default entry); the others keep serving.

    Running requests of that entry finish first; if the load fails its previous model keeps serving."""
    runtime = state().runtime
    req = parse(LoadModelRequest)
    options, ignored = _load_options(req.args or {}, state().config.strict)
    settings = req.settings or {}
    unknown = sorted(set(settings) - ENTRY_SETTINGS)
    if unknown:
        raise APIError(400, f"unknown setting {unknown[0]!r} (known: {', '.join(sorted(ENTRY_SETTINGS))})",
                       param=f"settings.{unknown[0]}")  # fmt: skip
    settings = checked_settings(dict(settings), "settings")
    if "instruction_template" in settings:
        runtime.prompts.load_template(settings["instruction_template"])  # unknown name: 400 before loading
    try:
        runtime.models.resolve(req.model_name)
    except ModelNotFound as exc:
        raise ModelNotFound(exc.message, param="model_name") from None
    entry, info = runtime.pool.load(req.model_name, req.name, options, prompt_settings=settings)
    return jsonify({"status": "ok", "name": entry.name, "model_name": info.name, "loader": info.loader,
                    "context_length": info.context_length, "ignored_args": ignored})  # fmt: skip


def _load_options(args: dict, strict: bool) -> tuple[dict, list[str]]:
    """The loader options Hearth takes, and the names of the rest.

    Other loaders' arguments (text-generation-webui's example sends load_in_4bit and n_gpu_layers) are ignored and
    reported, so scripts written for text-generation-webui keep working; --strict-api makes them a 400.
    """
    known = {*option_names(), "bf16"}
    unknown = sorted(set(args) - known)
    if unknown and strict:
        raise APIError(400, f"unsupported loader argument {unknown[0]!r} (supported: {', '.join(sorted(known))})",
                       param=f"args.{unknown[0]}")  # fmt: skip
    if unknown:
        log.warning("model load: ignoring loader arguments Hearth does not take: %s", ", ".join(unknown))
    options = {key: value for key, value in args.items() if key in known}
    if options.pop("bf16", False):
        options["dtype"] = "bfloat16"
    return checked_options(options), unknown


@bp.post("/v1/internal/model/unload")
@documented("Unload a pool entry's model (admin)", UnloadModelRequest, tag="Models")
def model_unload():
    """Unload one entry's model (`name`, default: the default entry) after its running requests finish."""
    name = parse(UnloadModelRequest).name if request.get_data(cache=True).strip() else None
    unloaded = state().runtime.pool.unload(name)
    return jsonify({"status": "ok", "name": name, "unloaded": unloaded})


@bp.post("/v1/internal/stop-generation")
@documented("Stop every generation (admin)", tag="Models")
def stop_generation():
    """Stop every running and waiting generation of every entry; streams end with finish_reason 'stop'."""
    cancelled = state().runtime.pool.cancel_all()
    return jsonify({"status": "ok", "cancelled": cancelled})
