"""`ServingCalls`, the serving part of `FlotillaClient`: load balancers and
deployments, read and deleted here and created with `apply` like any recipe, and the
load balancers' network policy (used by `flo lb`, `flo deployments` and
`flo deployment`)."""

from __future__ import annotations

from typing import Any

from flotilla.api.deployments import Deployment, DeploymentList
from flotilla.api.load_balancers import LoadBalancer, LoadBalancerList, LoadBalancerPolicy
from flotilla.client.calls import _Calls


class ServingCalls(_Calls):
    # load balancers and deployments (created with `apply`, like any recipe)
    def list_load_balancers(self) -> list[LoadBalancer]:
        data = self._request("GET", "/api/load_balancers")
        return LoadBalancerList.model_validate(data).load_balancers

    def get_load_balancer(self, name: str, owner: str | None = None) -> LoadBalancer:
        params = {"owner_name": owner} if owner else {}
        data = self._request("GET", f"/api/load_balancers/{name}", params=params)
        return LoadBalancer.model_validate(data)

    def delete_load_balancer(self, name: str, owner: str | None = None) -> None:
        params = {"owner_name": owner} if owner else {}
        self._request("DELETE", f"/api/load_balancers/{name}", params=params)

    def load_balancer_policy(self) -> LoadBalancerPolicy:
        return LoadBalancerPolicy.model_validate(self._request("GET", "/api/load_balancers/policy"))

    def set_load_balancer_policy(self, policy: dict[str, Any]) -> LoadBalancerPolicy:
        """Replace the policy with `policy` (as a user wrote it: the server names
        what is wrong)."""
        return LoadBalancerPolicy.model_validate(
            self._request("PUT", "/api/load_balancers/policy", json=policy)
        )

    def list_deployments(self) -> list[Deployment]:
        return DeploymentList.model_validate(self._request("GET", "/api/deployments")).deployments

    def get_deployment(self, name: str, owner: str | None = None) -> Deployment:
        params = {"owner_name": owner} if owner else {}
        data = self._request("GET", f"/api/deployments/{name}", params=params)
        return Deployment.model_validate(data)

    def deployment_action(self, name: str, action: str, owner: str | None = None) -> Deployment:
        """`start`, `stop` or `restart` the deployment; returns its view after."""
        params = {"owner_name": owner} if owner else {}
        data = self._request("POST", f"/api/deployments/{name}/{action}", params=params)
        return Deployment.model_validate(data)

    def delete_deployment(self, name: str, owner: str | None = None) -> None:
        params = {"owner_name": owner} if owner else {}
        self._request("DELETE", f"/api/deployments/{name}", params=params)
