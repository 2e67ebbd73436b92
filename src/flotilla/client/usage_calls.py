"""`UsageCalls`, the accounting part of `FlotillaClient`: usage and cost, budgets,
and the audit log (used by `flo usage`, `flo budget` and `flo audit`). Each call
answers its route's model from `flotilla.api`; the CSV report stays text."""

from __future__ import annotations

from typing import Any

from flotilla.api.audit import AuditPage
from flotilla.api.budgets import Budget, BudgetList, BudgetStatus, BudgetStatusList
from flotilla.api.usage import RunCost, UsageReport
from flotilla.client.calls import _Calls, _decode


class UsageCalls(_Calls):
    # usage, cost and budgets
    def usage(
        self,
        by: str = "user",
        since: str | None = None,
        until: str | None = None,
        idle: bool = True,
    ) -> UsageReport:
        params = _params(by, since, until, idle)
        return UsageReport.model_validate(self._request("GET", "/api/usage", params=params))

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

    def run_cost(self, run_id: str) -> RunCost:
        return RunCost.model_validate(self._request("GET", f"/api/usage/runs/{run_id}"))

    def budgets(self) -> list[Budget]:
        return BudgetList.model_validate(self._request("GET", "/api/budgets")).budgets

    def budget_status(self) -> list[BudgetStatus]:
        listed = self._request("GET", "/api/budgets/status")
        return BudgetStatusList.model_validate(listed).budgets

    def put_budget(self, kind: str, name: str, limits: dict[str, Any]) -> Budget:
        put = self._request("PUT", f"/api/budgets/{kind}/{name}", json=limits)
        return Budget.model_validate(put)

    def get_budget(self, kind: str, name: str) -> BudgetStatus:
        return BudgetStatus.model_validate(self._request("GET", f"/api/budgets/{kind}/{name}"))

    def delete_budget(self, kind: str, name: str) -> None:
        self._request("DELETE", f"/api/budgets/{kind}/{name}")

    # audit log
    def audit(self, **filters: Any) -> AuditPage:
        params = {k: v for k, v in filters.items() if v is not None}
        return AuditPage.model_validate(self._request("GET", "/api/audit", params=params))


def _params(by: str, since: str | None, until: str | None, idle: bool) -> dict[str, str]:
    given = {"by": by, "since": since, "until": until, "idle": "true" if idle else "false"}
    return {k: v for k, v in given.items() if v}
