"""The environment contract of a run's processes: rank, world size, leader and peer
addresses under Flotilla's, Saturn's and torch.distributed's names, and the GPUs.

`task_environment` is what every process of a task shares; `process_environments`
is what differs between the task's `nprocs` processes (their indices and their own
share of the task's GPUs). The launch service computes both, the supervisor applies
each per-process dict on top of the shared one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskIdentity:
    run_id: str
    job_name: str
    rank: int
    scale: int
    nprocs: int
    leader_address: str
    leader_port: int
    peers: tuple[str, ...]  # addresses of every task, by rank
    gpus: tuple[int, ...]
    checkpoint_dir: str | None = None
    node: str = ""  # the node the task runs on


def task_environment(identity: TaskIdentity) -> dict[str, str]:
    """Variables added to the recipe's own environment for one task."""
    world = identity.scale * identity.nprocs
    peers = ",".join(identity.peers)
    env = {
        "FLOTILLA_RUN_ID": identity.run_id,
        "FLOTILLA_JOB_NAME": identity.job_name,
        "FLOTILLA_RANK": str(identity.rank),
        "FLOTILLA_SCALE": str(identity.scale),
        "FLOTILLA_NPROCS": str(identity.nprocs),
        "FLOTILLA_WORLD_SIZE": str(world),
        "FLOTILLA_LEADER": identity.leader_address,
        "FLOTILLA_LEADER_PORT": str(identity.leader_port),
        "FLOTILLA_PEERS": peers,
        "FLOTILLA_NODE": identity.node,
        # Saturn Cloud's names, so existing job scripts keep working.
        "SATURN_JOB_RUN": identity.run_id,
        "SATURN_JOB_RANK": str(identity.rank),
        "SATURN_JOB_SCALE": str(identity.scale),
        "SATURN_JOB_LEADER": identity.leader_address,
        "SATURN_JOB_PEERS": peers,
        # torch.distributed's names, so `torchrun` and env:// init work unmodified.
        "MASTER_ADDR": identity.leader_address,
        "MASTER_PORT": str(identity.leader_port),
        "NODE_RANK": str(identity.rank),
        "NNODES": str(identity.scale),
        "WORLD_SIZE": str(world),
        # Empty means "no GPUs": a run that asked for none must not grab any.
        "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in identity.gpus),
    }
    if identity.checkpoint_dir:
        env["FLOTILLA_CHECKPOINT_DIR"] = identity.checkpoint_dir
    return env


def process_environments(identity: TaskIdentity) -> list[dict[str, str]]:
    """Variables that differ between the task's processes, one dict per local index.

    Process i of task `rank` is global process `rank * nprocs + i` (torch's RANK),
    and gets the i-th of `nprocs` contiguous slices of the task's GPUs, so no two
    processes share a GPU. With nprocs == 1 the one process is the task: RANK is the
    task's rank and it sees all of the task's GPUs."""
    nprocs = max(identity.nprocs, 1)
    gpus = identity.gpus
    envs = []
    for local in range(nprocs):
        # Proportional bounds: equal slices when nprocs divides the GPU count (the
        # recipe validation asks for that); never an error at launch time otherwise.
        share = gpus[local * len(gpus) // nprocs : (local + 1) * len(gpus) // nprocs]
        index = str(identity.rank * nprocs + local)
        envs.append(
            {
                "FLOTILLA_LOCAL_RANK": str(local),
                "FLOTILLA_PROCESS_INDEX": index,
                # Saturn's name for the index within the task.
                "SATURN_RUN_LOCAL_RANK": str(local),
                # torch.distributed's names, as torchrun would set them.
                "LOCAL_RANK": str(local),
                "RANK": index,
                "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in share),
            }
        )
    return envs
