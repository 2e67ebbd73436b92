"""`FlotillaClient`: one method per API operation, JSON in and out, errors raised
as `ApiError` carrying the server's code and message."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from flotilla.client.connection import Connection, resolve_connection


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors or []


class FlotillaClient:
    def __init__(
        self,
        connection: Connection | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.connection = connection or resolve_connection()
        headers = (
            {"Authorization": f"token {self.connection.token}"} if self.connection.token else {}
        )
        self.http = httpx.Client(
            base_url=self.connection.url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> FlotillaClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise ApiError(
                0, "unreachable", f"cannot reach the Flotilla server at {self.connection.url}: {e}"
            ) from e
        return _decode(response)

    # recipes
    def apply(self, recipe: dict[str, Any]) -> dict[str, Any]:
        return dict(self._request("PUT", "/api/recipes", json=recipe))

    def list_recipes(
        self, recipe_type: str | None = None, owner: str | None = None
    ) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"type": recipe_type, "owner_name": owner}.items() if v}
        return list(self._request("GET", "/api/recipes", params=params)["recipes"])

    def get_recipe(self, recipe_type: str, name: str, owner: str | None = None) -> dict[str, Any]:
        params = {"owner_name": owner} if owner else {}
        return dict(self._request("GET", f"/api/recipes/{recipe_type}/{name}", params=params))

    def versions(self, recipe_type: str, name: str) -> list[dict[str, Any]]:
        return list(self._request("GET", f"/api/recipes/{recipe_type}/{name}/versions")["versions"])

    # job actions, by id
    def _job_id(self, name: str, owner: str | None = None) -> str:
        return str(self.get_recipe("job", name, owner)["state"]["id"])

    def start(self, name: str, owner: str | None = None) -> dict[str, Any]:
        return dict(self._request("POST", f"/api/jobs/{self._job_id(name, owner)}/start"))

    def stop(self, name: str, owner: str | None = None) -> dict[str, Any]:
        return dict(self._request("POST", f"/api/jobs/{self._job_id(name, owner)}/stop"))

    def restart(self, name: str, owner: str | None = None) -> dict[str, Any]:
        return dict(self._request("POST", f"/api/jobs/{self._job_id(name, owner)}/restart"))

    def delete(self, name: str, owner: str | None = None) -> None:
        self._request("DELETE", f"/api/jobs/{self._job_id(name, owner)}")

    def schedule(self, name: str, cron: str | None = None, enable: bool = True) -> dict[str, Any]:
        job_id = self._job_id(name)
        if cron:
            self._request(
                "PATCH", f"/api/jobs/{job_id}", json={"cron_schedule_options": {"schedule": cron}}
            )
        return dict(
            self._request("POST", f"/api/jobs/{job_id}/{'schedule' if enable else 'unschedule'}")
        )

    def runs(self, name: str, limit: int = 100) -> list[dict[str, Any]]:
        return list(
            self._request("GET", f"/api/jobs/{self._job_id(name)}/runs", params={"limit": limit})[
                "runs"
            ]
        )

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/api/runs/{run_id}"))

    def run_events(self, run_id: str) -> list[dict[str, Any]]:
        return list(self._request("GET", f"/api/runs/{run_id}/events")["events"])

    def logs(self, run_id: str, rank: int = 0, container: str = "main") -> str:
        response = self.http.get(
            f"/api/runs/{run_id}/logs", params={"rank": rank, "container": container}
        )
        if response.status_code >= 400:
            _decode(response)
        return response.text

    def follow_logs(self, run_id: str, rank: int = 0) -> Iterator[str]:
        params: dict[str, Any] = {"rank": rank, "follow": "true"}
        with self.http.stream(
            "GET", f"/api/runs/{run_id}/logs", params=params, timeout=None
        ) as response:
            if response.status_code >= 400:
                response.read()
                _decode(response)
            yield from response.iter_text()

    # secrets
    def put_secret(self, name: str, value: str, description: str = "") -> dict[str, Any]:
        return dict(
            self._request(
                "POST",
                "/api/secrets",
                json={"name": name, "value": value, "description": description},
            )
        )

    def list_secrets(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/api/secrets")["secrets"])

    def delete_secret(self, name: str) -> None:
        self._request("DELETE", f"/api/secrets/{name}")

    def status(self) -> dict[str, Any]:
        return dict(self._request("GET", "/api/status"))

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


def _decode(response: httpx.Response) -> Any:
    if response.status_code == 204:
        return None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        body = body if isinstance(body, dict) else {}
        raise ApiError(
            response.status_code,
            str(body.get("error_code", "http_error")),
            str(body.get("message", response.reason_phrase)),
            body.get("errors"),
        )
    return body
