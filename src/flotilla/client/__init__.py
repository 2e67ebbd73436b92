"""The Python SDK: a thin typed client of the REST API, used by the `flo` CLI."""

from flotilla.client.api import ApiError, FlotillaClient
from flotilla.client.connection import Connection, resolve_connection

__all__ = ["ApiError", "Connection", "FlotillaClient", "resolve_connection"]
