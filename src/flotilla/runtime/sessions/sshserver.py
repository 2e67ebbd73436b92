"""What every Flotilla SSH server has in common: the gateway's and each host's
session relay (`relay.py`). A host key made on first start and kept, and the
options both listen with."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import asyncssh

# AES (GCM first, CTR for older clients) and not ChaCha20-Poly1305: asyncssh runs AES
# in OpenSSL with the CPU's AES instructions but glues ChaCha20 and Poly1305 together
# in Python, which halved download speed (bench/ssh.py). OpenSSH clients then
# choose aes128-ctr, the first of their list we offer.
CIPHERS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
]


def load_host_key(path: Path) -> asyncssh.SSHKey:
    """The host key at `path`, made on first start and kept (0600) so that clients'
    known_hosts entries stay valid across restarts."""
    if path.exists():
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key("ssh-ed25519")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    return key


def server_options(host_key: asyncssh.SSHKey) -> dict[str, Any]:
    """Sessions, SFTP and port forwards carried as bytes; nothing else (no agent or
    X11 forwarding, no scp of its own)."""
    return {
        "server_host_keys": [host_key],
        "encryption_algs": CIPHERS,
        "encoding": None,
        "line_editor": False,
        "agent_forwarding": False,
        "x11_forwarding": False,
        "allow_scp": False,
        "login_timeout": 30,
        "keepalive_interval": 30,
    }
