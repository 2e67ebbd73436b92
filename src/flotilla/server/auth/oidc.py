"""The identity-provider side of OpenID Connect single sign-on: discovery, the
authorization URL (code flow with PKCE S256, state and nonce), the code exchange
and id_token verification. Works with any standard provider; `sso` drives it.

Network trouble and provider refusals are wrapped here: a provider that cannot be
reached or answers nonsense is a 502 (`ProviderError`), a code it rejects is a
400, an id_token that fails a check is a 401. Messages never include the client
secret, and only the provider's `error`/`error_description`, never its raw body.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote_plus, urlencode

import httpx
import jwt

from flotilla.config import Settings
from flotilla.errors import ClientError

# Asymmetric algorithms only: an HMAC id_token would be keyed with the client
# secret, and a JWKS key must never be usable as an HMAC secret.
ID_TOKEN_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384"]
DISCOVERY_CACHE_SECONDS = 3600.0
CLOCK_SKEW_SECONDS = 60


class ProviderError(ClientError):
    """The identity provider is unreachable or answered something unusable."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "sso_provider_error", 502)


def sso_failed(message: str, status: int = 400) -> ClientError:
    return ClientError(f"single sign-on failed: {message}", "sso_failed", status)


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str | None
    redirect_url: str
    scopes: str = "openid email profile"

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcConfig | None:
        """None unless SSO is configured (issuer, client id and redirect URL)."""
        if not (settings.oidc_issuer and settings.oidc_client_id and settings.oidc_redirect_url):
            return None
        return cls(
            issuer=settings.oidc_issuer.rstrip("/"),
            client_id=settings.oidc_client_id,
            client_secret=settings.oidc_client_secret,
            redirect_url=settings.oidc_redirect_url,
            scopes=settings.oidc_scopes,
        )


@dataclass(frozen=True)
class Discovery:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    token_auth_methods: tuple[str, ...]


