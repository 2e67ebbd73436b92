"""Every user and group gets its Unix number in the flush that inserts it.

Users are inserted by the API, `type: user` recipes, a first SSO login and the
bootstrap admin; groups by the API and `type: group` recipes. Rather than each of
them remembering to ask for a number, the sessions `engine.session_factory` makes
are `StoreSession`s, whose `before_flush` hook gives one to every new `UserModel`
and `GroupModel` that has none, from the range the factory was made with.

The counter is the `settings` row `unix_ids`: `{"last": N}`, the highest number
ever given. It is read with SELECT … FOR UPDATE and written in the same
transaction as the insert, so concurrent creates on PostgreSQL queue on that row
and commit distinct numbers; SQLite has one writer at a time (one pooled
connection, `engine.py`). Deleting a user or group leaves the mark where it is, so
its number is never given again. The unique indexes on `users.uid` and
`groups.gid` are the last guard.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from flotilla.core.unixids import UnixIdRange, UnixIdsExhausted, next_unix_ids
from flotilla.errors import ClientError
from flotilla.server.db.models import GroupModel, SettingModel, UserModel

COUNTER_KEY = "unix_ids"
# Where a session keeps the range its numbers come from (`Session.info`).
RANGE_INFO = "flotilla.unix_id_range"


class StoreSession(Session):
    """The sync session under every `AsyncSession` of the server."""


def session_info(id_range: UnixIdRange) -> dict[str, Any]:
    return {RANGE_INFO: id_range}


def _give_numbers(session: Session, _flush_context: object, _instances: object) -> None:
    new = [o for o in session.new if isinstance(o, UserModel | GroupModel) and _number(o) is None]
    if not new:
        return
    id_range = session.info.get(RANGE_INFO)
    if not isinstance(id_range, UnixIdRange):
        raise RuntimeError("users and groups are created through session_factory's sessions")
    # Creation order, so a batch numbers like the migration's backfill does.
    new.sort(key=lambda o: (o.created_at, o.name))
    row = session.execute(
        select(SettingModel)
        .where(SettingModel.key == COUNTER_KEY)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar()
    last = row.value.get("last") if row is not None else None
    try:
        numbers = next_unix_ids(last, id_range, len(new))
    except UnixIdsExhausted as e:
        raise ClientError(str(e), "unix_ids_exhausted", 503) from e
    for obj, number in zip(new, numbers, strict=True):
        if isinstance(obj, UserModel):
            obj.uid = number
        else:
            obj.gid = number
    now = max(o.created_at for o in new)
    if row is None:
        session.add(SettingModel(key=COUNTER_KEY, value={"last": numbers[-1]}, updated_at=now))
    else:
        row.value = {"last": numbers[-1]}
        row.updated_at = now


def _number(obj: UserModel | GroupModel) -> int | None:
    return obj.uid if isinstance(obj, UserModel) else obj.gid


event.listen(StoreSession, "before_flush", _give_numbers)
