"""Dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from flotilla.server.context import ServerContext
from flotilla.server.identity import Identity
from flotilla.server.security import current_identity


def get_ctx(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ServerContext, Depends(get_ctx)]
Caller = Annotated[Identity, Depends(current_identity)]
