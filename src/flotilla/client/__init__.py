"""The Python SDK: `Flotilla` (`sdk.py`), the documented one (apply a file, start a
run, wait for it, follow its logs); `FlotillaClient` (`api.py`), one method per
API operation, which the `flo` CLI uses. Both return the models of the API
contract (`flotilla.api`) and raise `ApiError` subclasses."""

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
