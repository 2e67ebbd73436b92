"""`flo login --username`, automatic refresh, `flo auth`, `flo logout` against a
real server; the API-token login keeps working."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flotilla.server.auth.passwords import hash_password
from tests.factories import ADMIN_TOKEN, ServerProcess

pytestmark = pytest.mark.slow
PASSWORD = "admin's long password"


@pytest.fixture
def server(data_dir: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(data_dir).start()
    db = sqlite3.connect(data_dir / "flotilla.db")
    with db:
        db.execute(
            "UPDATE users SET password_hash = ? WHERE name = 'admin'", (hash_password(PASSWORD),)
        )
    db.close()
    yield process
    process.stop()


def flo(
    server: ServerProcess, config: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOTILLA_", "SATURN_"))}
    env.update({"FLOTILLA_URL": server.url, "XDG_CONFIG_HOME": str(config)})
    return subprocess.run(
        ["flo", *args], env=env, capture_output=True, text=True, timeout=60, input=stdin
    )


def profile(config: Path) -> dict[str, str]:
    return dict(json.loads((config / "flotilla" / "profile.json").read_text()))


def write_profile(config: Path, data: dict[str, str]) -> None:
    (config / "flotilla" / "profile.json").write_text(json.dumps(data))


def expired_copy(token: str) -> str:
    """The token with its exp in the past (and so a broken signature too)."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["exp"] = claims["iat"] - 1
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{body}.{signature}"


def test_session_login_refreshes_by_itself_and_logs_out(
    server: ServerProcess, tmp_path: Path
) -> None:
    config = tmp_path / "config"
    wrong = flo(server, config, "login", "-u", "admin", "--password-stdin", stdin="nope\n")
    assert wrong.returncode == 1 and "invalid user name or password" in wrong.stderr

    done = flo(server, config, "login", "-u", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    assert "logged in to" in done.stdout and "as admin" in done.stdout
    saved = profile(config)
    assert saved["url"] == server.url and saved["username"] == "admin"
    assert saved["token"].count(".") == 2 and saved["refresh_token"].startswith("flr_")
    assert (config / "flotilla" / "profile.json").stat().st_mode & 0o777 == 0o600
    assert flo(server, config, "list", "--json").returncode == 0

    # The access token ran out: the client renews it first, and saves the new pair.
    write_profile(config, {**saved, "token": expired_copy(saved["token"])})
    assert flo(server, config, "list", "--json").returncode == 0
    renewed = profile(config)
    assert renewed["refresh_token"] != saved["refresh_token"]
    assert renewed["token"] != saved["token"] and renewed["username"] == "admin"
    # Refused without looking expired (say, revoked or signed by a pruned key): the
    # 401 makes the client renew and retry once.
    write_profile(config, {**renewed, "token": "flo_not-a-token"})
    listed = flo(server, config, "auth", "sessions", "--json")
    assert listed.returncode == 0, listed.stderr
    sessions = json.loads(listed.stdout)
    assert len(sessions) == 1 and sessions[0]["current"] and sessions[0]["method"] == "password"

    rotated = flo(server, config, "auth", "rotate-keys")
    assert rotated.returncode == 0 and "now signing with key" in rotated.stdout, rotated.stderr

    last = profile(config)
    out = flo(server, config, "logout")
    assert out.returncode == 0 and "session ended" in out.stdout, out.stderr
    assert not (config / "flotilla" / "profile.json").exists()
    gone = httpx.get(f"{server.url}/api/user", headers={"Authorization": f"Bearer {last['token']}"})
    assert gone.status_code == 401
    again = flo(server, config, "logout")
    assert again.returncode == 1 and "not logged in" in again.stderr


def test_api_token_login_still_works(server: ServerProcess, tmp_path: Path) -> None:
    config = tmp_path / "config"
    bad = flo(server, config, "login", server.url, "--token", "flo_wrong")
    assert bad.returncode == 1 and "invalid API token" in bad.stderr
    done = flo(server, config, "login", server.url, "--token", ADMIN_TOKEN)
    assert done.returncode == 0, done.stderr
    assert profile(config) == {"url": server.url, "token": ADMIN_TOKEN}
    assert flo(server, config, "list", "--json").returncode == 0
    out = flo(server, config, "logout")
    assert out.returncode == 0 and "API token forgotten" in out.stdout
