"""A small OpenAI-compatible upstream that fails on demand, for what a real server cannot be made to do.

`FaultUpstream().mode` picks the behaviour of the next calls: "ok" (streams `answer from NAME`), "429", "500",
"400", "hang" (never answers), "role-then-hang" (200, a role-only chunk, then nothing), "error-event" (200, a
role chunk, then an error event inside the stream), "drop-after-2" (two content chunks, then the connection
drops), "sloppy" (an answer with small deviations: no role chunk, no usage, an unknown finish_reason, no [DONE]).
It records each call's headers and body so tests can check what an upstream saw.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultUpstream:
    """A threaded HTTP server on a loopback port; `base_url` ends in /v1."""

    def __init__(self, name: str = "fault", mode: str = "ok"):
        self.name = name
        self.mode = mode
        self.calls: list[dict] = []
        self.hang_s = 30.0
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                upstream.calls.append({"path": self.path, "headers": dict(self.headers), "body": body})
                upstream.respond(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def text(self) -> str:
        """What this upstream answers in "ok" mode."""
        return f"answer from {self.name}"

    def respond(self, h: BaseHTTPRequestHandler, body: dict) -> None:
        """Answer one call according to `mode`."""
        mode = self.mode
        if h.path.endswith("/embeddings"):
            return _json(h, 200, {"object": "list", "data": [{"object": "embedding", "index": i, "embedding":
                                  [float(len(t)), 1.0, 0.5]} for i, t in enumerate(body["input"])],  # noqa: E128
                                  "model": body.get("model"), "usage": {"prompt_tokens": 3, "total_tokens": 3}})
        if mode in ("429", "500"):
            headers = {"Retry-After": "1"} if mode == "429" else {}
            return _json(h, int(mode), {"error": {"message": f"{self.name} says {mode}", "type": "server_error"}},
                         headers)
        if mode == "400":
            return _json(h, 400, {"error": {"message": "max_tokens is too large", "type": "invalid_request_error",
                                            "param": "max_tokens", "code": None}})
        if mode == "hang":
            time.sleep(self.hang_s)
            return _json(h, 500, {"error": {"message": "late"}})
        chat = h.path.endswith("/chat/completions")
        _start_stream(h)
        if chat:
            _event(h, _chunk(body, {"role": "assistant", "content": ""}, chat))
        if mode == "role-then-hang":
            h.wfile.flush()
            time.sleep(self.hang_s)
            return
        if mode == "error-event":
            return _event(h, {"error": {"message": "Overloaded", "type": "overloaded_error"}})
        words = self.text.split(" ")
        if mode == "sloppy":
            for i, word in enumerate(words):
                _event(h, {"choices": [{"index": 0, "delta": {"content": (" " if i else "") + word}}]} if chat else
                       {"choices": [{"index": 0, "text": (" " if i else "") + word}]})
            return _event(h, {"choices": [{"index": 0, "delta": {}, "finish_reason": "eos"}]})
        for i, word in enumerate(words):
            if mode == "drop-after-2" and i == 2:
                h.wfile.flush()
                h.connection.shutdown(2)  # the connection drops mid-answer
                return
            _event(h, _chunk(body, {"content": (" " if i else "") + word}, chat))
        _event(h, _chunk(body, {}, chat, finish="stop"))
        _event(h, {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": body.get("model"),
                   "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": len(words), "total_tokens": 8}})
        h.wfile.write(b"data: [DONE]\n\n")
        h.wfile.flush()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def _json(h, status: int, body: dict, headers: dict | None = None) -> None:
    raw = json.dumps(body).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(raw)))
    for key, value in (headers or {}).items():
        h.send_header(key, value)
    h.end_headers()
    h.wfile.write(raw)


def _start_stream(h) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "text/event-stream")
    h.send_header("Connection", "close")
    h.end_headers()
    h.close_connection = True


def _event(h, obj: dict) -> None:
    h.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
    h.wfile.flush()


def _chunk(body: dict, delta: dict, chat: bool, finish: str | None = None) -> dict:
    if chat:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": body.get("model"),
                "choices": [choice]}
    choice = {"index": 0, "text": delta.get("content", ""), "finish_reason": finish}
    return {"id": "x", "object": "text_completion", "created": 0, "model": body.get("model"), "choices": [choice]}
