"""Guess an instruction template from the model's folder name with models/config.yaml (text-generation-webui's table).

Each top-level key is a regular expression matched against the start of the folder name, ignoring case;
its value is a mapping whose `instruction_template` names a template. When several keys match, the last
one in the file wins, as in text-generation-webui. Other settings in the table are ignored here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from modules.prompts.files import FileProblem, read_data


@dataclass(frozen=True)
class GuessRule:
    """One row of the table: a compiled pattern and the template it names."""

    pattern: str
    regex: re.Pattern
    template: str


def load_rules(path: Path) -> tuple[tuple[GuessRule, ...], list[str]]:
    """Read the table; rows with a bad pattern are skipped and reported by file and pattern."""
    if not path.is_file():
        return (), []
    try:
        data = read_data(path)
    except FileProblem as exc:
        return (), [str(exc)]
    if data is None:
        return (), []
    where = f"{path.parent.name}/{path.name}"
    if not isinstance(data, dict):
        return (), [f"{where}: must map model-name patterns to settings"]
    rules, problems = [], []
    for pattern, settings in data.items():
        template = settings.get("instruction_template") if isinstance(settings, dict) else None
        if not isinstance(template, str) or not template.strip():
            continue  # a row for other settings (model_type, stopping strings, ...)
        try:
            rules.append(GuessRule(str(pattern), re.compile(str(pattern), re.IGNORECASE), template.strip()))
        except re.error as exc:
            problems.append(f"{where}: pattern {pattern!r} is not a valid regular expression ({exc})")
    return tuple(rules), problems


def guess(rules: tuple[GuessRule, ...], model_name: str) -> str | None:
    """The template named by the last rule whose pattern matches the start of the folder name, or None."""
    name = Path(model_name).name if model_name else ""
    found = None
    for rule in rules:
        if rule.regex.match(name):
            found = rule.template
    return found
