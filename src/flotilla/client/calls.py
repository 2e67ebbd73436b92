"""What `FlotillaClient` and its groups of calls share: `ApiError`, the decoding of
a response into JSON or an `ApiError`, and `_Calls`, the base of the mixins that hold
the calls (`identity_calls.py`, `fleet_calls.py`, ...), so that each can use
`_request` while `api.py` defines it."""

from __future__ import annotations

from typing import Any

import httpx


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors or []


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
        raise ApiError(
            response.status_code,
            str(body.get("error_code", "http_error")),
            str(body.get("message", response.reason_phrase)),
            body.get("errors"),
        )
    return body
