"""`FleetCalls`, the compute part of `FlotillaClient`: nodes, the queue and the
scheduler policy, provider offers and fleets (used by `flo nodes`, `flo node`,
`flo queue`, `flo policy`, `flo offer`, `flo fleets` and `flo fleet`). Each call
answers the model its route declares (`flotilla/api/`)."""

from __future__ import annotations

from typing import Any

from flotilla.api.fleets import Fleet, FleetList
from flotilla.api.nodes import Node, NodeDetail, NodeList
from flotilla.api.offers import Offer, OfferList
from flotilla.api.queue import Queue, SchedulerPolicy
from flotilla.client.calls import _Calls


class FleetCalls(_Calls):
    # nodes
    def list_nodes(
        self, state: str | None = None, fleet: str | None = None, gpu_type: str | None = None
    ) -> list[Node]:
        params = {
            k: v for k, v in {"state": state, "fleet": fleet, "gpu_type": gpu_type}.items() if v
        }
        return NodeList.model_validate(self._request("GET", "/api/nodes", params=params)).nodes

    def get_node(self, name: str) -> NodeDetail:
        return NodeDetail.model_validate(self._request("GET", f"/api/nodes/{name}"))

    def node_action(self, name: str, action: str, reason: str | None = None) -> NodeDetail:
        """`action` is cordon, uncordon, drain or terminate; returns the node after it."""
        body = {"reason": reason} if reason else None
        return NodeDetail.model_validate(
            self._request("POST", f"/api/nodes/{name}/{action}", json=body)
        )

    def set_node_trust(self, name: str, users: list[str], groups: list[str]) -> NodeDetail:
        """Replace who is trusted on the node; returns the node after it."""
        body = {"users": users, "groups": groups}
        return NodeDetail.model_validate(
            self._request("PUT", f"/api/nodes/{name}/trusted", json=body)
        )

    # queue and scheduler policy
    def queue(self, limit: int = 100, after: str | None = None) -> Queue:
        """One page of the pending queue; its `next` is the `after` of the next."""
        params: dict[str, str | int] = {"limit": limit}
        if after is not None:
            params["after"] = after
        return Queue.model_validate(self._request("GET", "/api/queue", params=params))

    def scheduler_policy(self) -> SchedulerPolicy:
        return SchedulerPolicy.model_validate(self._request("GET", "/api/scheduler/policy"))

    def set_scheduler_policy(self, policy: dict[str, Any]) -> SchedulerPolicy:
        """`policy` goes as the caller wrote it (a file's mapping): the server checks
        it and names the fields at fault."""
        return SchedulerPolicy.model_validate(
            self._request("PUT", "/api/scheduler/policy", json=policy)
        )

    # fleets and offers
    def offers(
        self, gpu: str | None = None, region: str | None = None, spot: bool = False
    ) -> list[Offer]:
        params: dict[str, Any] = {k: v for k, v in {"gpu": gpu, "region": region}.items() if v}
        if spot:
            params["spot"] = "true"
        return OfferList.model_validate(self._request("GET", "/api/offers", params=params)).offers

    def list_fleets(self) -> list[Fleet]:
        return FleetList.model_validate(self._request("GET", "/api/fleets")).fleets

    def get_fleet(self, name: str) -> Fleet:
        return Fleet.model_validate(self._request("GET", f"/api/fleets/{name}"))

    def delete_fleet(self, name: str) -> None:
        self._request("DELETE", f"/api/fleets/{name}")
