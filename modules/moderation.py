"""Embedding-based moderation, as text-generation-webui does it: each input's similarity to each category."""
from __future__ import annotations

from dataclasses import dataclass

# OpenAI's categories, each described by a phrase the embedding model can compare against.
CATEGORIES = {
    "hate": "hateful speech against a group because of race, religion, gender or origin",
    "hate/threatening": "hateful threats of violence against a group",
    "harassment": "harassing, insulting or bullying someone",
    "harassment/threatening": "threatening to hurt a specific person",
    "illicit": "instructions for committing crimes such as theft or fraud",
    "illicit/violent": "instructions for making weapons or committing violent crimes",
    "self-harm": "self-harm, suicide, cutting oneself",
    "self-harm/intent": "I want to kill myself or hurt myself",
    "self-harm/instructions": "instructions for how to commit suicide or self-harm",
    "sexual": "sexually explicit content",
    "sexual/minors": "sexual content involving children",
    "violence": "violence, killing, attacking or hurting people",
    "violence/graphic": "graphic descriptions of gore, blood and injuries",
}
THRESHOLD = 0.5  # a score above this flags the category (text-generation-webui's value)


@dataclass(frozen=True)
class ModerationResult:
    """Per-category flags and scores for one input."""

    flagged: bool
    categories: dict[str, bool]
    scores: dict[str, float]


class Moderator:
    """Scores texts against the category descriptions with one embedder."""

    def __init__(self, embedder):
        self.embedder = embedder
        self._category_vectors = embedder.embed(list(CATEGORIES.values())).vectors  # [C, D], unit length

    def moderate(self, texts: list[str]) -> list[ModerationResult]:
        """One result per text."""
        vectors = self.embedder.embed(texts).vectors  # [N, D]
        similarity = vectors @ self._category_vectors.T  # [N, C] cosine, since both are normalized
        results = []
        for row in similarity:
            # text-generation-webui scores 2 x cosine; clamp to OpenAI's 0..1 range.
            scores = {name: float(min(max(2.0 * s, 0.0), 1.0)) for name, s in zip(CATEGORIES, row)}
            flags = {name: score > THRESHOLD for name, score in scores.items()}
            results.append(ModerationResult(any(flags.values()), flags, scores))
        return results
