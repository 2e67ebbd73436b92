"""SQLAlchemy models. One table per resource; enums are stored as strings, times as
UTC. Schema changes go through Alembic migrations in `migrations/versions`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every database (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class UserModel(Base):
    """A person or a service account. User and group names share one namespace, so
    a recipe's `owner` names exactly one of them."""

    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str | None] = mapped_column(String(256))
    full_name: Mapped[str] = mapped_column(String(256), default="", server_default="")
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    # Service accounts have no password and no SSO login: only API tokens.
    is_service_account: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=text("false")
    )
    # argon2id; None means password login is off for this user.
    password_hash: Mapped[str | None] = mapped_column(String(256))
    # "issuer|subject" of the SSO identity this user logs in with.
    oidc_subject: Mapped[str | None] = mapped_column(String(512), unique=True)
    ssh_public_keys: Mapped[list[Any]] = mapped_column(JSON, default=list, server_default="[]")
    locked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime]
    # The user's Unix UID on nodes, and the GID of their private group (uid == gid);
    # given once at insert from the counter users and groups share, never reused
    # (`db/unix_ids.py`). Nullable in the schema only: SQLite cannot add NOT NULL to a
    # table others refer to without a copy that would cascade-delete them; migration
    # 0006 fills existing rows and guards against NULL with a check or triggers.
    uid: Mapped[int] = mapped_column(Integer, nullable=True)
    # An index rather than a constraint: SQLite adds one without copying the table.
    __table_args__ = (Index("uq_users_uid", "uid", unique=True),)


class GroupModel(Base):
    __tablename__ = "groups"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    # The group's Unix GID on nodes, from the users' counter (see `UserModel.uid`).
    gid: Mapped[int] = mapped_column(Integer, nullable=True)
    __table_args__ = (Index("uq_groups_gid", "gid", unique=True),)


class GroupMemberModel(Base):
    __tablename__ = "group_members"
    group_id: Mapped[str] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class ProjectModel(Base):
    """What resources are billed to and budgets are set on."""

    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]


class ProjectMemberModel(Base):
    """A user's or a group's role in a project: admin, member or viewer."""

    __tablename__ = "project_members"
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    principal_kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    principal_id: Mapped[str] = mapped_column(String(32), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(String(16))


class ApiTokenModel(Base):
    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    # Only a SHA-256 of the token is kept: a stolen database yields no usable token.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Any of read, write, admin.
    scopes: Mapped[list[Any]] = mapped_column(
        JSON, default=list, server_default='["read", "write", "admin"]'
    )
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class SigningKeyModel(Base):
    """An RS256 key pair for session tokens. The newest unretired key signs; retired
    keys keep verifying (and stay in the JWKS) until every token they signed has
    expired, so rotating keys logs nobody out."""

    __tablename__ = "signing_keys"
    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    # PEM, encrypted with the server's secret box.
    private_key: Mapped[str] = mapped_column(Text)
    public_jwk: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    retired_at: Mapped[datetime | None]


class SessionModel(Base):
    """One login (password or SSO). The refresh token is kept only as a hash and is
    replaced on every refresh; revoking the session ends its access tokens too."""

    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    method: Mapped[str] = mapped_column(String(16))
    refresh_hash: Mapped[str] = mapped_column(String(64), unique=True)
    source_ip: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime]
    refreshed_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class OidcStateModel(Base):
    """An SSO login in flight: the `state` we sent to the provider, with the nonce and
    PKCE verifier to check its answer against. Used once."""

    __tablename__ = "oidc_states"
    state: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64))
    code_verifier: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]


