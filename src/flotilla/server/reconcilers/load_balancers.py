"""Keeps the in-process data plane in step with the `load_balancer` recipes:
starts, reconfigures (live) and drains them. Woken on apply, on delete and when
the network policy changes; resyncs periodically so a port that was busy is
retried.

Each load balancer on its own: one whose stored spec cannot become a config (an
older row the recipe no longer accepts) gets an error event and backs off
(`isolation.py`), keeping whatever it was serving; all the others, deletions
included, go on. The network policy (`services/serving/lb_policy.py`) is checked again
here: a listener that a tightened policy (or a changed set of the server's own
ports) now refuses is stopped, with an event naming why; it starts again once the
policy allows it.
"""

from __future__ import annotations

from collections.abc import Sequence

from flotilla.api.load_balancers import LoadBalancerPolicy
from flotilla.lb import LoadBalancerConfig
from flotilla.recipes.types import LOAD_BALANCER
from flotilla.server.changes import Change
from flotilla.server.context import ServerContext
from flotilla.server.db.models import RecipeModel
from flotilla.server.reconcilers.isolation import Failure, Quarantine, record_failures
from flotilla.server.reconcilers.loop import ReconcileLoop
from flotilla.server.services.events import record_event
from flotilla.server.services.serving import lb_policy
from flotilla.server.services.serving.load_balancers import (
    config_of,
    live_load_balancers,
    plane_key,
    ports_in_use,
)

ACTOR = "load_balancers"


class LoadBalancers(ReconcileLoop):
    name = "load_balancers"
    watches = (Change.LOAD_BALANCERS,)

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(ctx.changes, ctx.settings.resync_seconds * 5)
        self.ctx = ctx
        self.quarantine = Quarantine(self.name)
        # recipe id -> the policy refusal last recorded for it (said once, not every step)
        self.refused: dict[str, str] = {}

    async def step(self) -> None:
        async with self.ctx.sessions() as session:
            recipes = await live_load_balancers(session)
            exempt = await lb_policy.exempt_recipes(session, recipes)
            policy = await lb_policy.load_policy(session)
            own_ports = await ports_in_use(session, self.ctx.settings, other_than="")
        plane = self.ctx.lb_plane
        keep: set[str] = set()  # running ones left as they are (their recipe failed)
        wanted: dict[str, LoadBalancerConfig] = {}
        failures: list[Failure] = []
        notes: dict[str, str] = {}
        for recipe in recipes:
            key = plane_key(recipe)
            if self.quarantine.holds(recipe.id, recipe.version):
                keep.add(key)
                continue
            try:
                config = config_of(recipe, self.ctx.settings)
                if recipe.id not in exempt:
                    config, notes[recipe.id] = self._within_policy(
                        recipe, config, policy, own_ports
                    )
                await plane.put(key, config)
            except Exception as e:
                failures.append(self.quarantine.failed(recipe.id, e, recipe.version))
                keep.add(key)
                continue
            self.quarantine.succeeded(recipe.id)
            wanted[key] = config
        self.quarantine.keep_only(r.id for r in recipes)
        for key in plane.running_keys():
            if key.startswith(f"{LOAD_BALANCER}:") and key not in wanted and key not in keep:
                await plane.remove(key)
        await self._record(recipes, failures, notes)

    def _within_policy(
        self,
        recipe: RecipeModel,
        config: LoadBalancerConfig,
        policy: LoadBalancerPolicy,
        own_ports: dict[int, str],
    ) -> tuple[LoadBalancerConfig, str]:
        """The config less the listeners the policy refuses, and what was refused."""
        problems = lb_policy.listener_problems(
            recipe.spec, policy, self.ctx.settings.host, own_ports
        )
        if not problems:
            return config, ""
        listeners = [ls for i, ls in enumerate(config.listeners) if i not in problems]
        note = "; ".join(
            f"listener on port {config.listeners[i].port} stopped: {p.path}: {p.message}"
            for i, found in problems.items()
            for p in found
        )
        return config.model_copy(update={"listeners": listeners}), note

    async def _record(
        self, recipes: Sequence[RecipeModel], failures: list[Failure], notes: dict[str, str]
    ) -> None:
        """Error and policy events, each once per change of what it says."""
        changed = {rid: note for rid, note in notes.items() if self.refused.get(rid, "") != note}
        self.refused = {r.id: notes.get(r.id, self.refused.get(r.id, "")) for r in recipes}
        if not any(f.new for f in failures) and not any(changed.values()):
            return
        now = self.ctx.clock.now()
        async with self.ctx.transaction() as session:
            await record_failures(session, failures, ACTOR, now)
            for recipe_id, note in changed.items():
                if note:
                    record_event(
                        session,
                        kind="policy",
                        message=f"refused by the load balancer policy: {note}",
                        actor=ACTOR,
                        now=now,
                        recipe_id=recipe_id,
                    )
