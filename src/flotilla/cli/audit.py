"""`flo audit`: the audit log for platform admins, newest first. Registered by
`cli/main.py`."""

from __future__ import annotations

from typing import Annotated

import typer

from flotilla.cli.output import connected, print_json, table

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table", metavar="")]


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_command)


def audit_command(
    actor: Annotated[str | None, typer.Option(help="only this user's requests")] = None,
    action: Annotated[str | None, typer.Option(help="a substring of 'METHOD /route'")] = None,
    outcome: Annotated[str | None, typer.Option(help="success, denied or failure")] = None,
    since: Annotated[str | None, typer.Option(help="ISO date or time (UTC)")] = None,
    until: Annotated[str | None, typer.Option(help="ISO date or time (UTC)")] = None,
    limit: int = 50,
    json: JsonOpt = False,
) -> None:
    """Who changed what, when, from where, and how it ended (logins included)."""
    with connected() as api:
        page = api.audit(
            actor=actor, action=action, outcome=outcome, since=since, until=until, limit=limit
        )
    if json:
        return print_json(page.entries)
    rows = [
        (
            e.at[:19].replace("T", " "),
            e.actor,
            e.source_ip,
            e.action,
            e.status_code,
            e.outcome,
            e.detail,
        )
        for e in page.entries
    ]
    table(None, ["at (UTC)", "who", "from", "what", "status", "outcome", "detail"], rows)
