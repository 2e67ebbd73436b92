"""SSH into running tasks (`start_ssh`): through the gateway, with keys registered
on Flotilla accounts, a shell or a command runs inside a deployment replica or a
job's task; port forwarding reaches only the task's own ports; SFTP works where
OpenSSH's sftp-server is installed; refusals say why and are audited; a stopped
task ends its sessions. Clients: asyncssh, and OpenSSH's `ssh` through `flo ssh`."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest
from sqlalchemy import select

from flotilla.runtime.sessions.shell import sftp_server
from flotilla.server.db.models import AuditModel, UserModel
from flotilla.server.ssh.connection import GatewayConnection
from tests.conftest import Api, make_settings, open_api
from tests.factories import (
    ADMIN_TOKEN,
    TASK_PYTHON,
    ServerProcess,
    add_user,
    cleanup_data_dir,
    process_gone,
    wait_for,
    wait_sync,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

REPLICA = Path(__file__).resolve().parents[1] / "examples" / "http_replica.py"


def deployment(name: str = "web", **spec: Any) -> dict[str, Any]:
    return {
        "type": "deployment",
        "spec": {
            "name": name,
            "command": f"{TASK_PYTHON} {REPLICA}",
            "start_ssh": True,
            "environment_variables": {"GREETING": "hello from the replica"},
            **spec,
        },
    }


@pytest.fixture
async def api(data_dir: Path) -> AsyncIterator[Api]:
    async for item in open_api(make_settings(data_dir, ssh_port=0, stop_grace_seconds=1.0)):
        yield item


@pytest.fixture
async def store_api(data_dir: Path, database_url: str | None) -> AsyncIterator[Api]:
    """The gateway on each store: who may log in where is a database question."""
    settings = make_settings(data_dir, database_url, ssh_port=0, stop_grace_seconds=1.0)
    async for item in open_api(settings):
        yield item


class Person:
    def __init__(self, name: str, headers: httpx.Headers, key: asyncssh.SSHKey) -> None:
        self.name = name
        self.headers = headers
        self.key = key


async def person(api: Api, name: str, **roles: Any) -> Person:
    """A user with an API token and a registered SSH key."""
    headers = await add_user(api.ctx, name, **roles)
    key = asyncssh.generate_private_key("ssh-ed25519")
    async with api.ctx.transaction() as session:
        user = (await session.execute(select(UserModel).where(UserModel.name == name))).scalar_one()
        user.ssh_public_keys = [key.export_public_key().decode().strip()]
    return Person(name, headers, key)


async def serve(api: Api, owner: Person, recipe: dict[str, Any]) -> dict[str, Any]:
    """Apply `recipe` as `owner`; the first running replica or task, once ready."""
    response = await api.client.post("/api/recipes", json=recipe, headers=owner.headers)
    assert response.status_code in (200, 201), response.text
    name = recipe["spec"]["name"]
    if recipe["type"] == "deployment":

        async def ready() -> Any:
            view = (await api.client.get(f"/api/deployments/{name}")).json()
            return next((r for r in view["replicas"] if r["ready"]), None)

        return dict(await wait_for(ready, timeout=60, what=f"a ready replica of {name}"))
    job_id = response.json()["state"]["id"]
    run = (await api.client.post(f"/api/jobs/{job_id}/start", headers=owner.headers)).json()["run"]

    async def running() -> Any:
        found = (await api.client.get(f"/api/runs/{run['id']}")).json()
        return found if found["status"] == "running" else None

    return dict(await wait_for(running, timeout=60, what=f"job {name} running"))


def connect(api: Api, login: str, key: asyncssh.SSHKey, **kwargs: Any) -> Any:
    assert api.ctx.ssh_gateway is not None
    return asyncssh.connect(
        "127.0.0.1",
        api.ctx.ssh_gateway.port,
        username=login,
        client_keys=[key],
        known_hosts=None,
        encoding=None,
        **kwargs,
    )


async def test_a_shell_runs_inside_the_replica_with_its_environment(api: Api) -> None:
    alice = await person(api, "alice")
    replica = await serve(api, alice, deployment())
    async with connect(api, "web", alice.key) as conn:
        result = await conn.run('echo "$GREETING|$FLOTILLA_RUN_ID|$PORT"; pwd; exit 3')
        lines = result.stdout.decode().splitlines()
        assert lines[0] == f"hello from the replica|{replica['run_id']}|{replica['ports']['8000']}"
        assert lines[1].endswith(f"/runs/{replica['run_id']}/attempt-0/rank-0/root/workspace")
        assert result.exit_status == 3
        # The client's locale passes, nothing else it sends does.
        result = await conn.run("echo $LC_ALL:$BASH_ENV", env={"LC_ALL": "C", "BASH_ENV": "/x"})
        assert result.stdout == b"C:\n"
        # stderr stays apart from stdout without a terminal.
        result = await conn.run("echo out; echo err >&2")
        assert (result.stdout, result.stderr) == (b"out\n", b"err\n")
        # Input and output of several MiB pass both ways (flow control on both sides).
        payload = os.urandom(3 << 20)
        result = await conn.run("cat", input=payload)
        assert result.stdout == payload
        # A terminal: a real pty, the client's TERM, the client's window size.
        result = await conn.run("tty; echo $TERM; stty size", term_type="xterm", term_size=(91, 37))
        tty, term, size = result.stdout.decode().split("\r\n")[:3]
        assert tty.startswith("/dev/pts/") and term == "xterm" and size == "37 91"
        # A signal from the client reaches the command.
        script = "trap 'echo got-term; exit 7' TERM; echo up; sleep 30 & wait"
        process = await conn.create_process(script)
        await process.stdout.readline()
        process.send_signal("TERM")
        finished = await asyncio.wait_for(process.wait(), 10)
        assert finished.exit_status == 7 and b"got-term" in finished.stdout
    # The run number picks a replica: the login names it explicitly.
    async with connect(api, f"web.{replica['number']}", alice.key) as conn:
        result = await conn.run("echo $FLOTILLA_RUN_ID")
        assert result.stdout.decode().strip() == replica["run_id"]


async def test_a_rank_of_a_running_job(api: Api) -> None:
    alice = await person(api, "alice")
    job = {
        "type": "job",
        "spec": {"name": "train", "command": "sleep 120", "scale": 2, "start_ssh": True},
    }
    run = await serve(api, alice, job)
    async with connect(api, f"train.{run['number']}.1", alice.key) as conn:
        result = await conn.run("echo $FLOTILLA_RANK $FLOTILLA_RUN_ID")
        assert result.stdout.decode().split() == ["1", run["id"]]
    async with connect(api, "train", alice.key) as conn:  # the newest run, rank 0
        assert (await conn.run("echo $FLOTILLA_RANK")).stdout.decode().strip() == "0"

    async def audited() -> list[tuple[str, str, str, str]] | None:
        async with api.ctx.sessions() as session:
            rows = (
                await session.execute(select(AuditModel).where(AuditModel.action == "SSH login"))
            ).scalars()
            found = [(r.actor, r.path, r.outcome, r.detail) for r in rows]
        return found if len(found) == 2 else None

    assert await wait_for(audited, what="two audited logins") == [
        ("alice", f"train.{run['number']}.1", "success", f"job train run {run['number']} rank 1"),
        ("alice", "train", "success", f"job train run {run['number']} rank 0"),
    ]


async def test_port_forwarding_reaches_only_the_tasks_own_ports(api: Api) -> None:
    alice = await person(api, "alice")
    replica = await serve(api, alice, deployment())
    async with connect(api, "web", alice.key) as conn:
        reader, writer = await conn.open_connection("localhost", replica["ports"]["8000"])
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.")
        # A port that a process started from this SSH session listens on (an IDE's
        # server does this) is the task's too.
        listener = await conn.create_process(
            f"exec {TASK_PYTHON} -c 'import socket,time; s=socket.socket(); "
            's.bind(("127.0.0.1", 0)); s.listen(); print(s.getsockname()[1], flush=True); '
            'c, _ = s.accept(); c.sendall(b"from-the-session"); time.sleep(30)\''
        )
        port = int(await listener.stdout.readline())
        reader, writer = await conn.open_connection("127.0.0.1", port)
        assert await reader.read(16) == b"from-the-session"
        listener.terminate()
        # Anything else on the machine is out of reach: the server's own database
        # port, a port nobody listens on, another address.
        postgres_or_nothing = 5432
        for host, port in (("localhost", postgres_or_nothing), ("127.0.0.1", 1), ("10.0.0.1", 80)):
            with pytest.raises(asyncssh.ChannelOpenError) as refused:
                await conn.open_connection(host, port)
            reason = refused.value.reason
            assert "task's own ports" in reason or "listens on" in reason


@pytest.mark.skipif(sftp_server() is None, reason="OpenSSH's sftp-server is not installed")
async def test_sftp_puts_and_gets_files_in_the_task(api: Api, tmp_path: Path) -> None:
    alice = await person(api, "alice")
    await serve(api, alice, deployment())
    local = tmp_path / "weights.bin"
    local.write_bytes(os.urandom(200_000))
    async with connect(api, "web", alice.key) as conn:
        async with conn.start_sftp_client() as sftp:
            await sftp.put(str(local), "weights.bin")  # relative: the task's directory
            await sftp.get("weights.bin", str(tmp_path / "back.bin"))
        assert (await conn.run("wc -c < weights.bin")).stdout.decode().strip() == "200000"
    assert (tmp_path / "back.bin").read_bytes() == local.read_bytes()


class BannerClient(asyncssh.SSHClient):
    banners: list[str]

    def __init__(self) -> None:
        self.banners = []

    def auth_banner_received(self, msg: str, lang: str) -> None:
        self.banners.append(msg)


async def key_refused(api: Api, login: str, key: asyncssh.SSHKey) -> str:
    """Log in with a key that opens nothing; what the authentication banner said."""
    client = BannerClient()
    with pytest.raises(asyncssh.PermissionDenied):
        async with connect(api, login, key, client_factory=lambda: client):
            pass
    return " ".join(client.banners)


async def login_refused(api: Api, login: str, key: asyncssh.SSHKey) -> str:
    """Log in with a good key to a login that leads nowhere: the session says why on
    stderr and exits 1, and forwarding is refused with the same reason."""
    async with connect(api, login, key) as conn:
        result = await conn.run("true")
        assert result.exit_status == 1
        with pytest.raises(asyncssh.ChannelOpenError) as refused:
            await conn.open_connection("localhost", 8000)
    said = result.stderr.decode()
    assert said.startswith("flotilla: ") and refused.value.reason in said
    return said


async def test_refusals_say_why_and_every_attempt_is_audited(store_api: Api) -> None:
    api = store_api
    alice = await person(api, "alice", projects={"research": "member"})
    viewer = await person(api, "vera", projects={"research": "viewer"})
    stranger = await person(api, "bob")
    await serve(api, alice, deployment(project="research"))
    await serve(api, alice, deployment("closed", start_ssh=False, project="research"))
    nobody = asyncssh.generate_private_key("ssh-ed25519")

    assert "not registered to a Flotilla user" in await key_refused(api, "web", nobody)
    assert "no deployment or job 'web'" in await login_refused(api, "web", stranger.key)
    assert "needs write access" in await login_refused(api, "web", viewer.key)
    assert "does not allow SSH" in await login_refused(api, "closed", alice.key)
    assert "has nothing running" in await login_refused(api, "web.99", alice.key)
    assert "names no deployment or job" in await login_refused(api, "Web;rm -rf", alice.key)
    # A locked user's key opens nothing.
    async with api.ctx.transaction() as session:
        row = (await session.execute(select(UserModel).where(UserModel.name == "alice"))).scalar()
        assert row is not None
        row.locked = True
    assert "not registered" in await key_refused(api, "web", alice.key)

    async def audited() -> list[AuditModel] | None:
        async with api.ctx.sessions() as session:
            rows = list(
                (
                    await session.execute(
                        select(AuditModel).where(AuditModel.action == "SSH login")
                    )
                ).scalars()
            )
        return rows if len(rows) == 7 else None

    rows = await wait_for(audited, what="7 audited SSH logins")
    assert {r.outcome for r in rows} == {"denied"}
    # Only a proven key names an actor; a refused key is anyone's.
    assert sorted(r.actor for r in rows) == [
        "alice", "alice", "alice", "anonymous", "anonymous", "bob", "vera"
    ]  # fmt: skip
    assert any("needs write access" in r.detail for r in rows)


async def test_a_key_registered_to_one_person_cannot_be_registered_to_another(
    api: Api,
) -> None:
    """Otherwise mallory could add alice's public key to her own account and have
    alice's logins land in mallory's tasks."""
    alice = await person(api, "alice")
    mallory = await add_user(api.ctx, "mallory")
    alice_key = alice.key.export_public_key().decode().strip()
    me = (await api.client.get("/api/user", headers=mallory)).json()
    added = await api.client.post(
        f"/api/users/{me['id']}/ssh_keys", json={"key": alice_key}, headers=mallory
    )
    assert added.status_code == 409, added.text
    assert "registered to another account" in added.json()["message"]
    assert "alice" not in added.json()["message"]
    patched = await api.client.patch(
        f"/api/users/{me['id']}", json={"ssh_public_keys": [alice_key]}, headers=mallory
    )
    assert patched.status_code == 409
    created = await api.client.post(
        "/api/users", json={"username": "eve", "ssh_public_keys": [alice_key]}
    )
    assert created.status_code == 409
    # Alice herself may still set her keys.
    alice_id = (await api.client.get("/api/user", headers=alice.headers)).json()["id"]
    mine = await api.client.patch(
        f"/api/users/{alice_id}", json={"ssh_public_keys": [alice_key]}, headers=alice.headers
    )
    assert mine.status_code == 200, mine.text


async def test_a_key_that_passed_does_not_vouch_for_another(api: Api) -> None:
    """Clients offer a key unsigned first, then signed. Public keys are public: after
    alice's key passed unsigned, a different key (mallory's, which she can sign
    with) must not be let in as alice."""
    alice = await person(api, "alice")
    await serve(api, alice, deployment())
    mallory = asyncssh.generate_private_key("ssh-ed25519")  # registered to nobody
    assert api.ctx.ssh_gateway is not None
    connection = GatewayConnection(api.ctx.ssh_gateway)
    assert await connection.validate_public_key("web", alice.key)
    assert not await connection.validate_public_key("web", mallory)
    assert await connection.validate_public_key("web", alice.key)  # the signed retry


async def test_the_session_ends_when_the_replica_stops(api: Api) -> None:
    alice = await person(api, "alice")
    replica = await serve(api, alice, deployment())
    pid_of_replica = int(
        (await api.client.get(f"/api/runs/{replica['run_id']}")).json()["tasks"][0]["pid"]
    )
    # Left running on purpose (`nohup … &`): it outlives its session, as with sshd...
    async with connect(api, "web", alice.key) as conn:
        started = await conn.run("nohup sleep 300 >/dev/null 2>&1 & echo $!")
        left_running = int(started.stdout)
    await asyncio.sleep(0.5)
    assert not await process_gone(left_running)
    async with connect(api, "web", alice.key) as conn:
        process = await conn.create_process("echo $$; exec sleep 300")
        shell_pid = int(await process.stdout.readline())
        os.killpg(pid_of_replica, signal.SIGKILL)
        finished = await asyncio.wait_for(process.wait(check=False), 20)
        assert b"has stopped" in finished.stderr
    await wait_for(lambda: process_gone(shell_pid), what="the session's process to end")
    # ...but not its task: it may hold the task's GPUs, which go to someone else now.
    await wait_for(lambda: process_gone(left_running), what="what the session left to end")


async def test_ssh_info_says_where_the_gateway_is(api: Api, data_dir: Path) -> None:
    info = (await api.client.get("/api/ssh")).json()
    assert api.ctx.ssh_gateway is not None
    assert info["enabled"] and info["port"] == api.ctx.ssh_gateway.port
    assert info["host_key"].startswith("ssh-ed25519 ")
    key_file = data_dir / "ssh_host_ed25519_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert "PRIVATE KEY" not in str(info)


@pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH's client is not installed")
def test_flo_ssh_with_openssh_against_a_real_server(tmp_path: Path) -> None:
    """The README's path: a real `flo server`, a user who registers a key, a deployment
    with `start_ssh: true`, then `flo ssh web -- COMMAND` with OpenSSH's client, the
    host key pinned from the API (no trust on first use)."""
    server = ServerProcess(tmp_path / "server").start()
    try:
        key = asyncssh.generate_private_key("ssh-ed25519")
        key_file = tmp_path / "id_ed25519"
        key.write_private_key(str(key_file))
        key_file.chmod(0o600)
        with server.client() as admin:
            created = admin.post(
                "/api/users",
                json={"username": "alice", "ssh_public_keys": [key.export_public_key().decode()]},
            )
            assert created.status_code == 201, created.text
            token = admin.post(
                f"/api/users/{created.json()['id']}/tokens", json={"name": "cli"}
            ).json()["token"]
        env = {
            **os.environ,
            "FLOTILLA_URL": server.url,
            "FLOTILLA_TOKEN": token,
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
        }
        recipe = tmp_path / "web.yaml"
        recipe.write_text(
            "type: deployment\nspec:\n  name: web\n  start_ssh: true\n"
            f"  command: {TASK_PYTHON} {REPLICA}\n"
        )
        flo(env, "apply", str(recipe))

        def ready() -> bool:
            auth = {"Authorization": f"token {token}"}
            with httpx.Client(base_url=server.url, headers=auth) as client:
                replicas = client.get("/api/deployments/web").json()["replicas"]
            return any(r["ready"] for r in replicas)

        wait_sync(ready, timeout=60, what="a ready replica")
        argv = shlex.split(flo(env, "ssh", "web", "-i", str(key_file), "--print"))
        assert argv[0] == "ssh" and argv[-1] == "web@127.0.0.1"
        argv += ["-o", "BatchMode=yes", "--", "echo ssh-ok $FLOTILLA_RANK"]
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "ssh-ok 0"
        known_hosts = (tmp_path / "config" / "flotilla" / "known_hosts").read_text()
        assert known_hosts.startswith("[127.0.0.1]:") and "ssh-ed25519" in known_hosts
        config = flo(env, "ssh", "web", "--config")
        assert "Host flo-web" in config and "StrictHostKeyChecking yes" in config
    finally:
        server.stop()
        cleanup_data_dir(server.data_dir)  # the replica and its agent would outlive the test
    assert ADMIN_TOKEN not in (tmp_path / "server" / "server.log").read_text()


def flo(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(["flo", *args], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


async def test_a_session_ends_when_its_key_is_removed(api: Api) -> None:
    alice = await person(api, "alice")
    await serve(api, alice, deployment())
    me = (await api.client.get("/api/user", headers=alice.headers)).json()
    async with connect(api, "web", alice.key) as conn:
        process = await conn.create_process("exec sleep 300")
        fingerprint = me["ssh_keys"][0]["fingerprint"]
        removed = await api.client.delete(
            f"/api/users/{me['id']}/ssh_keys/{fingerprint}", headers=alice.headers
        )
        assert removed.status_code == 204
        finished = await asyncio.wait_for(process.wait(check=False), 20)
        assert b"access ended: the key no longer opens alice's account" in finished.stderr


async def test_what_sessions_left_running_is_found_again_after_a_restart(data_dir: Path) -> None:
    """The server restarts while a `nohup` job from an SSH session runs in a replica;
    the new gateway adopts it, and kills it when the replica stops."""
    settings = make_settings(data_dir, ssh_port=0, stop_grace_seconds=1.0)
    async for api in open_api(settings):
        alice = await person(api, "alice")
        replica = await serve(api, alice, deployment())
        async with connect(api, "web", alice.key) as conn:
            started = await conn.run("nohup sleep 300 >/dev/null 2>&1 & echo $!")
            left_running = int(started.stdout)
    assert not await process_gone(left_running)
    async for api in open_api(settings):
        assert api.ctx.ssh_gateway is not None
        assert any(t.run_id == replica["run_id"] for t in api.ctx.ssh_gateway.book.sessions)
        run = (await api.client.get(f"/api/runs/{replica['run_id']}")).json()
        os.killpg(int(run["tasks"][0]["pid"]), signal.SIGKILL)
        await wait_for(lambda: process_gone(left_running), what="the left process to end")
