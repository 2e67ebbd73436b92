"""The job recipe spec: Saturn Cloud's documented job fields plus Flotilla's
`resources` and `max_duration`. Unknown fields are rejected (see `envelope.py`)."""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from flotilla.core.cron import validate_schedule
from flotilla.core.units import GpuRequest, parse_duration, parse_gpu, parse_memory
from flotilla.recipes.commands import package_lists, sequence_script

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ReferenceType(StrEnum):
    BRANCH = "branch"
    TAG = "tag"
    COMMIT = "commit"


class OnRestart(StrEnum):
    RECLONE = "reclone"
    PRESERVE = "preserve changes"


class GitRepository(Strict):
    url: str = Field(min_length=1)
    reference: str | None = None
    reference_type: ReferenceType = ReferenceType.BRANCH
    path: str | None = None
    on_restart: OnRestart = OnRestart.RECLONE
    public: bool = False

    @field_validator("url")
    @classmethod
    def _no_option_injection(cls, value: str) -> str:
        # A URL starting with "-" would be read by git as an option (e.g. --upload-pack).
        if value.startswith("-"):
            raise ValueError("must not start with '-'")
        return value

    @field_validator("reference")
    @classmethod
    def _reference_is_not_an_option(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("-") or not value.strip()):
            raise ValueError("must be a branch, tag or commit name")
        return value

    @field_validator("path")
    @classmethod
    def _path_stays_inside(cls, value: str | None) -> str | None:
        if value is not None and ".." in value.split("/"):
            raise ValueError("must not contain '..'")
        return value


class SecretAttachment(StrEnum):
    ENV = "environment_variable"
    FILE = "file"


class SecretRef(Strict):
    """A named secret attached to the run as an environment variable or a file."""

    name: str = Field(min_length=1, description="name of the secret in the secret store")
    location: str = Field(min_length=1, description="env var name, or file path")
    attachment_type: SecretAttachment = SecretAttachment.ENV
    owner: str | None = None
    description: str = Field("", max_length=2048)

    @model_validator(mode="after")
    def _location_fits_attachment(self) -> SecretRef:
        if self.attachment_type == SecretAttachment.ENV and not _ENV_NAME.match(self.location):
            raise ValueError("location must be an environment variable name")
        if self.attachment_type == SecretAttachment.FILE and ".." in self.location.split("/"):
            raise ValueError("location must not contain '..'")
        return self


class CommandList(StrEnum):
    """What a list `command` means (see `recipes/commands.py`)."""

    ARGV = "argv"  # Flotilla's: one program and its arguments, no shell
    SEQUENCE = "sequence"  # Saturn's: shell commands run one after another


class ConcurrencyPolicy(StrEnum):
    ALLOW = "Allow"
    FORBID = "Forbid"
    REPLACE = "Replace"


class Resources(Strict):
    """What each task (node share) of the run needs."""

    gpu: str | int | None = Field(None, description="GPUs per task, e.g. H100:8 or 2")
    cpu: float | None = Field(None, gt=0, description="CPU cores per task")
    memory: str | int | None = Field(None, description="memory per task, e.g. 64Gi")

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            parse_gpu(value)
        return value

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            parse_memory(value)
        return value

    def gpu_request(self) -> GpuRequest | None:
        request = parse_gpu(self.gpu) if self.gpu is not None else None
        return request if request and request.count > 0 else None


EnvValue = Annotated[str, Field()]


