"""Identity recipes: `type: user`, `type: group` and `type: project`, applied by
platform admins through `PUT /api/recipes` like any recipe, plus the checks the
identity API shares with them: names (users and groups share one namespace) and
OpenSSH public keys. Pure: no I/O.

`server/services/{users,groups,projects}.py` apply these specs to the identity
tables; they are not stored as recipe rows.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Annotated, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import AfterValidator, Field, field_validator, model_validator

from flotilla.errors import ClientError, FieldProblem
from flotilla.recipes.job import Strict
from flotilla.recipes.types import GROUP, PROJECT, USER

# Lowercase, 1-64 characters (the columns' width), starting and ending with a letter
# or digit: safe in URLs, file paths and Unix user names.
IDENTITY_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$")
NAME_RULE = (
    "must be 1-64 lowercase letters, digits, '-', '_' or '.', "
    "starting and ending with a letter or digit"
)
MIN_RSA_BITS = 2048

RoleName = Literal["admin", "member", "viewer"]


def name_problem(value: object) -> str | None:
    """Why `value` is not a valid user, group or project name (None if it is)."""
    if not isinstance(value, str) or not IDENTITY_NAME.match(value):
        return NAME_RULE
    return None


def check_name(value: str, field: str) -> str:
    """`value`, or a 422 naming `field`."""
    problem = name_problem(value)
    if problem is not None:
        raise invalid(field, f"{value!r} {problem}")
    return value


def invalid(field: str, message: str) -> ClientError:
    return ClientError(
        f"invalid request: {field}: {message}",
        "invalid_request",
        422,
        [FieldProblem(field, message)],
    )


@dataclass(frozen=True)
class SshKey:
    """An OpenSSH public key in canonical one-line form (`type base64 [comment]`)."""

    key_type: str
    blob: str
    comment: str

    @property
    def line(self) -> str:
        return f"{self.key_type} {self.blob}" + (f" {self.comment}" if self.comment else "")

    @property
    def fingerprint(self) -> str:
        """As `ssh-keygen -l` prints it: SHA256 of the key blob, unpadded base64."""
        digest = hashlib.sha256(base64.b64decode(self.blob)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_ssh_key(text: str) -> SshKey:
    """One OpenSSH public key line (as in `id_ed25519.pub` or authorized_keys), or
    ValueError saying what is wrong. RSA keys under 2048 bits are refused."""
    line = text.strip()
    if not line or "\n" in line or "\r" in line:
        raise ValueError("must be one OpenSSH public key line, like 'ssh-ed25519 AAAA… me@laptop'")
    if "PRIVATE KEY" in line:
        raise ValueError("this is a private key: give the public one (the .pub file)")
    parts = line.split(None, 2)
    if len(parts) < 2:
        raise ValueError("not an OpenSSH public key (expected 'TYPE BASE64 [COMMENT]')")
    try:
        key = serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ValueError(f"not a valid OpenSSH public key: {e}") from e
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ValueError(
            f"RSA keys need at least {MIN_RSA_BITS} bits (this one has {key.key_size})"
        )
    canonical = key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    key_type, blob = canonical.split(" ", 1)
    comment = " ".join(parts[2].split()) if len(parts) > 2 else ""
    return SshKey(key_type, blob, comment)


def canonical_ssh_key(text: str) -> str:
    return parse_ssh_key(text).line


def _valid_name(value: str) -> str:
    problem = name_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


class UserSpec(Strict):
    name: str
    email: str | None = Field(None, max_length=256)
    full_name: str = Field("", max_length=256)
    # Canonical form, so that reapplying the same file is a no-op.
    ssh_public_keys: list[Annotated[str, AfterValidator(canonical_ssh_key)]] = Field(
        default_factory=list
    )
    admin: bool = False
    service_account: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _valid_name(value)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return check_email(value)

    @model_validator(mode="after")
    def _service_accounts_have_no_keys(self) -> UserSpec:
        if self.service_account and self.ssh_public_keys:
            raise ValueError("service accounts use API tokens only: no ssh_public_keys")
        return self


class GroupSpec(Strict):
    name: str
    description: str = Field("", max_length=4096)
    members: list[str] = Field(default_factory=list, description="user names")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _valid_name(value)

    @field_validator("members")
    @classmethod
    def _members(cls, value: list[str]) -> list[str]:
        for member in value:
            _valid_name(member)
        if len(set(value)) != len(value):
            raise ValueError("a user is listed twice")
        return value


class ProjectMemberSpec(Strict):
    """One member: exactly one of `user` or `group`, and a role."""

    user: str | None = None
    group: str | None = None
    role: RoleName = "member"

    @field_validator("user", "group")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        return None if value is None else _valid_name(value)

    @model_validator(mode="after")
    def _one_principal(self) -> ProjectMemberSpec:
        if (self.user is None) == (self.group is None):
            raise ValueError("give exactly one of 'user' or 'group'")
        return self

    @property
    def kind(self) -> Literal["user", "group"]:
        return "user" if self.user is not None else "group"

    @property
    def principal(self) -> str:
        return self.user or self.group or ""


class ProjectSpec(Strict):
    name: str
    description: str = Field("", max_length=4096)
    members: list[ProjectMemberSpec] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _valid_name(value)

    @model_validator(mode="after")
    def _no_duplicates(self) -> ProjectSpec:
        seen = [(m.kind, m.principal) for m in self.members]
        if len(set(seen)) != len(seen):
            raise ValueError("a member is listed twice")
        return self


def check_email(value: str | None) -> str | None:
    """A light check: one '@' with something either side, no spaces."""
    if value is None or value == "":
        return None
    local, at, domain = value.partition("@")
    if not at or not local or not domain or "@" in domain or any(c.isspace() for c in value):
        raise ValueError("must be an email address like alice@example.com")
    return value


IDENTITY_SPECS: dict[str, type[Strict]] = {
    USER: UserSpec,
    GROUP: GroupSpec,
    PROJECT: ProjectSpec,
}
