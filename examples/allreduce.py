"""A two-rank all-reduce, the smallest real distributed job.

Reads only the torch.distributed environment Flotilla gives every process
(MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE) and sums each rank's `rank + 1`:
with CPU torch it is a gloo all-reduce; without torch, a plain TCP rendezvous at
the leader address does the same sum, so the job runs anywhere.
"""

from __future__ import annotations

import os
import socket
import time


def torch_allreduce() -> tuple[float, str]:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")  # env:// rendezvous
    value = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(value)
    dist.destroy_process_group()
    return float(value.item()), "torch.distributed gloo"


def tcp_allreduce(rank: int, world: int) -> tuple[float, str]:
    leader = (os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))
    mine = float(rank + 1)
    if rank == 0:
        with socket.create_server(leader) as server:
            peers = [server.accept()[0] for _ in range(world - 1)]
            total = mine + sum(float(p.recv(64).decode()) for p in peers)
            for peer in peers:
                peer.sendall(str(total).encode())
                peer.close()
        return total, "tcp rendezvous"
    deadline = time.monotonic() + 60
    while True:  # the leader may not listen yet
        try:
            conn = socket.create_connection(leader, timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    with conn:
        conn.sendall(str(mine).encode())
        return float(conn.recv(64).decode()), "tcp rendezvous"


def main() -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    try:
        total, how = torch_allreduce()
    except ImportError:
        total, how = tcp_allreduce(rank, world)
    print(f"rank {rank}/{world} on {os.environ.get('FLOTILLA_NODE', '?')}: sum {total} via {how}")


if __name__ == "__main__":
    main()
