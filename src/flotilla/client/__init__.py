"""The Python SDK: `Flotilla` (`sdk.py`), typed: models of the API contract in,
`ApiError` subclasses out; `FlotillaClient` (`api.py`), one method per operation
in JSON, which the `flo` CLI uses."""

from flotilla.client.api import FlotillaClient
from flotilla.client.calls import (
    ApiError,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotAuthenticated,
    NotFound,
    Unavailable,
    Unreachable,
)
from flotilla.client.connection import Connection, resolve_connection
from flotilla.client.sdk import Flotilla

__all__ = [
    "ApiError",
    "Conflict",
    "Connection",
    "Flotilla",
    "FlotillaClient",
    "Forbidden",
    "InvalidRequest",
    "NotAuthenticated",
    "NotFound",
    "Unavailable",
    "Unreachable",
    "resolve_connection",
]
