"""Finding the server and the token: FLOTILLA_URL/FLOTILLA_TOKEN, Saturn's
SATURN_BASE_URL/SATURN_TOKEN, a profile saved by `flo login`, or — on the server's
own machine with nothing set — the local server and its admin token file."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from flotilla.config import DEFAULT_PORT, default_data_dir


@dataclass(frozen=True)
class Connection:
    url: str
    token: str | None
    source: str


def profile_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "flotilla" / "profile.json"


def save_profile(url: str, token: str) -> Path:
    path = profile_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "token": token}, f)
    return path


def resolve_connection() -> Connection:
    env = os.environ
    url = env.get("FLOTILLA_URL") or env.get("SATURN_BASE_URL")
    token = env.get("FLOTILLA_TOKEN") or env.get("SATURN_TOKEN")
    if url and token:
        return Connection(url.rstrip("/"), token, "environment")
    try:
        profile = json.loads(profile_path().read_text())
        if not url or url.rstrip("/") == profile["url"]:
            return Connection(str(profile["url"]).rstrip("/"), token or profile["token"], "profile")
    except (OSError, ValueError, KeyError):
        pass
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
