"""Single sign-on logins: `begin_login` records a login in flight (state, nonce,
PKCE verifier, in `oidc_states`) and returns the provider URL to send the browser
to; `finish_login` takes the provider's callback, uses the state up (once, within
ten minutes), has `oidc.OidcClient` exchange the code and verify the id_token,
then finds the user by `oidc_subject` ("issuer|subject") or creates them on their
first login, and starts a session. Called by `routers/auth.py`.

No database transaction is held across a call to the provider: SQLite serves one
connection, and a slow provider must not stall the API.
"""

from __future__ import annotations

import re
import secrets
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.errors import Conflict
from flotilla.recipes.identity import name_problem
from flotilla.server.auth.oidc import OidcClient, sso_failed
from flotilla.server.auth.sessions import IssuedTokens, check_can_log_in, create_session
from flotilla.server.auth.tokens import TokenPolicy
from flotilla.server.context import ServerContext
from flotilla.server.db.models import GroupModel, OidcStateModel, UserModel

STATE_TTL = timedelta(minutes=10)
_NOT_NAME_CHAR = re.compile(r"[^a-z0-9._-]+")


async def begin_login(ctx: ServerContext, client: OidcClient) -> str:
    """Start an SSO login; returns the provider's authorization URL."""
    state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(64)  # 86 characters: PKCE wants 43-128
    url = await client.authorization_url(state, nonce, verifier)
    now = ctx.clock.now()
    async with ctx.transaction() as session:
        await session.execute(
            delete(OidcStateModel).where(OidcStateModel.created_at <= now - STATE_TTL)
        )
        session.add(
            OidcStateModel(state=state, nonce=nonce, code_verifier=verifier, created_at=now)
        )
    return url


async def finish_login(
    ctx: ServerContext, client: OidcClient, code: str, state: str, source_ip: str
) -> IssuedTokens:
    """Complete an SSO login from the provider's callback; the user's tokens."""
    now = ctx.clock.now()
    async with ctx.transaction() as session:
        # DELETE ... RETURNING: of two callbacks with one state, only one gets it.
        used = (
            await session.execute(
                delete(OidcStateModel)
                .where(OidcStateModel.state == state)
                .returning(
                    OidcStateModel.nonce, OidcStateModel.code_verifier, OidcStateModel.created_at
                )
            )
        ).first()
    if used is None:
        raise sso_failed("unknown or already used login state: start the login again")
    nonce, verifier, created_at = used
    if created_at <= now - STATE_TTL:
        raise sso_failed("the login took too long (over 10 minutes): start it again")
    id_token = await client.exchange_code(code, verifier)
    claims = await client.verify_id_token(id_token, nonce, now)
    subject = f"{claims['iss']}|{claims['sub']}"
    try:
        async with ctx.transaction() as session:
            user = await _user_for(session, subject, claims, now)
            check_can_log_in(user)
            policy = TokenPolicy.of(ctx.settings)
            return await create_session(
                session, ctx.secret_box, user, "oidc", source_ip, now, policy
            )
    except IntegrityError as e:  # two first logins of one person at once
        raise Conflict("this account was being created by another login: try again") from e


async def _user_for(
    session: AsyncSession, subject: str, claims: dict[str, Any], now: datetime
) -> UserModel:
    """The user who logs in as `subject`, created on their first login."""
    user = (
        await session.execute(select(UserModel).where(UserModel.oidc_subject == subject))
    ).scalar()
    if user is not None:
        return user
    email = claims.get("email") if isinstance(claims.get("email"), str) else None
    user = UserModel(
        id=uuid.uuid4().hex,
        name=await _free_name(session, _name_hint(claims)),
        email=email,
        full_name=str(claims.get("name") or "")[:256],
        is_admin=False,
        oidc_subject=subject,
        created_at=now,
    )
    session.add(user)
    await session.flush()
    return user


def _name_hint(claims: dict[str, Any]) -> str:
    """A valid user name from the id_token: preferred_username, else the email's
    local part, else "user"; lowercased, other characters become '-'."""
    for raw in (claims.get("preferred_username"), str(claims.get("email") or "").split("@")[0]):
        if isinstance(raw, str):
            name = _NOT_NAME_CHAR.sub("-", raw.lower())[:56].strip("._-")
            if name and name_problem(name) is None:
                return name
    return "user"


async def _free_name(session: AsyncSession, hint: str) -> str:
    """`hint`, or `hint-2`, `hint-3`, ... whichever no user or group holds (they
    share one namespace)."""
    for n in range(1, 100):
        name = hint if n == 1 else f"{hint}-{n}"
        if not await _name_taken(session, name):
            return name
    return f"{hint}-{secrets.token_hex(3)}"


async def _name_taken(session: AsyncSession, name: str) -> bool:
    for model in (UserModel, GroupModel):
        if (await session.execute(select(model.id).where(model.name == name))).first():
            return True
    return False
