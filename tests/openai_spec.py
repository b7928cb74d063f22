"""Validate bodies and stream chunks against OpenAI's official OpenAPI spec (../shared/openai-openapi.yaml)."""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

SPEC_PATH = Path(__file__).resolve().parent.parent.parent / "shared" / "openai-openapi.yaml"
SPEC_ID = "urn:openai-openapi"


def available() -> bool:
    """True when the spec file is present beside the repository."""
    return SPEC_PATH.is_file()


@lru_cache(maxsize=1)
def _registry():
    import yaml
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    spec = yaml.load(SPEC_PATH.read_text(encoding="utf-8"), Loader=loader)
    spec = _fix_nullable(spec)
    spec["$id"] = SPEC_ID
    return Registry().with_resource(SPEC_ID, Resource(contents=spec, specification=DRAFT202012))


def _fix_nullable(node):
    # The 3.1 document still uses 3.0's `nullable: true` in places; JSON Schema needs an explicit null.
    if isinstance(node, list):
        return [_fix_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _fix_nullable(v) for k, v in node.items()}
    if node.pop("nullable", False):
        if "enum" in node and None not in node["enum"]:
            node["enum"] = node["enum"] + [None]
        kind = node.get("type")
        if isinstance(kind, str):
            node["type"] = [kind, "null"]
        elif isinstance(kind, list) and "null" not in kind:
            node["type"] = kind + ["null"]
        elif kind is None:
            node = {"anyOf": [node, {"type": "null"}]}
    return node


def validate(body: dict, schema_name: str) -> None:
    """Raise jsonschema.ValidationError if `body` does not match components/schemas/<schema_name>."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(
        {"$ref": f"{SPEC_ID}#/components/schemas/{schema_name}"}, registry=_registry()
    )
    validator.validate(copy.deepcopy(body))


def sse_payloads(raw: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order (comments skipped)."""
    payloads = []
    for block in raw.split("\n\n"):
        lines = [line[5:].lstrip(" ") for line in block.split("\n") if line.startswith("data:")]
        if lines:
            payloads.append("\n".join(lines))
    return payloads


def stream_chunks(raw: str) -> list[dict]:
    """JSON chunks of an SSE body; asserts it ends with exactly one [DONE]."""
    payloads = sse_payloads(raw)
    assert payloads and payloads[-1] == "[DONE]", payloads[-3:]
    assert payloads.count("[DONE]") == 1
    return [json.loads(p) for p in payloads[:-1]]


def validate_completion_chunk(chunk: dict) -> None:
    """A streamed text_completion chunk against CreateCompletionResponse.

    The spec models only the finished object; OpenAI's own stream chunks carry `finish_reason: null`
    until the last one and `usage: null` with include_usage, so those two nulls are allowed here.
    """
    body = copy.deepcopy(chunk)
    for choice in body.get("choices", []):
        if choice.get("finish_reason") is None:
            choice["finish_reason"] = "length"
    if body.get("usage", 0) is None:
        del body["usage"]
    validate(body, "CreateCompletionResponse")
