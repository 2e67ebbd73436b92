"""How a backend turns a `LaunchRequest` (the neutral `Workload`) into the node
agent's `TaskSpec`: the task's directory under the node's runs directory, paths
resolved under the task's private root (absolute recipe paths like
`/home/jovyan/workspace` go under it, relative ones under the working directory),
and the line for the run's events saying how the workload runs there.
"""

from __future__ import annotations

from pathlib import Path

from flotilla.compute import paths
from flotilla.compute.base import LaunchRequest, Workload
from flotilla.runtime.containers import unavailable_reason
from flotilla.runtime.taskspec import GitClone, SecretFile, TaskSpec


def build_task_spec(request: LaunchRequest, runs_dir: str, base_env: dict[str, str]) -> TaskSpec:
    """The node's launch description for `request`: its directory under `runs_dir`
    (on the node that runs it), and `base_env` (PATH, HOME…) under the request's
    environment. HOME empty: the task's root."""
    work = request.workload
    task_dir = paths.task_dir(
        runs_dir, request.task.run_id, request.task.attempt, request.task.rank
    )
    root = str(Path(task_dir) / "root")
    workdir = paths.working_directory(root, work.working_directory)
    env = {**base_env, **request.env}
    env["HOME"] = env.get("HOME") or root
    checkpoint = [request.checkpoint_dir] if request.checkpoint_dir else []
    clones = [
        GitClone(
            url=checkout.url,
            dest=paths.resolve(root, workdir, checkout.path or paths.repo_name(checkout.url)),
            reference=checkout.reference,
            reference_type=checkout.reference_type,
        )
        for checkout in work.checkouts
    ]
    files = [
        SecretFile(paths.resolve(root, workdir, location), content)
        for location, content in request.secret_files
    ]
    return TaskSpec(
        task_id=request.task.task_id,
        task_dir=task_dir,
        workdir=workdir,
        env=env,
        argv=work.argv,
        shell=work.shell,
        start_script=work.start_script,
        git=clones,
        files=files,
        grace_seconds=request.grace_seconds,
        process_env=request.process_env,
        run_as=request.run_as,
        limits=request.limits,
        hide=list(request.hide),
        # Under the hidden data dir, and written as the task's user; bound into an image.
        keep=checkpoint if request.run_as or work.image else [],
        image=work.image,
    )


def describe_workload(workload: Workload, where: str) -> str:
    """ "runs as host processes on HOST (…)" or "runs in image X (podman) on HOST"."""
    parts, how = list(workload.unsupported), "as host processes"
    if workload.image:
        # The agent inherits this process's user and PATH: it finds the same runtime.
        if missing := unavailable_reason():
            image = workload.image
            parts.append(f"image {image} is not used: no container runtime ({missing})")
        else:
            how = f"in image {workload.image} (podman)"
    detail = f" ({'; '.join(parts)})" if parts else ""
    return f"runs {how} on {where}{detail}"
