"""The checks a fleet recipe must pass to be applied, beyond its schema. Called by
`routers/recipes.py` inside the apply transaction: a failing check rolls the apply
back, so a fleet that could never work is not stored."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.compute.provider import Provider
from flotilla.errors import ClientError, FieldProblem, InvalidRecipe
from flotilla.recipes.fleet import FleetSpec, Placement
from flotilla.recipes.job import SecretRef
from flotilla.server.db.models import NodeModel, RecipeModel
from flotilla.server.services.fleets.fleets import resolve_region
from flotilla.server.services.fleets.nodes import LIVE_STATES
from flotilla.server.services.identity.secrets import attached_secret


async def check_fleet(
    session: AsyncSession, providers: Mapping[str, Provider], recipe: RecipeModel
) -> None:
    """What a fleet recipe must satisfy to be applied, beyond its schema: a provider
    this server has, an instance type and region it offers, and for `placement:
    cluster` one InfiniBand partition with room for the fleet's minimum now (like the
    seed's Terraform check: fail fast rather than wait forever). Provider calls here
    are the cheap, non-blocking ones of the contract."""
    spec = FleetSpec.model_validate(recipe.spec)
    if spec.is_ssh():
        return await _check_ssh_keys(session, spec, recipe)
    provider = providers.get(spec.provider)
    if provider is None:
        known = ", ".join(sorted(providers)) or "none"
        raise _invalid(
            "spec.provider", f"unknown provider '{spec.provider}'; this server has: {known}"
        )
    offers = [o for o in provider.offers() if o.instance_type == spec.instance_type]
    if not offers:
        raise _invalid("spec.instance_type", f"{spec.provider} offers no '{spec.instance_type}'")
    regions = sorted({o.region for o in offers})
    region = resolve_region(spec, offers)
    if region is None:
        raise _invalid("spec.region", f"required: {spec.instance_type} is in {', '.join(regions)}")
    if region not in regions:
        raise _invalid(
            "spec.region",
            f"unknown region '{region}' for {spec.instance_type}; one of: {', '.join(regions)}",
        )
    offer = next(o for o in offers if o.region == region)
    if spec.spot and offer.spot_per_hour is None:
        raise _invalid("spec.spot", f"{spec.instance_type} has no spot offer in {region}")
    if spec.placement == Placement.CLUSTER:
        await _check_cluster(session, provider, spec, recipe.id, region, offer.gpus)


async def _check_cluster(
    session: AsyncSession,
    provider: Provider,
    spec: FleetSpec,
    fleet_id: str,
    region: str,
    gpus: int,
) -> None:
    have = (
        await session.execute(
            select(func.count())
            .select_from(NodeModel)
            .where(NodeModel.fleet_id == fleet_id, NodeModel.state.in_(LIVE_STATES))
        )
    ).scalar_one()
    count = spec.node_range()[0] - int(have)  # a re-apply needs room for new nodes only
    largest = provider.cluster_capacity(spec.instance_type, region)
    if count > 0 and largest < count:
        message = (
            f"no InfiniBand partition in {region} has {count * gpus} free {spec.instance_type} "
            f"slices for {count} instances (largest: {largest * gpus} slices)"
        )
        raise ClientError(
            message, "insufficient_capacity", 409, [FieldProblem("spec.nodes", message)]
        )


async def _check_ssh_keys(session: AsyncSession, spec: FleetSpec, recipe: RecipeModel) -> None:
    """Every host's key names a secret the fleet's owner (or its project) has."""
    problems = []
    for index, host in enumerate(spec.hosts):
        ref = SecretRef(name=host.key, location="SSH_KEY")
        if await attached_secret(session, ref, recipe.owner, recipe.project) is None:
            path = f"spec.hosts[{index}].key"
            problems.append(FieldProblem(path, f"no secret named {host.key!r} is visible here"))
    if problems:
        raise InvalidRecipe(problems)


def _invalid(path: str, message: str) -> InvalidRecipe:
    return InvalidRecipe([FieldProblem(path, message)])
