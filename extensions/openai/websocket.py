"""WebSocket streaming (flask-sock) on the API port.

- /v1/ws/chat/completions and /v1/ws/completions: send the same JSON as the HTTP routes, receive the same
  chunk objects as text messages, then "[DONE]". One socket can carry several requests in turn.
- /api/v1/stream and /api/v1/chat-stream: text-generation-webui's legacy message format, for old clients.
A closed socket cancels its generation; the API key is checked on the upgrade request like any route.
"""
from __future__ import annotations

import html
import json
from contextlib import closing
from typing import Callable, Iterator

from flask import Blueprint
from flask_sock import Sock
from pydantic import ValidationError

from extensions.openai.chat import Run, start_chat
from extensions.openai.completions import start_completion
from extensions.openai.errors import APIError, from_domain, from_validation, internal
from extensions.openai.legacy import chat_request_from_legacy, completion_request_from_legacy, legacy_history
from extensions.openai.schemas import ChatCompletionRequest, CompletionRequest
from extensions.openai.state import state
from modules.errors import HearthError

bp = Blueprint("websocket", __name__)
sock = Sock()  # registers its routes on `bp` only; holds no per-app state


@sock.route("/v1/ws/chat/completions", bp=bp)
def chat_socket(ws):
    """OpenAI chat chunks over a WebSocket."""
    _serve(ws, lambda body: start_chat(state(), ChatCompletionRequest.model_validate(body)))


@sock.route("/v1/ws/completions", bp=bp)
def completion_socket(ws):
    """OpenAI completion chunks over a WebSocket."""
    _serve(ws, lambda body: start_completion(state(), CompletionRequest.model_validate(body)))


def _serve(ws, start: Callable[[dict], Run]) -> None:
    while True:
        message = ws.receive()
        if message is None:
            return
        try:
            run = start(_json_object(message))
        except Exception as exc:  # every failure to start is reported on the socket in OpenAI's shape
            ws.send(json.dumps(_error_body(exc)))
            ws.send("[DONE]")
            continue
        _pump(ws, run.chunks(), run.cancel, json.dumps)
        ws.send("[DONE]")


def _pump(ws, chunks: Iterator, cancel: Callable[[], None], encode: Callable) -> None:
    """Send every chunk; stop and cancel the generation as soon as the socket is gone."""
    with closing(chunks):
        try:
            for chunk in chunks:
                if not ws.connected:
                    break
                if chunk is not None:
                    ws.send(encode(chunk))
        except Exception as exc:  # a failure mid-stream is sent as an error message, like SSE's error event
            if ws.connected:
                ws.send(json.dumps(_error_body(exc)))
        finally:
            cancel()


def _json_object(message) -> dict:
    try:
        data = json.loads(message)
    except (TypeError, ValueError) as exc:
        raise APIError(400, f"the message is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise APIError(400, "the message must be a JSON object")
    return data


def _error_body(exc: Exception) -> dict:
    if isinstance(exc, APIError):
        return exc.to_dict()
    if isinstance(exc, HearthError):
        return from_domain(exc).to_dict()
    if isinstance(exc, ValidationError):
        return from_validation(exc).to_dict()
    return internal(exc).to_dict()


@sock.route("/api/v1/stream", bp=bp)
def legacy_stream(ws):
    """text-generation-webui's old streaming API: text_stream events, then stream_end."""
    while (message := ws.receive()) is not None:
        try:
            run = start_completion(state(), completion_request_from_legacy(_json_object(message)))
        except Exception as exc:
            ws.send(json.dumps({"event": "error", **_error_body(exc)}))
            continue
        count = [0]

        def encode(chunk: dict) -> str:
            text = "".join(c["text"] for c in chunk.get("choices", []))
            count[0] += 1
            return json.dumps({"event": "text_stream", "message_num": count[0] - 1, "text": text})

        texts = (c for c in run.chunks() if c is None or any(ch["text"] for ch in c.get("choices", [])))
        _pump(ws, texts, run.cancel, encode)
        ws.send(json.dumps({"event": "stream_end", "message_num": count[0]}))


@sock.route("/api/v1/chat-stream", bp=bp)
def legacy_chat_stream(ws):
    """text-generation-webui's old chat streaming API: the whole history after each token, then stream_end."""
    while (message := ws.receive()) is not None:
        try:
            body = _json_object(message)
            req, history, prefix = chat_request_from_legacy(body)
            run = start_chat(state(), req)
        except Exception as exc:
            ws.send(json.dumps({"event": "error", **_error_body(exc)}))
            continue
        reply = [prefix]
        count = [0]

        def encode(chunk: dict) -> str:
            for choice in chunk.get("choices", []):
                reply[0] += choice["delta"].get("content", "")
            internal_history = legacy_history(history, reply[0])
            visible = [[html.escape(u), html.escape(b)] for u, b in internal_history]
            count[0] += 1
            return json.dumps({"event": "text_stream", "message_num": count[0] - 1,
                               "history": {"internal": internal_history, "visible": visible}})  # fmt: skip

        _pump(ws, run.chunks(), run.cancel, encode)
        ws.send(json.dumps({"event": "stream_end", "message_num": count[0]}))
