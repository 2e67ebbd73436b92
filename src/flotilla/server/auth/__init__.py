"""Authentication beyond API tokens: password logins, session JWTs signed with
rotating RS256 keys, refresh tokens, and OpenID Connect single sign-on.

- `passwords`: argon2id hashes.
- `keys`: the signing keys, their rotation and the JWKS.
- `tokens`: minting and verifying access tokens (`identity_for_jwt`, called by
  `security.current_identity`).
- `sessions`: logins, refresh-token rotation with reuse detection, logout.
- `oidc`: the provider side of SSO (discovery, code exchange, id_token checks);
  `sso` turns a verified id_token into a user and a session.

`routers/auth.py` exposes them under `/api/auth`.
"""
