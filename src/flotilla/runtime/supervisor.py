"""The per-task supervisor: forked by the agent, it owns one task until its end.

It detaches into its own session (so neither a dying server nor a dying agent takes
the task with it), clones the repositories, runs the start script, then the command
in its own process group with output to `main.log`. On SIGTERM it forwards SIGTERM
to the command's group and SIGKILLs the group after the grace period. It writes the
outcome to `result.json` and reports progress on a pipe to the agent, if the agent
is still there to read it.
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

from flotilla.runtime.procs import process_start_ticks, write_json_atomic
from flotilla.runtime.taskspec import EXITED, RUNNING, TaskFiles, TaskSpec, TaskState

_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/true"}


class SetupFailed(Exception):
    pass


class Supervisor:
    def __init__(self, spec: TaskSpec, report_fd: int) -> None:
        self.spec = spec
        self.files = TaskFiles(spec.task_dir)
        self.report_fd = report_fd
        self.child_pgid: int | None = None  # the group that SIGTERM must reach
        self.stopping = False
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
        try:
            self._setup()
        except SetupFailed as e:
            self._finish(exit_code=None, message=str(e))
            return 0
        if self.stopping:
            self._finish(exit_code=None, message="stopped during setup")
            return 0
        status = self._run_command()
        exit_code = os.waitstatus_to_exitcode(status)
        if exit_code < 0:  # killed by a signal: report it the way shells do
            exit_code = 128 - exit_code
        self._finish(exit_code=exit_code, message="")
        return 0

    # -- setup -------------------------------------------------------------------

    def _setup(self) -> None:
        os.makedirs(self.spec.workdir, exist_ok=True)
        for secret in self.spec.files:
            path = Path(secret.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secret.content)
        if not self.spec.git and not self.spec.start_script:
            return
        with open(self.files.setup_log, "ab", buffering=0) as log:
            for clone in self.spec.git:
                self._clone(clone.url, clone.dest, clone.reference, clone.reference_type, log)
            if self.spec.start_script and not self.stopping:
                log.write(b"$ start_script\n")
                code = self._setup_step(["/bin/bash", "-c", self.spec.start_script], log)
                if code != 0:
                    raise SetupFailed(f"start_script exited with code {code}")

    def _clone(self, url: str, dest: str, ref: str | None, ref_type: str, log: BinaryIO) -> None:
        if self.stopping:
            return
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
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
        env = {**self.spec.env, **_GIT_ENV}
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

    @staticmethod
    def _log_line(log: BinaryIO, text: str) -> None:
        log.write((text + "\n").encode())

    # -- the command -------------------------------------------------------------

    def _run_command(self) -> int:
        """Start the command in its own process group and wait for it. Returns the
        wait status, or 127 << 8 if it could not be started."""
        started_at = time.time()
        try:
            pid = self._spawn_command()
        except OSError as e:
            with open(self.files.main_log, "a") as log:
                log.write(f"flotilla: cannot start the command: {e}\n")
            return 127 << 8
        self.child_pgid = pid
        write_json_atomic(self.files.started, {"pid": pid, "started_at": started_at})
        self._report(TaskState(self.spec.task_id, RUNNING, pid=pid, started_at=started_at))
        self.started = (pid, started_at)
        if self.stopping:  # a SIGTERM that came during setup or the spawn
            self._signal_group(signal.SIGTERM)
            signal.setitimer(signal.ITIMER_REAL, max(self.spec.grace_seconds, 0.01))
        _, status = os.waitpid(pid, 0)
        signal.setitimer(signal.ITIMER_REAL, 0)
        # The main process is gone: like a container, take its stray children with it.
        self._signal_group(signal.SIGKILL)
        return status

    def _spawn_command(self) -> int:
        # posix_spawn (vfork + exec) costs a fraction of fork + exec: it copies no
        # page tables, which matters when thousands of runs start at once.
        if self.spec.argv is not None:
            program = shutil.which(self.spec.argv[0], path=self.spec.env.get("PATH", os.defpath))
            if program is None:
                raise FileNotFoundError(f"{self.spec.argv[0]!r} not found on PATH")
            argv = self.spec.argv
        else:
            program, argv = "/bin/bash", ["/bin/bash", "-c", self.spec.shell or ""]
        os.chdir(self.spec.workdir)  # the spawned process inherits the working directory
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        return os.posix_spawn(
            program,
            argv,
            self.spec.env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 1, str(self.files.main_log), flags, 0o600),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setpgroup=0,  # its own process group: a stop reaches all it started
            setsigdef=(
                signal.SIGTERM,
                signal.SIGALRM,
                signal.SIGPIPE,
                signal.SIGINT,
                signal.SIGHUP,
            ),
        )

    # -- signals -----------------------------------------------------------------

    def _on_term(self, _sig: int, _frame: FrameType | None) -> None:
        if self.stopping:
            return
        self.stopping = True
        if self.child_pgid is not None:
            self._signal_group(signal.SIGTERM)
            signal.setitimer(signal.ITIMER_REAL, max(self.spec.grace_seconds, 0.01))

    def _on_grace_expired(self, _sig: int, _frame: FrameType | None) -> None:
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: int) -> None:
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
