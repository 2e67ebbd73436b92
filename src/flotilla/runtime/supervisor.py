"""The per-task supervisor: forked by the agent, it owns one task until its end.

It detaches into its own session (so neither a dying server nor a dying agent takes
the task with it), clones the repositories, runs the start script, then the command:
one process per entry of the spec's `process_env` (one when it is empty), all in one
process group, output appended to `main.log` (see `processes.py`). The processes are
a gang: when one fails, the others get SIGTERM. On SIGTERM (a stop) it forwards
SIGTERM to the group; either way the group gets SIGKILL after the grace period. It
writes the outcome to `result.json` and reports progress on a pipe to the agent, if
the agent is still there to read it.

Isolation (runtime/isolation): where the spec asks for it and the node can, the
task's processes, setup included, run in the task's own cgroup (its limits; the
final SIGKILL is `cgroup.kill`, which reaches processes that left the group), as
the task's Unix account, in a mount namespace where the server's files are
hidden. The supervisor itself stays outside the cgroup: neither the kill nor an
OOM under the task's limit can take it before it has written the result.

Images (runtime/containers): where the spec has an `image` and the node a
container runtime, the start script and each process run in a container of that
image (one `podman run` per process, in the same process group); the kill at the
end of the grace period also force-removes the task's containers. Without a
runtime the processes run on the host, and the supervisor log says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import BinaryIO, NoReturn

from flotilla.runtime.containers.argv import ContainerError
from flotilla.runtime.containers.task import TaskContainers
from flotilla.runtime.isolation import NodeIsolation
from flotilla.runtime.isolation.launch import run_as_user, spawn_confined
from flotilla.runtime.isolation.task import IsolationFailed, TaskIsolation
from flotilla.runtime.processes import (
    DEFAULT_SIGNALS,
    NOT_STARTED,
    command_line,
    spawn,
    wait_gang,
)
from flotilla.runtime.procs import process_start_ticks, write_json_atomic
from flotilla.runtime.taskspec import EXITED, RUNNING, TaskFiles, TaskSpec, TaskState

_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/true"}


class SetupFailed(Exception):
    pass


class Supervisor:
    def __init__(self, spec: TaskSpec, report_fd: int, node: NodeIsolation | None = None) -> None:
        self.spec = spec
        self.files = TaskFiles(spec.task_dir)
        node = node or NodeIsolation.disabled("the supervisor was given no node isolation")
        self.isolation = TaskIsolation(spec, node, DEFAULT_SIGNALS)
        self.node = node
        self.containers: TaskContainers | None = None  # set in _run_task
        self.report_fd = report_fd
        self.child_pgid: int | None = None  # the group that SIGTERM must reach
        self.stopping = False  # asked to stop (SIGTERM)
        self.terminating = False  # the group has had its SIGTERM; SIGKILL is armed
        self.started: tuple[int | None, float | None] = (None, None)

    # -- entry point -------------------------------------------------------------

    def run(self) -> NoReturn:
        code = 1
        try:
            os.makedirs(self.files.dir, mode=0o700, exist_ok=True)
            self._detach()
            code = self._run_task()
        except BaseException as e:  # never let an error escape into the agent's copy
            self._finish(exit_code=None, message=f"supervisor error: {e!r}")
        finally:
            os._exit(code)

    def _detach(self) -> None:
        os.setsid()
        signal.set_wakeup_fd(-1)  # the agent's event loop fd means nothing here
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGALRM, self._on_grace_expired)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # the agent may be gone
        # Close what the agent had open (its socket, its lock, other tasks' pipes).
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd != self.report_fd:
                with contextlib.suppress(OSError):
                    os.close(fd)
        devnull = os.open(os.devnull, os.O_RDWR)
        log = os.open(self.files.supervisor_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(devnull)
        os.close(log)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        pid = os.getpid()
        write_json_atomic(
            self.files.supervisor, {"pid": pid, "start_ticks": process_start_ticks(pid)}
        )

    def _run_task(self) -> int:
        for note in self.isolation.notes:  # asked for, not possible on this node
            print(note, flush=True)
        exit_code: int | None = None
        message = ""
        try:
            self.containers = TaskContainers.for_task(self.spec, self.isolation, self.node, _say)
            self.isolation.prepare()
            if self.containers is not None:
                self.containers.prepare()
            self._setup()
            if self.stopping:
                message = "stopped during setup"
            else:
                exit_code = self._run_command()
        except (SetupFailed, IsolationFailed, ContainerError) as e:
            message = str(e)
        if self.containers is not None:
            if exit_code != 0 or self.terminating:  # a killed podman leaves its container
                self.containers.remove()
            if note := self.containers.cleanup():
                print(note, flush=True)
        if note := self.isolation.cleanup():
            print(note, flush=True)
        self._finish(exit_code=exit_code, message=message)
        return 0

    # -- setup -------------------------------------------------------------------

    def _setup(self) -> None:
        if self.isolation.credentials is not None:  # the user's files, made by the user
            try:
                run_as_user(self.isolation.credentials, self._write_files)
            except OSError as e:
                raise SetupFailed(f"cannot create the task's files: {e}") from e
        else:
            self._write_files()
        if not self.spec.git and not self.spec.start_script:
            return
        with open(self.files.setup_log, "ab", buffering=0) as log:
            for clone in self.spec.git:
                self._clone(clone.url, clone.dest, clone.reference, clone.reference_type, log)
            if self.spec.start_script and not self.stopping:
                log.write(b"$ start_script\n")
                if self.containers is not None:  # in the image, as the command
                    env = self.isolation.env(dict(self.spec.env))
                    argv = self.containers.setup_command(env)
                    code = self._plain_step(argv, self.containers.client_env, log)
                else:
                    code = self._setup_step(["/bin/bash", "-c", self.spec.start_script], log)
                if code != 0:
                    raise SetupFailed(f"start_script exited with code {code}")

    def _write_files(self) -> None:
        os.makedirs(self.spec.workdir, exist_ok=True)
        for secret in self.spec.files:
            path = Path(secret.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secret.content)
        for clone in self.spec.git:
            Path(clone.dest).parent.mkdir(parents=True, exist_ok=True)

    def _clone(self, url: str, dest: str, ref: str | None, ref_type: str, log: BinaryIO) -> None:
        if self.stopping:
            return
        # "--" ends options: a URL or path can never be taken for a git flag.
        argv = ["git", "clone", "--quiet"]
        if ref and ref_type in ("branch", "tag"):
            argv += ["--branch", ref]
        argv += ["--", url, dest]
        self._log_line(
            log, f"$ git clone {url} -> {dest}" + (f" at {ref_type} {ref}" if ref else "")
        )
        if self._setup_step(argv, log) != 0:
            raise SetupFailed(f"git clone of {url} failed (see setup log)")
        if ref and ref_type == "commit":
            code = self._setup_step(
                ["git", "-C", dest, "checkout", "--quiet", "--detach", ref, "--"], log
            )
            if code != 0:
                raise SetupFailed(f"git checkout of commit {ref} in {url} failed")

    def _setup_step(self, argv: list[str], log: BinaryIO) -> int:
        env = self.isolation.env({**self.spec.env, **_GIT_ENV})
        if self.isolation.active:
            return self._confined_setup_step(argv, env, log)
        return self._plain_step(argv, env, log)

    def _plain_step(self, argv: list[str], env: dict[str, str], log: BinaryIO) -> int:
        proc = subprocess.Popen(
            argv,
            cwd=self.spec.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        self.child_pgid = proc.pid
        try:
            return int(proc.wait())
        finally:
            self.child_pgid = None

    def _confined_setup_step(self, argv: list[str], env: dict[str, str], log: BinaryIO) -> int:
        program = shutil.which(argv[0], path=env.get("PATH", os.defpath)) or argv[0]
        try:
            pid = spawn_confined(
                program,
                argv,
                env,
                confinement=self.isolation.confinement,
                log=str(self.files.setup_log),
                pgid=0,
                cwd=self.spec.workdir,
            )
        except OSError as e:
            self._log_line(log, f"flotilla: cannot start {argv[0]}: {e}")
            return NOT_STARTED
        self.child_pgid = pid
        try:
            _, status = os.waitpid(pid, 0)
        finally:
            self.child_pgid = None
        return os.waitstatus_to_exitcode(status)

    @staticmethod
    def _log_line(log: BinaryIO, text: str) -> None:
        log.write((text + "\n").encode())

    # -- the command -------------------------------------------------------------

    def _run_command(self) -> int:
        """Start the task's processes in one process group and wait for all of them.
        Returns the first failure's exit code (127 if a process could not be
        started), or 0."""
        started_at = time.time()
        pids, spawn_failure = self._spawn_processes()
        if not pids:
            return spawn_failure
        leader = pids[0]  # its pid is the group's id: what a stop or a cleanup signals
        write_json_atomic(self.files.started, {"pid": leader, "started_at": started_at})
        self._report(TaskState(self.spec.task_id, RUNNING, pid=leader, started_at=started_at))
        self.started = (leader, started_at)
        if self.stopping or spawn_failure:  # a SIGTERM during setup or the spawns
            self._terminate_group()
        code = wait_gang(pids, self._terminate_group)
        signal.setitimer(signal.ITIMER_REAL, 0)
        # All processes are gone: like a container, take their stray children too.
        self._signal_group(signal.SIGKILL)
        return spawn_failure or code

    def _spawn_processes(self) -> tuple[list[int], int]:
        """Spawn one process per entry of `process_env`, the first leading a new
        process group and the rest joining it. Returns their pids and 0, or the
        pids started so far and 127 if one could not be started."""
        os.chdir(self.spec.workdir)  # the spawned processes inherit it
        pids: list[int] = []
        for extra in self.spec.process_env or [{}]:
            if self.stopping:  # stopped part way: start no more
                break
            env = self.isolation.env({**self.spec.env, **extra})
            confinement = self.isolation.confinement if self.isolation.active else None
            try:
                if self.containers is not None:  # podman, as root, outside the cgroup
                    argv = self.containers.process_command(len(pids), env)
                    program, env, confinement = argv[0], self.containers.client_env, None
                else:
                    program, argv = command_line(self.spec, env)
                pgid = pids[0] if pids else 0
                pid = spawn(program, argv, env, self.files.main_log, pgid, confinement)
            except (OSError, ContainerError) as e:
                with open(self.files.main_log, "a") as log:
                    log.write(f"flotilla: cannot start the command: {e}\n")
                return pids, NOT_STARTED
            pids.append(pid)
            self.child_pgid = pids[0]  # from now on a SIGTERM reaches the group
        return pids, 0

    # -- signals -----------------------------------------------------------------

    def _on_term(self, _sig: int, _frame: FrameType | None) -> None:
        if self.stopping:
            return
        self.stopping = True
        if self.child_pgid is not None:
            self._terminate_group()

    def _terminate_group(self) -> None:
        """SIGTERM the current process group, SIGKILL it after the grace period.
        Once: a stop after a gang failure must not restart the grace period."""
        if self.terminating:
            return
        self.terminating = True
        self._signal_group(signal.SIGTERM)
        signal.setitimer(signal.ITIMER_REAL, max(self.spec.grace_seconds, 0.01))

    def _on_grace_expired(self, _sig: int, _frame: FrameType | None) -> None:
        if self.containers is not None:  # SIGKILL to podman would not reach them
            self.containers.remove()
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: int) -> None:
        if sig == signal.SIGKILL:  # the whole cgroup, processes that left the group too
            self.isolation.kill()
        if self.child_pgid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.child_pgid, sig)

    # -- reporting ---------------------------------------------------------------

    def _finish(self, exit_code: int | None, message: str) -> None:
        finished_at = time.time()
        write_json_atomic(
            self.files.result,
            {
                "exit_code": exit_code,
                "stopped": self.stopping,
                "finished_at": finished_at,
                "message": message,
            },
        )
        pid, started_at = self.started
        state = TaskState(
            self.spec.task_id,
            EXITED,
            pid=pid,
            started_at=started_at,
            finished_at=finished_at,
            exit_code=exit_code,
            stopped=self.stopping,
            message=message,
        )
        self._report(state)

    def _report(self, state: TaskState) -> None:
        line = json.dumps(state.to_dict())
        # Nobody may be listening: the result files on disk are the source of truth.
        with contextlib.suppress(OSError):
            os.write(self.report_fd, (line + "\n").encode())  # one write: atomic on a pipe


def _say(text: str) -> None:
    print(text, flush=True)  # the supervisor log
