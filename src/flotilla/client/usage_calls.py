"""`UsageCalls`, the accounting part of `FlotillaClient`: usage and cost, budgets,
and the audit log (used by `flo usage`, `flo budget` and `flo audit`)."""

from __future__ import annotations

from typing import Any

from flotilla.client.calls import _Calls, _decode


class UsageCalls(_Calls):
    # usage, cost and budgets
    def usage(
        self,
        by: str = "user",
        since: str | None = None,
        until: str | None = None,
        idle: bool = True,
    ) -> dict[str, Any]:
        return dict(self._request("GET", "/api/usage", params=_params(by, since, until, idle)))

    def usage_csv(
        self,
        by: str = "user",
        since: str | None = None,
        until: str | None = None,
        idle: bool = True,
    ) -> str:
        params = {**_params(by, since, until, idle), "format": "csv"}
        response = self.http.get("/api/usage", params=params)
        if response.status_code >= 400:
            _decode(response)
        return response.text

    def run_cost(self, run_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/api/usage/runs/{run_id}"))

    def budgets(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/api/budgets")["budgets"])

    def budget_status(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/api/budgets/status")["budgets"])

    def put_budget(self, kind: str, name: str, limits: dict[str, Any]) -> dict[str, Any]:
        return dict(self._request("PUT", f"/api/budgets/{kind}/{name}", json=limits))

    def get_budget(self, kind: str, name: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/api/budgets/{kind}/{name}"))

    def delete_budget(self, kind: str, name: str) -> None:
        self._request("DELETE", f"/api/budgets/{kind}/{name}")

    # audit log
    def audit(self, **filters: Any) -> dict[str, Any]:
        params = {k: v for k, v in filters.items() if v is not None}
        return dict(self._request("GET", "/api/audit", params=params))


def _params(by: str, since: str | None, until: str | None, idle: bool) -> dict[str, str]:
    given = {"by": by, "since": since, "until": until, "idle": "true" if idle else "false"}
    return {k: v for k, v in given.items() if v}
