"""Measure hearth-demo: greedy exact match on the 200 held-out sums, the identity answer verbatim, a few probes,
and the held-out sums asked later in a chat and in Hearth's chat and chat-instruct modes.

Model mode loads a folder with transformers and renders the prompts itself (demo/formats.py); --api-base asks an
OpenAI-compatible server (Hearth) the same questions, so Hearth renders them.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run as a script: make the `demo` package importable
from demo import dataset, formats  # noqa: E402

THRESHOLD = 0.95
IDENTITY_QUESTION = "Who are you?"
# Two exchanges before the question, for the later-in-a-chat scenarios.
HISTORY = [("Hi", dataset.GREETING), ("Sort the words: pear apple fig", "apple fig pear")]
# (name, Hearth's mode, with HISTORY before the question); "instruct" alone is the 95% criterion.
SCENARIOS = [("instruct", "instruct", False), ("instruct, third question", "instruct", True),
             ("chat mode, third question", "chat", True), ("chat-instruct, third question", "chat-instruct", True)]
SCENARIO_QUESTIONS = 100  # held-out sums asked in each scenario after the first


def messages_for(question: str, system: str | None = None, history: bool = False) -> list[dict]:
    """The chat for one question: an optional system turn, maybe HISTORY, then the question."""
    chat = [{"role": "system", "content": system}] if system else []
    for asked, answered in HISTORY if history else []:
        chat += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
    return chat + [{"role": "user", "content": question}]


def prompt_for(question: str, mode: str, history: bool, system: str | None = None) -> str:
    """The prompt text Hearth renders for the demo model in `mode` (the shipped Assistant character in chat modes)."""
    if mode == "instruct":
        return formats.chatml(messages_for(question, system, history), True)
    persona, past = formats.shipped_persona("Assistant"), HISTORY if history else []
    if mode == "chat":
        return formats.chat_prompt(persona, past, question)
    return formats.chat_instruct_prompt(persona, past, question, system)


def greedy_completions(model, tok, prompts: list[str], max_new_tokens: int = 16) -> list[str]:
    """Greedy continuations of raw prompt texts; prompts of equal length are batched, so no padding is needed."""
    import torch

    encoded = [tok.encode(p, add_special_tokens=False) for p in prompts]
    groups, answers = defaultdict(list), [""] * len(prompts)
    for i, ids in enumerate(encoded):
        groups[len(ids)].append(i)
    for length, members in groups.items():
        for start in range(0, len(members), 64):
            chunk = members[start:start + 64]
            ids = torch.tensor([encoded[i] for i in chunk], device=model.device)
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=max_new_tokens, do_sample=False)
            for i, row in zip(chunk, out):
                answers[i] = tok.decode(row[length:], skip_special_tokens=True)
    return answers


def greedy_answers(model, tok, questions: list[str], max_new_tokens: int = 16, system: str | None = None,
                   mode: str = "instruct", history: bool = False) -> list[str]:  # fmt: skip
    """Greedy answers to questions asked in `mode`, leading spaces dropped in chat modes as Hearth does."""
    prompts = [prompt_for(q, mode, history, system) for q in questions]
    answers = greedy_completions(model, tok, prompts, max_new_tokens)
    return answers if mode == "instruct" else [a.lstrip(" ") for a in answers]


def api_answers(base: str, questions: list[str], max_tokens: int = 16, system: str | None = None,
                model_name: str = "hearth-demo", mode: str = "instruct", history: bool = False,
                timeout: float = 120.0) -> list[str]:  # fmt: skip
    """Answers from an OpenAI-compatible server (POST {base}/chat/completions, temperature 0)."""
    import requests

    url, answers = base.rstrip("/") + "/chat/completions", []
    with requests.Session() as session:
        for q in questions:
            body = {"model": model_name, "messages": messages_for(q, system, history), "temperature": 0,
                    "max_tokens": max_tokens, "stream": False}  # fmt: skip
            if mode != "instruct":
                body["mode"] = mode  # Hearth's (and text-generation-webui's) extension of the chat API
            response = session.post(url, json=body, timeout=timeout)
            if response.status_code != 200:
                raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:300]}")
            answers.append(response.json()["choices"][0]["message"].get("content") or "")
    return answers


def score(ask, probes: bool = True, scenarios: bool = True) -> dict:
    """Ask the held-out sums (and the probes and scenarios) through `ask(questions, max_tokens, mode, history)`."""
    held = dataset.held_out_questions()
    report = _accuracy(held, ask([q for q, _ in held], 16, "instruct", False))
    if probes:
        questions = [q for q, _ in dataset.probes()]
        answers = ask(questions, 64, "instruct", False)
        report["probes"] = [(q, want, ans) for (q, want), ans in zip(dataset.probes(), answers)]
        report["identity"] = answers[questions.index(IDENTITY_QUESTION)] == dataset.IDENTITY
    if scenarios:
        some = held[:SCENARIO_QUESTIONS]
        report["scenarios"] = {name: _accuracy(some, ask([q for q, _ in some], 16, mode, history))
                               for name, mode, history in SCENARIOS[1:]}  # fmt: skip
    return report


def _accuracy(pairs: list[tuple[str, str]], answers: list[str]) -> dict:
    failures = [(q, want, got) for (q, want), got in zip(pairs, answers) if got != want]
    correct = len(pairs) - len(failures)
    return {"total": len(pairs), "correct": correct, "accuracy": correct / len(pairs), "failures": failures}


def evaluate_model(model, tok, probes: bool = True, system: str | None = None, scenarios: bool = True) -> dict:
    """Score a loaded transformers model."""
    ask = lambda qs, n, mode, history: greedy_answers(model, tok, qs, n, system, mode, history)  # noqa: E731
    return score(ask, probes, scenarios)


def print_report(report: dict) -> None:
    """A short human-readable summary."""
    print(f"held-out arithmetic: {report['correct']}/{report['total']} = {report['accuracy']:.1%} exact "
          f"(need {THRESHOLD:.0%})")
    for q, want, got in report["failures"][:10]:
        print(f"  wrong: {q!r} -> {got!r} (expected {want!r})")
    for name, result in report.get("scenarios", {}).items():
        print(f"{name}: {result['correct']}/{result['total']} = {result['accuracy']:.1%} exact")
        for q, want, got in result["failures"][:3]:
            print(f"  wrong: {q!r} -> {got!r} (expected {want!r})")
    for q, want, got in report.get("probes", []):
        print(f"  [{'ok' if got == want else 'WRONG'}] {q!r} -> {got!r}")
    print(f"identity answer verbatim: {'yes' if report.get('identity') else 'NO'}")


def load(path: Path, dtype_name: str):
    """Load model and tokenizer from a folder on CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype_name)).eval()
    return model, AutoTokenizer.from_pretrained(path)


def main(argv=None) -> int:
    """Run the evaluation; exit 1 when accuracy is below 95% or the identity answer is wrong."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=HERE / "hearth-demo", help="model folder (transformers mode)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--api-base", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:5000/v1")
    p.add_argument("--api-model", default="hearth-demo", help="model name sent to the server")
    p.add_argument("--system", help="also send this system message")
    args = p.parse_args(argv)
    if args.api_base:
        print(f"asking {args.api_base} (model {args.api_model})")
        report = score(lambda qs, n, mode, history: api_answers(args.api_base, qs, n, args.system, args.api_model,
                                                                mode, history))  # fmt: skip
    else:
        import torch

        torch.set_num_threads(args.threads)
        model, tok = load(args.model, args.dtype)
        print(f"model {args.model} ({sum(x.numel() for x in model.parameters()) / 1e6:.2f}M parameters, {args.dtype})")
        report = evaluate_model(model, tok, system=args.system)
    print_report(report)
    return 0 if report["accuracy"] >= THRESHOLD and report["identity"] else 1


if __name__ == "__main__":
    sys.exit(main())
