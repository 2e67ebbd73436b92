"""What every API model shares: unknown fields refused, and the one error body
every 4xx and 5xx carries (`server/errors.py` renders it)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class ApiModel(BaseModel):
    """A response or request body: exactly these fields."""

    model_config = ConfigDict(extra="forbid")


class FieldError(ApiModel):
    field: str  # where: `spec.git_repositories[0].url`
    message: str


class ErrorBody(ApiModel):
    """Every error: a stable code to branch on, a sentence for people, and for
    invalid input the fields at fault. Saturn's clients read `message`."""

    error_code: str
    message: str
    errors: list[FieldError] | None = None


_WHAT = {
    400: "the request cannot succeed as made",
    401: "no valid credentials",
    403: "the caller may not do this",
    404: "no such resource (or not one the caller may see)",
    409: "it conflicts with the resource's state",
    413: "the body is too large",
    422: "invalid input: `errors` names the fields",
    429: "too many attempts: wait as Retry-After says",
    503: "temporarily unavailable: try again after Retry-After",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route that answers these error statuses (401 always:
    every route authenticates)."""
    wanted = sorted({401, *statuses})
    return {s: {"model": ErrorBody, "description": _WHAT.get(s, "error")} for s in wanted}
