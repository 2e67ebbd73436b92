"""Finding the server and the token: FLOTILLA_URL/FLOTILLA_TOKEN, Saturn's
SATURN_BASE_URL/SATURN_TOKEN, a profile saved by `flo login`, or — on the server's
own machine with nothing set — the local server and its admin token file.

A profile saved by `flo login --username` holds a session (an access token and a
refresh token) instead of an API token; `FlotillaClient` refreshes it when the
access token runs out and saves the new pair under `profile_lock`.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flotilla.config import DEFAULT_PORT, default_data_dir


@dataclass(frozen=True)
class Connection:
    url: str
    token: str | None
    source: str
    # Set when `token` is a session's access token that this refresh token renews.
    refresh_token: str | None = None


def profile_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "flotilla" / "profile.json"


def save_profile(url: str, token: str, refresh_token: str | None = None, **extra: str) -> Path:
    path = profile_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    profile: dict[str, str] = {"url": url, "token": token, **extra}
    if refresh_token:
        profile["refresh_token"] = refresh_token
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(profile, f)
    os.replace(tmp, path)  # readers never see half a profile
    return path


def load_profile() -> dict[str, Any] | None:
    try:
        profile = json.loads(profile_path().read_text())
    except (OSError, ValueError):
        return None
    return profile if isinstance(profile, dict) and "url" in profile else None


@contextmanager
def profile_lock() -> Iterator[None]:
    """Held while a session is refreshed, so two `flo` commands at once do not both
    spend the same refresh token (the second would look like a replay and end the
    session)."""
    path = profile_path().with_name("profile.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def resolve_connection() -> Connection:
    env = os.environ
    url = env.get("FLOTILLA_URL") or env.get("SATURN_BASE_URL")
    token = env.get("FLOTILLA_TOKEN") or env.get("SATURN_TOKEN")
    if url and token:
        return Connection(url.rstrip("/"), token, "environment")
    profile = load_profile()
    if profile and "token" in profile and (not url or url.rstrip("/") == profile["url"]):
        refresh = None if token else profile.get("refresh_token")
        return Connection(
            str(profile["url"]).rstrip("/"), token or profile["token"], "profile", refresh
        )
    port = env.get("FLOTILLA_PORT") or str(DEFAULT_PORT)
    local_url = url or f"http://127.0.0.1:{port}"
    token_file = default_data_dir() / "admin-token"
    local_token: str | None = token
    if not local_token:
        try:
            local_token = token_file.read_text().strip()
        except OSError:
            local_token = None
    return Connection(local_url.rstrip("/"), local_token, "local server")
