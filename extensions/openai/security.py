"""Before every request: CORS preflight, the Host-header check, and API / admin keys."""
from __future__ import annotations

import hmac
import ipaddress

from flask import Flask, Response, request

from extensions.openai.errors import APIError
from extensions.openai.state import state

ADMIN_PREFIXES = ("/v1/internal/model/load", "/v1/internal/model/unload", "/v1/internal/model/list",
                  "/v1/internal/stop-generation", "/v1/internal/preferences")  # fmt: skip
LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}
PUBLIC_PATHS = ("/openapi.json", "/docs", "/docs/")
PUBLIC_PREFIX = "/docs/static/"


def install(app: Flask) -> None:
    """Register the checks and CORS headers on `app`."""
    app.before_request(_check_request)
    app.after_request(_cors)


def _check_request():
    config = state().config
    if request.method == "OPTIONS":
        return Response(status=204)  # CORS preflight carries no credentials
    if not config.listen and not is_loopback_host(request.host):
        # Without --listen only loopback names are served: a DNS-rebinding page cannot reach the API.
        raise APIError(400, "invalid Host header; start with --listen to serve other host names",
                       param=None, code="invalid_host")  # fmt: skip
    if request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIX):
        return None  # the API's description and its docs page: every call made from the page needs the key
    admin_route = request.path.startswith(ADMIN_PREFIXES)
    needed = (config.admin_key or config.api_key) if admin_route else config.api_key
    if needed and not _key_matches(needed):
        raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                       code="invalid_api_key")  # fmt: skip
    return None


def _key_matches(expected: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        given = request.headers.get("X-Api-Key", "")
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def is_loopback_host(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1, with or without a port."""
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else host
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _cors(response: Response) -> Response:
    # As text-generation-webui: any origin, any method, any header.
    origin = request.headers.get("Origin")
    response.headers["Access-Control-Allow-Origin"] = origin or "*"
    if origin:
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Vary"] = "Origin"
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS, DELETE"
    response.headers["Access-Control-Allow-Headers"] = request.headers.get("Access-Control-Request-Headers", "*")
    return response
