"""Single sign-on against a real OpenID Connect provider on loopback
(`tests/oidc_provider.py`): the whole code flow with PKCE, just-in-time users,
and the ways a login must fail (bad or replayed state, a wrong audience, nonce or
signing key, a provider that refuses or is down)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import func, select

from flotilla.server.db.models import OidcStateModel, SessionModel, UserModel
from tests.conftest import Api, make_settings, open_api
from tests.factories import add_password_user, free_port
from tests.oidc_provider import OidcProvider

CALLBACK = "http://flotilla/api/auth/oidc/callback"
ANON = {"Authorization": ""}


@pytest.fixture
def provider() -> Iterator[OidcProvider]:
    running = OidcProvider(redirect_uris=[CALLBACK]).start()
    yield running
    running.stop()


def sso_settings(data_dir: Path, database_url: str | None, issuer: str, secret: str) -> object:
    return make_settings(
        data_dir,
        database_url,
        oidc_issuer=issuer,
        oidc_client_id="flotilla-test",
        oidc_client_secret=secret,
        oidc_redirect_url=CALLBACK,
    )


@pytest.fixture
async def sso_api(
    data_dir: Path, database_url: str | None, provider: OidcProvider
) -> AsyncIterator[Api]:
    """The app on each store, with single sign-on through `provider`."""
    settings = sso_settings(data_dir, database_url, provider.url, provider.client_secret)
    async for item in open_api(settings):  # type: ignore[arg-type]
        yield item


async def to_callback(api: Api) -> str:
    """Follow the redirects a browser would, up to (not into) our callback."""
    start = await api.client.get("/api/auth/oidc/login", headers=ANON)
    assert start.status_code == 302, start.text
    async with httpx.AsyncClient(timeout=10) as browser:
        approved = await browser.get(start.headers["location"])
    assert approved.status_code == 302, approved.text
    location = approved.headers["location"]
    assert location.startswith(CALLBACK + "?")
    return location


async def sso_login(api: Api) -> httpx.Response:
    return await api.client.get(await to_callback(api), headers=ANON)


async def whoami(api: Api, access_token: str) -> dict[str, object]:
    response = await api.client.get(
        "/api/user", headers={"Authorization": f"Bearer {access_token}"}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_first_sso_login_creates_the_user_and_later_ones_reuse_it(
    sso_api: Api, provider: OidcProvider
) -> None:
    start = await sso_api.client.get("/api/auth/oidc/login", headers=ANON)
    query = parse_qs(urlsplit(start.headers["location"]).query)
    assert start.headers["location"].startswith(f"{provider.url}/authorize?")
    assert query["code_challenge_method"] == ["S256"] and query["redirect_uri"] == [CALLBACK]
    assert query["state"][0] and query["nonce"][0] and "code_verifier" not in query

    first = await sso_login(sso_api)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["token_type"] == "Bearer" and body["refresh_token"].startswith("flr_")
    me = await whoami(sso_api, body["access_token"])
    assert me["username"] == "alice" and me["admin"] is False

    second = await sso_login(sso_api)
    assert second.status_code == 200, second.text
    assert (await whoami(sso_api, second.json()["access_token"]))["id"] == me["id"]
    async with sso_api.ctx.transaction() as session:
        users = (
            (await session.execute(select(UserModel).where(UserModel.oidc_subject.is_not(None))))
            .scalars()
            .all()
        )
        methods = (
            (
                await session.execute(
                    select(SessionModel.method).where(SessionModel.user_id == me["id"])
                )
            )
            .scalars()
            .all()
        )
    assert len(users) == 1 and users[0].oidc_subject == f"{provider.url}|user-123"
    assert users[0].email == "alice@example.com" and users[0].full_name == "Alice Example"
    assert users[0].password_hash is None and methods == ["oidc", "oidc"]
    # The session refreshes like a password one.
    refreshed = await sso_api.client.post(
        "/api/auth/refresh", json={"refresh_token": body["refresh_token"]}, headers=ANON
    )
    assert refreshed.status_code == 200, refreshed.text


async def test_sso_user_names_are_made_valid_and_unique(
    sso_api: Api, provider: OidcProvider
) -> None:
    await add_password_user(sso_api.ctx, "alice", "a password!")  # a different alice
    first = await sso_login(sso_api)
    assert (await whoami(sso_api, first.json()["access_token"]))["username"] == "alice-2"

    provider.user.sub, provider.user.preferred_username = "user-456", None
    provider.user.email = "Bob.O'Hara+x@Example.com"
    second = await sso_login(sso_api)
    assert (await whoami(sso_api, second.json()["access_token"]))["username"] == "bob.o-hara-x"


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_client_authentication_follows_the_provider(
    data_dir: Path, provider: OidcProvider, method: str
) -> None:
    provider.auth_methods = (method,)
    settings = sso_settings(data_dir, None, provider.url, provider.client_secret)
    async for api in open_api(settings):  # type: ignore[arg-type]
        assert (await sso_login(api)).status_code == 200
    assert provider.token_requests == [method]


async def test_unknown_and_replayed_states_are_refused(sso_api: Api) -> None:
    callback = await to_callback(sso_api)
    code = parse_qs(urlsplit(callback).query)["code"][0]
    forged = await sso_api.client.get(
        "/api/auth/oidc/callback", params={"code": code, "state": "made-up"}, headers=ANON
    )
    assert forged.status_code == 400 and "login state" in forged.json()["message"]
    assert (await sso_api.client.get(callback, headers=ANON)).status_code == 200
    replayed = await sso_api.client.get(callback, headers=ANON)
    assert replayed.status_code == 400 and "already used" in replayed.json()["message"]
    missing = await sso_api.client.get("/api/auth/oidc/callback", headers=ANON)
    assert missing.status_code == 400


async def test_stale_states_expire(sso_api: Api) -> None:
    callback = await to_callback(sso_api)
    async with sso_api.ctx.transaction() as session:
        state = (await session.execute(select(OidcStateModel))).scalar_one()
        state.created_at = state.created_at.replace(year=state.created_at.year - 1)
    late = await sso_api.client.get(callback, headers=ANON)
    assert late.status_code == 400 and "10 minutes" in late.json()["message"]
    # A new login sweeps out abandoned ones.
    await sso_api.client.get("/api/auth/oidc/login", headers=ANON)
    async with sso_api.ctx.transaction() as session:
        count = (await session.execute(select(func.count()).select_from(OidcStateModel))).scalar()
    assert count == 1


@pytest.mark.parametrize(
    ("knob", "value", "words"),
    [
        ("audience", "some-other-client", "audience"),
        ("nonce", "not-the-nonce", "nonce"),
        ("sign_with_wrong_key", True, "signature"),
        ("issuer", "https://impostor.example", "issuer"),
    ],
)
async def test_bad_id_tokens_are_refused(
    sso_api: Api, provider: OidcProvider, knob: str, value: object, words: str
) -> None:
    setattr(provider, knob, value)
    response = await sso_login(sso_api)
    assert response.status_code == 401, response.text
    assert response.json()["error_code"] == "sso_failed"
    assert words in response.json()["message"].lower()
    async with sso_api.ctx.transaction() as session:
        created = (
            await session.execute(select(UserModel).where(UserModel.oidc_subject.is_not(None)))
        ).first()
    assert created is None


async def test_provider_refusals_and_outages_are_clear_and_keep_the_secret(
    data_dir: Path, provider: OidcProvider
) -> None:
    secret = "a-wrong-client-secret"
    async for api in open_api(sso_settings(data_dir, None, provider.url, secret)):  # type: ignore[arg-type]
        refused = await sso_login(api)
        assert refused.status_code == 400 and "invalid_client" in refused.json()["message"]
        assert secret not in refused.text
        denied = await api.client.get(
            "/api/auth/oidc/callback",
            params={"error": "access_denied", "error_description": "user said no"},
            headers=ANON,
        )
        assert denied.status_code == 400 and "user said no" in denied.json()["message"]

    down = f"http://127.0.0.1:{free_port()}"
    async for api in open_api(sso_settings(data_dir, None, down, secret)):  # type: ignore[arg-type]
        response = await api.client.get("/api/auth/oidc/login", headers=ANON)
        assert response.status_code == 502, response.text
        assert response.json()["error_code"] == "sso_provider_error"
        assert secret not in response.text


async def test_locked_sso_users_cannot_log_in(sso_api: Api) -> None:
    first = await sso_login(sso_api)
    user_id = (await whoami(sso_api, first.json()["access_token"]))["id"]
    async with sso_api.ctx.transaction() as session:
        user = await session.get(UserModel, user_id)
        assert user is not None
        user.locked = True
    again = await sso_login(sso_api)
    assert again.status_code == 401 and "locked" in again.json()["message"]


async def test_sso_is_off_unless_configured(api: Api) -> None:
    response = await api.client.get("/api/auth/oidc/login", headers=ANON)
    assert response.status_code == 404 and response.json()["error_code"] == "sso_not_configured"