def code_challenge(verifier: str) -> str:
    """PKCE S256: base64url(sha256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class OidcClient:
    """One provider. Caches its discovery document for an hour and its JWKS until
    an id_token names a key the cached set lacks (the provider rotated)."""

    def __init__(
        self, config: OidcConfig, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self._transport = transport
        self._discovery: Discovery | None = None
        self._discovered_at = 0.0
        self._jwks: dict[str, jwt.PyJWK] = {}

    def _http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=10.0, transport=self._transport)

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            async with self._http() as http:
                response = await http.get(url)
        except httpx.HTTPError as e:
            raise ProviderError(f"cannot reach the identity provider for {what}: {e}") from e
        if response.status_code != 200:
            raise ProviderError(f"the identity provider's {what} answered {response.status_code}")
        return _json_object(response, what)

    async def discovery(self) -> Discovery:
        if self._discovery and time.monotonic() - self._discovered_at < DISCOVERY_CACHE_SECONDS:
            return self._discovery
        url = f"{self.config.issuer}/.well-known/openid-configuration"
        doc = await self._get_json(url, "discovery document")
        try:
            found = Discovery(
                issuer=str(doc["issuer"]),
                authorization_endpoint=str(doc["authorization_endpoint"]),
                token_endpoint=str(doc["token_endpoint"]),
                jwks_uri=str(doc["jwks_uri"]),
                token_auth_methods=tuple(
                    doc.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
                ),
            )
        except KeyError as e:
            raise ProviderError(f"the identity provider's discovery document lacks {e}") from e
        if found.issuer.rstrip("/") != self.config.issuer:
            raise ProviderError(
                f"the discovery document names issuer {found.issuer!r}, "
                f"not the configured {self.config.issuer!r}"
            )
        self._discovery, self._discovered_at = found, time.monotonic()
        return found

    async def authorization_url(self, state: str, nonce: str, verifier: str) -> str:
        endpoint = (await self.discovery()).authorization_endpoint
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.config.client_id,
                "redirect_uri": self.config.redirect_url,
                "scope": self.config.scopes,
                "state": state,
                "nonce": nonce,
                "code_challenge": code_challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    async def exchange_code(self, code: str, verifier: str) -> str:
        """Trade the authorization code for tokens; returns the raw id_token."""
        found = await self.discovery()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.config.redirect_url,
            "code_verifier": verifier,
            "client_id": self.config.client_id,
        }
        headers: dict[str, str] = {}
        secret = self.config.client_secret
        if secret is not None and "client_secret_basic" in found.token_auth_methods:
            # RFC 6749 2.3.1: both halves form-encoded before base64.
            pair = f"{quote_plus(self.config.client_id)}:{quote_plus(secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        elif secret is not None:
            form["client_secret"] = secret
        try:
            async with self._http() as http:
                response = await http.post(found.token_endpoint, data=form, headers=headers)
        except httpx.HTTPError as e:
            raise ProviderError(f"cannot reach the identity provider's token endpoint: {e}") from e
        if response.status_code in (400, 401):
            body = _json_object(response, "token endpoint", strict=False)
            reason = body.get("error_description") or body.get("error") or response.status_code
            raise sso_failed(f"the identity provider refused the code: {reason}")
        if response.status_code != 200:
            raise ProviderError(
                f"the identity provider's token endpoint answered {response.status_code}"
            )
        id_token = _json_object(response, "token endpoint").get("id_token")
        if not isinstance(id_token, str):
            raise ProviderError("the identity provider's token response has no id_token")
        return id_token

    async def _key(self, kid: str | None) -> jwt.PyJWK:
        if kid not in self._jwks or kid is None:
            self._jwks = await self._fetch_jwks()
        if kid is None and len(self._jwks) == 1:
            return next(iter(self._jwks.values()))
        if kid is None or kid not in self._jwks:
            raise sso_failed("the id_token is signed with a key the provider does not publish", 401)
        return self._jwks[kid]

    async def _fetch_jwks(self) -> dict[str, jwt.PyJWK]:
        doc = await self._get_json((await self.discovery()).jwks_uri, "JWKS")
        try:
            keys = jwt.PyJWKSet.from_dict(doc).keys
        except jwt.PyJWKSetError as e:
            raise ProviderError(f"the identity provider's JWKS is unusable: {e}") from e
        return {str(k.key_id): k for k in keys if k.public_key_use in (None, "sig")}

    async def verify_id_token(self, id_token: str, nonce: str, now: datetime) -> dict[str, Any]:
        """The id_token's claims, after checking signature, issuer, audience,
        expiry (by the server's clock) and nonce; 401 on any failure."""
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.InvalidTokenError as e:
            raise sso_failed("the id_token is malformed", 401) from e
        if header.get("alg") not in ID_TOKEN_ALGORITHMS:
            raise sso_failed(f"the id_token uses algorithm {header.get('alg')!r}", 401)
        key = await self._key(header.get("kid"))
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key.key,
                algorithms=[str(header["alg"])],
                audience=self.config.client_id,
                issuer=(await self.discovery()).issuer,
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "require": ["iss", "aud", "sub", "exp", "iat"],
                },
            )
        except jwt.PyJWTError as e:  # a key of the wrong type for `alg` included
            raise sso_failed(f"the id_token is invalid: {e}", 401) from e
        if now.timestamp() >= float(claims["exp"]) + CLOCK_SKEW_SECONDS:
            raise sso_failed("the id_token has expired", 401)
        if claims.get("nonce") != nonce:
            raise sso_failed("the id_token's nonce does not match this login", 401)
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.config.client_id:
            raise sso_failed("the id_token was issued to another party (azp)", 401)
        return claims


def _json_object(response: httpx.Response, what: str, strict: bool = True) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        if strict:
            raise ProviderError(f"the identity provider's {what} did not answer a JSON object")
        return {}
    return body
