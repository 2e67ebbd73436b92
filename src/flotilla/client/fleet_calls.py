"""`FleetCalls`, the compute part of `FlotillaClient`: nodes, the queue and the
scheduler policy, provider offers and fleets (used by `flo nodes`, `flo node`,
`flo queue`, `flo policy`, `flo offer`, `flo fleets` and `flo fleet`)."""

from __future__ import annotations

from typing import Any

from flotilla.client.calls import _Calls


class FleetCalls(_Calls):
    # nodes
    def list_nodes(
        self, state: str | None = None, fleet: str | None = None, gpu_type: str | None = None
    ) -> list[dict[str, Any]]:
        params = {
            k: v for k, v in {"state": state, "fleet": fleet, "gpu_type": gpu_type}.items() if v
        }
        return list(self._request("GET", "/api/nodes", params=params)["nodes"])

    def get_node(self, name: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/api/nodes/{name}"))

    def node_action(self, name: str, action: str, reason: str | None = None) -> dict[str, Any]:
        """`action` is cordon, uncordon, drain or terminate; returns the node after it."""
        body = {"reason": reason} if reason else None
        return dict(self._request("POST", f"/api/nodes/{name}/{action}", json=body))

    def set_node_trust(self, name: str, users: list[str], groups: list[str]) -> dict[str, Any]:
        """Replace who is trusted on the node; returns the node after it."""
        body = {"users": users, "groups": groups}
        return dict(self._request("PUT", f"/api/nodes/{name}/trusted", json=body))

    # queue and scheduler policy
    def queue(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/api/queue")["runs"])

    def scheduler_policy(self) -> dict[str, Any]:
        return dict(self._request("GET", "/api/scheduler/policy"))

    def set_scheduler_policy(self, policy: dict[str, Any]) -> dict[str, Any]:
        return dict(self._request("PUT", "/api/scheduler/policy", json=policy))

    # fleets and offers
    def offers(
        self, gpu: str | None = None, region: str | None = None, spot: bool = False
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {k: v for k, v in {"gpu": gpu, "region": region}.items() if v}
        if spot:
            params["spot"] = "true"
        return list(self._request("GET", "/api/offers", params=params)["offers"])

    def list_fleets(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/api/fleets")["fleets"])

    def get_fleet(self, name: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/api/fleets/{name}"))

    def delete_fleet(self, name: str) -> None:
        self._request("DELETE", f"/api/fleets/{name}")
