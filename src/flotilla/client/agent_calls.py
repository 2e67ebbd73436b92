"""`AgentCalls`, the node-agent part of `FlotillaClient`: join tokens (admins), the
join itself (no credential but the token: `flo agent join`) and the joined nodes."""

from __future__ import annotations

from typing import Any

from flotilla.client.calls import _Calls


class AgentCalls(_Calls):
    def create_join_token(self, node: str | None, expires_in_seconds: int) -> dict[str, Any]:
        body = {"node": node, "expires_in_seconds": expires_in_seconds}
        return dict(self._request("POST", "/api/agents/join-tokens", json=body))

    def join_agent(
        self, token: str, node: str, csr: str, listen: str | None = None
    ) -> dict[str, Any]:
        body = {"token": token, "node": node, "csr": csr, "listen": listen}
        return dict(self._request("POST", "/api/agents/join", json=body))

    def list_agents(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/api/agents")["agents"])
