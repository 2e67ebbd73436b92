"""An API error answered straight from ASGI middleware, before or instead of the
app (`bodylimit.py`, `bodytext.py`, `reconnect.py`): the same JSON body the app's
error handlers give (`ClientError.as_dict`), with any extra headers."""

from __future__ import annotations

import json
from collections.abc import Sequence

from starlette.types import Send

from flotilla.errors import ClientError


async def send_error(
    send: Send, error: ClientError, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps(error.as_dict()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
