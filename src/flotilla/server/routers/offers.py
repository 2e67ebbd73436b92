"""Offers: what every configured provider could create, with prices and free
capacity (`flo offer`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from flotilla.api.base import errors
from flotilla.api.offers import OfferList
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services.fleets.fleet_views import offer_views

router = APIRouter(prefix="/api/offers", tags=["fleets"])


@router.get("", responses=errors(422))
async def list_offers(
    ctx: Ctx,
    caller: Caller,
    gpu: Annotated[str | None, Query(description="GPU type and count: H100:8, H100 or 8")] = None,
    region: str | None = None,
    spot: Annotated[bool, Query(description="only offers with a spot price")] = False,
) -> OfferList:
    """Instance types with GPU type and count, region, on-demand and spot $/h, and
    how many could be created now."""
    return OfferList.model_validate({"offers": offer_views(ctx.providers, gpu, region, spot)})
