"""`IdentityCalls`, the identity part of `FlotillaClient`: sessions and signing keys,
users and their SSH keys, service accounts, groups, projects and API tokens (used by
`flo login`, `flo user`, `flo group`, `flo project`, `flo token` and the like).
Each call answers its route's model from `flotilla.api`."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from flotilla.api.auth import KeyRotation, LogoutResponse, Session, SessionList, TokenResponse
from flotilla.api.groups import Group, GroupList
from flotilla.api.projects import Project, ProjectList
from flotilla.api.tokens import CreatedToken, Token, TokenList
from flotilla.api.users import (
    ServiceAccountCreated,
    ServiceAccountList,
    SshKey,
    User,
    UserBrief,
    UserList,
)
from flotilla.client.calls import _Calls

# `GET /api/users/{user}` answers a user in full, or by name only to whoever may
# not see more: the fields tell which.
_SOME_USER: TypeAdapter[User | UserBrief] = TypeAdapter(User | UserBrief)


class IdentityCalls(_Calls):
    # sessions and signing keys
    def login(self, username: str, password: str) -> TokenResponse:
        body = {"username": username, "password": password}
        return TokenResponse.model_validate(self._request("POST", "/api/auth/login", json=body))

    def logout(self, session_id: str | None = None) -> LogoutResponse:
        body = {"session_id": session_id} if session_id else None
        return LogoutResponse.model_validate(self._request("POST", "/api/auth/logout", json=body))

    def sessions(self) -> list[Session]:
        return SessionList.model_validate(self._request("GET", "/api/auth/sessions")).sessions

    def rotate_keys(self) -> KeyRotation:
        return KeyRotation.model_validate(self._request("POST", "/api/auth/keys/rotate"))

    # users and service accounts
    def create_user(self, body: dict[str, Any]) -> User:
        return User.model_validate(self._request("POST", "/api/users", json=body))

    def list_users(self, service_accounts: bool | None = None) -> list[User | UserBrief]:
        params = {} if service_accounts is None else {"service_accounts": service_accounts}
        return UserList.model_validate(self._request("GET", "/api/users", params=params)).users

    def get_user(self, user: str) -> User | UserBrief:
        return _SOME_USER.validate_python(self._request("GET", f"/api/users/{user}"))

    def update_user(self, user: str, changes: dict[str, Any]) -> User:
        return User.model_validate(self._request("PATCH", f"/api/users/{user}", json=changes))

    def delete_user(self, user: str) -> None:
        self._request("DELETE", f"/api/users/{user}")

    def add_ssh_key(self, user: str, key: str) -> SshKey:
        added = self._request("POST", f"/api/users/{user}/ssh_keys", json={"key": key})
        return SshKey.model_validate(added)

    def remove_ssh_key(self, user: str, fingerprint: str) -> None:
        self._request("DELETE", f"/api/users/{user}/ssh_keys/{fingerprint}")

    def create_service_account(self, name: str, full_name: str = "") -> User:
        body = {"name": name, "full_name": full_name}
        created = self._request("POST", "/api/service_accounts", json=body)
        return ServiceAccountCreated.model_validate(created).service_account

    def list_service_accounts(self) -> list[User | UserBrief]:
        listed = self._request("GET", "/api/service_accounts")
        return ServiceAccountList.model_validate(listed).service_accounts

    # groups
    def create_group(
        self, name: str, description: str = "", members: list[str] | None = None
    ) -> Group:
        body = {"name": name, "description": description, "members": members or []}
        return Group.model_validate(self._request("POST", "/api/groups", json=body))

    def list_groups(self) -> list[Group]:
        return GroupList.model_validate(self._request("GET", "/api/groups")).groups

    def get_group(self, group: str) -> Group:
        return Group.model_validate(self._request("GET", f"/api/groups/{group}"))

    def delete_group(self, group: str) -> None:
        self._request("DELETE", f"/api/groups/{group}")

    def add_group_member(self, group: str, user: str) -> Group:
        return Group.model_validate(self._request("PUT", f"/api/groups/{group}/members/{user}"))

    def remove_group_member(self, group: str, user: str) -> None:
        self._request("DELETE", f"/api/groups/{group}/members/{user}")

    # projects
    def create_project(
        self, name: str, description: str = "", members: list[dict[str, str]] | None = None
    ) -> Project:
        body = {"name": name, "description": description, "members": members or []}
        return Project.model_validate(self._request("POST", "/api/projects", json=body))

    def list_projects(self) -> list[Project]:
        return ProjectList.model_validate(self._request("GET", "/api/projects")).projects

    def get_project(self, project: str) -> Project:
        return Project.model_validate(self._request("GET", f"/api/projects/{project}"))

    def delete_project(self, project: str) -> None:
        self._request("DELETE", f"/api/projects/{project}")

    def set_project_member(self, project: str, kind: str, name: str, role: str) -> Project:
        path = f"/api/projects/{project}/members/{kind}/{name}"
        return Project.model_validate(self._request("PUT", path, json={"role": role}))

    def remove_project_member(self, project: str, kind: str, name: str) -> None:
        self._request("DELETE", f"/api/projects/{project}/members/{kind}/{name}")

    # API tokens
    def create_token(
        self,
        name: str,
        scopes: list[str],
        expires_in_days: int | None = None,
        expires_at: str | None = None,
        user: str | None = None,
    ) -> CreatedToken:
        """A new API token; the response's `token` is the only time it is shown."""
        body: dict[str, Any] = {"name": name, "scopes": scopes}
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        if expires_at is not None:
            body["expires_at"] = expires_at
        path = f"/api/users/{user}/tokens" if user else "/api/tokens"
        return CreatedToken.model_validate(self._request("POST", path, json=body))

    def list_tokens(self, user: str | None = None) -> list[Token]:
        params = {"user": user} if user else {}
        return TokenList.model_validate(self._request("GET", "/api/tokens", params=params)).tokens

    def revoke_token(self, token_id: str) -> None:
        self._request("DELETE", f"/api/tokens/{token_id}")
