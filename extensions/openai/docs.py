"""GET /openapi.json (Hearth's own API description, from the pydantic models) and GET /docs (Swagger UI, offline)."""
from __future__ import annotations

from functools import lru_cache

from flask import Blueprint, Response, abort, current_app, jsonify, send_from_directory

from extensions.openai import schemas
from extensions.openai.responses import HEARTH_VERSION

bp = Blueprint("docs", __name__)

# (method, path, summary, request model name or None, tag)
ROUTES = [
    ("post", "/v1/chat/completions", "Chat completion (SSE when stream=true)", "ChatCompletionRequest", "OpenAI"),
    ("post", "/v1/completions", "Text completion (SSE when stream=true)", "CompletionRequest", "OpenAI"),
    ("get", "/v1/models", "List models: every model in the models folder, the loaded one first", None, "OpenAI"),
    ("get", "/v1/models/{model}", "One model", None, "OpenAI"),
    ("post", "/v1/internal/chat-prompt", "The prompt a chat request renders to", "ChatCompletionRequest", "Internal"),
    ("get", "/v1/internal/health", "Liveness, loaded model and queue", None, "Internal"),
    ("post", "/v1/embeddings", "Embeddings (sentence-transformers; float or base64)", "EmbeddingsRequest", "OpenAI"),
    ("post", "/v1/moderations", "Embedding-based moderation", "ModerationRequest", "OpenAI"),
    ("post", "/v1/internal/encode", "Tokenize text", "EncodeRequest", "Internal"),
    ("post", "/v1/internal/decode", "Detokenize ids", "DecodeRequest", "Internal"),
    ("post", "/v1/internal/token-count", "Count tokens", "EncodeRequest", "Internal"),
    ("post", "/v1/internal/logits", "Next-token probabilities, raw or after samplers", "LogitsRequest", "Internal"),
    ("get", "/v1/internal/model/list", "Models in the models folder (admin)", None, "Models"),
    ("get", "/v1/internal/model/info", "The loaded model", None, "Models"),
    ("post", "/v1/internal/model/load", "Load a model (admin)", "LoadModelRequest", "Models"),
    ("post", "/v1/internal/model/unload", "Unload the model (admin)", None, "Models"),
    ("post", "/v1/internal/stop-generation", "Stop every generation (admin)", None, "Models"),
]
REQUEST_MODELS = ("ChatCompletionRequest", "CompletionRequest", "EmbeddingsRequest", "ModerationRequest",
                  "EncodeRequest", "DecodeRequest", "LogitsRequest", "LoadModelRequest")  # fmt: skip

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Hearth API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head><body><div id="ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script></body></html>"""


@lru_cache(maxsize=1)
def _component_schemas() -> dict:
    from pydantic.json_schema import models_json_schema

    models = [(getattr(schemas, name), "validation") for name in REQUEST_MODELS]
    _, top = models_json_schema(models, ref_template="#/components/schemas/{model}")
    return top.get("$defs", {})


def openapi_document(routes) -> dict:
    """The OpenAPI 3.1 description of Hearth's API."""
    error = {"$ref": "#/components/schemas/Error"}
    paths: dict = {}
    for method, path, summary, model, tag in routes:
        op = {"summary": summary, "tags": [tag], "responses": {
            "200": {"description": "OK"},
            "4XX": {"description": "Error", "content": {"application/json": {"schema": error}}},
        }}  # fmt: skip
        if model:
            ref = {"$ref": f"#/components/schemas/{model}"}
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
        paths.setdefault(path, {})[method] = op
    components = dict(_component_schemas())
    components["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["message", "type", "param", "code"], "properties": {
            "message": {"type": "string"}, "type": {"type": "string"},
            "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]},
        }}},
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {"title": "Hearth API", "version": HEARTH_VERSION,
                 "description": "OpenAI-compatible API with text-generation-webui extensions. WebSocket streaming: "
                                "/v1/ws/chat/completions, /v1/ws/completions (same JSON, chunks as messages, then "
                                "[DONE]); legacy /api/v1/stream and /api/v1/chat-stream."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
    }  # fmt: skip


@bp.get("/openapi.json")
def openapi_json():
    """The OpenAPI document."""
    return jsonify(openapi_document(ROUTES))


@bp.get("/docs")
def docs_page():
    """Swagger UI, served from the swagger-ui-bundle package (no CDN)."""
    return Response(PAGE, mimetype="text/html")


@bp.get("/docs/static/<path:name>")
def docs_static(name: str):
    """Swagger UI's own files."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        abort(404)
    current_app.logger.debug("docs asset %s", name)
    return send_from_directory(swagger_ui_path, name)
