"""The Jinja2 sandbox every template renders in, set up like Hugging Face's chat-template environment.

Hugging Face renders chat templates in an ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks,
the loopcontrols extension, a `{% generation %}` tag, a non-escaping `tojson`, and the globals
`raise_exception` and `strftime_now`. Doing the same here is what makes a model's own template render
byte-for-byte as `apply_chat_template` does. On top of that, a few size limits keep a hostile request
template from eating the machine (huge ranges, string repetition, exponentiation).
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from modules.errors import TemplateError

MAX_RANGE_ITEMS = 1_000_000  # all range() calls of one render together
MAX_REPEAT_LEN = 1_000_000  # "x" * n and [..] * n
MAX_CONCAT_LEN = 16_000_000  # a + b for strings and lists; ~4M tokens, far past any context
MAX_EXPONENT = 1_000
BUDGET_VAR = "__hearth_range_budget"


class TemplateRaised(jinja2.TemplateError):
    """A template called raise_exception(): it rejects the conversation it was given."""


class _GenerationTag(Extension):
    """Hugging Face's `{% generation %}...{% endgeneration %}` marks assistant text; here it renders as is."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


class _Namespace(jinja2.utils.Namespace):
    """namespace() that refuses underscore attributes, as Hugging Face's does."""

    def __init__(*args, **kwargs):  # same signature trick as Jinja's Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


def _check_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise SecurityError(f"templates cannot set underscore attributes on a namespace ({name!r})")


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox plus limits on operators that can allocate without bound."""

    intercepted_binops = frozenset({"*", "**", "+"})

    def unsafe_undefined(self, obj, attribute):
        # Jinja returns an Undefined that fails only when used further; `{{ f.__code__ }}` would print "".
        # Failing at once gives the clear error a hostile template deserves.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is larger than templates may use")
        if operator == "*":
            _check_repeat(left, right)
        result = super().call_binop(context, operator, left, right)
        if operator == "+" and isinstance(result, (str, list, tuple)) and len(result) > MAX_CONCAT_LEN:
            raise SecurityError("the template built a string larger than templates may build")
        return result


def _check_repeat(left: Any, right: Any) -> None:
    for seq, n in ((left, right), (right, left)):
        if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_REPEAT_LEN:
            raise SecurityError("the template repeats a sequence beyond the size templates may build")


def _raise_exception(message: str):
    raise TemplateRaised(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes HTML characters; chat templates expect plain JSON (as Hugging Face does).
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@jinja2.pass_context
def _range(context, *args):
    items = range(*args)
    budget = context.get(BUDGET_VAR)
    if budget is not None:
        budget[0] += len(items)
        if budget[0] > MAX_RANGE_ITEMS:
            raise SecurityError("the template iterates more than templates may")
    return items


class _TemplateDict:
    """dict() for templates: builds plain dicts and nothing else (as Hugging Face's)."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


def make_environment() -> jinja2.Environment:
    """Build a fresh sandboxed environment with Hugging Face's template globals."""
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.pop("lipsum", None)
    env.globals.update(
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
        range=_range,
        dict=_TemplateDict(),
        namespace=_Namespace,
    )
    return env


def compile_template(env: jinja2.Environment, source: str, *, param: str | None = None) -> jinja2.Template:
    """Parse a template; TemplateError (naming the line) if it is not valid Jinja."""
    if not isinstance(source, str):
        raise TemplateError("a template must be a string", param=param)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error on line {exc.lineno}: {exc.message}", param=param) from None
    except (SecurityError, RecursionError, MemoryError) as exc:
        raise TemplateError(f"template could not be compiled: {exc}", param=param) from None


def render_template(template: jinja2.Template, *, param: str | None = None, **variables: Any) -> str:
    """Render with a fresh size budget; any failure becomes a TemplateError with a readable message."""
    variables[BUDGET_VAR] = [0]
    try:
        return template.render(**variables)
    except TemplateRaised as exc:
        raise TemplateError(f"the template rejected this conversation: {exc}", param="messages") from exc
    except SecurityError as exc:
        raise TemplateError(f"the template tried something templates may not do: {exc}", param=param) from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"the template failed: {exc}", param=param) from None
    except RecursionError:
        raise TemplateError("the template recursed too deeply", param=param) from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError, OverflowError) as exc:
        raise TemplateError(f"the template failed: {type(exc).__name__}: {exc}", param=param) from None
