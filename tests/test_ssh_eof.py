"""A client's EOF on stdin at any moment of a session's start: before the task's
process is spawned, while it is, or after. Scripts, CI, rsync and IDEs run
`ssh HOST COMMAND </dev/null`, so the EOF comes at once, often while the gateway is
still starting the process. Driven by OpenSSH's own client, many sessions at once,
with and without a terminal, with and without input before the EOF.

FLOTILLA_SSH_EOF_ROUNDS=200 repeats the whole burst that many times on one server.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NamedTuple

import asyncssh
import pytest

from tests.conftest import Api, make_settings, open_api
from tests.test_ssh import person, serve

ROUNDS = int(os.environ.get("FLOTILLA_SSH_EOF_ROUNDS", "1"))
SESSIONS = 10  # of each kind below, all at once

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(60 + 30 * ROUNDS),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH's client is not installed"),
]


@pytest.fixture
async def api(data_dir: Path) -> AsyncIterator[Api]:
    async for item in open_api(make_settings(data_dir, ssh_port=0, stop_grace_seconds=1.0)):
        yield item


class Client:
    """OpenSSH's `ssh` with a key registered on the account, logging in to `login`."""

    def __init__(self, api: Api, login: str, key: asyncssh.SSHKey, workdir: Path) -> None:
        assert api.ctx.ssh_gateway is not None
        key_file = workdir / "id_ed25519"
        key.write_private_key(str(key_file))
        key_file.chmod(0o600)
        self.options = [
            "-p",
            str(api.ctx.ssh_gateway.port),
            "-i",
            str(key_file),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            f"UserKnownHostsFile={workdir / 'known_hosts'}",
            "-o",
            "LogLevel=ERROR",
        ]
        self.destination = f"{login}@127.0.0.1"

    async def run(self, case: Case) -> tuple[int, bytes]:
        """Exit status and stdout+stderr of `ssh [-tt] HOST COMMAND`, its stdin the
        case's input then EOF (no input: /dev/null, EOF at once)."""
        process = await asyncio.create_subprocess_exec(
            "ssh",
            *self.options,
            *(["-tt"] if case.tty else []),
            self.destination,
            case.command,
            stdin=asyncio.subprocess.PIPE if case.data else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert process.stdout is not None
        first = await asyncio.wait_for(process.stdout.readline(), 30) if case.late else b""
        output, _ = await asyncio.wait_for(process.communicate(case.data or None), 30)
        assert process.returncode is not None
        return process.returncode, first + output


class Case(NamedTuple):
    command: str
    data: bytes = b""  # then EOF
    tty: bool = False  # with -tt
    late: bool = False  # input and EOF only once the first line of output is in


async def test_eof_at_once_in_many_sessions_at_once(api: Api, tmp_path: Path) -> None:
    alice = await person(api, "alice")
    job = {"type": "job", "spec": {"name": "box", "command": "sleep 86400", "start_ssh": True}}
    await serve(api, alice, job)
    client = Client(api, "box", alice.key, tmp_path)
    expected = {
        # stdin at EOF at once: the command must still start and its status come back.
        Case("true"): (0, b""),
        Case("exit 3"): (3, b""),
        Case("true", tty=True): (0, b""),
        # Input, then EOF, perhaps before the process exists: all of it, then EOF.
        Case("cat", b"abc"): (0, b"abc"),
        Case("wc -c", b"x" * 100_000): (0, b"100000\n"),
        # Input and EOF once the process runs.
        Case("echo up; cat", b"abc", late=True): (0, b"up\nabc"),
        # On a terminal EOF is no ^D (as with sshd): the command stops on its own.
        Case("head -n 1", b"abc\n", tty=True): (0, b"abc\r\n"),
    }
    cases = [case for case in expected for _ in range(SESSIONS)]
    # All at once, where EOF is mostly in before the gateway gets to the session; then
    # one after the other, where it comes in while the process is being spawned.
    alone = [Case("true"), Case("true", tty=True), Case("cat", b"abc")] * 3
    for round_ in range(ROUNDS):
        results = await asyncio.gather(*(client.run(case) for case in cases))
        results += [await client.run(case) for case in alone]
        wrong = [
            (round_, case.command, case.tty, status, output[-200:])
            for case, (status, output) in zip(cases + alone, results, strict=True)
            if not _as_expected(expected[case], status, output, case.tty)
        ]
        assert not wrong, "\n".join(map(repr, wrong))


def _as_expected(want: tuple[int, bytes], status: int, output: bytes, tty: bool) -> bool:
    # A terminal echoes the input too: the command's own output comes last.
    return status == want[0] and (output.endswith(want[1]) if tty else output == want[1])
