"""Offers (`/api/offers`): what each configured provider could create, cheapest
first (`flo offer`)."""

from __future__ import annotations

from flotilla.api.base import ApiModel


class Offer(ApiModel):
    provider: str
    instance_type: str
    gpu_type: str
    gpus: int
    region: str
    on_demand_per_hour: float
    spot_per_hour: float | None  # None: no spot market
    available: int  # instances that could be created now
    price_published: bool


class OfferList(ApiModel):
    offers: list[Offer]
