"""Instruction templates: instruction-templates/*.yaml (text-generation-webui's format) and bare *.jinja files."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from modules.prompts.files import FileProblem, discover, read_data

SUFFIXES = (".yaml", ".yml", ".jinja")

# text-generation-webui's pre-Jinja template format (user/bot/turn_template/context), converted to Jinja.
_LEGACY_TEMPLATE = """\
{%- set ns = namespace(found=false) -%}
{%- for message in messages -%}
    {%- if message['role'] == 'system' -%}{%- set ns.found = true -%}{%- endif -%}
{%- endfor -%}
{%- if not ns.found -%}{{- PRE_SYSTEM + DEFAULT_SYSTEM + POST_SYSTEM -}}{%- endif -%}
{%- for message in messages -%}
    {%- if message['role'] == 'system' -%}
        {{- PRE_SYSTEM + message['content'] + POST_SYSTEM -}}
    {%- elif message['role'] == 'user' -%}
        {{- PRE_USER + message['content'] + POST_USER -}}
    {%- else -%}
        {{- PRE_BOT + message['content'] + POST_BOT -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- PRE_BOT_GENERATE -}}{%- endif -%}"""


def load_templates(folder: Path, validate: Callable[[str], None]) -> tuple[dict[str, str], list[str]]:
    """Read every template in `folder`: name -> Jinja source, plus one problem message per unusable file.

    `validate(source)` raises (with a `message`) for a template that does not compile; that file is skipped.
    """
    sources: dict[str, str] = {}
    files, problems = discover(folder, SUFFIXES)
    for name, path in files.items():
        try:
            source = read_template(path)
            validate(source)
        except FileProblem as exc:
            problems.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - one broken file must not hide the others
            problems.append(f"{path.parent.name}/{path.name}: {getattr(exc, 'message', exc)}")
        else:
            sources[name] = source
    return sources, problems


def read_template(path: Path) -> str:
    """Return one file's Jinja source; FileProblem naming the file if it holds no usable template."""
    if path.suffix.lower() == ".jinja":
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise FileProblem(f"{path.parent.name}/{path.name}: cannot be read ({exc})") from None
    data = read_data(path)
    where = f"{path.parent.name}/{path.name}"
    if isinstance(data, dict) and isinstance(data.get("instruction_template"), str):
        return data["instruction_template"]
    if isinstance(data, dict) and isinstance(data.get("turn_template"), str):
        return legacy_to_jinja(data, where)
    raise FileProblem(f"{where}: has no 'instruction_template' text")


def legacy_to_jinja(data: dict, where: str) -> str:
    """Convert a pre-Jinja text-generation-webui template (turn_template with <|user|>/<|bot|>) to Jinja."""
    turn = data["turn_template"]
    if "<|user-message|>" not in turn or "<|bot-message|>" not in turn or "<|bot|>" not in turn:
        raise FileProblem(f"{where}: turn_template needs <|user-message|>, <|bot|> and <|bot-message|>")
    user, bot = str(data.get("user", "")), str(data.get("bot", ""))
    context = str(data.get("context", ""))
    pre_system, _, post_system = context.partition("<|system-message|>")
    if "<|system-message|>" not in context:
        pre_system, post_system = context, ""
    pre_user, _, rest = turn.partition("<|user-message|>")
    post_user, _, rest = rest.partition("<|bot|>")
    pre_bot, _, post_bot = rest.partition("<|bot-message|>")
    pieces = {
        "PRE_SYSTEM": pre_system,
        "POST_SYSTEM": post_system,
        "DEFAULT_SYSTEM": str(data.get("system_message", "")),
        "PRE_USER": pre_user.replace("<|user|>", user),
        "POST_USER": post_user,
        "PRE_BOT": bot + pre_bot,
        "POST_BOT": post_bot,
        "PRE_BOT_GENERATE": (bot + pre_bot).rstrip(" "),
    }
    # One pass over the skeleton, so text inserted for one piece is never scanned for another.
    return re.sub(r"\b[A-Z_]+\b", lambda m: jinja_literal(pieces[m.group(0)]), _LEGACY_TEMPLATE)


def jinja_literal(text: str) -> str:
    """Quote `text` as a Jinja string literal (data, never code)."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    return f"'{escaped}'"