class AuditModel(Base):
    """Append-only record of every state-changing request and every login. The
    migration installs triggers that refuse UPDATE and DELETE on this table."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(64), index=True)
    auth_method: Mapped[str] = mapped_column(String(16))
    source_ip: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(Text)
    # The route template: "POST /api/jobs/{job_id}/start".
    action: Mapped[str] = mapped_column(String(256), index=True)
    status_code: Mapped[int]
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")


class UsageModel(Base):
    """Metered use of one node share by one task, from start to teardown, at the
    price in force when it started. `ended_at` is None while the task runs."""

    __tablename__ = "usage"
    # Metering reads a node's rows that end after a point (idle time, `usage_rows.py`).
    __table_args__ = (Index("ix_usage_node_ended_at", "node", "ended_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(48), unique=True)
    run_id: Mapped[str] = mapped_column(String(32), index=True)
    recipe_type: Mapped[str] = mapped_column(String(32))
    recipe_name: Mapped[str] = mapped_column(String(64))
    user: Mapped[str] = mapped_column(String(64), index=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    owner_kind: Mapped[str] = mapped_column(String(8))
    project: Mapped[str | None] = mapped_column(String(64), index=True)
    node: Mapped[str] = mapped_column(String(128))
    instance_type: Mapped[str] = mapped_column(String(64))
    gpu_type: Mapped[str | None] = mapped_column(String(32))
    gpus: Mapped[int]
    spot: Mapped[bool] = mapped_column(Boolean)
    # The task's share of the node (its GPUs, or its CPUs on a GPU-less node).
    share: Mapped[float] = mapped_column(Float)
    # What the share costs per hour: the node's price at start times the share.
    price_per_hour: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime] = mapped_column(index=True)
    ended_at: Mapped[datetime | None] = mapped_column(index=True)


class BudgetModel(Base):
    """Limits on a user's, group's or project's spending. Reaching `warn_fraction`
    warns; reaching a limit refuses new runs (running ones are never killed)."""

    __tablename__ = "budgets"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    scope_kind: Mapped[str] = mapped_column(String(8))
    scope_name: Mapped[str] = mapped_column(String(64))
    max_gpus: Mapped[int | None]
    gpu_hours_per_month: Mapped[float | None] = mapped_column(Float)
    dollars_per_month: Mapped[float | None] = mapped_column(Float)
    warn_fraction: Mapped[float] = mapped_column(Float, default=0.8)
    updated_at: Mapped[datetime]
    __table_args__ = (Index("uq_budgets_scope", "scope_kind", "scope_name", unique=True),)


class RecipeModel(Base):
    __tablename__ = "recipes"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str] = mapped_column(String(128))
    # The project the recipe's resources belong to (None: its owner's alone).
    project: Mapped[str | None] = mapped_column(String(64), index=True)
    schema_version: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]]
    version: Mapped[int] = mapped_column(Integer, default=1)
    run_counter: Mapped[int] = mapped_column(Integer, default=0)
    schedule_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    next_tick_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    deleted_at: Mapped[datetime | None]

    __table_args__ = (
        # Names are unique among live recipes; a deleted recipe frees its name.
        Index(
            "uq_recipes_live_name",
            "type",
            "owner",
            "name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )


class RecipeVersionModel(Base):
    __tablename__ = "recipe_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    recipe_id: Mapped[str] = mapped_column(ForeignKey("recipes.id", ondelete="CASCADE"))
    version: Mapped[int]
    spec: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(64))


class RunModel(Base):
    __tablename__ = "runs"
    # The scheduler reads the pending queue a window at a time, per owner and
    # priority tier in arrival order (`services/runs/scheduling.py`), and users
    # page through it in arrival order (`services/runs/queue.py`): these indices
    # serve both however long the queue is.
    __table_args__ = (
        Index("ix_runs_queue", "status", "owner", "priority", "queued_at"),
        Index("ix_runs_pending", "status", "queued_at", "id"),
        # Finished runs whose logs retention has still to remove (`reconcilers/retention.py`).
        Index("ix_runs_logs_due", "logs_removed_at", "finished_at"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    recipe_id: Mapped[str] = mapped_column(ForeignKey("recipes.id"), index=True)
    # The recipe's owner and the spec's priority, copied at creation: what the
    # queue is ordered by, without a join or reading the spec.
    owner: Mapped[str] = mapped_column(String(64), default="")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    number: Mapped[int]
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    trigger: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[str] = mapped_column(String(64))
    # The spec as it was when the run was triggered: later applies don't change it.
    spec: Mapped[dict[str, Any]]
    exit_code: Mapped[int | None]
    leader_port: Mapped[int | None]
    queued_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    stop_requested_at: Mapped[datetime | None]
    stop_reason: Mapped[str | None] = mapped_column(Text)
    # Set when the platform stops the run to start it again elsewhere (node failure,
    # spot notice, drain, preemption): the stop ends in a requeue, not in `stopped`.
    requeue_reason: Mapped[str | None] = mapped_column(Text)
    # Requeues after the user's own failures (non-zero exit), bounded by `retries`;
    # infrastructure requeues do not count.
    retries_used: Mapped[int] = mapped_column(Integer, default=0)
    # A retry waits until then (back-off after the run's own failure): kept here, so
    # a restarted server keeps waiting. None: schedulable now.
    not_before: Mapped[datetime | None]
    # When retention removed the run's task logs (FLOTILLA_LOG_RETENTION_DAYS).
    logs_removed_at: Mapped[datetime | None]
    # A deployment replica: the recipe version it runs and its host port per route
    # ({"8000": 41234}); None for job runs.
    recipe_version: Mapped[int | None]
    replica_ports: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The secret values the run was given (every attempt's), sealed with the
    # server's SecretBox: its logs stay masked with them after a secret is rotated
    # or deleted. Never returned by the API. None: launched before this was kept.
    secret_masks: Mapped[str | None] = mapped_column(Text)


class TaskModel(Base):
    """One node's share of one attempt of a run (Saturn's "pod")."""

    __tablename__ = "tasks"
    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int]
    rank: Mapped[int]
    name: Mapped[str] = mapped_column(String(128), index=True)
    status: Mapped[str] = mapped_column(String(16))
    node: Mapped[str | None] = mapped_column(String(128))
    address: Mapped[str | None] = mapped_column(String(128))
    gpus: Mapped[list[Any]] = mapped_column(JSON, default=list)
    pid: Mapped[int | None]
    exit_code: Mapped[int | None]
    message: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class EventModel(Base):
    __tablename__ = "events"
    # Retention deletes the oldest first (FLOTILLA_EVENT_RETENTION_DAYS).
    __table_args__ = (Index("ix_events_created_at", "created_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    recipe_id: Mapped[str | None] = mapped_column(String(32), index=True)
    run_id: Mapped[str | None] = mapped_column(String(32), index=True)
    node_id: Mapped[str | None] = mapped_column(String(32), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]


class SecretModel(Base):
    __tablename__ = "secrets"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    # user, group or project: who may see the secret and attach it to recipes.
    owner_kind: Mapped[str] = mapped_column(String(8), default="user", server_default="user")
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text, default="")
    # Fernet token (AES-128-CBC + HMAC); the key lives outside the database.
    ciphertext: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    __table_args__ = (Index("uq_secrets_owner_name", "owner_kind", "owner", "name", unique=True),)


class NodeModel(Base):
    """A machine that runs tasks: this machine (`local`) or an instance a fleet got
    from a provider. `state` is the single source of truth for its lifecycle and
    changes only through `services.nodes.switch_node_state`."""

    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    fleet_id: Mapped[str | None] = mapped_column(String(32), index=True)
    provider: Mapped[str] = mapped_column(String(32))
    instance_id: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
    instance_type: Mapped[str] = mapped_column(String(64))
    region: Mapped[str] = mapped_column(String(64))
    spot: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    address: Mapped[str] = mapped_column(String(128))
    gpu_type: Mapped[str | None] = mapped_column(String(32))
    # One entry per GPU: {"index": 0, "healthy": true}.
    gpus: Mapped[list[Any]] = mapped_column(JSON, default=list)
    cpus: Mapped[int] = mapped_column(Integer, default=0)
    memory_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # Topology: region, ib_network, partition, spine, leaf, nvlink (see core.topology).
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    price_per_hour: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime]
    ready_at: Mapped[datetime | None]
    # When the node last became free of work; the fleet's idle timeout counts from it.
    idle_since: Mapped[datetime | None]
    interruption_deadline: Mapped[datetime | None]
    terminated_at: Mapped[datetime | None]
    # When it last became `failed` (a fleet counts nodes that fail before ready).
    failed_at: Mapped[datetime | None]


class SettingModel(Base):
    """Server-wide settings edited through the API (the scheduler policy), and the
    Unix ID counter (`unix_ids`: the highest UID/GID ever given, `db/unix_ids.py`)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime]


