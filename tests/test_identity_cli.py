"""`flo user|service-account|group|project|token` and `flo apply` of identity recipes,
in process (typer's CliRunner) against a real server on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from flotilla.cli.main import app
from tests.factories import ADMIN_TOKEN, ServerProcess, cleanup_data_dir, ssh_public_key

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("identity-cli") / "data").start()
    yield process
    process.stop()
    cleanup_data_dir(process.data_dir)  # its agent, not under the `data_dir` fixture


def flo(server: ServerProcess, *args: str, token: str = ADMIN_TOKEN, ok: bool = True) -> Result:
    env = {"FLOTILLA_URL": server.url, "FLOTILLA_TOKEN": token}
    result = CliRunner().invoke(app, list(args), env=env)
    if ok:
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return result


def flo_json(server: ServerProcess, *args: str, token: str = ADMIN_TOKEN) -> Any:
    return json.loads(flo(server, *args, "--json", token=token).stdout)


def failed(result: Result, *words: str) -> None:
    """Exit 1 with one red error line naming `words`."""
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_users_groups_projects_and_tokens(server: ServerProcess, tmp_path: Path) -> None:
    key_file = tmp_path / "id_ed25519.pub"
    key_file.write_text(ssh_public_key("alice@laptop") + "\n")
    created = flo(
        server,
        "user",
        "create",
        "alice",
        "--email",
        "alice@example.com",
        "--key-file",
        str(key_file),
    )
    assert "created user alice" in created.stdout
    flo(server, "user", "create", "bob")
    assert [u["username"] for u in flo_json(server, "user", "list")] == ["admin", "alice", "bob"]
    assert "alice@example.com" in flo(server, "user", "list").stdout
    flo(server, "user", "update", "alice", "--full-name", "Alice A")
    alice = flo_json(server, "user", "show", "alice")
    assert alice["full_name"] == "Alice A" and len(alice["ssh_keys"]) == 1

    second = tmp_path / "second.pub"
    second.write_text(ssh_public_key("alice@desktop"))
    added = flo(server, "user", "add-key", "alice", str(second)).stdout
    fingerprint = added.split()[3]
    assert fingerprint.startswith("SHA256:")
    assert fingerprint in flo(server, "user", "show", "alice").stdout
    flo(server, "user", "remove-key", "alice", fingerprint)
    assert len(flo_json(server, "user", "show", "alice")["ssh_keys"]) == 1

    flo(server, "group", "create", "ml", "--member", "alice", "--description", "ML")
    flo(server, "group", "add-member", "ml", "bob")
    assert flo_json(server, "group", "list")[0]["members"] == ["alice", "bob"]
    flo(server, "group", "remove-member", "ml", "bob")
    assert "members:\n- alice" in flo(server, "group", "show", "ml").stdout

    flo(server, "project", "create", "vision", "--description", "cameras")
    flo(server, "project", "add-member", "vision", "alice", "--role", "admin")
    flo(server, "project", "add-member", "vision", "ml", "--group", "--role", "viewer")
    members = flo_json(server, "project", "show", "vision")["members"]
    assert {"kind": "group", "name": "ml", "role": "viewer"} in members
    assert "vision" in flo(server, "project", "list").stdout

    # A token for alice, shown once; as alice: her project yes, new users no.
    minted = flo(
        server,
        "token", "create", "--user", "alice", "--name", "laptop",
        "--scope", "read", "--scope", "write", "--expires-in", "30d",
    )  # fmt: skip
    token = minted.stdout.strip()
    assert token.startswith("flo_") and "shown this once" in minted.stderr
    listed = flo(server, "token", "list", "--json", token=token).stdout
    assert token not in listed and json.loads(listed)[0]["expires_at"] is not None
    flo(server, "project", "add-member", "vision", "bob", "--role", "member", token=token)
    failed(flo(server, "user", "create", "eve", token=token, ok=False), "platform admins")
    failed(flo(server, "token", "create", "--name", "x", "--scope", "admin", token=token, ok=False))
    token_id = json.loads(listed)[0]["id"]
    flo(server, "token", "revoke", token_id, token=token)
    failed(flo(server, "project", "list", token=token, ok=False), "revoked")

    flo(server, "service-account", "create", "ci-bot")
    assert [a["username"] for a in flo_json(server, "service-account", "list")] == ["ci-bot"]
    bot = flo(server, "token", "create", "--user", "ci-bot", "--name", "ci").stdout.strip()
    assert flo_json(server, "user", "show", "ci-bot", token=bot)["service_account"] is True

    failed(flo(server, "user", "create", "Bad", ok=False), "username")
    failed(flo(server, "token", "create", "--name", "x", "--expires-in", "soon", ok=False))
    failed(flo(server, "user", "delete", "admin", "--yes", ok=False), "bootstrap")
    flo(server, "project", "delete", "vision", "--yes")
    flo(server, "group", "delete", "ml", "--yes")
    flo(server, "user", "delete", "alice", "--yes")
    assert "alice" not in flo(server, "user", "list").stdout


def test_apply_identity_recipes(server: ServerProcess, tmp_path: Path) -> None:
    recipes = tmp_path / "team.yaml"
    recipes.write_text(
        f"""\
type: user
spec: {{name: dana, email: dana@example.com, ssh_public_keys: ["{ssh_public_key()}"]}}
---
type: user
spec: {{name: eli}}
---
type: group
spec: {{name: research, members: [dana, eli]}}
---
type: project
spec:
  name: atlas
  members:
    - {{user: dana, role: admin}}
    - {{group: research, role: member}}
"""
    )
    out = flo(server, "apply", str(recipes)).stdout
    assert "applied user dana (version 1)" in out and "applied project atlas" in out
    assert flo(server, "apply", "-f", str(recipes)).stdout == out  # idempotent, kubectl-style -f
    recipes.write_text(recipes.read_text().replace("[dana, eli]", "[eli]"))
    flo(server, "apply", str(recipes))
    assert flo_json(server, "group", "show", "research")["members"] == ["eli"]
    exported = flo(server, "get", "atlas", "--type", "project").stdout
    assert "user: dana" in exported and "group: research" in exported

    bad = tmp_path / "bad.yaml"
    bad.write_text("type: group\nspec: {name: g, members: [nobody]}\n")
    result = flo(server, "apply", str(bad), ok=False)
    assert result.exit_code == 1 and "spec.members[0]: no user named 'nobody'" in result.stderr


def test_an_admin_sets_a_password_and_the_user_logs_in(server: ServerProcess) -> None:
    flo(server, "user", "create", "pat")
    env = {"FLOTILLA_URL": server.url, "FLOTILLA_TOKEN": ADMIN_TOKEN}

    def set_password(text: str) -> Result:
        args = ["user", "set-password", "pat", "--password-stdin"]
        return CliRunner().invoke(app, args, env=env, input=text)

    failed(set_password("short\n"), "password", "at least")
    failed(set_password("\n"), "no password on stdin")
    done = set_password("a long enough passphrase\n")
    assert done.exit_code == 0 and "password set for pat" in done.stdout, done.stderr
    login = {"username": "pat", "password": "a long enough passphrase"}
    answer = httpx.post(f"{server.url}/api/auth/login", json=login, timeout=30)
    assert answer.status_code == 200 and answer.json()["access_token"], answer.text
    assert "passphrase" not in done.stdout + done.stderr  # never echoed
    flo(server, "user", "delete", "pat", "--yes")
