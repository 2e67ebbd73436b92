"""Node agents (`/api/agents`): one-time join tokens, the join itself (a node's
certificate request for its certificate), and the joined nodes' certificates."""

from __future__ import annotations

from pydantic import Field

from flotilla.api.base import ApiModel


class CreateJoinTokenRequest(ApiModel):
    node: str | None = Field(
        None, description="the node name the token joins (default: the host says it)"
    )
    expires_in_seconds: int = Field(3600, description="lifetime, 60 s to 7 days")


class JoinToken(ApiModel):
    token: str = Field(description="the token itself: shown in this response only, ever")
    node: str | None  # None: any name the joining host gives
    expires_at: str
    ca_sha256: str  # the CA certificate's fingerprint, for the host to check


class JoinRequest(ApiModel):
    token: str
    node: str = Field(description="the node's name (a DNS label): its certificate's name")
    csr: str = Field(description="a PEM certificate request; the key stays on the node")
    listen: str | None = Field(
        None,
        description=(
            "HOST:PORT where the control plane reaches the node's agent "
            # 7477: runtime.tls.DEFAULT_AGENT_PORT, which the SDK does not import.
            "(default: the address this request came from, port 7477)"
        ),
        max_length=300,
    )


class Joined(ApiModel):
    node: str
    certificate: str  # PEM
    ca_certificate: str  # PEM
    expires_at: str  # the certificate's
    serial: str  # hex


class JoinedAgent(ApiModel):
    """A joined node's latest certificate."""

    node: str
    serial: str  # hex
    not_after: str
    sha256: str


class AgentList(ApiModel):
    agents: list[JoinedAgent]  # by node name