class Workload(Strict):
    """What every kind of work states the same way (a job, a deployment): Saturn's
    common fields, the resources it needs and the project it is charged to."""

    name: str = Field(pattern=NAME_PATTERN, description="lower-case letters, digits and '-'")
    owner: str | None = None
    description: str = Field("", max_length=2048)
    tags: dict[str, str] | None = None
    image: str | dict[str, Any] | None = None
    instance_type: str | None = None
    command: str | list[str]
    command_list: CommandList = Field(
        CommandList.ARGV,
        description="a list command: `argv` (program and arguments) or `sequence` "
        "(Saturn's: commands run in order; what saturn-client's lists mean)",
    )
    working_directory: str | None = None
    environment_variables: dict[str, EnvValue] = Field(default_factory=dict)
    git_repositories: list[GitRepository] = Field(default_factory=list)
    secrets: list[SecretRef] = Field(default_factory=list)
    start_script: str | None = None
    use_spot_instance: bool = False
    start_ssh: bool = Field(
        False, description="allow SSH into its running tasks through the server's SSH gateway"
    )
    project: str = Field(
        "default", pattern=NAME_PATTERN, description="the project charged; quotas apply to it"
    )
    resources: Resources = Field(default_factory=lambda: Resources())
    extra_packages: dict[str, Any] | None = Field(
        None,
        description="Saturn's apt, conda and pip packages ({pip: 'numpy pandas'}), "
        "installed before the start script",
    )
    # Saturn fields kept for compatibility of existing recipes; honoured by the
    # backends that have the concept (a container backend), recorded by the others.
    token_scope: str | None = None
    shared_folders: list[dict[str, Any]] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _saturn_list_command(cls, data: Any) -> Any:
        # saturn-client sends list commands JSON-encoded as a string, and means a
        # sequence of commands by them; a stated `command_list` wins.
        if not isinstance(data, dict):
            return data
        value = data.get("command")
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                decoded = json.loads(value)
            except ValueError:
                return data
            if isinstance(decoded, list) and all(isinstance(x, str) for x in decoded):
                return {"command_list": CommandList.SEQUENCE.value, **data, "command": decoded}
        return data

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # `command_list: argv` is left out: specs stored before it existed stay equal
        # to what they parse into, so re-applying one is no new version.
        out: dict[str, Any] = handler(self)
        if out.get("command_list") == CommandList.ARGV:
            out.pop("command_list")
        return out

    @field_validator("extra_packages")
    @classmethod
    def _packages(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            package_lists(value)  # raises ValueError naming the bad key
        return value

    @field_validator("command")
    @classmethod
    def _command_not_empty(cls, value: str | list[str]) -> str | list[str]:
        if (isinstance(value, str) and not value.strip()) or (
            isinstance(value, list) and not value
        ):
            raise ValueError("must not be empty")
        return value

    @field_validator("working_directory")
    @classmethod
    def _workdir_stays_inside(cls, value: str | None) -> str | None:
        if value is not None and ".." in value.split("/"):
            raise ValueError("must not contain '..'")
        return value

    @field_validator("environment_variables", mode="before")
    @classmethod
    def _env(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str) or not _ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            # YAML turns `DEBUG: 1` into an int; an environment only holds strings.
            if isinstance(item, bool):
                item = "true" if item else "false"
            out[key] = str(item) if isinstance(item, int | float) else item
        return out


class JobSpec(Workload):
    scale: int = Field(1, ge=1, le=10_000)
    nprocs: int = Field(1, ge=1, le=1024)
    priority: int = Field(
        0, ge=-1000, le=1000, description="higher runs first; may preempt lower priorities"
    )
    schedule: str | None = None
    concurrency_policy: ConcurrencyPolicy = ConcurrencyPolicy.ALLOW
    retries: int = Field(0, ge=0, le=100)
    max_duration: str | int | None = None
    start_dind: bool = False

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is not None:
            validate_schedule(value)
        return value

    @field_validator("max_duration")
    @classmethod
    def _max_duration(cls, value: str | int | None) -> str | int | None:
        if value is not None and parse_duration(value) <= 0:
            raise ValueError("must be positive")
        return value

    @model_validator(mode="after")
    def _nprocs_divides_gpus(self) -> JobSpec:
        gpus = self.resources.gpu_request()
        if gpus is not None and gpus.count % self.nprocs:
            # Each process gets an equal share of the task's GPUs. Raised as a
            # ValidationError with its own location, which pydantic keeps, so the
            # 422 names `spec.nprocs` rather than the whole `spec`.
            message = f"nprocs ({self.nprocs}) must divide the GPUs per task ({gpus.count})"
            error = InitErrorDetails(
                type=PydanticCustomError("value_error", message),
                loc=("nprocs",),
                input=self.nprocs,
            )
            raise ValidationError.from_exception_data(type(self).__name__, [error])
        return self

    def max_duration_seconds(self) -> float | None:
        return parse_duration(self.max_duration) if self.max_duration is not None else None

    def argv_or_shell(self) -> tuple[list[str] | None, str | None]:
        """(argv, None) for argv list commands, (None, shell text) for string
        commands and Saturn's sequences (split across the job's `scale` tasks)."""
        if isinstance(self.command, list):
            if self.command_list == CommandList.SEQUENCE:
                return None, sequence_script(self.command, self.scale)
            return list(self.command), None
        return None, self.command
