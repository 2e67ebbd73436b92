"""One node on another host: the control plane's connection to its agent (mutual
TLS, `AgentClient.over_tls`), what its agent said about the host in its last
`hello`, when it last answered, and the mirror of its tasks' logs.

Contact is counted from answers, not from the connection: a `hello` every
heartbeat (`beat`), and any request that succeeds. The node reconciler
(`server/reconcilers/agent_nodes.py`) turns silence into `unreachable`, then
`failed`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from flotilla.compute import paths
from flotilla.compute.agents.logmirror import LogMirror
from flotilla.compute.base import TaskEventHandler, TaskRef
from flotilla.errors import TemporaryError
from flotilla.runtime.agent_client import AgentClient, TlsTarget
from flotilla.runtime.taskspec import TaskSpec, TaskState
from flotilla.runtime.tls import TlsFiles

HELLO_TIMEOUT = 5.0
CALL_TIMEOUT = 10.0


class RemoteNode:
    def __init__(
        self,
        name: str,
        address: str,
        files: TlsFiles,
        on_event: TaskEventHandler,
        logs_root: Path,
    ) -> None:
        self.name = name
        self.address = address  # tls://HOST:PORT
        self.on_event = on_event
        self.client = AgentClient.over_tls(
            TlsTarget.of(address, name, files), self._event, self._reconnected
        )
        self.hello: dict[str, Any] | None = None
        self.last_contact: float | None = None  # time.monotonic() of the last answer
        self.last_error = ""
        self.mirror = LogMirror(logs_root, self._read_log)
        self.reconnects = 0
        self.tls_version = ""  # the control plane certificate's fingerprint it uses
        self._reporting: set[asyncio.Task[None]] = set()

    @property
    def runs_dir(self) -> str:
        if self.hello is None or "runs_dir" not in self.hello:
            raise TemporaryError(f"node {self.name}: its agent has not answered yet")
        return str(self.hello["runs_dir"])

    @property
    def data_dir(self) -> str:
        return str(Path(self.runs_dir).parent)

    def task_dir(self, task: TaskRef) -> str:
        return paths.task_dir(self.runs_dir, task.run_id, task.attempt, task.rank)

    async def beat(self) -> dict[str, Any]:
        """One heartbeat: the agent's `hello`. Raises TemporaryError when it does
        not answer within HELLO_TIMEOUT."""
        try:
            hello = await asyncio.wait_for(self.client.request("hello"), HELLO_TIMEOUT)
        except (TimeoutError, TemporaryError) as e:
            self.last_error = str(e) or "no answer within 5 s"
            raise TemporaryError(f"node {self.name}: {self.last_error}") from e
        self.hello = hello
        self.last_contact = time.monotonic()
        self.last_error = ""
        return hello

    def silent_for(self) -> float | None:
        """Seconds since the last answer; None if it never answered."""
        return None if self.last_contact is None else time.monotonic() - self.last_contact

    async def call(self, op: str, **payload: Any) -> dict[str, Any]:
        """One request, or TemporaryError within CALL_TIMEOUT: a host that went
        silent on an open connection must not hold up the loop that asked."""
        try:
            answer = await asyncio.wait_for(self.client.request(op, **payload), CALL_TIMEOUT)
        except TimeoutError as e:
            self.last_error = f"no answer to {op} within {CALL_TIMEOUT:.0f} s"
            raise TemporaryError(f"node {self.name}: {self.last_error}") from e
        self.last_contact = time.monotonic()
        return answer

    @property
    def answering(self) -> bool:
        """Whether its last heartbeat was answered (False until the first is)."""
        return self.hello is not None and not self.last_error

    async def launch(self, task: TaskRef, spec: TaskSpec) -> None:
        # Followed before the launch: a short task's end may arrive before its reply.
        self.mirror.follow(task, spec.task_dir)
        await self.call("launch", task=spec.to_dict())

    async def stop(self, task: TaskRef) -> None:
        await self.call("stop", task_id=task.task_id, task_dir=self.task_dir(task))

    async def observe(self, tasks: list[TaskRef]) -> list[TaskState]:
        dirs = [{"task_id": t.task_id, "task_dir": self.task_dir(t)} for t in tasks]
        answer = await self.call("inspect", tasks=dirs)
        states = [TaskState.from_dict(t) for t in answer["tasks"]]
        for task, state in zip(tasks, states, strict=True):
            if state.phase != "unknown":
                self.mirror.follow(task, self.task_dir(task))
            if state.phase in ("exited", "lost"):
                await self._pull_final(task.task_id)
        return states

    async def live_task_dirs(self) -> list[str]:
        return list((await self.call("live_tasks"))["task_dirs"])

    async def stop_dir(self, task_dir: str) -> None:
        await self.call("stop", task_id=Path(task_dir).name, task_dir=task_dir)

    async def close(self) -> None:
        for pending in list(self._reporting):
            pending.cancel()
        await self.client.close()

    async def _read_log(self, task_dir: str, name: str, offset: int, limit: int) -> dict[str, Any]:
        return await self.call("read_log", task_dir=task_dir, name=name, offset=offset, limit=limit)

    async def _event(self, state: TaskState) -> None:
        self.last_contact = time.monotonic()
        if state.phase not in ("exited", "lost"):
            await self.on_event(state)
            return
        # The pull is a request whose answer this connection's reader (which is
        # calling us) must read: it runs beside it, and passes the end on after.
        pending = asyncio.create_task(self._pull_then_report(state))
        self._reporting.add(pending)
        pending.add_done_callback(self._reporting.discard)

    async def _pull_then_report(self, state: TaskState) -> None:
        await self._pull_final(state.task_id)
        await self.on_event(state)

    async def _pull_final(self, task_id: str) -> None:
        self.mirror.ended(task_id)
        try:
            await self.mirror.pull_task(task_id)
        except (TemporaryError, OSError) as e:  # the periodic pull tries again
            self.last_error = str(e)

    async def _reconnected(self) -> None:
        """Events pushed while the connection was down are not resent by the agent:
        the owner's next `observe` (the node reconciler asks for one at once)
        reads every task's state from the host's disk instead."""
        self.reconnects += 1
