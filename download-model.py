#!/usr/bin/env python3
"""Download a model from the Hugging Face Hub into models/ (python download-model.py ORG/NAME).

Files arrive in a hidden `.ORG_NAME.partial` folder that is renamed when complete, so a broken
download never shows up as a model.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

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
    p.add_argument("--specific-file", nargs="+", metavar="PATTERN", help="only files matching these patterns")
    p.add_argument("--token", help="Hugging Face token for gated models (else HF_TOKEN)")
    return p.parse_args(argv)


def repo_id_from(text: str) -> str:
    """ORG/NAME from ORG/NAME or a huggingface.co URL; ValueError if it is neither."""
    text = text.strip().removeprefix("https://huggingface.co/").strip("/")
    if not REPO_ID.match(text):
        raise ValueError(f"{text!r} is not of the form ORG/NAME")
    return text


def download(repo_id: str, branch: str, output: Path, patterns, token) -> Path:
    """Fetch every needed file with a progress bar; returns the final model folder."""
    from huggingface_hub import HfApi, snapshot_download

    final = output / repo_id.replace("/", "_")
    partial = output / f".{final.name}.partial"
    ignore = None
    if not patterns:
        files = HfApi(token=token).list_repo_files(repo_id, revision=branch)
        if any(f.endswith(".safetensors") for f in files):
            ignore = SKIP_WHEN_SAFETENSORS
    snapshot_download(
        repo_id, revision=branch, local_dir=partial, allow_patterns=patterns, ignore_patterns=ignore, token=token
    )
    shutil.rmtree(partial / ".cache", ignore_errors=True)
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
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
    try:
        final = download(repo_id, args.branch, output, args.specific_file, args.token)
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
