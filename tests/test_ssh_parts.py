"""The SSH gateway's parts without a gateway: login names, what /proc says about a
task's processes, the port setting, `flo ssh`'s pinned host keys, and the API when
the gateway is off."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from flotilla.cli.ssh import config_block, pin_host_key, ssh_options
from flotilla.config import DEFAULT_SSH_PORT, Settings
from flotilla.core.sshlogin import Login, parse_login
from flotilla.runtime import proctree
from flotilla.runtime.sessions.forwards import reachable
from tests.conftest import Api


@pytest.mark.parametrize(
    ("username", "login"),
    [
        ("web", Login("web")),
        ("web.3", Login("web", number=3)),
        ("train.12.1", Login("train", number=12, rank=1)),
        ("alice/web", Login("web", owner="alice")),
        ("team-a/web-2.7", Login("web-2", owner="team-a", number=7)),
    ],
)
def test_login_names(username: str, login: Login) -> None:
    assert parse_login(username) == login


@pytest.mark.parametrize(
    "username",
    ["", "Web", "web.", "web.x", "a/b/c", "web;id", "../x", "-x", "web\n", "web.1234567890"],
)
def test_bad_login_names_are_refused_with_the_forms_that_work(username: str) -> None:
    with pytest.raises(ValueError, match=r"NAME\.RUN\.RANK"):
        parse_login(username)


def test_proc_reads_this_process() -> None:
    pid = os.getpid()
    assert proctree.environment(pid) is not None
    assert proctree.working_directory(pid) == os.getcwd()
    assert proctree.session_id(pid) == os.getsid(0)
    assert pid in proctree.processes_in_sessions([os.getsid(0)])
    with socket.socket() as listener, socket.socket() as unbound:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        unbound.bind(("127.0.0.1", 0))  # bound but not listening: not a server
        found = proctree.listeners([pid])
        assert ("127.0.0.1", listener.getsockname()[1]) in found
        assert unbound.getsockname()[1] not in {port for _, port in found}


def test_proc_of_a_gone_process_is_none() -> None:
    gone = 2**22 + 17  # above the default pid_max
    assert proctree.environment(gone) is None
    assert proctree.working_directory(gone) is None
    assert proctree.session_id(gone) is None
    assert proctree.listeners([gone]) == set()


def test_ipv6_listeners_are_read_in_their_own_notation() -> None:
    with socket.socket(socket.AF_INET6) as listener:
        listener.bind(("::1", 0))
        listener.listen()
        assert ("::1", listener.getsockname()[1]) in proctree.listeners([os.getpid()])


@pytest.mark.parametrize(
    ("dest", "owned", "connect_to"),
    [
        ("localhost", {("127.0.0.1", 80)}, "127.0.0.1"),
        ("localhost", {("0.0.0.0", 80)}, "127.0.0.1"),
        ("::1", {("::", 80)}, "::1"),
        ("127.0.0.2", {("127.0.0.2", 80)}, "127.0.0.2"),
        ("10.1.2.3", {("10.1.2.3", 80)}, "10.1.2.3"),
        ("localhost", {("127.0.0.1", 81)}, None),  # another port
        ("127.0.0.1", {("10.1.2.3", 80)}, None),  # the task listens elsewhere only
        ("10.9.9.9", {("0.0.0.0", 80)}, None),  # any-address listener: loopback only
        ("db.internal", {("0.0.0.0", 80)}, None),
    ],
)
def test_forwarding_reaches_exactly_a_listening_address(
    dest: str, owned: set[tuple[str, int]], connect_to: str | None
) -> None:
    assert reachable(dest, 80, owned) == connect_to


@pytest.mark.parametrize(
    ("value", "port"), [("", DEFAULT_SSH_PORT), ("0", 0), ("2022", 2022), ("off", None)]
)
def test_ssh_port_setting(monkeypatch: pytest.MonkeyPatch, value: str, port: int | None) -> None:
    monkeypatch.setenv("FLOTILLA_SSH_PORT", value)
    assert Settings.from_env().ssh_port == port


@pytest.mark.parametrize("value", ["-1", "70000", "ssh"])
def test_a_bad_ssh_port_setting_says_what_is_allowed(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("FLOTILLA_SSH_PORT", value)
    with pytest.raises(ValueError, match="FLOTILLA_SSH_PORT must be a port number, 0 or 'off'"):
        Settings.from_env()


def test_pinned_host_keys_replace_the_old_key_of_the_same_address(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    pin_host_key("gpu.example", 2222, "ssh-ed25519 OLD flotilla")
    pin_host_key("other.example", 2222, "ssh-ed25519 OTHER")
    path = pin_host_key("gpu.example", 2222, "ssh-ed25519 NEW flotilla")
    assert path.read_text().splitlines() == [
        "[other.example]:2222 ssh-ed25519 OTHER",
        "[gpu.example]:2222 ssh-ed25519 NEW",
    ]
    assert (
        pin_host_key("gpu.example", 22, "ssh-ed25519 K")
        .read_text()
        .endswith("\ngpu.example ssh-ed25519 K\n")
    )


def test_ssh_config_block_for_ides() -> None:
    block = config_block("alice/web", "gpu.example", {"Port": "2222"})
    assert block.splitlines() == [
        "Host flo-alice-web",
        "  HostName gpu.example",
        "  User alice/web",
        "  Port 2222",
    ]


async def test_the_api_says_when_the_gateway_is_off(api: Api) -> None:
    response = await api.client.get("/api/ssh")
    assert response.status_code == 200
    assert response.json() == {"enabled": False}
    assert (await api.client.get("/api/ssh", headers={"Authorization": ""})).status_code == 401


def test_ssh_options_quote_paths_with_spaces(tmp_path: Path) -> None:
    options = ssh_options(2222, tmp_path / "my hosts", Path("/keys/my key"))
    assert options["UserKnownHostsFile"] == f'"{tmp_path}/my hosts"'
    assert options["IdentityFile"] == '"/keys/my key"'
