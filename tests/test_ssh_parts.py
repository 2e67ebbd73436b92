"""The SSH gateway's parts without a gateway: login names, what /proc says about a
task's processes, the port setting, `flo ssh`'s pinned host keys, and the API when
the gateway is off."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from flotilla.cli.ssh import config_block, pin_host_key
from flotilla.config import DEFAULT_SSH_PORT, Settings
from flotilla.runtime import proctree
from flotilla.server.ssh.targets import Login, Refused, parse_login
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


@pytest.mark.parametrize("username", ["", "Web", "web.", "web.x", "a/b/c", "web;id", "../x", "-x"])
def test_bad_login_names_are_refused_with_the_forms_that_work(username: str) -> None:
    with pytest.raises(Refused, match=r"NAME\.RUN\.RANK"):
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
        ports = proctree.listening_ports([pid])
        assert listener.getsockname()[1] in ports
        assert unbound.getsockname()[1] not in ports


def test_proc_of_a_gone_process_is_none() -> None:
    gone = 2**22 + 17  # above the default pid_max
    assert proctree.environment(gone) is None
    assert proctree.working_directory(gone) is None
    assert proctree.session_id(gone) is None
    assert proctree.listening_ports([gone]) == set()


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
