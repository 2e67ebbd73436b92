"""Server configuration from flags and `FLOTILLA_*` environment variables.

Precedence: explicit flags (passed as overrides) > environment > defaults. The
embedded default is SQLite under the data directory and the `local` backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from flotilla.core.units import parse_memory
from flotilla.core.unixids import DEFAULT_UID_MAX, DEFAULT_UID_MIN, UnixIdRange

DEFAULT_PORT = 8765
N = TypeVar("N", int, float)
DEFAULT_SSH_PORT = 2222


def default_data_dir() -> Path:
    return Path(os.environ.get("FLOTILLA_DATA_DIR") or Path.home() / ".flotilla").expanduser()


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    database_url: str | None = None
    admin_token: str | None = None
    local_gpus: str | None = None
    # Seconds between SIGTERM and SIGKILL when a run is stopped.
    stop_grace_seconds: float = 10.0
    # How often reconcilers re-check the world even without a wake-up.
    resync_seconds: float = 2.0
    # A run that failed and has `retries` left waits this long before its next
    # attempt, doubling with each retry up to RETRY_BACKOFF_MAX (a failing clone or
    # a crashing command is not hammered): FLOTILLA_RETRY_BACKOFF_SECONDS.
    retry_backoff_seconds: float = 10.0
    # Retention (`reconcilers/retention.py`), in days, 0 = forever: events older
    # than FLOTILLA_EVENT_RETENTION_DAYS are deleted, and the task logs of runs
    # finished longer ago than FLOTILLA_LOG_RETENTION_DAYS. Runs, usage and the
    # audit log are kept.
    event_retention_days: float = 90.0
    log_retention_days: float = 30.0
    # The local agent exits after this long with no tasks and no clients.
    agent_idle_exit_seconds: float = 600.0
    secret_key: str | None = None
    # Run work on this machine as the node `local` (off: only fleet nodes run work).
    local_node: bool = True
    # The simulated cloud's provisioning delay in seconds (its spot notice is 7 days).
    sim_provisioning_delay: float = 20.0
    # Where runs keep checkpoints that survive requeues (FLOTILLA_CHECKPOINT_DIR).
    checkpoint_dir: Path | None = None
    # Session tokens (`server/auth`): the `iss` of the JWTs this server signs
    # (FLOTILLA_AUTH_ISSUER; set it to the server's public URL), the access token's
    # lifetime and the refresh token's, in seconds.
    auth_issuer: str = "flotilla"
    access_token_ttl: float = 15 * 60.0
    refresh_token_ttl: float = 14 * 24 * 3600.0
    # How long a start's Idempotency-Key is remembered, in seconds
    # (FLOTILLA_IDEMPOTENCY_KEY_TTL; `services/idempotency.py`).
    idempotency_key_ttl: float = 24 * 3600.0
    # Single sign-on with any OpenID Connect provider (FLOTILLA_OIDC_*); off unless
    # the issuer and client id are set. The redirect URL is this server's
    # `/api/auth/oidc/callback` as the provider knows it.
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    oidc_redirect_url: str | None = None
    oidc_scopes: str = "openid email profile"
    # The SSH gateway's port (`server/ssh`): 0 for any free one, None for no gateway.
    # Off unless asked for here; `from_env` (what `flo server` uses) turns it on at
    # DEFAULT_SSH_PORT unless FLOTILLA_SSH_PORT says otherwise.
    ssh_port: int | None = None
    # The shortest interval a job's schedule may have, in seconds
    # (FLOTILLA_MIN_SCHEDULE_INTERVAL): `@every 10s` is refused below it.
    min_schedule_interval: float = 60.0
    # The largest request body the server reads (FLOTILLA_MAX_REQUEST_BYTES; `4Mi`,
    # bytes, 0 for no limit): larger ones answer 413 before they are read. Bodies to
    # deployments through the front door (`/d/…`, which holds a body in memory before
    # passing it on) have their own limit, for uploads (FLOTILLA_MAX_FRONTDOOR_BYTES).
    max_request_bytes: int = 4 * 1024**2
    max_frontdoor_bytes: int = 100 * 1024**2
    # The UIDs/GIDs given to users and groups, once each and never again
    # (FLOTILLA_UID_MIN, FLOTILLA_UID_MAX; why these defaults: `core/unixids.py`).
    uid_min: int = DEFAULT_UID_MIN
    uid_max: int = DEFAULT_UID_MAX
    # Run tasks as their user's Unix account, in a cgroup of their own, with the
    # control plane's files hidden (FLOTILLA_RUN_AS_USER). None (unset): on for every
    # node that can isolate (its agent runs as root and probes `full`), off elsewhere;
    # True (1): on for every node, each applying what it can; False (0): off, an
    # admin's choice of one trust domain (every node says so). Otherwise a node that
    # does not isolate runs only the work of admins and of the users and groups an
    # admin trusts there (`services/fleets/node_trust.py`).
    run_as_user: bool | None = None
    # What this machine's isolation probe says, instead of probing it
    # (FLOTILLA_LOCAL_ISOLATION): "none (why)" or "partial (why)", never "full". Only
    # to try what a server that cannot isolate does (tests, a demo as root); it can
    # only weaken what the local node is taken to do.
    local_isolation: str | None = None
    # Nodes on other hosts (`reconcilers/agent_nodes.py`): their agent is asked for a
    # heartbeat this often (FLOTILLA_NODE_HEARTBEAT_SECONDS); a node silent this long
    # is `unreachable` (FLOTILLA_NODE_UNREACHABLE_SECONDS: no new work, its tasks keep
    # their last known state), and this long `failed` (FLOTILLA_NODE_FAILED_SECONDS:
    # its tasks are lost and their runs requeued on other nodes).
    # `sim` instances as real hosts of their own (FLOTILLA_SIM_HOSTS=1; root only:
    # `reconcilers/sim_hosts.py`); off: they are processes on this machine.
    sim_hosts: bool = False
    # `sim` instances execute virtually (FLOTILLA_SIM_VIRTUAL=1: `compute/virtual/`):
    # their tasks are timed from the recipe, not run, for scale runs.
    sim_virtual: bool = False
    # The simulated cloud's size: nodes per InfiniBand fabric (one per region and
    # 8-GPU type) and its partitions (FLOTILLA_SIM_FABRIC_NODES, _PARTITIONS).
    sim_fabric_nodes: int = 32
    sim_partitions: int = 2
    node_heartbeat_seconds: float = 5.0
    node_unreachable_seconds: float = 15.0
    node_failed_seconds: float = 60.0

    def __post_init__(self) -> None:
        UnixIdRange(self.uid_min, self.uid_max)  # a bad range fails at start, not at a create
        if self.local_isolation is not None and not self.local_isolation.startswith(
            ("none (", "partial (")
        ):
            raise ValueError(
                "FLOTILLA_LOCAL_ISOLATION must be 'none (why)' or 'partial (why)': it can only"
                f" weaken what this machine is taken to isolate, not {self.local_isolation!r}"
            )
        if not 0 < self.node_heartbeat_seconds < self.node_unreachable_seconds:
            raise ValueError(
                "FLOTILLA_NODE_HEARTBEAT_SECONDS must be above 0 and below "
                "FLOTILLA_NODE_UNREACHABLE_SECONDS"
            )
        for name in ("event_retention_days", "log_retention_days"):
            if getattr(self, name) < 0:
                raise ValueError(f"FLOTILLA_{name.upper()} must be 0 (keep forever) or more")
        if self.node_failed_seconds < self.node_unreachable_seconds:
            raise ValueError(
                "FLOTILLA_NODE_FAILED_SECONDS must not be below FLOTILLA_NODE_UNREACHABLE_SECONDS"
            )

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        env = os.environ
        values: dict[str, Any] = {
            "data_dir": default_data_dir(),
            "database_url": env.get("FLOTILLA_DATABASE_URL") or None,
            "admin_token": env.get("FLOTILLA_ADMIN_TOKEN") or None,
            "local_gpus": env.get("FLOTILLA_LOCAL_GPUS") or None,
            "secret_key": env.get("FLOTILLA_SECRET_KEY") or None,
        }
        if env.get("FLOTILLA_HOST"):
            values["host"] = env["FLOTILLA_HOST"]
        if env.get("FLOTILLA_PORT"):
            values["port"] = _number(env, "FLOTILLA_PORT", int)
        values["ssh_port"] = _ssh_port(env.get("FLOTILLA_SSH_PORT", ""))
        if env.get("FLOTILLA_LOCAL_NODE"):
            values["local_node"] = env["FLOTILLA_LOCAL_NODE"].lower() not in ("0", "false", "no")
        if env.get("FLOTILLA_SIM_PROVISIONING_DELAY"):
            values["sim_provisioning_delay"] = _number(
                env, "FLOTILLA_SIM_PROVISIONING_DELAY", float
            )
        if env.get("FLOTILLA_CHECKPOINT_DIR"):
            values["checkpoint_dir"] = Path(env["FLOTILLA_CHECKPOINT_DIR"])
        if env.get("FLOTILLA_STOP_GRACE"):
            values["stop_grace_seconds"] = _number(env, "FLOTILLA_STOP_GRACE", float)
        if env.get("FLOTILLA_SIM_HOSTS"):
            values["sim_hosts"] = env["FLOTILLA_SIM_HOSTS"].lower() not in ("0", "false", "no")
        for name in ("fabric_nodes", "partitions"):
            if env.get(f"FLOTILLA_SIM_{name.upper()}"):
                values[f"sim_{name}"] = _number(env, f"FLOTILLA_SIM_{name.upper()}", int)
        if env.get("FLOTILLA_SIM_VIRTUAL"):
            values["sim_virtual"] = env["FLOTILLA_SIM_VIRTUAL"].lower() not in ("0", "false", "no")
        values["run_as_user"] = _tri_state("FLOTILLA_RUN_AS_USER", env.get("FLOTILLA_RUN_AS_USER"))
        if env.get("FLOTILLA_LOCAL_ISOLATION"):
            values["local_isolation"] = env["FLOTILLA_LOCAL_ISOLATION"]
        if env.get("FLOTILLA_MIN_SCHEDULE_INTERVAL"):
            values["min_schedule_interval"] = _number(env, "FLOTILLA_MIN_SCHEDULE_INTERVAL", float)
        if env.get("FLOTILLA_RETRY_BACKOFF_SECONDS"):
            values["retry_backoff_seconds"] = _number(env, "FLOTILLA_RETRY_BACKOFF_SECONDS", float)
        for name in (
            "auth_issuer",
            "oidc_issuer",
            "oidc_client_id",
            "oidc_client_secret",
            "oidc_redirect_url",
            "oidc_scopes",
        ):
            if env.get(f"FLOTILLA_{name.upper()}"):
                values[name] = env[f"FLOTILLA_{name.upper()}"]
        for name in (
            "access_token_ttl",
            "refresh_token_ttl",
            "idempotency_key_ttl",
            "node_heartbeat_seconds",
            "node_unreachable_seconds",
            "node_failed_seconds",
            "event_retention_days",
            "log_retention_days",
        ):
            if env.get(f"FLOTILLA_{name.upper()}"):
                values[name] = _number(env, f"FLOTILLA_{name.upper()}", float)
        for name in ("uid_min", "uid_max"):
            if env.get(f"FLOTILLA_{name.upper()}"):
                values[name] = _number(env, f"FLOTILLA_{name.upper()}", int)
        for name in ("max_request_bytes", "max_frontdoor_bytes"):
            if env.get(f"FLOTILLA_{name.upper()}"):
                values[name] = _number(env, f"FLOTILLA_{name.upper()}", parse_memory)
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["data_dir"] = Path(values["data_dir"]).expanduser().resolve()
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'flotilla.db'}"

    @property
    def unix_id_range(self) -> UnixIdRange:
        return UnixIdRange(self.uid_min, self.uid_max)

    @property
    def checkpoints(self) -> Path:
        return self.checkpoint_dir or self.data_dir / "checkpoints"

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin-token"

    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def agent_socket(self) -> Path:
        return self.data_dir / "agent.sock"


def unix_id_range_from_env() -> UnixIdRange:
    """FLOTILLA_UID_MIN..FLOTILLA_UID_MAX as the server reads them; for the migration
    that gives existing users and groups their numbers (`migrations/versions/0006`)."""
    env = os.environ
    first = int(env.get("FLOTILLA_UID_MIN") or DEFAULT_UID_MIN)
    return UnixIdRange(first, int(env.get("FLOTILLA_UID_MAX") or DEFAULT_UID_MAX))


def _number(env: Mapping[str, str], name: str, parse: Callable[[str], N]) -> N:
    """The value of the variable `name`, read by `parse` (int, float or
    `parse_memory`); a ValueError that names the variable if it does not read."""
    text = env[name].strip()
    try:
        return parse(text)
    except ValueError:
        kinds: dict[object, str] = {int: "a whole number", float: "a number"}
        kind = kinds.get(parse, "a size (e.g. 512Mi, 64Gi)")
        raise ValueError(f"{name} must be {kind}, not {text!r}") from None


def _tri_state(name: str, text: str | None) -> bool | None:
    """An on/off variable whose absence means "decide for me" (None)."""
    text = (text or "").strip().lower()
    if not text or text == "auto":
        return None
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be 1, 0 or unset (auto), not {text!r}")


def _ssh_port(text: str) -> int | None:
    """FLOTILLA_SSH_PORT: a port, 0 for any free one, or off."""
    text = text.strip().lower()
    if not text:
        return DEFAULT_SSH_PORT
    if text in ("off", "no", "false", "none"):
        return None
    if not text.isdigit() or int(text) > 65535:
        raise ValueError(f"FLOTILLA_SSH_PORT must be a port number, 0 or 'off', not {text!r}")
    return int(text)
