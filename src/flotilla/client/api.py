"""`FlotillaClient`: one method per API operation, JSON in and out, errors raised
as `ApiError` carrying the server's code and message."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx

from flotilla.client.connection import (
    Connection,
    load_profile,
    profile_lock,
    resolve_connection,
    save_profile,
)


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
        if self.connection.refresh_token and _expires_soon(self.connection.token):
            self._refresh_session()

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> FlotillaClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
            if response.status_code == 401 and self._refresh_session():
                response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise ApiError(
                0, "unreachable", f"cannot reach the Flotilla server at {self.connection.url}: {e}"
            ) from e
        return _decode(response)

    def _refresh_session(self) -> bool:
        """Renew a session's expired access token with its refresh token, and save the
        new pair (the old refresh token is spent). False when there is no session to
        renew or the server refuses (the caller then sees the original 401)."""
        old = self.connection.refresh_token
        if not old:
            return False
        with profile_lock():
            saved = load_profile() if self.connection.source == "profile" else None
            if saved and saved.get("url") != self.connection.url:
                saved = None  # the profile now names another server: leave it be
            if saved and saved.get("refresh_token") not in (None, old):
                # Another `flo` refreshed meanwhile: take its tokens, don't spend ours.
                self._use(str(saved["token"]), str(saved["refresh_token"]))
                return True
            try:
                response = self.http.post(
                    "/api/auth/refresh", json={"refresh_token": old}, headers={"Authorization": ""}
                )
            except httpx.TransportError:
                return False  # the request itself will say the server is unreachable
            if response.status_code != 200:
                return False
            body = response.json()
            self._use(body["access_token"], body["refresh_token"])
            if saved is not None:
                extra = {k: str(v) for k, v in (saved or {}).items() if k == "username"}
                save_profile(
                    self.connection.url, body["access_token"], body["refresh_token"], **extra
                )
        return True

    def _use(self, access_token: str, refresh_token: str) -> None:
        self.connection = replace(self.connection, token=access_token, refresh_token=refresh_token)
        self.http.headers["Authorization"] = f"token {access_token}"

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
    def put_secret(
        self,
        name: str,
        value: str,
        description: str = "",
        owner: str | None = None,
        owner_kind: str | None = None,
    ) -> dict[str, Any]:
        body = {"name": name, "value": value, "description": description}
        body.update({k: v for k, v in (("owner", owner), ("owner_kind", owner_kind)) if v})
        return dict(self._request("POST", "/api/secrets", json=body))

    def list_secrets(self, owner: str | None = None) -> list[dict[str, Any]]:
        params = {"owner": owner} if owner else None
        return list(self._request("GET", "/api/secrets", params=params)["secrets"])

    def delete_secret(
        self, name: str, owner: str | None = None, owner_kind: str | None = None
    ) -> None:
        params = {k: v for k, v in (("owner", owner), ("owner_kind", owner_kind)) if v}
        self._request("DELETE", f"/api/secrets/{name}", params=params)

    def audit(self, **filters: Any) -> dict[str, Any]:
        params = {k: v for k, v in filters.items() if v is not None}
        return dict(self._request("GET", "/api/audit", params=params))

    def status(self) -> dict[str, Any]:
        return dict(self._request("GET", "/api/status"))

    def ssh_info(self) -> dict[str, Any]:
        return dict(self._request("GET", "/api/ssh"))

    # sessions and signing keys
    def login(self, username: str, password: str) -> dict[str, Any]:
        body = {"username": username, "password": password}
        return dict(self._request("POST", "/api/auth/login", json=body))

    def logout(self, session_id: str | None = None) -> dict[str, Any]:
        body = {"session_id": session_id} if session_id else None
        return dict(self._request("POST", "/api/auth/logout", json=body))

    def sessions(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/api/auth/sessions")["sessions"])

    def rotate_keys(self) -> dict[str, Any]:
        return dict(self._request("POST", "/api/auth/keys/rotate"))

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

    # load balancers and deployments (created with `apply`, like any recipe)
    def list_load_balancers(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/api/load_balancers")["load_balancers"])

    def get_load_balancer(self, name: str, owner: str | None = None) -> dict[str, Any]:
        params = {"owner_name": owner} if owner else {}
        return dict(self._request("GET", f"/api/load_balancers/{name}", params=params))

    def delete_load_balancer(self, name: str, owner: str | None = None) -> None:
        params = {"owner_name": owner} if owner else {}
        self._request("DELETE", f"/api/load_balancers/{name}", params=params)

    def list_deployments(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/api/deployments")["deployments"])

    def get_deployment(self, name: str, owner: str | None = None) -> dict[str, Any]:
        params = {"owner_name": owner} if owner else {}
        return dict(self._request("GET", f"/api/deployments/{name}", params=params))

    def delete_deployment(self, name: str, owner: str | None = None) -> None:
        params = {"owner_name": owner} if owner else {}
        self._request("DELETE", f"/api/deployments/{name}", params=params)

    # usage, cost and budgets
    def usage(
        self, by: str = "user", since: str | None = None, until: str | None = None
    ) -> dict[str, Any]:
        params = {k: v for k, v in {"by": by, "since": since, "until": until}.items() if v}
        return dict(self._request("GET", "/api/usage", params=params))

    def usage_csv(
        self, by: str = "user", since: str | None = None, until: str | None = None
    ) -> str:
        params = {"by": by, "since": since, "until": until, "format": "csv"}
        response = self.http.get("/api/usage", params={k: v for k, v in params.items() if v})
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

    # users, service accounts, groups, projects, tokens
    def create_user(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._request("POST", "/api/users", json=body))

    def list_users(self, service_accounts: bool | None = None) -> list[dict[str, Any]]:
        params = {} if service_accounts is None else {"service_accounts": service_accounts}
        return list(self._request("GET", "/api/users", params=params)["users"])

    def get_user(self, user: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/api/users/{user}"))

    def update_user(self, user: str, changes: dict[str, Any]) -> dict[str, Any]:
        return dict(self._request("PATCH", f"/api/users/{user}", json=changes))

    def delete_user(self, user: str) -> None:
        self._request("DELETE", f"/api/users/{user}")

    def add_ssh_key(self, user: str, key: str) -> dict[str, Any]:
        return dict(self._request("POST", f"/api/users/{user}/ssh_keys", json={"key": key}))

    def remove_ssh_key(self, user: str, fingerprint: str) -> None:
        self._request("DELETE", f"/api/users/{user}/ssh_keys/{fingerprint}")

    def create_service_account(self, name: str, full_name: str = "") -> dict[str, Any]:
        body = {"name": name, "full_name": full_name}
        return dict(self._request("POST", "/api/service_accounts", json=body)["service_account"])

    def list_service_accounts(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/api/service_accounts")["service_accounts"])

    def create_group(
        self, name: str, description: str = "", members: list[str] | None = None
    ) -> dict[str, Any]:
        body = {"name": name, "description": description, "members": members or []}
        return dict(self._request("POST", "/api/groups", json=body))

    def list_groups(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/api/groups")["groups"])

    def get_group(self, group: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/api/groups/{group}"))

    def delete_group(self, group: str) -> None:
        self._request("DELETE", f"/api/groups/{group}")

    def add_group_member(self, group: str, user: str) -> dict[str, Any]:
        return dict(self._request("PUT", f"/api/groups/{group}/members/{user}"))

    def remove_group_member(self, group: str, user: str) -> None:
        self._request("DELETE", f"/api/groups/{group}/members/{user}")

    def create_project(
        self, name: str, description: str = "", members: list[dict[str, str]] | None = None
    ) -> dict[str, Any]:
        body = {"name": name, "description": description, "members": members or []}
        return dict(self._request("POST", "/api/projects", json=body))

    def list_projects(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/api/projects")["projects"])

    def get_project(self, project: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/api/projects/{project}"))

    def delete_project(self, project: str) -> None:
        self._request("DELETE", f"/api/projects/{project}")

    def set_project_member(self, project: str, kind: str, name: str, role: str) -> dict[str, Any]:
        path = f"/api/projects/{project}/members/{kind}/{name}"
        return dict(self._request("PUT", path, json={"role": role}))

    def remove_project_member(self, project: str, kind: str, name: str) -> None:
        self._request("DELETE", f"/api/projects/{project}/members/{kind}/{name}")

    def create_token(
        self,
        name: str,
        scopes: list[str],
        expires_in_days: int | None = None,
        expires_at: str | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        """A new API token; the response's `token` is the only time it is shown."""
        body: dict[str, Any] = {"name": name, "scopes": scopes}
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        if expires_at is not None:
            body["expires_at"] = expires_at
        path = f"/api/users/{user}/tokens" if user else "/api/tokens"
        return dict(self._request("POST", path, json=body))

    def list_tokens(self, user: str | None = None) -> list[dict[str, Any]]:
        params = {"user": user} if user else {}
        return list(self._request("GET", "/api/tokens", params=params)["tokens"])

    def revoke_token(self, token_id: str) -> None:
        self._request("DELETE", f"/api/tokens/{token_id}")


def _expires_soon(token: str | None, margin: float = 30.0) -> bool:
    """Whether a JWT access token's `exp` is under `margin` seconds away (read, not
    verified: the server verifies; this only saves a round trip to a 401)."""
    try:
        payload = (token or "").split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"]) - time.time() < margin
    except (IndexError, ValueError, KeyError, TypeError):
        return False


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
