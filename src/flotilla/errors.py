"""The one exception tree of Flotilla.

Everything Flotilla raises on purpose derives from `FlotillaError`. Errors a client
caused carry a machine-readable `code`, a human `message`, and optionally the path of
the offending field; the API renders them as JSON 4xx responses through one handler
(`server/app.py`). Errors that mean "try again later" derive from `TemporaryError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FieldProblem:
    """One invalid field: where it is (`spec.git_repositories[0].url`) and what is wrong."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.path, "message": self.message}


class FlotillaError(Exception):
    """Root of every error Flotilla raises deliberately."""


@dataclass
class ClientError(FlotillaError):
    """A request that cannot succeed as made. Rendered as `status` with a JSON body."""

    message: str
    code: str = "bad_request"
    status: int = 400
    problems: list[FieldProblem] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def as_dict(self) -> dict[str, Any]:
        # Saturn's error body is {"message", "error_code"}; saturn-client reads `message`.
        body: dict[str, Any] = {"error_code": self.code, "message": self.message}
        if self.problems:
            body["errors"] = [p.as_dict() for p in self.problems]
        return body


class InvalidRecipe(ClientError):
    def __init__(self, problems: list[FieldProblem]) -> None:
        summary = "; ".join(f"{p.path}: {p.message}" for p in problems)
        super().__init__(f"invalid recipe: {summary}", "invalid_recipe", 422, problems)


class NotFound(ClientError):
    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found", "not_found", 404)


class Conflict(ClientError):
    def __init__(self, message: str) -> None:
        super().__init__(message, "conflict", 409)


class Unauthorized(ClientError):
    def __init__(self, message: str = "missing or invalid API token") -> None:
        super().__init__(message, "unauthorized", 401)


class Forbidden(ClientError):
    def __init__(self, message: str = "not allowed") -> None:
        super().__init__(message, "forbidden", 403)


class TemporaryError(FlotillaError):
    """Something that may succeed if retried after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BackendError(FlotillaError):
    """A compute backend failed permanently for this request (bad spec, missing binary)."""
