"""The backend the server drives: each task goes to the agent of its node. The
server's own machine (and `sim` nodes, which are processes on it) through the local
backend; a node on another host through its `RemoteNode`; a task of a virtual node
(`LaunchRequest.virtual`) to the virtual backend, which times it instead.

Remote nodes are attached by the node reconciler (`server/reconcilers/
agent_nodes.py`) before the first supervision step, so a task on a remote node is
never mistaken for one the local agent lost. While a node is silent its tasks have
no news (`observe` leaves them out without asking: the last known state stands, and
no loop waits on a silent host); once the reconciler declares it failed, its tasks
are `lost`, so their runs are requeued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from flotilla.compute.agents.logmirror import mirror_files
from flotilla.compute.agents.remote import RemoteNode
from flotilla.compute.base import (
    ComputeBackend,
    LaunchRequest,
    LogFiles,
    NodeInventory,
    TaskEventHandler,
    TaskRef,
    VirtualExecution,
    Workload,
)
from flotilla.compute.launch import build_task_spec
from flotilla.errors import TemporaryError
from flotilla.runtime.inventory import GpuDevice
from flotilla.runtime.taskspec import LOST, TaskSpec, TaskState
from flotilla.runtime.tls import TlsFiles

log = logging.getLogger("flotilla.nodes")
LOG_PULL_SECONDS = 0.5


class NodeRouter:
    name = "local"  # the backend of this machine, and of the hosts joined to it

    def __init__(
        self, local: ComputeBackend, logs_root: Path, virtual: VirtualExecution | None = None
    ) -> None:
        # This machine's backend (`LocalBackend` in the server) and the virtual
        # nodes' one: any will do, so this one never imports another backend's package.
        self.local = local
        self.virtual = virtual
        self.logs_root = logs_root
        self.remote: dict[str, RemoteNode] = {}
        self.failed: dict[str, str] = {}  # node name -> why: its tasks are lost
        self._on_event: TaskEventHandler | None = None
        self._pump: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    # -- lifecycle -----------------------------------------------------------------

    async def start(self, on_event: TaskEventHandler) -> None:
        self._on_event = on_event
        await self.local.start(on_event)
        if self.virtual is not None:
            await self.virtual.start(on_event)
        self._pump = asyncio.create_task(self._pull_logs())

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        for node in list(self.remote.values()):
            await node.close()
        await self.local.close()
        if self.virtual is not None:
            await self.virtual.close()

    def attach(self, name: str, address: str, files: TlsFiles, version: str = "") -> RemoteNode:
        """The node `name` reached at `address` with the control plane's certificate
        `version`; the same object while both are unchanged, a new connection when
        either changed (a host moved, the certificate was renewed)."""
        node = self.remote.get(name)
        if node is not None and (node.address, node.tls_version) == (address, version):
            return node
        if node is not None:
            closing = asyncio.get_running_loop().create_task(node.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        assert self._on_event is not None, "router not started"
        node = RemoteNode(name, address, files, self._on_event, self.logs_root)
        node.tls_version = version
        if name in self.remote:  # what the old connection followed, the new one does
            node.mirror.followed = self.remote[name].mirror.followed
        self.remote[name] = node
        self.failed.pop(name, None)
        return node

    async def detach(self, name: str) -> None:
        if (node := self.remote.pop(name, None)) is not None:
            await node.close()

    def mark_failed(self, name: str, why: str) -> None:
        self.failed[name] = why

    def mark_back(self, name: str) -> None:
        self.failed.pop(name, None)

    # -- ComputeBackend --------------------------------------------------------------

    def nodes(self) -> list[NodeInventory]:
        return self.local.nodes() + [
            inventory for node in self.remote.values() if (inventory := _inventory(node))
        ]

    async def launch(self, request: LaunchRequest) -> None:
        if request.virtual and self.virtual is not None:
            return await self.virtual.launch(request)
        name = request.task.node
        if name in self.failed:
            raise TemporaryError(f"node {name} has failed: {self.failed[name]}")
        node = self.remote.get(name or "")
        if node is None:
            return await self.local.launch(request)
        await node.launch(request.task, remote_task_spec(request, node))

    async def stop(self, task: TaskRef, grace_seconds: float) -> None:
        if self.virtual is not None and self.virtual.holds(task):
            return await self.virtual.stop(task, grace_seconds)
        if task.node in self.failed:
            return  # nothing to reach; its tasks are counted lost
        node = self.remote.get(task.node or "")
        if node is None:
            return await self.local.stop(task, grace_seconds)
        await node.stop(task)

    async def observe(self, tasks: list[TaskRef]) -> list[TaskState]:
        local: list[TaskRef] = []
        by_node: dict[str, list[TaskRef]] = {}
        states: list[TaskState] = []
        virtual: list[TaskRef] = []
        for task in tasks:
            name = task.node or ""
            if self._virtual(task):
                virtual.append(task)
            elif name in self.failed:
                states.append(TaskState(task.task_id, LOST, message=self.failed[name]))
            elif name in self.remote:
                if self.remote[name].answering:  # a silent host: no news, no waiting
                    by_node.setdefault(name, []).append(task)
            else:
                local.append(task)
        states += await self.local.observe(local)
        if virtual and self.virtual is not None:
            states += await self.virtual.observe(virtual)
        names = list(by_node)
        results = await asyncio.gather(
            *(self.remote[name].observe(by_node[name]) for name in names),
            return_exceptions=True,
        )
        for name, result in zip(names, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, TemporaryError):
                continue  # an unreachable node: no news of its tasks
            if isinstance(result, BaseException):
                # One node's odd answer (another agent version) is no news of that
                # node's tasks, not a failure of every run's supervision.
                log.warning("node %s: its observe failed: %r", name, result)
                continue
            states += result
        return states

    async def ssh_ticket(self, task: TaskRef, label: str, gpus: tuple[int, ...]) -> SessionTicket:
        """A one-time way into `task` on its host, through its agent's session relay
        (`runtime/sessions/relay.py`). TemporaryError when the host cannot be asked;
        ValueError (the agent's refusal) when the task does not run there."""
        node = self.remote.get(task.node or "")
        if node is None or task.node in self.failed:
            raise TemporaryError(f"node {task.node} is not connected")
        answer = await node.call(
            "ssh_ticket",
            task_dir=node.task_dir(task),
            run_id=task.run_id,
            rank=task.rank,
            label=label,
            gpus=list(gpus),
        )
        return SessionTicket(
            host=_host_of(node.address),
            port=int(answer["port"]),
            host_key=str(answer["host_key"]),
            user=str(answer["user"]),
            secret=str(answer["ticket"]),
        )

    def log_files(self, task: TaskRef) -> LogFiles:
        if self.virtual is not None and self.virtual.holds(task):
            return self.virtual.log_files(task)
        mirror = mirror_files(self.logs_root, task)
        if task.node in self.remote or task.node in self.failed or mirror.main.parent.exists():
            return mirror
        return self.local.log_files(task)

    def discard_logs(self, task: TaskRef) -> None:
        """The mirror of a remote task's logs (its host keeps its own copy) or the
        local task's logs; a virtual task has none of its own."""
        if self._virtual(task):
            return
        mirror_files(self.logs_root, task).remove()
        self.local.discard_logs(task)

    def _virtual(self, task: TaskRef) -> bool:
        return self.virtual is not None and self.virtual.holds(task)

    def host_note(self, workload: Workload) -> str | None:
        # Said of this machine: the run's nodes are in the event before this one.
        return self.local.host_note(workload)

    async def _pull_logs(self) -> None:
        while True:
            await asyncio.sleep(LOG_PULL_SECONDS)
            for node in list(self.remote.values()):
                if node.name in self.failed or not node.mirror.followed:
                    continue
                try:
                    await node.mirror.pull()
                except (TemporaryError, OSError) as e:  # unreachable: the next pull goes on
                    log.debug("node %s: log pull failed: %s", node.name, e)


def remote_task_spec(request: LaunchRequest, node: RemoteNode) -> TaskSpec:
    """The launch description for a task on `node`: its directories on that host.
    The run's checkpoint directory is the node's own (DATA_DIR/checkpoints/RUN):
    the control plane's path means nothing there. The node's data dir (its TLS key,
    other tasks' files) is hidden from the task."""
    checkpoint = str(PurePosixPath(node.data_dir) / "checkpoints" / request.task.run_id)
    env = dict(request.env)
    if "FLOTILLA_CHECKPOINT_DIR" in env:
        env["FLOTILLA_CHECKPOINT_DIR"] = checkpoint
    moved = LaunchRequest(
        task=request.task,
        workload=request.workload,
        env=env,
        secret_files=request.secret_files,
        grace_seconds=request.grace_seconds,
        process_env=request.process_env,
        checkpoint_dir=checkpoint if request.checkpoint_dir else None,
        run_as=request.run_as,
        limits=request.limits,
        hide=[node.data_dir] if request.run_as else [],
    )
    return build_task_spec(moved, node.runs_dir, {})


def _inventory(node: RemoteNode) -> NodeInventory | None:
    if node.hello is None or "inventory" not in node.hello:
        return None
    inventory = node.hello["inventory"]
    return NodeInventory(
        name=node.name,
        address=_host_of(node.address),
        gpus=[GpuDevice(**g) for g in inventory.get("gpus", [])],
        cpus=int(inventory.get("cpus", 0)),
        memory_bytes=int(inventory.get("memory_bytes", 0)),
        labels={"hostname": str(node.hello.get("hostname", ""))},
    )


def _host_of(address: str) -> str:
    """`tls://HOST:PORT` -> HOST."""
    return address.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")


@dataclass(frozen=True)
class SessionTicket:
    """Where to log in to a host's session relay, with what, and its host key."""

    host: str
    port: int
    host_key: str
    user: str
    secret: str = field(repr=False)
