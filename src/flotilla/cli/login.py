"""`flo login` (an API token, or a user name and password for a session),
`flo logout`, and `flo auth rotate-keys|sessions`. Registered by `cli/main.py`.

A session login saves its access and refresh tokens in the same profile an API
token goes to (`client/connection.py`); the client renews the access token by
itself when it runs out. FLOTILLA_TOKEN still wins over any profile.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from flotilla.cli.output import JsonOpt, connected, fail, fail_api, print_json, table, when
from flotilla.client import ApiError, Connection, FlotillaClient, resolve_connection
from flotilla.client.connection import load_profile, profile_path, save_profile

auth_app = typer.Typer(help="Sessions and the keys that sign them.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("login")(login_command)
    app.command("logout")(logout_command)
    app.add_typer(auth_app, name="auth")


def login_command(
    url: Annotated[
        str | None, typer.Argument(help="server URL (default: FLOTILLA_URL or the local one)")
    ] = None,
    username: Annotated[
        str | None, typer.Option("--username", "-u", help="log in as this user (a session)")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from stdin", metavar="")
    ] = False,
    token: Annotated[
        str | None, typer.Option(help="an API token to save instead (prompted if neither)")
    ] = None,
) -> None:
    """Log in: with --username, start a session (password prompted, or from stdin);
    otherwise save an API token. Later commands use the saved profile."""
    server = (url or resolve_connection().url).rstrip("/")
    try:
        with FlotillaClient(Connection(server, None, "login")) as api:
            if username is None:
                secret = token or typer.prompt("API token", hide_input=True)
                api.http.headers["Authorization"] = f"token {secret}"
                api.status()
                path = save_profile(server, secret)
                print(f"logged in to {server}; profile saved to {path}")
                return
            password = _password(password_stdin)
            tokens = api.login(username, password)
    except ApiError as e:
        fail_api(e)
    path = save_profile(server, tokens.access_token, tokens.refresh_token, username=username)
    print(f"logged in to {server} as {username}; profile saved to {path}")


def _password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            fail("no password on stdin", "pipe it in: `... | flo login --password-stdin -u NAME`")
        return password
    if not sys.stdin.isatty():
        fail("no terminal to ask for the password on", "use --password-stdin")
    return str(typer.prompt("Password", hide_input=True))


def logout_command() -> None:
    """End the saved session on the server and forget the profile."""
    profile = load_profile()
    if profile is None:
        fail("not logged in: there is no saved profile")
    if profile.get("refresh_token"):
        try:
            session = Connection(
                str(profile["url"]), str(profile["token"]), "profile", profile["refresh_token"]
            )
            with FlotillaClient(session) as api:
                api.logout()
        except ApiError as e:
            if e.code != "unauthorized":  # already ended: forgetting it is all that is left
                fail_api(e)
    profile_path().unlink(missing_ok=True)
    kind = "session ended" if profile.get("refresh_token") else "API token forgotten"
    print(f"logged out of {profile['url']} ({kind})")


@auth_app.command("rotate-keys")
def rotate_keys_command() -> None:
    """Sign session tokens with a new key (platform admins). Tokens signed by the
    old key keep working until they expire; nobody is logged out."""
    with connected() as api:
        result = api.rotate_keys()
    print(f"now signing with key {result.kid}; keys in the JWKS: {', '.join(result.keys)}")


@auth_app.command("sessions")
def sessions_command(json: JsonOpt = False) -> None:
    """Your live sessions (logins), newest first."""
    with connected() as api:
        items = api.sessions()
    if json:
        return print_json(items)
    rows = [
        (
            s.id + (" (this one)" if s.current else ""),
            s.method,
            s.source_ip,
            when(s.created_at),
            when(s.refreshed_at),
            when(s.expires_at),
        )
        for s in items
    ]
    table(None, ["session", "method", "from", "started", "refreshed", "expires"], rows)
