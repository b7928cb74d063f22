"""PromptStore: the folders of templates and characters, the guessing table, and render() for all modes.

Choice of instruction template, first match wins:
  1. the request's Jinja string (instruction_template_str)    -> source "request-string", name "custom"
  2. the request's template name (instruction_template)       -> source "request"
  3. the model's own chat template (from its tokenizer)        -> source "model", name "model"
  4. models/config.yaml's guess from the model's folder name   -> source "guess"
  5. Alpaca, as text-generation-webui falls back               -> source "fallback"
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import jinja2

from modules.errors import CharacterNotFound, InvalidParameter, TemplateNotFound
from modules.prompts import chat as modes
from modules.prompts.characters import BUILTIN_ASSISTANT, load_characters, replace_names
from modules.prompts.conversation import normalize_messages
from modules.prompts.files import lookup
from modules.prompts.guess import GuessRule, guess, load_rules
from modules.prompts.sandbox import compile_template, make_environment
from modules.prompts.templates import load_templates
from modules.prompts.tools import ToolSupport, probe_tool_support
from modules.prompts.types import (
    DEFAULT_CHARACTER,
    DEFAULT_CHAT_INSTRUCT_COMMAND,
    DEFAULT_NAME1,
    FALLBACK_TEMPLATE,
    MODES,
    Character,
    ModelPromptInfo,
    PromptOptions,
    RenderedPrompt,
)

logger = logging.getLogger(__name__)

# Alpaca as shipped, so the fallback works even if instruction-templates/Alpaca.yaml is missing.
BUILTIN_FALLBACK = """\
{%- if messages and messages[0]['role'] == 'system' %}
    {{- messages[0]['content'] + '\\n\\n' }}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {{- 'Below is an instruction that describes a task. '
        'Write a response that appropriately completes the request.\\n\\n' }}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if message['role'] == 'user' %}
        {{- '### Instruction:\\n' + message['content'] + '\\n\\n' }}
    {%- elif message['role'] == 'assistant' %}
        {{- '### Response:\\n' + message['content'] + '\\n\\n' }}
    {%- elif message['role'] == 'system' %}
        {{- message['content'] + '\\n\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '### Response:\\n' }}
{%- endif %}"""

_CACHE_SIZE = 128  # compiled templates kept; request strings are arbitrary, so the cache is bounded


@dataclass(frozen=True)
class _Loaded:
    """One consistent snapshot of the folders; replaced as a whole by reload()."""

    templates: Mapping[str, str]
    characters: Mapping[str, Character]
    rules: tuple[GuessRule, ...]
    problems: tuple[str, ...]


@dataclass
class _Compiled:
    compiled: jinja2.Template
    accepts_tool: bool
    tools: ToolSupport


@dataclass
class _Cache:
    """Compiled templates by source text, least recently used dropped first; safe across threads."""

    size: int
    entries: OrderedDict = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, source: str) -> _Compiled | None:
        with self.lock:
            entry = self.entries.get(source)
            if entry is not None:
                self.entries.move_to_end(source)
            return entry

    def put(self, source: str, entry: _Compiled) -> None:
        with self.lock:
            self.entries[source] = entry
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


class PromptStore:
    """Reads instruction-templates/, characters/ and models/config.yaml (lazily) and renders prompts."""

    def __init__(self, templates_dir: Path, characters_dir: Path, model_config_path: Path):
        self._templates_dir = Path(templates_dir)
        self._characters_dir = Path(characters_dir)
        self._model_config_path = Path(model_config_path)
        self._env = make_environment()
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        self._cache = _Cache(_CACHE_SIZE)
        self._announced: set[tuple[str, str, str]] = set()

    def template_names(self) -> list[str]:
        """Names of the usable instruction templates, sorted."""
        return sorted(self._snapshot().templates, key=str.casefold)

    def character_names(self) -> list[str]:
        """Names of the usable characters, sorted."""
        return sorted(self._snapshot().characters, key=str.casefold)

    def load_template(self, name: str) -> str:
        """Jinja source of a named template; TemplateNotFound for unknown names or names that are not plain."""
        source = lookup(self._snapshot().templates, name)
        if source is None:
            raise TemplateNotFound(f"no instruction template named {name!r}", param="instruction_template")
        return source

    def load_character(self, name: str) -> Character:
        """A named character; CharacterNotFound for unknown names or names that are not plain."""
        character = lookup(self._snapshot().characters, name)
        if character is None:
            names = ", ".join(sorted(self._snapshot().characters, key=str.casefold))
            raise CharacterNotFound(f"no character named {name!r} (choose from {names})", param="character")
        return character

    def guess_template(self, model_name: str) -> str | None:
        """The template name models/config.yaml gives for this model folder name, if any."""
        return guess(self._snapshot().rules, model_name)

    def problems(self) -> list[str]:
        """Files skipped while loading, each message naming the file and the reason."""
        return list(self._snapshot().problems)

    def reload(self) -> None:
        """Read the folders again; renders already running keep the snapshot they started with."""
        loaded = self._read_all()
        with self._lock:
            self._loaded = loaded
        self._cache.clear()

    def render(self, messages: list[dict], options: PromptOptions, model: ModelPromptInfo) -> RenderedPrompt:
        """Turn a conversation into the model's prompt text, with stop strings and truncation to its context."""
        if options.mode not in MODES:
            raise InvalidParameter(f"mode must be one of {', '.join(MODES)}", param="mode")
        normalized = normalize_messages(messages)
        instruct = self._instruct_template(options, model) if options.mode != "chat" else None
        chat = self._chat_template(options) if options.mode != "instruct" else None
        persona = self._persona(options) if options.mode != "instruct" else None
        if persona is None:
            self._character(options.character)  # unused in instruct mode, but a name that is not there is a 400
        result = modes.render_prompt(normalized, options, model, instruct, chat, persona)
        self._announce(model.name, result)
        return result

    # ----- template choice

    def _instruct_template(self, options: PromptOptions, model: ModelPromptInfo) -> modes.Template:
        if options.instruction_template_str is not None:
            source = options.instruction_template_str
            return self._template("custom", "request-string", source, "instruction_template_str")
        if options.instruction_template is not None:
            source = self.load_template(options.instruction_template)
            return self._template(options.instruction_template, "request", source, "instruction_template")
        if model.chat_template:
            return self._template("model", "model", model.chat_template, None)
        guessed = self.guess_template(model.name)
        if guessed is not None:
            source = lookup(self._snapshot().templates, guessed)
            if source is not None:
                return self._template(guessed, "guess", source, None)
            logger.warning("models/config.yaml names template %r for %r, but there is no such template",
                           guessed, model.name)
        source = lookup(self._snapshot().templates, FALLBACK_TEMPLATE) or BUILTIN_FALLBACK
        return self._template(FALLBACK_TEMPLATE, "fallback", source, None)

    def _chat_template(self, options: PromptOptions) -> modes.Template:
        if options.chat_template_str is not None:
            return self._template("custom-chat", "request-string", options.chat_template_str, "chat_template_str")
        return self._template("chat", "default", modes.DEFAULT_CHAT_TEMPLATE, None)

    def _template(self, name: str, kind: str, source: str, param: str | None) -> modes.Template:
        entry = self._cache.get(source)
        if entry is None:
            compiled = compile_template(self._env, source, param=param)
            entry = _Compiled(compiled, modes.accepts_tool_role(compiled), probe_tool_support(compiled, source))
            self._cache.put(source, entry)
        return modes.Template(name, kind, entry.compiled, param, entry.accepts_tool, entry.tools)

    # ----- characters

    def _persona(self, options: PromptOptions) -> modes.Persona:
        character = self._character(options.character)
        name1 = options.name1 or character.user_name or DEFAULT_NAME1
        name2 = options.name2 or character.name
        context = character.context if options.context is None else options.context
        if options.context is None and character.example_dialogue:
            context = f"{context}\n\n{character.example_dialogue}".strip()
        greeting = character.greeting if options.greeting is None else options.greeting
        command = options.chat_instruct_command or DEFAULT_CHAT_INSTRUCT_COMMAND
        return modes.Persona(
            name1=name1,
            name2=name2,
            context=replace_names(context, name1, name2),
            greeting=replace_names(greeting, name1, name2).strip(),
            user_bio=replace_names(options.user_bio or "", name1, name2),
            command=replace_names(command, name1, name2),
        )

    def _character(self, name: str | None) -> Character:
        if name is None or name == DEFAULT_CHARACTER:
            found = lookup(self._snapshot().characters, DEFAULT_CHARACTER)
            return found or BUILTIN_ASSISTANT
        return self.load_character(name)

    # ----- loading and logging

    def _snapshot(self) -> _Loaded:
        loaded = self._loaded
        if loaded is None:
            with self._lock:
                if self._loaded is None:
                    self._loaded = self._read_all()
                loaded = self._loaded
        return loaded

    def _read_all(self) -> _Loaded:
        validate = lambda source: compile_template(self._env, source)  # noqa: E731
        templates, template_problems = load_templates(self._templates_dir, validate)
        characters, character_problems = load_characters(self._characters_dir)
        rules, rule_problems = load_rules(self._model_config_path)
        problems = tuple(template_problems + character_problems + rule_problems)
        for problem in problems:
            logger.warning("prompt files: %s", problem)
        return _Loaded(MappingProxyType(templates), MappingProxyType(characters), rules, problems)

    def _announce(self, model_name: str, result: RenderedPrompt) -> None:
        key = (model_name, result.template_name, result.template_source)
        with self._lock:
            first = key not in self._announced
            self._announced.add(key)
        level = logging.INFO if first else logging.DEBUG
        logger.log(level, "prompt for %r uses template %s (%s); %d tokens, %d old messages dropped", model_name,
                   result.template_name, result.template_source, result.prompt_tokens, result.dropped_messages)
