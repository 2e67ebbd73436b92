"""Sessions: one per login (password or SSO), holding a refresh token.

A refresh token is `flr_` + the secret box's encryption of "<session id>:<random>",
and the session row keeps only its SHA-256. Refreshing replaces it (the old one
stops working). Because only this server can have made a token that decrypts, a
token that decrypts but is not the session's current one is a token we issued and
later rotated away: someone is replaying it, so the whole session is revoked (the
thief's copy and the owner's both stop working; the owner logs in again). Tokens
that do not decrypt are plainly refused and revoke nothing, so nobody can end a
session just by knowing its id.

Called by `routers/auth.py` and by `sso` (which creates sessions for SSO logins).
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.errors import FlotillaError, NotFound, Unauthorized
from flotilla.server.auth.passwords import verify_password
from flotilla.server.auth.tokens import TokenPolicy, mint_access_token
from flotilla.server.context import ServerContext
from flotilla.server.db.models import SessionModel, UserModel
from flotilla.server.identity import Identity
from flotilla.server.secretbox import SecretBox
from flotilla.server.security import hash_token

REFRESH_PREFIX = "flr_"
# One message for every way a password login can fail before the password is known
# to be right, so that it reveals neither which users exist nor which have passwords.
BAD_LOGIN = "invalid user name or password"


class LoginRefused(Unauthorized):
    """A 401 for a login, with the real reason for the audit log only (the client
    sees `message`, the same for every reason that could reveal an account)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class IssuedTokens:
    access_token: str
    expires_in: int
    refresh_token: str
    session_id: str
    username: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
        }


def _new_refresh_token(box: SecretBox, session_id: str) -> str:
    return REFRESH_PREFIX + box.encrypt(f"{session_id}:{secrets.token_urlsafe(32)}")


def _session_id_of(box: SecretBox, refresh_token: str) -> str | None:
    """The session a refresh token was issued for, or None if we did not issue it."""
    if not refresh_token.startswith(REFRESH_PREFIX):
        return None
    try:
        plain = box.decrypt(refresh_token.removeprefix(REFRESH_PREFIX))
    except FlotillaError:
        return None
    session_id, sep, _ = plain.partition(":")
    return session_id if sep else None


async def _issue(
    session: AsyncSession,
    box: SecretBox,
    user: UserModel,
    login: SessionModel,
    now: datetime,
    policy: TokenPolicy,
) -> IssuedTokens:
    """New tokens for `login`: a fresh refresh token replaces the stored hash."""
    refresh = _new_refresh_token(box, login.id)
    login.refresh_hash = hash_token(refresh)
    login.refreshed_at = now
    login.expires_at = now + policy.refresh_ttl
    await session.flush()
    access = await mint_access_token(session, box, user, login.id, now, policy)
    return IssuedTokens(
        access, int(policy.access_ttl.total_seconds()), refresh, login.id, user.name
    )


async def create_session(
    session: AsyncSession,
    box: SecretBox,
    user: UserModel,
    method: str,
    source_ip: str,
    now: datetime,
    policy: TokenPolicy,
) -> IssuedTokens:
    """A new session for `user` (already authenticated by `method`) and its tokens."""
    login = SessionModel(
        id=uuid.uuid4().hex,
        user_id=user.id,
        method=method,
        # Replaced by `_issue` before the row is written; unique meanwhile.
        refresh_hash=hash_token(secrets.token_urlsafe(32)),
        source_ip=source_ip[:64],
        created_at=now,
        refreshed_at=now,
        expires_at=now + policy.refresh_ttl,
        revoked_at=None,
    )
    session.add(login)
    return await _issue(session, box, user, login, now, policy)


def check_can_log_in(user: UserModel) -> None:
    """401 for accounts that may not start sessions: locked users and service
    accounts. Only called once the caller has proven who they are."""
    if user.is_service_account:
        raise LoginRefused(
            f"{user.name} is a service account: it authenticates with API tokens",
            "service account",
        )
    if user.locked:
        raise LoginRefused(f"user {user.name} is locked", "user locked")


