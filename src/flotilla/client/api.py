"""`FlotillaClient`: one method per API operation, JSON in and the model of its
route (`flotilla/api/`) out, errors raised as `ApiError` carrying the server's code
and message. This module holds the core (the connection, `_request`, session
refresh) and the recipe, job, run and secret calls; the other groups of calls are
mixins in `identity_calls.py`, `fleet_calls.py`, `serving_calls.py` and
`usage_calls.py`."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx

from flotilla.api.jobs import Job, JobRestarted, JobRunList, JobStarted, JobStopped
from flotilla.api.nodes import Event
from flotilla.api.recipes import Recipe, RecipeList, RecipeVersion, RecipeVersionList
from flotilla.api.runs import Run, RunEvents
from flotilla.api.secrets import Secret, SecretList
from flotilla.api.status import ServerStatus, SshGateway
from flotilla.client.agent_calls import AgentCalls
from flotilla.client.calls import ApiError, Unreachable, _decode
from flotilla.client.connection import (
    Connection,
    load_profile,
    profile_lock,
    resolve_connection,
    save_profile,
)
from flotilla.client.fleet_calls import FleetCalls
from flotilla.client.identity_calls import IdentityCalls
from flotilla.client.serving_calls import ServingCalls
from flotilla.client.usage_calls import UsageCalls

__all__ = ["ApiError", "FlotillaClient"]

# A start whose answer was lost is sent up to this many times in all, the first
# repeat after START_RETRY_DELAY seconds, each next one after twice the wait.
START_ATTEMPTS = 3
START_RETRY_DELAY = 0.5


class FlotillaClient(IdentityCalls, FleetCalls, ServingCalls, UsageCalls, AgentCalls):
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
            raise Unreachable(
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
    def apply(self, recipe: dict[str, Any]) -> Recipe:
        return Recipe.model_validate(self._request("PUT", "/api/recipes", json=recipe))

    def list_recipes(
        self, recipe_type: str | None = None, owner: str | None = None
    ) -> list[Recipe]:
        params = {k: v for k, v in {"type": recipe_type, "owner_name": owner}.items() if v}
        return RecipeList.model_validate(
            self._request("GET", "/api/recipes", params=params)
        ).recipes

    def get_recipe(self, recipe_type: str, name: str, owner: str | None = None) -> Recipe:
        params = {"owner_name": owner} if owner else {}
        data = self._request("GET", f"/api/recipes/{recipe_type}/{name}", params=params)
        return Recipe.model_validate(data)

    def versions(self, recipe_type: str, name: str) -> list[RecipeVersion]:
        data = self._request("GET", f"/api/recipes/{recipe_type}/{name}/versions")
        return RecipeVersionList.model_validate(data).versions

    # job actions, by id
    def _job_id(self, name: str, owner: str | None = None) -> str:
        # A job read without `as_template` always has its state, and in it its id.
        return str((self.get_recipe("job", name, owner).state or {})["id"])

    def start(
        self, name: str, owner: str | None = None, idempotency_key: str | None = None
    ) -> JobStarted:
        """Start a run; safe to retry (see `_start_once`)."""
        path = f"/api/jobs/{self._job_id(name, owner)}/start"
        return JobStarted.model_validate(self._start_once(path, idempotency_key))

    def stop(self, name: str, owner: str | None = None) -> JobStopped:
        data = self._request("POST", f"/api/jobs/{self._job_id(name, owner)}/stop")
        return JobStopped.model_validate(data)

    def restart(
        self, name: str, owner: str | None = None, idempotency_key: str | None = None
    ) -> JobRestarted:
        path = f"/api/jobs/{self._job_id(name, owner)}/restart"
        return JobRestarted.model_validate(self._start_once(path, idempotency_key))

    def _start_once(self, path: str, idempotency_key: str | None) -> Any:
        """POST a start with an `Idempotency-Key` (a new one per call unless given)
        and send it again, with the same key, when the answer is lost on the way
        (the connection drops, the read times out): the server answers a repeat with
        the first run instead of starting a second."""
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        for attempt in range(START_ATTEMPTS - 1):
            try:
                return self._request("POST", path, headers=headers)
            except ApiError as e:
                if e.code != "unreachable":
                    raise
            time.sleep(START_RETRY_DELAY * 2**attempt)
        return self._request("POST", path, headers=headers)

    def delete(self, name: str, owner: str | None = None) -> None:
        self._request("DELETE", f"/api/jobs/{self._job_id(name, owner)}")

    def schedule(self, name: str, cron: str | None = None, enable: bool = True) -> Job:
        job_id = self._job_id(name)
        if cron:
            self._request(
                "PATCH", f"/api/jobs/{job_id}", json={"cron_schedule_options": {"schedule": cron}}
            )
        action = "schedule" if enable else "unschedule"
        return Job.model_validate(self._request("POST", f"/api/jobs/{job_id}/{action}"))

    def runs(self, name: str, limit: int = 100) -> list[Run]:
        path = f"/api/jobs/{self._job_id(name)}/runs"
        return JobRunList.model_validate(self._request("GET", path, params={"limit": limit})).runs

    def run(self, run_id: str) -> Run:
        return Run.model_validate(self._request("GET", f"/api/runs/{run_id}"))

    def run_events(self, run_id: str) -> list[Event]:
        return RunEvents.model_validate(self._request("GET", f"/api/runs/{run_id}/events")).events

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
    ) -> Secret:
        body = {"name": name, "value": value, "description": description}
        body.update({k: v for k, v in (("owner", owner), ("owner_kind", owner_kind)) if v})
        return Secret.model_validate(self._request("POST", "/api/secrets", json=body))

    def list_secrets(self, owner: str | None = None) -> list[Secret]:
        params = {"owner": owner} if owner else None
        return SecretList.model_validate(
            self._request("GET", "/api/secrets", params=params)
        ).secrets

    def delete_secret(
        self, name: str, owner: str | None = None, owner_kind: str | None = None
    ) -> None:
        params = {k: v for k, v in (("owner", owner), ("owner_kind", owner_kind)) if v}
        self._request("DELETE", f"/api/secrets/{name}", params=params)

    def status(self) -> ServerStatus:
        return ServerStatus.model_validate(self._request("GET", "/api/status"))

    def ssh_info(self) -> SshGateway:
        return SshGateway.model_validate(self._request("GET", "/api/ssh"))


def _expires_soon(token: str | None, margin: float = 30.0) -> bool:
    """Whether a JWT access token's `exp` is under `margin` seconds away (read, not
    verified: the server verifies; this only saves a round trip to a 401)."""
    try:
        payload = (token or "").split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"]) - time.time() < margin
    except (IndexError, ValueError, KeyError, TypeError):
        return False
