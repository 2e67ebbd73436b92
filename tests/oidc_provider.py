"""A small OpenID Connect provider for tests, served for real on a loopback port
(FastAPI under uvicorn in a thread): discovery, JWKS, `/authorize` (approves the
configured user at once and redirects back with a code and the caller's state)
and `/token` (checks the client's credentials, the code, the redirect URI and the
PKCE verifier, then returns an RS256 id_token carrying the login's nonce).

Knobs for negative tests: `sign_with_wrong_key` (another RSA key under the same
kid), `audience`, `nonce`, `issuer` (claims to put in the id_token instead of the
right ones), `auth_methods` (which client authentication the token endpoint
accepts). `token_requests` records how each token request authenticated.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlencode

import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse
from jwt.algorithms import RSAAlgorithm

from tests.factories import free_port

KID = "test-provider-key"


@dataclass
class ProviderUser:
    sub: str = "user-123"
    preferred_username: str | None = "alice"
    email: str | None = "alice@example.com"
    name: str = "Alice Example"


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    nonce: str | None
    challenge: str
    user: ProviderUser


@dataclass
class OidcProvider:
    client_id: str = "flotilla-test"
    client_secret: str = "provider-secret-value"
    redirect_uris: list[str] = field(default_factory=list)
    auth_methods: tuple[str, ...] = ("client_secret_basic", "client_secret_post")
    user: ProviderUser = field(default_factory=ProviderUser)
    # Negative-test knobs: None means "the right value".
    sign_with_wrong_key: bool = False
    audience: str | None = None
    nonce: str | None = None
    issuer: str | None = None
    token_requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.wrong_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.grants: dict[str, Grant] = {}
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # serving
    def start(self) -> OidcProvider:
        config = uvicorn.Config(
            self.app(),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            loop="asyncio",
            http="h11",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise AssertionError("the test OIDC provider did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)

    # the provider
    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/.well-known/openid-configuration")
        async def discovery() -> dict[str, Any]:
            return {
                "issuer": self.url,
                "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token",
                "jwks_uri": f"{self.url}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": list(self.auth_methods),
            }

        @app.get("/jwks")
        async def jwks() -> dict[str, Any]:
            jwk = dict(RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True))
            jwk.update(kid=KID, use="sig", alg="RS256")
            return {"keys": [jwk]}

        @app.get("/authorize", response_model=None)
        async def authorize(request: Request) -> RedirectResponse | JSONResponse:
            q = request.query_params
            problem = self._authorize_problem(q)
            if problem:
                return JSONResponse({"error": "invalid_request", "error_description": problem}, 400)
            code = secrets.token_urlsafe(24)
            self.grants[code] = Grant(
                q["client_id"], q["redirect_uri"], q.get("nonce"), q["code_challenge"], self.user
            )
            query = urlencode({"code": code, "state": q.get("state", "")})
            return RedirectResponse(f"{q['redirect_uri']}?{query}", status_code=302)

        @app.post("/token")
        async def token(request: Request) -> JSONResponse:
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
            method = self._client_auth(request, form)
            self.token_requests.append(method or "refused")
            if method is None:
                return JSONResponse({"error": "invalid_client"}, 401)
            grant = self.grants.pop(form.get("code", ""), None)
            problem = self._grant_problem(grant, form)
            if grant is None or problem:
                return JSONResponse({"error": "invalid_grant", "error_description": problem}, 400)
            return JSONResponse(
                {
                    "access_token": secrets.token_urlsafe(16),
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "id_token": self.id_token(grant),
                }
            )

        return app

    def _authorize_problem(self, q: Any) -> str | None:
        if q.get("response_type") != "code":
            return "response_type must be code"
        if q.get("client_id") != self.client_id:
            return "unknown client"
        if q.get("redirect_uri") not in self.redirect_uris:
            return "redirect_uri not registered"
        if "openid" not in q.get("scope", "").split():
            return "scope lacks openid"
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return "PKCE S256 required"
        return None

    def _client_auth(self, request: Request, form: dict[str, str]) -> str | None:
        header = request.headers.get("authorization", "")
        if header.startswith("Basic ") and "client_secret_basic" in self.auth_methods:
            pair = base64.b64decode(header.removeprefix("Basic ")).decode()
            client_id, _, secret = pair.partition(":")
            ok = (unquote_plus(client_id), unquote_plus(secret)) == (
                self.client_id,
                self.client_secret,
            )
            return "client_secret_basic" if ok else None
        if "client_secret" in form and "client_secret_post" in self.auth_methods:
            ok = (form.get("client_id"), form["client_secret"]) == (
                self.client_id,
                self.client_secret,
            )
            return "client_secret_post" if ok else None
        return None

    def _grant_problem(self, grant: Grant | None, form: dict[str, str]) -> str | None:
        if form.get("grant_type") != "authorization_code":
            return "unsupported grant_type"
        if grant is None:
            return "unknown or used code"
        if form.get("redirect_uri") != grant.redirect_uri:
            return "redirect_uri differs from the authorization request's"
        verifier = form.get("code_verifier", "")
        digest = hashlib.sha256(verifier.encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant.challenge:
            return "PKCE verifier does not match the challenge"
        return None

    def id_token(self, grant: Grant) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer or self.url,
            "sub": grant.user.sub,
            "aud": self.audience or grant.client_id,
            "iat": now,
            "exp": now + 300,
            "nonce": self.nonce or grant.nonce,
            "name": grant.user.name,
        }
        if grant.user.preferred_username:
            claims["preferred_username"] = grant.user.preferred_username
        if grant.user.email:
            claims["email"] = grant.user.email
        key = self.wrong_key if self.sign_with_wrong_key else self.key
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID})
