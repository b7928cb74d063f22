"""POST /v1/feedback (rate an answer served through an A/B split) and the preference-pair export."""
from __future__ import annotations

import json

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel, ConfigDict

from extensions.openai.docs import documented
from extensions.openai.errors import APIError
from extensions.openai.state import parse, state

bp = Blueprint("feedback", __name__)


class FeedbackRequest(BaseModel):
    """A rating of a logged response (its `id` as the response gave it)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    id: str
    rating: int


def _log():
    preferences = state().runtime.pool.preferences
    if preferences is None:
        raise APIError(404, "no preference log is configured (preference_log: in the serving file)", param="id",
                       code="preference_log_disabled")  # fmt: skip
    return preferences


@bp.post("/v1/feedback")
@documented("Rate an answer served through an A/B split: {id, rating: 1 | -1}", FeedbackRequest, tag="Hearth")
def feedback():
    """Record a rating against a logged response id; 404 for an id the log does not hold."""
    req = parse(FeedbackRequest)
    if req.rating not in (1, -1):
        raise APIError(400, "rating must be 1 or -1", param="rating")
    if not _log().feedback(req.id, req.rating):
        raise APIError(404, f"no logged response has the id {req.id!r}", param="id", code="not_found")
    return jsonify({"id": req.id, "rating": req.rating, "recorded": True})


@bp.get("/v1/internal/preferences/export")
@documented("Preference pairs (TRL's conversational prompt/chosen/rejected) as JSON lines", tag="Hearth")
def export():
    """Every pair the log yields (votes, and answers to one prompt rated +1 and -1), one JSON object per line."""
    lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in _log().pairs())
    return Response(lines, mimetype="application/jsonl",
                    headers={"Content-Disposition": "attachment; filename=preferences-trl.jsonl"})  # fmt: skip
