"""`Flotilla`: the typed Python SDK. Every answer is a model of the API contract
(`flotilla/api/`: `Recipe`, `Run`, `Node`, …), every refusal a subclass of
`ApiError` for its status (`NotFound`, `Forbidden`, `InvalidRequest` with the
fields at fault, `Conflict`, `Unavailable`, `Unreachable`).

    from flotilla.client import Flotilla

    with Flotilla() as flo:                       # the server and token `flo` uses
        flo.apply_file("examples/hello.yaml")
        run = flo.start("hello")                  # the run, not the job
        done = flo.wait(run, timeout=60)
        print(done.status, flo.logs(done))

Built on `FlotillaClient` (`api.py`, one method per operation, answering the same
models), which the `flo` CLI uses; starts are safe to retry (an idempotency key per
call)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from flotilla.api.nodes import Node
from flotilla.api.recipes import Recipe
from flotilla.api.runs import Run
from flotilla.client.api import FlotillaClient
from flotilla.client.calls import InvalidRequest
from flotilla.client.connection import Connection, resolve_connection

RunRef = Run | str  # a run, or its id


class Flotilla:
    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = 30.0
    ) -> None:
        """`url` and `token` default to what `flo` uses (FLOTILLA_URL and
        FLOTILLA_TOKEN, `flo login`'s profile, a local server's admin token)."""
        if url is None and token is None:
            connection = resolve_connection()  # a login's session renews itself
        else:
            found = resolve_connection() if url is None or token is None else None
            connection = Connection(
                url or (found.url if found else ""),
                token or (found.token if found else None),
                source="arguments",
            )
        self.client = FlotillaClient(connection, timeout=timeout)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Flotilla:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # recipes
    def apply(self, recipe: dict[str, Any]) -> Recipe:
        """Create or update a recipe (`{"type": …, "spec": {…}}`); it as stored."""
        return self.client.apply(recipe)

    def apply_file(self, path: str | Path) -> list[Recipe]:
        """Apply every recipe of a YAML file (several documents: each in turn)."""
        try:
            documents = [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]
        except yaml.YAMLError as e:
            raise InvalidRequest(0, "invalid_yaml", f"{path}: not YAML: {e}") from e
        return [self.apply(document) for document in documents]

    def recipe(self, recipe_type: str, name: str, owner: str | None = None) -> Recipe:
        return self.client.get_recipe(recipe_type, name, owner)

    # runs
    def start(self, job: str, owner: str | None = None) -> Run:
        """Start a run of `job`; the run (queued: `wait` for its end)."""
        return self.run(self.client.start(job, owner).run.id)

    def run(self, run: RunRef) -> Run:
        return self.client.run(_run_id(run))

    def runs(self, job: str, limit: int = 100) -> list[Run]:
        return self.client.runs(job, limit)

    def wait(self, run: RunRef, timeout: float | None = None, poll: float = 0.5) -> Run:
        """The run once it has finished (succeeded, failed, stopped, error);
        TimeoutError after `timeout` seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = self.run(run)
            if current.status.is_finished():
                return current
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {current.id} is still {current.status} after {timeout} s")
            time.sleep(poll)

    def stop(self, job: str, owner: str | None = None) -> None:
        """Stop the job's active runs (each gets its grace period)."""
        self.client.stop(job, owner)

    def logs(self, run: RunRef, rank: int = 0, setup: bool = False) -> str:
        """A rank's log so far (`setup`: its clone and start-script output)."""
        return self.client.logs(_run_id(run), rank, "setup" if setup else "main")

    def follow_logs(self, run: RunRef, rank: int = 0) -> Iterator[str]:
        """A rank's log as it is written, until the run ends."""
        return self.client.follow_logs(_run_id(run), rank)

    # nodes
    def nodes(self) -> list[Node]:
        return self.client.list_nodes()


def _run_id(run: RunRef) -> str:
    return run if isinstance(run, str) else run.id
