"""A gateway that starts kills only what its own server's SSH sessions left: a
marked process of a run it does not know belongs to another Flotilla server on the
same machine (parallel tests, a benchmark, a second data directory), whose live
sessions it must not end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import pytest

from flotilla.runtime.procs import process_start_ticks
from flotilla.runtime.sessions.leftovers import SESSION_MARK
from tests.conftest import make_settings, open_api

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


async def test_another_servers_session_lives_on_when_a_gateway_starts(data_dir: Path) -> None:
    # What a session of another server's task runs: marked, with that server's run id.
    theirs = {"FLOTILLA_RUN_ID": os.urandom(16).hex(), "FLOTILLA_RANK": "0", SESSION_MARK: "1"}
    other = await asyncio.create_subprocess_exec(
        "sleep", "300", env={**os.environ, **theirs}, start_new_session=True
    )
    try:
        async for api in open_api(make_settings(data_dir, ssh_port=0)):
            gateway = api.ctx.ssh_gateway
            assert gateway is not None  # started: what sessions left was looked at
            assert not any(t.run_id == theirs["FLOTILLA_RUN_ID"] for t in gateway.book.sessions)
            assert process_start_ticks(other.pid) is not None  # alive, no zombie
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(other.pid, signal.SIGKILL)
        await other.wait()
