"""Where a task's files go on its node, under the node's runs directory.

Tasks run without a container by default, so each gets a private root directory;
absolute paths written for a container (`/home/jovyan/workspace`) are placed under
it, and relative paths are taken from the working directory. Pure path arithmetic,
shared by every backend that drives a node agent: `launch.py` (the task's spec), the
local backend, and the remote nodes' connection and log mirror (`agents/`). Here,
beside `launch.py`, so that no backend imports another's package.
"""

from __future__ import annotations

from pathlib import PurePosixPath

DEFAULT_WORKDIR = "/workspace"


def task_dir(runs_dir: str, run_id: str, attempt: int, rank: int) -> str:
    return str(PurePosixPath(runs_dir) / run_id / f"attempt-{attempt}" / f"rank-{rank}")


def in_root(root: str, path: str) -> str:
    """`path` inside the task root; `..` was rejected by recipe validation."""
    return str(PurePosixPath(root) / path.lstrip("/"))


def working_directory(root: str, configured: str | None) -> str:
    return in_root(root, configured or DEFAULT_WORKDIR)


def resolve(root: str, workdir: str, path: str) -> str:
    """An absolute recipe path goes under the root; a relative one under workdir."""
    if path.startswith("/"):
        return in_root(root, path)
    return str(PurePosixPath(workdir) / path)


def repo_name(url: str) -> str:
    """The directory git would clone `url` into: `org/repo.git` -> `repo`."""
    tail = url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return tail.removesuffix(".git") or "repo"