class BackoffModel(Base):
    """A retry that waits (`services/backoffs.py`): a reconciler's failed try of
    something, kept here so a restarted server waits too instead of trying every
    failed thing again at once."""

    __tablename__ = "backoffs"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)  # `ssh-enroll:NODE`
    failures: Mapped[int]  # in a row
    not_before: Mapped[datetime]
    # What the wait is for (a recipe version): a change ends it. None: any.
    version: Mapped[int | None]
    # When the last failure in a row was recorded.
    last_failure_at: Mapped[datetime | None]


class DeploymentStateModel(Base):
    """What the deployment reconciler keeps between steps: the replica count the
    autoscaler wants, since when load has been above or below target, the load
    balancer port of each route, and when a client last asked for a scaled-to-zero
    deployment."""

    __tablename__ = "deployment_states"
    recipe_id: Mapped[str] = mapped_column(
        ForeignKey("recipes.id", ondelete="CASCADE"), primary_key=True
    )
    desired_replicas: Mapped[int]
    # container port (as text) -> the load balancer's listener port
    route_ports: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    above_since: Mapped[datetime | None]
    below_since: Mapped[datetime | None]
    last_scaled_at: Mapped[datetime | None]
    demand_at: Mapped[datetime | None]
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    last_restart_at: Mapped[datetime | None]


class IdempotencyKeyModel(Base):
    """A start request sent with an `Idempotency-Key`, and the answer it got: a
    repeat by the same caller gets that answer again instead of a second run
    (`services/idempotency.py`). Rows expire after `idempotency_key_ttl`."""

    __tablename__ = "idempotency_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # The caller's user id: keys are per caller, so one cannot replay another's.
    caller: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(255))
    # "POST /api/jobs/<id>/start": the route and the resource the key was used on.
    request: Mapped[str] = mapped_column(Text)
    # sha256 of the request's query and body, to refuse the key on another request.
    fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int]
    response: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(index=True)
    __table_args__ = (Index("uq_idempotency_keys_caller_key", "caller", "key", unique=True),)
