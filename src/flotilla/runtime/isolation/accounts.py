"""Unix accounts for the users tasks run as; used by the supervisor before setup.

A task runs with its owner's UID/GID (allocated once by the server). Tools look the
running UID up (git and ssh through getpwuid, Python's getpass, `id`), so the node
gets a real passwd/group entry with exactly those numbers: `groupadd`/`useradd`,
idempotent, and never touching an account that exists with other numbers (a clear
error instead: on a shared host that is a conflict an admin must resolve). The
entry has no home of its own (`-M`): a task's HOME is its own directory.
"""

from __future__ import annotations

import grp
import pwd
import shutil
import subprocess
import time
from collections.abc import Callable

from flotilla.runtime.taskspec import RunAs

_LOCKED = (1, 10)  # useradd/groupadd: cannot lock (or update) passwd/group: retry


class AccountConflict(Exception):
    """A name or number on this node already belongs to another account."""


def tools_present() -> bool:
    return all(shutil.which(t) for t in ("useradd", "groupadd"))


def ensure_account(run_as: RunAs) -> None:
    """Make sure `run_as.user` exists with `run_as.uid`, primary group `run_as.gid`
    and its supplementary groups. Safe to call concurrently (another supervisor
    may be adding the same account). Raises AccountConflict."""
    if _user_matches(run_as):  # checked first: a conflict leaves nothing made
        return
    for name, gid in [(run_as.user, run_as.gid), *run_as.groups]:
        _ensure_group(name, gid, primary=gid == run_as.gid)
    argv = ["useradd", "--uid", str(run_as.uid), "--gid", str(run_as.gid), "--no-create-home"]
    argv += ["--no-user-group", "--shell", "/bin/bash", "--home-dir", run_as.home or "/nonexistent"]
    if run_as.groups:
        argv += ["--groups", ",".join(grp.getgrgid(gid).gr_name for _, gid in run_as.groups)]
    _run([*argv, "--", run_as.user], lambda: _user_matches(run_as))


def remove_account(run_as: RunAs) -> None:
    """Remove the account and the groups `ensure_account` made (for tests and for
    tearing a node down); only entries that carry exactly these numbers."""
    if _user_matches(run_as):
        _run(["userdel", "--", run_as.user], lambda: not _user_matches(run_as))
    for name, gid in [(run_as.user, run_as.gid), *run_as.groups]:
        if _group_gid(name) == gid:
            _run(["groupdel", "--", name], _group_gone(name))


def _ensure_group(name: str, gid: int, primary: bool) -> None:
    try:
        existing = grp.getgrgid(gid)
    except KeyError:
        existing = None
    if existing is not None:
        # The primary group may carry any name (an admin's existing group).
        if not primary and existing.gr_name != name:
            raise AccountConflict(f"gid {gid} belongs to group {existing.gr_name!r}, not {name!r}")
        return
    if (other := _group_gid(name)) is not None:
        raise AccountConflict(f"group {name!r} exists with gid {other}, not {gid}")
    _run(["groupadd", "--gid", str(gid), "--", name], lambda: _has_gid(gid))


def _user_matches(run_as: RunAs) -> bool:
    """True if the account exists as asked; raises AccountConflict if the name or
    the uid belongs to someone else."""
    try:
        by_name = pwd.getpwnam(run_as.user)
    except KeyError:
        by_name = None
    try:
        by_uid = pwd.getpwuid(run_as.uid)
    except KeyError:
        by_uid = None
    if by_name is not None and by_name.pw_uid != run_as.uid:
        raise AccountConflict(
            f"user {run_as.user!r} exists with uid {by_name.pw_uid}, not {run_as.uid}"
        )
    if by_uid is not None and by_uid.pw_name != run_as.user:
        raise AccountConflict(
            f"uid {run_as.uid} belongs to user {by_uid.pw_name!r}, not {run_as.user!r}"
        )
    if by_name is None:
        return False
    if by_name.pw_gid != run_as.gid:
        raise AccountConflict(
            f"user {run_as.user!r} exists with gid {by_name.pw_gid}, not {run_as.gid}"
        )
    return True


def _group_gone(name: str) -> Callable[[], bool]:
    return lambda: _group_gid(name) is None


def _group_gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _has_gid(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
    except KeyError:
        return False
    return True


def _run(argv: list[str], done: Callable[[], bool]) -> None:
    """Run a shadow-utils command; a lost race (done() true afterwards) is success,
    a held lock file is retried."""
    for attempt in range(50):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode == 0 or done():
            return
        if proc.returncode not in _LOCKED or attempt == 49:
            raise AccountConflict(f"{argv[0]} failed: {proc.stderr.strip() or proc.returncode}")
        time.sleep(0.02)
