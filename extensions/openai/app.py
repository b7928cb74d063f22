"""create_app(runtime, params): the Flask app of the OpenAI-compatible API. Nothing happens at import."""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from flask import Flask, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.routing import WebsocketMismatch

from extensions.openai import (
    chat, completions, docs, embeddings, feedback, internal, model_admin, models, security, takeoff, tokens, websocket,
)
from extensions.openai.errors import APIError, from_domain, from_validation, internal as internal_error
from extensions.openai.state import ApiConfig, ApiState, install_arrivals
from modules.errors import HearthError

log = logging.getLogger(__name__)

GENERATION_ENDPOINTS = frozenset({"chat.chat_completions", "completions.completions", "takeoff.generate",
                                  "takeoff.generate_stream"})  # fmt: skip
BLUEPRINTS = (
    chat.bp, completions.bp, models.bp, internal.bp, docs.bp, embeddings.bp, tokens.bp, model_admin.bp, websocket.bp,
    feedback.bp, takeoff.bp,
)


def api_config(runtime, params: Mapping[str, Any]) -> ApiConfig:
    """The API's settings from the runtime's settings and the extension's params."""
    server = runtime.settings.server
    return ApiConfig(
        api_key=server.api_key,
        admin_key=server.admin_key,
        listen=server.listen or server.host not in ("127.0.0.1", "localhost", "::1"),
        strict=server.strict_api,
        max_body_bytes=int(float(params.get("max_body_mb", server.max_body_mb)) * 1024 * 1024),
        debug=bool(int(params.get("debug", 0) or 0)),
        keepalive=float(params.get("keepalive", 10.0)),
    )


def embedding_models(runtime, params: Mapping[str, Any]):
    """Embedding models as text-generation-webui configures them: env first, then settings, then the default."""
    from modules.embeddings import EmbeddingModels

    default = os.environ.get("OPENEDAI_EMBEDDING_MODEL") or params.get("embedding_model") or ""
    device = os.environ.get("OPENEDAI_EMBEDDING_DEVICE") or params.get("embedding_device") or "cpu"
    return EmbeddingModels(runtime.models.model_dir, default, device)


def create_app(runtime, params: Mapping[str, Any] | None = None) -> Flask:
    """Build the API app around `runtime`."""
    config = api_config(runtime, params or {})
    app = Flask("hearth-openai")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.json.ensure_ascii = False
    app.json.sort_keys = False
    app.extensions["hearth"] = ApiState(runtime, config, embedding_models(runtime, params or {}))
    security.install(app)
    install_arrivals(app, GENERATION_ENDPOINTS)
    for bp in BLUEPRINTS:
        app.register_blueprint(bp)
    _install_error_handlers(app, config)
    return app


def _install_error_handlers(app: Flask, config: ApiConfig) -> None:
    def respond(error: APIError):
        if config.debug or error.status >= 500:
            log.log(logging.WARNING if error.status >= 500 else logging.DEBUG, "%s %s -> %d %s",
                    request.method, request.path, error.status, error.message)  # fmt: skip
        return jsonify(error.to_dict()), error.status, error.headers

    app.register_error_handler(APIError, respond)
    app.register_error_handler(HearthError, lambda exc: respond(from_domain(exc)))
    app.register_error_handler(ValidationError, lambda exc: respond(from_validation(exc)))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if isinstance(exc, RequestEntityTooLarge):
            limit = config.max_body_bytes / (1024 * 1024)
            return respond(APIError(413, f"the request body is larger than {limit:g} MB", code="request_too_large"))
        if isinstance(exc, WebsocketMismatch):
            return respond(APIError(400, "this endpoint speaks WebSocket; send an Upgrade: websocket request",
                                    code="upgrade_required"))  # fmt: skip
        if exc.code == 404:
            return respond(APIError(404, f"Invalid URL ({request.method} {request.path})", code="unknown_url"))
        if exc.code == 405:
            return respond(APIError(405, f"method {request.method} is not allowed on {request.path}",
                                    code="method_not_allowed"))  # fmt: skip
        return respond(APIError(exc.code or 400, exc.description or exc.name))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        return respond(internal_error(exc))
