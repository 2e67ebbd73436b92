"""`flo user create|list|show|update|delete|add-key|remove-key` and
`flo service-account create|list`. Registered on the main app by `register(app)`
from `cli/main.py`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from flotilla.api.users import User, UserBrief
from flotilla.cli.output import (
    JsonOpt,
    as_sent,
    connected,
    fail,
    print_json,
    print_yaml,
    table,
    when,
)

user_app = typer.Typer(help="Manage users and their SSH keys.", no_args_is_help=True)
service_account_app = typer.Typer(
    help="Manage service accounts: users with API tokens and no password.", no_args_is_help=True
)

UserArg = Annotated[str, typer.Argument(help="user name or id")]
KeyFileOpt = Annotated[
    list[Path] | None,
    typer.Option("--key-file", "-k", help="an OpenSSH public key file (.pub); repeatable"),
]


def register(app: typer.Typer) -> None:
    app.add_typer(user_app, name="user")
    app.add_typer(service_account_app, name="service-account")


def read_key(path: Path) -> str:
    """A public key from a file ('-' for stdin)."""
    if str(path) == "-":
        return sys.stdin.read().strip()
    try:
        return path.expanduser().read_text().strip()
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}")


@user_app.command("create")
def create(
    name: str,
    email: Annotated[str | None, typer.Option(help="email address")] = None,
    full_name: Annotated[str, typer.Option(help="display name")] = "",
    admin: Annotated[
        bool, typer.Option("--admin", help="make a platform admin", metavar="")
    ] = False,
    key_file: KeyFileOpt = None,
) -> None:
    """Create a user (platform admins). Give them a first token with
    `flo token create --user NAME --name ...`."""
    body = {
        "username": name,
        "email": email,
        "full_name": full_name,
        "admin": admin,
        "ssh_public_keys": [read_key(p) for p in key_file or []],
    }
    with connected() as api:
        user = api.create_user(body)
    print(f"created user {user.username} ({user.id})")


@user_app.command("list")
def list_(json: JsonOpt = False) -> None:
    """Users you may see: everyone for admins, else yourself and your groups' and
    projects' members."""
    with connected() as api:
        users = api.list_users()
    if json:
        return print_json(users)
    rows = [(u.username, u.full_name, *_details(u)) for u in users]
    table(None, ["name", "full name", "email", "kind", "groups", "projects"], rows)


def _details(user: User | UserBrief) -> tuple[str, str, str, str]:
    """Email, kind, groups and project roles: blank for a user seen by name only."""
    if not isinstance(user, User):
        return "", _kind(user), "", ""
    projects = ",".join(f"{p}:{r}" for p, r in user.projects.items())
    return user.email or "", _kind(user), ",".join(user.groups), projects


def _kind(user: User | UserBrief) -> str:
    if user.service_account:
        return "service account"
    if not isinstance(user, User):
        return "user"  # whether they are locked or an admin is not shown to everyone
    if user.locked:
        return "locked"
    return "admin" if user.admin else "user"


@user_app.command("show")
def show(user: UserArg, json: JsonOpt = False) -> None:
    """One user: details, groups, project roles and SSH keys."""
    with connected() as api:
        found = api.get_user(user)
    shown = as_sent(found)
    if json:
        return print_json(shown)
    shown.pop("ssh_keys", None)
    print_yaml(shown)
    # One line each, never cut short: the fingerprint is what `remove-key` takes.
    for key in found.ssh_keys if isinstance(found, User) else []:
        print(f"ssh key: {key.type} {key.fingerprint} {key.comment}".rstrip())


@user_app.command("update")
def update(
    user: UserArg,
    email: Annotated[str | None, typer.Option(help="new email address")] = None,
    full_name: Annotated[str | None, typer.Option(help="new display name")] = None,
    admin: Annotated[
        bool | None, typer.Option("--admin/--no-admin", help="platform admin or not", metavar="")
    ] = None,
    lock: Annotated[
        bool | None,
        typer.Option("--lock/--unlock", help="refuse all their credentials", metavar=""),
    ] = None,
) -> None:
    """Change a user (yourself: email and full name; admins: anything)."""
    changes = {"email": email, "full_name": full_name, "admin": admin, "locked": lock}
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        fail(
            "nothing to change", "give --email, --full-name, --admin/--no-admin or --lock/--unlock"
        )
    with connected() as api:
        found = api.update_user(user, changes)
    print(f"updated user {found.username}")


@user_app.command("set-password")
def set_password(
    user: UserArg,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from stdin", metavar="")
    ] = False,
) -> None:
    """Set a user's password (platform admins), so they can `flo login -u NAME`.
    Asked twice on a terminal; never on the command line."""
    with connected() as api:
        api.update_user(user, {"password": new_password(password_stdin)})
    print(f"password set for {user}: `flo login URL -u {user}`")


def new_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            fail(
                "no password on stdin",
                "pipe it in: `... | flo user set-password NAME --password-stdin`",
            )
        return password
    if not sys.stdin.isatty():
        fail("no terminal to ask for the password on", "use --password-stdin")
    return str(typer.prompt("New password", hide_input=True, confirmation_prompt=True))


@user_app.command("delete")
def delete(
    user: UserArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="don't ask", metavar="")] = False,
) -> None:
    """Delete a user with their tokens, memberships and secrets (refused while they
    own live recipes)."""
    if not yes and sys.stdin.isatty() and not typer.confirm(f"delete user {user}?"):
        raise typer.Exit(1)
    with connected() as api:
        api.delete_user(user)
    print(f"deleted user {user}")


@user_app.command("add-key")
def add_key(
    user: UserArg,
    key_file: Annotated[Path, typer.Argument(help="OpenSSH public key file ('-' for stdin)")],
) -> None:
    """Add an SSH public key to a user (yourself, or anyone for admins)."""
    key = read_key(key_file)
    with connected() as api:
        added = api.add_ssh_key(user, key)
    print(f"added {added.type} key {added.fingerprint} to {user}")


@user_app.command("remove-key")
def remove_key(
    user: UserArg,
    fingerprint: Annotated[str, typer.Argument(help="SHA256:… as `flo user show` lists it")],
) -> None:
    """Remove one of a user's SSH keys by its fingerprint."""
    with connected() as api:
        api.remove_ssh_key(user, fingerprint)
    print(f"removed key {fingerprint} from {user}")


@service_account_app.command("create")
def create_service_account(
    name: str, full_name: Annotated[str, typer.Option(help="what it is for")] = ""
) -> None:
    """Create a service account (platform admins); then give it a token."""
    with connected() as api:
        account = api.create_service_account(name, full_name)
    print(f"created service account {account.username} ({account.id})")
    print(f"give it a token: flo token create --user {name} --name NAME --scope read --scope write")


@service_account_app.command("list")
def list_service_accounts(json: JsonOpt = False) -> None:
    with connected() as api:
        accounts = api.list_service_accounts()
    if json:
        return print_json(accounts)
    rows = [
        (a.username, a.full_name, ",".join(a.groups), when(a.created_at))
        if isinstance(a, User)
        else (a.username, a.full_name, "", "")
        for a in accounts
    ]
    table(None, ["name", "full name", "groups", "created"], rows)
