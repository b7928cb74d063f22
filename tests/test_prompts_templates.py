"""Shipped instruction templates: golden renderings against each family's official format, and file loading."""
import functools
from pathlib import Path

import pytest
import yaml

from modules.prompts import PromptStore
from modules.prompts.sandbox import compile_template, make_environment, render_template

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "instruction-templates"
OFFICIAL = Path(__file__).resolve().parent / "data" / "official_templates"

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
]

# Family -> (BOS, EOS, the exact prompt its official format gives for CONVERSATION with a generation prompt).
GOLDEN = {
    "ChatML": (
        "<s>", "<|im_end|>",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHello!<|im_end|>\n"
        "<|im_start|>assistant\nHi! How can I help?<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    "Llama-v2": (
        "<s>", "</s>",
        "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nHello! [/INST] Hi! How can I help? </s>"
        "<s>[INST] What is 2+2? [/INST]",
    ),
    "Llama-v3": (
        "<|begin_of_text|>", "<|eot_id|>",
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHi! How can I help?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "Llama-v3.1": (
        "<|begin_of_text|>", "<|eot_id|>",
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHi! How can I help?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "Mistral": (
        "<s>", "</s>",
        "<s> [INST] You are a helpful assistant.\n\nHello! [/INST] Hi! How can I help?</s> [INST] What is 2+2? [/INST]",
    ),
    "Gemma": (
        "<bos>", "<eos>",
        "<bos><start_of_turn>user\nYou are a helpful assistant.\n\nHello!<end_of_turn>\n"
        "<start_of_turn>model\nHi! How can I help?<end_of_turn>\n"
        "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n"
        "<start_of_turn>model\n",
    ),
    "Phi-3": (
        "<s>", "<|endoftext|>",
        "<|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\nHello!<|end|>\n"
        "<|assistant|>\nHi! How can I help?<|end|>\n<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n",
    ),
    "Zephyr": (
        "<s>", "</s>",
        "<|system|>\nYou are a helpful assistant.</s>\n<|user|>\nHello!</s>\n"
        "<|assistant|>\nHi! How can I help?</s>\n<|user|>\nWhat is 2+2?</s>\n<|assistant|>\n",
    ),
    "Command-R": (
        "<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>",
        "<BOS_TOKEN><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are a helpful assistant.<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hello!<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Hi! How can I help?<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>What is 2+2?<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
    ),
    "DeepSeek": (
        "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
        "<｜begin▁of▁sentence｜>You are a helpful assistant.<｜User｜>Hello!"
        "<｜Assistant｜>Hi! How can I help?<｜end▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜>",
    ),
    "Qwen": (
        "", "<|im_end|>",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHello!<|im_end|>\n"
        "<|im_start|>assistant\nHi! How can I help?<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    "Alpaca": (
        "<s>", "</s>",
        "You are a helpful assistant.\n\n### Instruction:\nHello!\n\n### Response:\nHi! How can I help?\n\n"
        "### Instruction:\nWhat is 2+2?\n\n### Response:\n",
    ),
    "Vicuna-v1.1": (
        "<s>", "</s>",
        "You are a helpful assistant. USER: Hello! ASSISTANT: Hi! How can I help?</s>USER: What is 2+2? ASSISTANT:",
    ),
}

# Shipped template -> the official template it must reproduce (tests/data/official_templates/<name>.jinja).
OFFICIAL_SOURCES = {
    "ChatML": "teknium-OpenHermes-2.5-Mistral-7B",
    "Llama-v2": "meta-llama-Llama-2-7b-chat-hf",
    "Llama-v3": "meta-llama-Meta-Llama-3-8B-Instruct",
    "Llama-v3.1": "meta-llama-Meta-Llama-3.1-8B-Instruct",
    "Mistral": "mistralai-Mistral-7B-Instruct-v0.1",
    "Gemma": "google-gemma-3-4b-it",
    "Phi-3": "microsoft-Phi-3-mini-4k-instruct",
    "Zephyr": "HuggingFaceH4-zephyr-7b-beta",
    "Command-R": "CohereForAI-c4ai-command-r-v01",
    "DeepSeek": "deepseek-ai-DeepSeek-V3",
    "Qwen": "Qwen-Qwen2.5-7B-Instruct",
}

# More conversations for the equivalence checks: no system message, whitespace to trim, a single turn.
NO_SYSTEM = [
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there"},
    {"role": "user", "content": "Who are you"},
    {"role": "assistant", "content": "   I am an assistant   "},
    {"role": "user", "content": "Another question"},
]
WHITESPACE = [
    {"role": "system", "content": " A system line. \n"},
    {"role": "user", "content": "  Hello\n"},
    {"role": "assistant", "content": "\n Hi  "},
    {"role": "user", "content": "Q? "},
]
SINGLE = [{"role": "user", "content": "Just one question."}]


ENV = make_environment()


@pytest.fixture(scope="module")
def env():
    return ENV


@functools.cache
def _compiled(path: Path, yaml_key: str | None):
    text = path.read_text(encoding="utf-8")
    return compile_template(ENV, yaml.safe_load(text)[yaml_key] if yaml_key else text)


def shipped(env, name):
    return _compiled(TEMPLATES / f"{name}.yaml", "instruction_template")


def official(env, name):
    return _compiled(OFFICIAL / f"{name}.jinja", None)


def render(template, messages, bos, eos, add_generation_prompt=True):
    return render_template(
        template, messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos
    )


def test_every_family_from_the_issue_is_shipped():
    families = {"ChatML", "Llama-v2", "Llama-v3", "Mistral", "Alpaca", "Vicuna-v1.1", "Gemma", "Phi-3", "Zephyr",
                "Command-R", "DeepSeek", "Qwen"}
    assert families <= {p.stem for p in TEMPLATES.glob("*.yaml")}
    assert set(GOLDEN) == {p.stem for p in TEMPLATES.glob("*.yaml")}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_rendering(env, name):
    bos, eos, expected = GOLDEN[name]
    assert render(shipped(env, name), CONVERSATION, bos, eos) == expected


@pytest.mark.parametrize("name", sorted(OFFICIAL_SOURCES))
def test_official_template_gives_the_golden_string(env, name):
    bos, eos, expected = GOLDEN[name]
    assert render(official(env, OFFICIAL_SOURCES[name]), CONVERSATION, bos, eos) == expected


@pytest.mark.parametrize("conversation", [CONVERSATION, NO_SYSTEM, WHITESPACE, SINGLE], ids=["std", "nosys", "ws", "one"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", sorted(OFFICIAL_SOURCES))
def test_shipped_matches_official(env, name, conversation, add_generation_prompt):
    bos, eos, _ = GOLDEN[name]
    want = render(official(env, OFFICIAL_SOURCES[name]), conversation, bos, eos, add_generation_prompt)
    assert render(shipped(env, name), conversation, bos, eos, add_generation_prompt) == want


def test_gemma_without_system_matches_gemma2_which_rejects_system(env):
    """Gemma 2's official template refuses a system message; ours folds it (as Gemma 3 does)."""
    gemma2 = official(env, "google-gemma-2-2b-it")
    for conversation in (NO_SYSTEM, SINGLE):
        assert render(shipped(env, "Gemma"), conversation, "<bos>", "<eos>") == render(gemma2, conversation, "<bos>", "<eos>")
    with pytest.raises(Exception, match="System role not supported"):
        render(gemma2, CONVERSATION, "<bos>", "<eos>")


def stanford_alpaca_prompt(instruction):
    """stanford_alpaca's PROMPT_DICT["prompt_no_input"], the format Alpaca was trained on."""
    return (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        f"### Instruction:\n{instruction}\n\n### Response:"
    )


def fastchat_vicuna_v11(messages):
    """FastChat's Conversation.get_prompt() for "vicuna_v1.1" (ADD_COLON_TWO, sep " ", sep2 "</s>")."""
    system = "A chat between a curious user and an artificial intelligence assistant. " \
             "The assistant gives helpful, detailed, and polite answers to the user's questions."
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    turns = [("USER" if m["role"] == "user" else "ASSISTANT", m["content"]) for m in messages] + [("ASSISTANT", None)]
    seps = [" ", "</s>"]
    ret = system + seps[0]
    for i, (role, text) in enumerate(turns):
        ret += f"{role}: {text}{seps[i % 2]}" if text else f"{role}:"
    return ret


def test_alpaca_single_turn_is_stanford_prompt(env):
    # The prompt Alpaca was trained on, with the newline after "### Response:" that text-generation-webui adds.
    text = render(shipped(env, "Alpaca"), SINGLE, "<s>", "</s>")
    assert text == stanford_alpaca_prompt("Just one question.") + "\n"


@pytest.mark.parametrize("conversation", [CONVERSATION, NO_SYSTEM, SINGLE], ids=["std", "nosys", "one"])
def test_vicuna_matches_fastchat(env, conversation):
    assert render(shipped(env, "Vicuna-v1.1"), conversation, "<s>", "</s>") == fastchat_vicuna_v11(conversation)


def test_store_lists_and_loads_shipped_templates():
    store = PromptStore(TEMPLATES, ROOT / "characters", ROOT / "models" / "config.yaml")
    assert set(store.template_names()) == set(GOLDEN)
    assert store.problems() == []
    assert "<|im_start|>" in store.load_template("ChatML")
    assert store.load_template("chatml") == store.load_template("ChatML")  # unique case-insensitive match


def test_bare_jinja_and_yml_files(tmp_path):
    (tmp_path / "Bare.jinja").write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}", encoding="utf-8")
    (tmp_path / "Short.yml").write_text("instruction_template: '{{ messages[0].content }}!'", encoding="utf-8")
    store = PromptStore(tmp_path, tmp_path / "none", tmp_path / "none.yaml")
    assert store.template_names() == ["Bare", "Short"]
    assert store.load_template("Bare").startswith("{% for m")


def test_broken_files_are_reported_and_the_rest_load(tmp_path):
    (tmp_path / "Good.yaml").write_text("instruction_template: |-\n  {{ 'ok' }}\n", encoding="utf-8")
    (tmp_path / "BadYaml.yaml").write_text("instruction_template: [unclosed\n", encoding="utf-8")
    (tmp_path / "NoKey.yaml").write_text("something_else: 1\n", encoding="utf-8")
    (tmp_path / "BadJinja.jinja").write_text("{% for m in messages %}", encoding="utf-8")
    (tmp_path / "Good.jinja").write_text("{{ 'shadowed' }}", encoding="utf-8")
    store = PromptStore(tmp_path, tmp_path / "none", tmp_path / "none.yaml")
    assert store.template_names() == ["Good"]
    problems = "\n".join(store.problems())
    for name in ("BadYaml.yaml", "NoKey.yaml", "BadJinja.jinja", "Good.jinja"):
        assert name in problems
    assert "not valid YAML" in problems and "syntax error" in problems


def test_reload_picks_up_new_files(tmp_path):
    store = PromptStore(tmp_path, tmp_path / "none", tmp_path / "none.yaml")
    assert store.template_names() == []
    (tmp_path / "New.jinja").write_text("{{ 'x' }}", encoding="utf-8")
    assert store.template_names() == []  # snapshot until reload
    store.reload()
    assert store.template_names() == ["New"]


def test_legacy_turn_template_format(tmp_path, env):
    """text-generation-webui's pre-Jinja templates (user/bot/turn_template/context) still load."""
    (tmp_path / "Old.yaml").write_text(
        "user: '### Human:'\nbot: '### Assistant:'\n"
        "turn_template: \"<|user|> <|user-message|>\\n<|bot|> <|bot-message|>\\n\"\n"
        "context: \"A chat. It's <|system-message|>\\n\"\n"
        "system_message: 'polite'\n",
        encoding="utf-8",
    )
    store = PromptStore(tmp_path, tmp_path / "none", tmp_path / "none.yaml")
    template = compile_template(env, store.load_template("Old"))
    text = render(template, NO_SYSTEM[:3], "", "")
    assert text == ("A chat. It's polite\n### Human: Hello\n### Assistant: Hi there\n### Human: Who are you\n"
                    "### Assistant:")


@pytest.mark.parametrize("conversation", [CONVERSATION, NO_SYSTEM, SINGLE], ids=["std", "nosys", "one"])
def test_builtin_fallback_is_the_shipped_alpaca(env, conversation):
    from modules.prompts.store import BUILTIN_FALLBACK

    builtin = compile_template(env, BUILTIN_FALLBACK)
    assert render(builtin, conversation, "<s>", "</s>") == render(shipped(env, "Alpaca"), conversation, "<s>", "</s>")
