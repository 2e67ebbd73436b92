"""Encryption at rest for secrets (Fernet: AES-128-CBC with HMAC-SHA256).

The key comes from FLOTILLA_SECRET_KEY or a 0600 file in the data directory, never
from the database, so a copy of the database alone reveals no secret."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from flotilla.errors import FlotillaError


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def from_settings(cls, key: str | None, data_dir: Path) -> SecretBox:
        if key:
            return cls(key.encode())
        path = data_dir / "secret.key"
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(Fernet.generate_key())
        return cls(path.read_bytes().strip())

    def encrypt(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as e:
            raise FlotillaError("secret cannot be decrypted with this server's key") from e
