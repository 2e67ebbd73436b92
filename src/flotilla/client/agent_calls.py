"""`AgentCalls`, the node-agent part of `FlotillaClient`: join tokens (admins), the
join itself (no credential but the token: `flo agent join`) and the joined nodes.
Each call answers its route's model from `flotilla.api.agents`."""

from __future__ import annotations

from flotilla.api.agents import AgentList, Joined, JoinedAgent, JoinToken
from flotilla.client.calls import _Calls


class AgentCalls(_Calls):
    def create_join_token(self, node: str | None, expires_in_seconds: int) -> JoinToken:
        body = {"node": node, "expires_in_seconds": expires_in_seconds}
        return JoinToken.model_validate(self._request("POST", "/api/agents/join-tokens", json=body))

    def join_agent(self, token: str, node: str, csr: str, listen: str | None = None) -> Joined:
        body = {"token": token, "node": node, "csr": csr, "listen": listen}
        return Joined.model_validate(self._request("POST", "/api/agents/join", json=body))

    def list_agents(self) -> list[JoinedAgent]:
        return AgentList.model_validate(self._request("GET", "/api/agents")).agents
