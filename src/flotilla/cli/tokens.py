"""`flo token create|list|revoke`: API tokens. Registered on the main app by
`register(app)` from `cli/main.py`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated

import typer

from flotilla.cli.output import JsonOpt, connected, err_console, fail, print_json, table, when
from flotilla.core.units import parse_duration

token_app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)

DAY = 86400
SHORT_ID = 8
FULL_ID = 32


class ScopeChoice(StrEnum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token")


def expiry(value: str | None) -> tuple[int | None, str | None]:
    """(expires_in_days, expires_at) for `--expires-in`: whole days as days, else a time."""
    if value is None:
        return None, None
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        fail(f"--expires-in: {e}")
    if seconds <= 0:
        fail("--expires-in: must be more than zero")
    if seconds % DAY == 0:
        return int(seconds // DAY), None
    return None, (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


@token_app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", "-n", help="what the token is for")],
    scope: Annotated[
        list[ScopeChoice] | None,
        typer.Option("--scope", "-s", help="read, write or admin; repeatable [read, write]"),
    ] = None,
    expires_in: Annotated[
        str | None, typer.Option("--expires-in", help="lifetime: 30d, 12h (default: never)")
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", "-u", help="for this user or service account (admins)")
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Create a token. It is printed this once: store it now."""
    scopes = [s.value for s in scope] if scope else ["read", "write"]
    days, at = expiry(expires_in)
    with connected() as api:
        token = api.create_token(name, scopes, days, at, user)
    if json:
        return print_json(token)
    print(token.token)
    err_console.print(
        f"token {token.name} ({token.id}) for {token.user}, scopes "
        f"{','.join(token.scopes)}, expires {token.expires_at or 'never'}: "
        "shown this once, store it now",
        highlight=False,
    )


@token_app.command("list")
def list_(
    user: Annotated[
        str | None, typer.Option("--user", "-u", help="another user's tokens (admins)")
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Your tokens: metadata only (the tokens themselves are never shown again)."""
    with connected() as api:
        tokens = api.list_tokens(user)
    if json:
        return print_json(tokens)
    # Short ids, like git's: `revoke` takes any unique prefix (--json has them whole).
    rows = [
        (
            t.id[:SHORT_ID],
            t.name,
            ",".join(t.scopes),
            "revoked" if t.revoked_at else when(t.expires_at) or "never",
            when(t.last_used_at),
        )
        for t in tokens
    ]
    table(None, ["id", "name", "scopes", "expires", "last used"], rows)


@token_app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(help="the token's id or a unique prefix of it")],
    user: Annotated[
        str | None, typer.Option("--user", "-u", help="another user's token (admins)")
    ] = None,
) -> None:
    """Revoke a token: requests with it fail from now on."""
    with connected() as api:
        if len(token_id) < FULL_ID:
            matches = [t.id for t in api.list_tokens(user) if t.id.startswith(token_id)]
            if len(matches) != 1:
                found = "no token" if not matches else f"{len(matches)} tokens"
                fail(f"{found} with an id starting {token_id!r}", "see `flo token list`")
            token_id = matches[0]
        api.revoke_token(token_id)
    print(f"revoked token {token_id}")
