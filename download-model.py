#!/usr/bin/env python3
"""Download a model from the Hugging Face Hub into models/ (python download-model.py ORG/NAME).

Files arrive in a hidden `.ORG_NAME.partial` folder that is renamed when complete, so a broken
download never shows up as a model. A repository of GGUF files usually holds one model in several
quantizations: one is picked (--specific-file, or chosen from a list in a terminal) and a single
GGUF file lands directly in models/ (a split one in a folder), as text-generation-webui does.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

GGUF_SPLIT = re.compile(r"-\d{5}-of-\d{5}(?=\.gguf$)", re.IGNORECASE)
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
SKIP_WHEN_SAFETENSORS = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "original/*"]


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments: one line, exit code 2."""

    def error(self, message):
        sys.stderr.write(f"download-model.py: error: {message}\n")
        sys.exit(2)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line arguments."""
    p = OneLineParser(prog="download-model.py", description="Download a Hugging Face model into models/.")
    p.add_argument("model", help="ORG/NAME on the Hugging Face Hub (a full https://huggingface.co/ URL works too)")
    p.add_argument("--branch", default="main", help="revision: branch, tag or commit (default main)")
    p.add_argument("--output", default="models", help="models folder (default: models)")
    p.add_argument("--specific-file", nargs="+", metavar="PATTERN",
                   help="only files matching these patterns (e.g. one GGUF quantization: model-Q4_K_M.gguf)")
    p.add_argument("--token", help="Hugging Face token for gated models (else HF_TOKEN)")
    return p.parse_args(argv)


def repo_id_from(text: str) -> str:
    """ORG/NAME from ORG/NAME or a huggingface.co URL; ValueError if it is neither."""
    text = text.strip().removeprefix("https://huggingface.co/").strip("/")
    if not REPO_ID.match(text):
        raise ValueError(f"{text!r} is not of the form ORG/NAME")
    return text


class ChoiceNeeded(Exception):
    """Several GGUF quantizations and no way to ask which: the message lists them."""


def gguf_models(files: list[str]) -> dict[str, list[str]]:
    """The GGUF models among a repository's files: name (split suffix dropped) -> its files, sorted by name.

    Multimodal projectors (mmproj-*.gguf) are not models; they come along only when asked for by name."""
    models: dict[str, list[str]] = {}
    for f in sorted(files):
        base = f.rsplit("/", 1)[-1]
        if base.lower().endswith(".gguf") and not base.lower().startswith("mmproj"):
            models.setdefault(GGUF_SPLIT.sub("", f), []).append(f)
    return models


def pick_gguf(files: list[str], ask=None) -> list[str] | None:
    """The files of the one GGUF model to fetch from a repository of GGUF files (None: not such a repository).

    One model: it. Several (quantizations): `ask(names)` returns the chosen name; without `ask`, ChoiceNeeded."""
    models = gguf_models(files)
    if not models or any(f.endswith(".safetensors") for f in files):
        return None  # a Hugging Face model (GGUF copies beside safetensors are skipped as other formats are)
    if len(models) == 1:
        return next(iter(models.values()))
    names = list(models)
    if ask is None:
        listed = ", ".join(n.rsplit("/", 1)[-1] for n in names)
        raise ChoiceNeeded(f"the repository holds {len(names)} GGUF files ({listed}): pick one with "
                           "--specific-file NAME (or run in a terminal to choose from a list)")  # fmt: skip
    return models[ask(names)]


def ask_in_terminal(names: list[str]) -> str:
    """Print the GGUF files numbered and read a choice from the terminal."""
    for i, name in enumerate(names, 1):
        print(f"{i:3d}. {name}")
    while True:
        answer = input(f"Which one? [1-{len(names)}] ").strip()
        if answer.isdigit() and 1 <= int(answer) <= len(names):
            return names[int(answer) - 1]


def destination(output: Path, repo_id: str, chosen: list[str] | None) -> Path:
    """Where the download ends up: a single GGUF file straight in the models folder, anything else a folder."""
    if chosen is not None and len(chosen) == 1:
        return output / chosen[0].rsplit("/", 1)[-1]
    return output / repo_id.replace("/", "_")


def download(repo_id: str, branch: str, output: Path, patterns, token, ask=None) -> Path:
    """Fetch every needed file with a progress bar; returns the final model folder (or GGUF file)."""
    from huggingface_hub import HfApi, snapshot_download

    partial = output / f".{repo_id.replace('/', '_')}.partial"
    ignore, chosen = None, None
    if not patterns:
        files = HfApi(token=token).list_repo_files(repo_id, revision=branch)
        chosen = pick_gguf(files, ask)
        if chosen is not None:
            patterns = chosen
        elif any(f.endswith(".safetensors") for f in files):
            ignore = SKIP_WHEN_SAFETENSORS
    elif all(p.lower().endswith(".gguf") and not any(c in p for c in "*?[") for p in patterns):
        chosen = list(patterns)  # named GGUF files: a single one goes straight into the models folder
    snapshot_download(
        repo_id, revision=branch, local_dir=partial, allow_patterns=patterns, ignore_patterns=ignore, token=token
    )
    shutil.rmtree(partial / ".cache", ignore_errors=True)
    final = destination(output, repo_id, chosen)
    source = partial
    if chosen is not None:  # the GGUF file itself, or the folder its split parts are in
        source = partial / chosen[0] if len(chosen) == 1 else partial / Path(chosen[0]).parent
        if not (partial / chosen[0]).exists():
            raise FileNotFoundError(f"{chosen[0]} is not in {repo_id}")
    if final.is_dir():
        shutil.rmtree(final)
    source.replace(final)
    shutil.rmtree(partial, ignore_errors=True)
    return final


def main(argv=None) -> int:
    """Entry point: 0 on success, 1 when the download fails, 2 on bad arguments."""
    args = parse_args(argv)
    try:
        repo_id = repo_id_from(args.model)
    except ValueError as exc:
        sys.stderr.write(f"download-model.py: error: {exc}\n")
        return 2
    output = Path(args.output)
    if not output.is_dir():
        sys.stderr.write(f"download-model.py: error: output folder {output} not found\n")
        return 2
    ask = ask_in_terminal if sys.stdin.isatty() and sys.stdout.isatty() else None
    try:
        final = download(repo_id, args.branch, output, args.specific_file, args.token, ask)
    except ChoiceNeeded as exc:
        sys.stderr.write(f"download-model.py: {repo_id}: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("download-model.py: interrupted; the partial download was kept and resumes next time\n")
        return 1
    except Exception as exc:  # network, auth, missing repo: all end the same way for the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        sys.stderr.write(f"download-model.py: error: could not download {repo_id}: {type(exc).__name__}: {reason}\n")
        return 1
    print(f"Downloaded {repo_id} to {final}. Start it with: python server.py --model {final.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
