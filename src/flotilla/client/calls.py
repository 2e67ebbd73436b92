"""What `FlotillaClient` and its groups of calls share: `ApiError`, the decoding of
a response into JSON or an `ApiError`, and `_Calls`, the base of the mixins that hold
the calls (`identity_calls.py`, `fleet_calls.py`, ...), so that each can use
`_request` while `api.py` defines it."""

from __future__ import annotations

from typing import Any

import httpx


class ApiError(Exception):
    """What the server refused (or that it could not be reached: status 0): its
    `status`, its stable `code` to branch on, its `message`, and for invalid input
    the fields at fault (`errors`: [{"field", "message"}]). Raised as the subclass
    for its status, so callers can catch what they mean."""

    def __init__(
        self, status: int, code: str, message: str, errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors or []


class Unreachable(ApiError):
    """No answer: the server is down, or the URL is wrong."""


class NotAuthenticated(ApiError):
    """401: no valid token or session."""


class Forbidden(ApiError):
    """403: the caller may not do this."""


class NotFound(ApiError):
    """404: no such resource (or not one the caller may see)."""


class Conflict(ApiError):
    """409: it conflicts with the resource's state."""


class InvalidRequest(ApiError):
    """400 or 422: the request cannot succeed as made; `errors` names the fields."""


class Unavailable(ApiError):
    """503: try again later."""


_BY_STATUS: dict[int, type[ApiError]] = {
    0: Unreachable,
    400: InvalidRequest,
    401: NotAuthenticated,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: InvalidRequest,
    503: Unavailable,
}


def api_error(
    status: int, code: str, message: str, errors: list[dict[str, str]] | None = None
) -> ApiError:
    """The ApiError subclass for `status`."""
    return _BY_STATUS.get(status, ApiError)(status, code, message, errors)


class _Calls:
    """The base of `FlotillaClient`'s call groups: what a mixin may use of the client."""

    http: httpx.Client

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        raise NotImplementedError  # FlotillaClient._request


def _decode(response: httpx.Response) -> Any:
    if response.status_code == 204:
        return None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        body = body if isinstance(body, dict) else {}
        raise api_error(
            response.status_code,
            str(body.get("error_code", "http_error")),
            str(body.get("message", response.reason_phrase)),
            body.get("errors"),
        )
    return body