async def password_login(
    ctx: ServerContext, username: str, password: str, source_ip: str
) -> IssuedTokens:
    """Check the password and start a session; 401 `BAD_LOGIN` for an unknown user,
    a user without a password and a wrong password alike."""
    async with ctx.transaction() as session:
        user = await _user_by_name(session, username)
        user_id = user.id if user is not None else None
        stored = user.password_hash if user is not None else None
    # argon2 burns CPU on purpose: in a thread, and outside the transaction.
    check = await asyncio.to_thread(verify_password, stored, password)
    if user_id is None or not check.ok:
        reason = "unknown user" if user_id is None else "no password set" if not stored else None
        raise LoginRefused(BAD_LOGIN, reason or "bad password")
    policy = TokenPolicy.of(ctx.settings)
    now = ctx.clock.now()
    async with ctx.transaction() as session:
        fresh = await session.get(UserModel, user_id)
        if fresh is None or fresh.password_hash != stored:
            raise LoginRefused(BAD_LOGIN, "user deleted or password changed meanwhile")
        check_can_log_in(fresh)
        if check.rehashed:
            fresh.password_hash = check.rehashed
        return await create_session(
            session, ctx.secret_box, fresh, "password", source_ip, now, policy
        )


async def _user_by_name(session: AsyncSession, name: str) -> UserModel | None:
    return (await session.execute(select(UserModel).where(UserModel.name == name))).scalar()


async def refresh_session(ctx: ServerContext, refresh_token: str) -> IssuedTokens:
    """New tokens for the session `refresh_token` belongs to; the token is used up.
    Replaying a used-up token revokes the session."""
    session_id = _session_id_of(ctx.secret_box, refresh_token)
    if session_id is None:
        raise Unauthorized("invalid refresh token")
    now = ctx.clock.now()
    async with ctx.transaction() as session:
        row = (
            await session.execute(
                select(SessionModel, UserModel)
                .join(UserModel, UserModel.id == SessionModel.user_id)
                .where(SessionModel.id == session_id)
                .with_for_update(of=SessionModel)
            )
        ).first()
        if row is None:
            raise Unauthorized("invalid refresh token")
        login, user = row
        refusal = _refusal(login, user, refresh_token, now)
        if refusal is None:
            policy = TokenPolicy.of(ctx.settings)
            return await _issue(session, ctx.secret_box, user, login, now, policy)
        if refusal == REUSED:
            login.revoked_at = now  # committed: the 401 below must not undo it
    raise Unauthorized(refusal)


REUSED = "refresh token already used: the session is revoked, log in again"


def _refusal(login: SessionModel, user: UserModel, refresh_token: str, now: datetime) -> str | None:
    """Why this refresh must fail, or None."""
    if login.revoked_at is not None:
        return "session revoked: log in again"
    if login.refresh_hash != hash_token(refresh_token):
        return REUSED
    if login.expires_at <= now:
        return "refresh token expired: log in again"
    if user.locked:
        return f"user {user.name} is locked"
    return None


async def revoke_session(
    session: AsyncSession, caller: Identity, session_id: str, now: datetime
) -> None:
    """End a session: the caller's own, or anyone's for a platform admin. Its
    refresh token stops working and its access tokens fail from now on."""
    login = await session.get(SessionModel, session_id)
    if login is None:
        raise NotFound(f"session {session_id!r}")
    if login.user_id != caller.user_id and not caller.is_admin:
        raise NotFound(f"session {session_id!r}")  # others' sessions are private
    if login.revoked_at is None:
        login.revoked_at = now


async def list_sessions(session: AsyncSession, user_id: str, now: datetime) -> list[SessionModel]:
    """The user's live sessions (not revoked, not expired), newest first."""
    rows = await session.execute(
        select(SessionModel)
        .where(
            SessionModel.user_id == user_id,
            SessionModel.revoked_at.is_(None),
            SessionModel.expires_at > now,
        )
        .order_by(SessionModel.created_at.desc(), SessionModel.id)
    )
    return list(rows.scalars())
