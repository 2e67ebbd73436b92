"""One SSH session inside a running task: a shell, a command or SFTP, started with
the task's own environment and working directory, its bytes carried both ways. In
an isolated task (its process runs as its user's account) it also runs as that
user, in the task's cgroup and mount namespace (entry.py); if it cannot, it does
not run at all.

With a terminal the process gets a pseudo-terminal (and job control); without one,
plain pipes, stderr kept apart. Output is read only while the client's window has
room, and input stops being read from the client while the process does not read
it, so neither side can make the gateway buffer without bound. Input and EOF that
come while the process is still being started wait for it (scripts send EOF at once:
`ssh HOST cmd </dev/null`); on a terminal EOF is ignored, as sshd does. Created by the
gateway's `session_requested` (and a host's session relay's); they end the sessions
whose task has stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import re
import shutil
import signal
import struct
import sys
import termios
from typing import Any

import asyncssh

from flotilla.runtime import proctree
from flotilla.runtime.sessions.entry import CannotEnter, TaskEntry, task_entry
from flotilla.runtime.sessions.leftovers import SESSION_MARK, SessionBook
from flotilla.runtime.sessions.target import Target, is_task_process

# Become the session leader with the terminal on fd 0 as the controlling terminal,
# then become the shell. A separate tiny program because the server process must
# not fork Python itself (threads, event loop).
_LOGIN_TTY = "import os,sys; os.login_tty(0); os.execvp(sys.argv[1], sys.argv[1:])"
_CLIENT_ENV = re.compile(r"LANG|LC_[A-Z_]+")  # what a client may set: OpenSSH's AcceptEnv
_INPUT_HIGH_WATER = 1 << 20
_READ_SIZE = 65536
SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server")


def sftp_server() -> str | None:
    return next((p for p in SFTP_SERVERS if os.access(p, os.X_OK)), None)


class TaskShell(asyncssh.SSHServerSession[bytes]):
    def __init__(self, target: Target, live: set[TaskShell], book: SessionBook) -> None:
        self.target = target
        self.live = live  # its connection's running shells: it is there while it runs
        self.book = book  # where its session is remembered, for what it leaves behind
        self.runner: asyncio.Task[None] | None = None
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.argv: list[str] | None = None  # None: the login shell
        self.terminal: tuple[str, tuple[int, int, int, int]] | None = None
        self.master: int | None = None  # the pseudo-terminal, when there is one
        self.stdin: int | None = None
        self.outputs: dict[int, int | None] = {}  # fd -> SSH data type
        self.input = bytearray()
        self.input_eof = False
        self.paused = False
        self.outputs_closed = asyncio.Event()

    # -- requests from the client ------------------------------------------------

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Any
    ) -> bool:
        self.terminal = (term_type, term_size)
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        # The user's own command in their own task: handing it to the task's shell
        # is what SSH means, and runs with no more power than the task has.
        self.argv = [_shell(self._task_env()), "-c", command]
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        server = sftp_server() if subsystem == "sftp" else None
        if server is not None:
            self.argv = [server]
        return server is not None

    def session_started(self) -> None:
        self.runner = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.input.extend(data)
        if self.stdin is None and len(self.input) > _INPUT_HIGH_WATER and self.chan is not None:
            self.chan.pause_reading()  # not started yet: `_watch` resumes
        self._write_input()

    def eof_received(self) -> bool:
        self.input_eof = True
        self._write_input()
        return True  # keep sending the process's output

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self.terminal is not None:  # kept for a terminal still being started
            self.terminal = (self.terminal[0], (width, height, pixwidth, pixheight))
        if self.master is not None:
            _set_size(self.master, (width, height, pixwidth, pixheight))

    def signal_received(self, signame: str) -> None:
        number = getattr(signal, f"SIG{signame}", None)
        if number is not None:
            self._signal(number)

    def pause_writing(self) -> None:
        self.paused = True
        for fd in self.outputs:
            asyncio.get_running_loop().remove_reader(fd)

    def resume_writing(self) -> None:
        self.paused = False
        for fd in self.outputs:
            asyncio.get_running_loop().add_reader(fd, self._read_output, fd)

    def connection_lost(self, exc: Exception | None) -> None:
        self.end("")

    # -- the process -------------------------------------------------------------

    def end(self, message: str) -> None:
        """Hang up, as sshd does when a client goes: SIGHUP to the process's group,
        SIGKILL if it is still there 2 s later, and the channel closed. What was
        started to outlive the session (`nohup … &`) lives on with the task; the
        gateway kills it when the task stops."""
        if message and self.chan is not None and not self.chan.is_closing():
            with contextlib.suppress(Exception):
                self.chan.write_stderr(f"\r\nflotilla: {message}\r\n".encode())
        self._signal(signal.SIGHUP)
        if self.process is not None and self.process.returncode is None:
            asyncio.get_running_loop().call_later(2.0, self._signal, signal.SIGKILL)
        if self.chan is not None:
            self.chan.close()
        # Nobody reads any more: stop waiting for output a background process may
        # hold open for ever.
        for fd in list(self.outputs):
            self._output_closed(fd)

    @property
    def session_id(self) -> int | None:
        """The process's session: it leads one, so its children are found by it."""
        return self.process.pid if self.process is not None else None

    async def _run(self) -> None:
        assert self.chan is not None
        if not is_task_process(self.target.pid, self.target.run_id, self.target.rank):
            self._refuse(f"{self.target.label} has stopped", 255)
            return
        try:
            entry = task_entry(self.target.pid)
        except CannotEnter as e:  # isolated, and not enterable: never as root instead
            self._refuse(str(e), 1)
            return
        try:
            self.process = await self._spawn(entry)
        except Exception as e:  # a bad environment value, no such program, no fds left
            # repr: some errors (an OSError without text) say nothing as str.
            self._refuse(f"cannot start {self.argv}: {e!r}", 127)
            return
        finally:
            if entry is not None:
                entry.close()  # the child has its own copy
        self.live.add(self)
        self.book.remember(self.target, self.process.pid)
        if self.chan.is_closing():  # the client left while the process started
            self.end("")
        try:
            code = await self.process.wait()
            if self.master is not None:  # the terminal may hold unread output
                self._read_output(self.master, final=True)
            await self.outputs_closed.wait()
        finally:
            self.live.discard(self)
            self._close_fds()
        # The exit status goes after the output: clients may stop reading once it is in.
        # Polled: asyncssh reports a buffer below its low-water mark, never an empty one.
        while self.chan.get_write_buffer_size() and not self.chan.is_closing():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self.chan.is_closing():
            return
        try:
            name = signal.Signals(-code).name.removeprefix("SIG") if code < 0 else None
        except ValueError:  # a real-time signal has no name: report it as a shell would
            name, code = None, 128 - code
        if name is not None:
            self.chan.exit_with_signal(name)
        else:
            self.chan.exit(code)

    def _refuse(self, message: str, code: int) -> None:
        """Say why no process runs, and exit `code`, unless the client has gone."""
        assert self.chan is not None
        if not self.chan.is_closing():
            self.chan.write_stderr(f"flotilla: {message}\r\n".encode())
            self.chan.exit(code)

    async def _spawn(self, entry: TaskEntry | None) -> asyncio.subprocess.Process:
        """Start the process, through `entry` into an isolated task (entry.py).
        Until it runs, the session holds no fd of it: input and EOF wait in
        `self.input`/`self.input_eof`, a hang-up has nothing to close, and `_watch`
        hands all of it over once the process is there."""
        env = self._task_env()
        assert self.chan is not None
        for name, value in self.chan.get_environment().items():
            if _CLIENT_ENV.fullmatch(name) and "\0" not in value:
                env[name] = value
        peer, sock = self.chan.get_extra_info("peername"), self.chan.get_extra_info("sockname")
        if peer and sock:
            env["SSH_CONNECTION"] = f"{peer[0]} {peer[1]} {sock[0]} {sock[1]}"
        env[SESSION_MARK] = "1"  # what it starts dies with the task (`leftovers.py`)
        argv = self.argv or [_shell(env), "-l"]
        cwd = proctree.working_directory(self.target.pid) or env.get("HOME") or "/"
        if self.terminal is not None:
            env["TERM"] = self.terminal[0] or "xterm"
        if entry is None:
            if self.terminal is not None:
                argv = [sys.executable, "-I", "-S", "-c", _LOGIN_TTY, *argv]
            return await self._start(argv, cwd, env, ())
        # Into an isolated task: the helper goes to the task's cwd (a path in its
        # namespace) and gives the command its environment (entry.py).
        argv, env_fd = entry.start(argv, env, cwd, tty=self.terminal is not None)
        try:
            return await self._start(argv, "/", {}, (entry.ns_fd, env_fd), owner=entry.uid)
        finally:
            os.close(env_fd)

    async def _start(
        self,
        argv: list[str],
        cwd: str,
        env: dict[str, str],
        fds: tuple[int, ...],
        owner: int | None = None,
    ) -> asyncio.subprocess.Process:
        if self.terminal is not None:
            return await self._spawn_on_terminal(argv, cwd, env, fds, owner)
        return await self._spawn_on_pipes(argv, cwd, env, fds)

    async def _spawn_on_terminal(
        self,
        argv: list[str],
        cwd: str,
        env: dict[str, str],
        fds: tuple[int, ...],
        owner: int | None,
    ) -> asyncio.subprocess.Process:
        """`argv` makes the terminal its controlling one (`_LOGIN_TTY`, `_ENTER`)."""
        assert self.terminal is not None
        master, slave = os.openpty()
        try:
            _set_size(master, self.terminal[1])
            if owner is not None:
                os.fchown(slave, owner, -1)  # the user's terminal, as sshd makes it
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=cwd,
                env=env,
                pass_fds=fds,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self.master = master
        _set_size(master, self.terminal[1])  # the window may have changed meanwhile
        self._watch(master, {master: None})
        return process

    async def _spawn_on_pipes(
        self, argv: list[str], cwd: str, env: dict[str, str], fds: tuple[int, ...]
    ) -> asyncio.subprocess.Process:
        (stdin_r, stdin_w), (stdout_r, stdout_w), (stderr_r, stderr_w) = _pipes(3)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=stdin_r,
                stdout=stdout_w,
                stderr=stderr_w,
                cwd=cwd,
                env=env,
                start_new_session=True,
                pass_fds=fds,
            )
        except BaseException:
            for fd in (stdin_w, stdout_r, stderr_r):
                os.close(fd)
            raise
        finally:
            for fd in (stdin_r, stdout_w, stderr_w):
                os.close(fd)
        self._watch(stdin_w, {stdout_r: None, stderr_r: asyncssh.EXTENDED_DATA_STDERR})
        return process

    def _task_env(self) -> dict[str, str]:
        env = proctree.environment(self.target.pid) or {}
        # The task's GPUs, not one process's share of them (`nprocs`).
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in self.target.gpus)
        return env

    def _watch(self, stdin: int, outputs: dict[int, int | None]) -> None:
        """The process runs: carry its output to the client, and the client's input,
        what came before included, to it."""
        self.stdin, self.outputs = stdin, outputs
        os.set_blocking(stdin, False)
        for fd in outputs:
            os.set_blocking(fd, False)
            if not self.paused:
                asyncio.get_running_loop().add_reader(fd, self._read_output, fd)
        self._write_input()

    def _read_output(self, fd: int, final: bool = False) -> None:
        assert self.chan is not None
        while fd in self.outputs:
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                if final:
                    self._output_closed(fd)
                return
            except OSError as e:  # EIO: the terminal's last holder closed it
                if e.errno != errno.EIO:
                    raise
                data = b""
            if not data:
                self._output_closed(fd)
                return
            if not self.chan.is_closing():
                self.chan.write(data, self.outputs[fd])
            if not final:
                return  # one read per wake-up keeps other sessions moving

    def _output_closed(self, fd: int) -> None:
        asyncio.get_running_loop().remove_reader(fd)
        del self.outputs[fd]
        if fd != self.master:
            os.close(fd)
        if not self.outputs:
            self.outputs_closed.set()

    def _write_input(self) -> None:
        if self.stdin is None or self.chan is None:
            return
        loop = asyncio.get_running_loop()
        try:
            while self.input:
                written = os.write(self.stdin, self.input)
                del self.input[:written]
        except BlockingIOError:
            loop.add_writer(self.stdin, self._write_input)
            if len(self.input) > _INPUT_HIGH_WATER:
                self.chan.pause_reading()
            return
        except OSError:  # the process closed its input: drop what it will never read
            self.input.clear()
        loop.remove_writer(self.stdin)
        if self.input_eof and self.master is None:
            os.close(self.stdin)
            self.stdin = None
        # Last: resuming may deliver buffered input at once, re-entering this method.
        self.chan.resume_reading()

    def _signal(self, number: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, number)

    def _close_fds(self) -> None:
        loop = asyncio.get_running_loop()
        for fd in list(self.outputs):
            loop.remove_reader(fd)
            if fd != self.master:
                os.close(fd)
        self.outputs.clear()
        for held in {self.stdin, self.master}:
            if held is not None:
                loop.remove_writer(held)
                with contextlib.suppress(OSError):
                    os.close(held)
        self.stdin = self.master = None


def _shell(env: dict[str, str]) -> str:
    """The task's shell: its $SHELL, else bash, else sh."""
    for candidate in (env.get("SHELL"), "bash", "sh"):
        if candidate and (found := shutil.which(candidate, path=env.get("PATH"))):
            return found
    return "/bin/sh"


def _pipes(count: int) -> list[tuple[int, int]]:
    """`count` pipes, or none at all (no fds left: those made are closed)."""
    made: list[tuple[int, int]] = []
    try:
        for _ in range(count):
            made.append(os.pipe())
    except OSError:
        for pair in made:
            for fd in pair:
                os.close(fd)
        raise
    return made


def _set_size(fd: int, size: tuple[int, int, int, int]) -> None:
    width, height, pixwidth, pixheight = size
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, pixwidth, pixheight))


class RefusalSession(asyncssh.SSHServerSession[bytes]):
    """A session on a connection whose login named nothing it may enter: it says why
    on stderr and exits 1, as a shell would."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        return True

    def session_started(self) -> None:
        assert self.chan is not None
        self.chan.write_stderr(f"flotilla: {self.reason}\r\n".encode())
        self.chan.exit(1)
