"""A constraint on generated text, as plain data: an llguidance grammar and the request parameter it came from.

Built in request threads from what a client sent (a JSON schema, a regex, a Lark or GBNF grammar, a tool-call
format); compiled against a model's tokenizer by modules.constraints.compiler. llguidance is imported lazily.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping

from modules.errors import InvalidParameter

# Compact JSON (", " and ": ", no free whitespace): a model, above all a small one, cannot pad its output with
# endless whitespace, and the text parses the same everywhere. A schema's own "x-guidance" options still win.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class Grammar:
    """An llguidance grammar (its serialized form, the cache key) and the parameter to name in errors."""

    source: str
    param: str
    kind: str  # "json_schema", "json_object", "regex", "grammar", "tool_calls"

    @classmethod
    def json_schema(cls, schema: Any, param: str = "response_format") -> "Grammar":
        """Output valid against a JSON schema (a dict, or JSON text of one)."""
        from llguidance import LLMatcher

        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as exc:
                raise InvalidParameter(f"the JSON schema is not valid JSON: {exc}", param=param) from None
        if isinstance(schema, bool):
            schema = {} if schema else {"not": {}}
        if not isinstance(schema, Mapping):
            raise InvalidParameter("the JSON schema must be an object", param=param)
        try:
            source = LLMatcher.grammar_from_json_schema(dict(schema), defaults=JSON_OPTIONS)
        except (ValueError, TypeError) as exc:
            raise InvalidParameter(f"invalid JSON schema: {exc}", param=param) from None
        return cls(source, param, "json_schema")

    @classmethod
    def json_object(cls, param: str = "response_format") -> "Grammar":
        """Any JSON object (OpenAI's json_object mode)."""
        return dataclasses.replace(cls.json_schema({"type": "object"}, param), kind="json_object")

    @classmethod
    def regex(cls, pattern: str, param: str = "regex") -> "Grammar":
        """Output matching a regular expression (Rust regex syntax, anchored at both ends)."""
        from llguidance import LLMatcher

        if not isinstance(pattern, str) or not pattern:
            raise InvalidParameter("the regular expression must be a non-empty string", param=param)
        return cls(LLMatcher.grammar_from_regex(pattern), param, "regex")

    @classmethod
    def lark(cls, text: str, param: str = "grammar") -> "Grammar":
        """Output in a Lark grammar (llguidance's dialect, which embeds JSON schemas with %json) or a GBNF one."""
        from llguidance import grammar_from

        if not isinstance(text, str) or not text.strip():
            raise InvalidParameter("the grammar must be a non-empty string", param=param)
        try:
            source = grammar_from("grammar", text)
        except Exception as exc:  # the GBNF converter raises plain exceptions with useful messages
            raise InvalidParameter(f"invalid grammar: {exc}", param=param) from None
        return cls(source, param, "grammar")

    @classmethod
    def from_text(cls, text: str, param: str = "grammar") -> "Grammar":
        """A JSON schema when `text` is a JSON object, else a Lark or GBNF grammar (the UI's one field)."""
        stripped = text.strip()
        if stripped.startswith("{"):
            return cls.json_schema(stripped, param)
        return cls.lark(stripped, param)


def for_response_format(response_format: Mapping[str, Any] | None) -> Grammar | None:
    """The grammar OpenAI's (and DeepInfra's) response_format asks for; None for plain text."""
    if not response_format:
        return None
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind in ("json_object", "json"):
        return Grammar.json_object()
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping):
            raise InvalidParameter("response_format.json_schema must be an object with a schema",
                                   param="response_format")  # fmt: skip
        name = spec.get("name")
        if name is not None and not isinstance(name, str):
            raise InvalidParameter("response_format.json_schema.name must be a string", param="response_format")
        schema = spec.get("schema", {"type": "object"})
        return Grammar.json_schema(schema)
    raise InvalidParameter(f"response_format type must be 'text', 'json_object', 'json' or 'json_schema', got "
                           f"{kind!r}", param="response_format")  # fmt: skip
