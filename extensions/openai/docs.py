"""GET /openapi.json (Hearth's own API description, from the pydantic models) and GET /docs (Swagger UI, offline)."""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from flask import Blueprint, Response, abort, current_app, jsonify, send_from_directory
from pydantic import BaseModel

from extensions.openai.responses import HEARTH_VERSION

bp = Blueprint("docs", __name__)
SKIPPED_METHODS = {"HEAD", "OPTIONS"}

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Hearth API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head><body><div id="ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui", persistAuthorization: true});</script></body></html>"""


@dataclass(frozen=True)
class Operation:
    """What /openapi.json says of a route: a summary, its request body's pydantic model, a tag."""

    summary: str
    request: type[BaseModel] | None = None
    tag: str = "OpenAI"


def documented(summary: str, request: type[BaseModel] | None = None, tag: str = "OpenAI") -> Callable:
    """Mark a view function for the OpenAPI document (put it under the route decorator)."""

    def mark(view: Callable) -> Callable:
        view.openapi = Operation(summary, request, tag)
        return view

    return mark


def documented_routes(app) -> list[tuple[str, str, Operation]]:
    """(method, OpenAPI path, Operation) of every documented route of `app`, read from its URL map."""
    routes = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        operation = getattr(app.view_functions.get(rule.endpoint), "openapi", None)
        if operation is None:
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        routes += [(method.lower(), path, operation) for method in sorted(rule.methods - SKIPPED_METHODS)]
    return routes


def _component_schemas(models: tuple[type[BaseModel], ...]) -> dict:
    from pydantic.json_schema import models_json_schema

    _, top = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
    return top.get("$defs", {})


def openapi_document(routes: list[tuple[str, str, Operation]]) -> dict:
    """The OpenAPI 3.1 description of the documented routes."""
    error = {"$ref": "#/components/schemas/Error"}
    paths: dict = {}
    for method, path, operation in routes:
        model = operation.request.__name__ if operation.request else None
        op = {"summary": operation.summary, "tags": [operation.tag], "responses": {
            "200": {"description": "OK"},
            "4XX": {"description": "Error", "content": {"application/json": {"schema": error}}},
        }}  # fmt: skip
        if model:
            ref = {"$ref": f"#/components/schemas/{model}"}
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
        paths.setdefault(path, {})[method] = op
    components = _component_schemas(tuple(dict.fromkeys(o.request for _, _, o in routes if o.request)))
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
    """The OpenAPI document, from the routes' own metadata and request models."""
    return jsonify(openapi_document(documented_routes(current_app)))


@bp.get("/docs")
def docs_page():
    """Swagger UI 5 (OpenAPI 3.1), served from the swagger-ui-py package (no CDN)."""
    return Response(PAGE, mimetype="text/html")


@bp.get("/docs/static/<path:name>")
def docs_static(name: str):
    """Swagger UI's own files."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        abort(404)
    return send_from_directory(Path(spec.submodule_search_locations[0]) / "static", name)
