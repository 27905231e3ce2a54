"""Data-parallel RankNet training on torch.distributed (gloo, CPU).

Every rank holds the whole model and the same Adam state. Each global batch of `batch_size`
rows (the task's 1024) is cut into `world` contiguous shards, one per rank, so every row is
still used exactly once per epoch and the step is the single-process step:

    grad = sum over ranks of (rows_r / rows) * mean-loss gradient of shard r

Each rank scales its gradients by its share and one `all_reduce(SUM)` over a single flat
buffer (every parameter's `.grad` is a view into it) adds them up: one collective per step,
not one per tensor. Adam then makes the same update on every rank. Rank 0 alone writes
checkpoints, metrics and the model; a resumed run loads the same checkpoint on every rank.

Ranks read the same chunks (same shuffle seed) and each keeps its shard of every batch: the
input pipeline is not divided, only the step. `mlsys train ranknet --nproc N` starts N ranks
on this machine; across machines `torchrun` sets RANK, WORLD_SIZE and MASTER_ADDR, which
`from_env` reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def shard(start: int, stop: int, ranks: Ranks) -> tuple[int, int]:
    """This rank's contiguous part of the rows [start, stop), sizes differing by at most 1."""
    n = stop - start
    base, extra = divmod(n, ranks.world)
    first = start + ranks.rank * base + min(ranks.rank, extra)
    return first, first + base + (1 if ranks.rank < extra else 0)


class GradientSync:
    """Every parameter's `.grad` as a view into one flat buffer, all-reduced once per step."""

    def __init__(self, params: Iterable[torch.Tensor]) -> None:
        params = list(params)
        self.flat = torch.zeros(sum(p.numel() for p in params))
        offset = 0
        for p in params:
            p.grad = self.flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()

    def reduce(self, share: float) -> None:
        """Weight this rank's gradients by its share of the batch's rows and sum over ranks."""
        self.flat.mul_(share)
        dist.all_reduce(self.flat, op=dist.ReduceOp.SUM)


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Rank 0's parameters everywhere (they already agree when seeded alike; this makes sure)."""
    with torch.no_grad():
        for p in module.parameters():
            dist.broadcast(p, src=0)


def all_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(x) for x in t]


def from_env() -> Ranks:
    """The ranks `torchrun` describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT); one process when
    not launched by it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return Ranks(dist.get_rank(), world)


def launch(nproc: int, target: Callable[..., Any], *args: Any) -> None:
    """Run `target(ranks, *args)` in `nproc` local processes joined by gloo over TCP."""
    from torch.multiprocessing.spawn import spawn

    from mlsys.platform.redis_server import free_port

    address = f"tcp://127.0.0.1:{free_port()}"
    spawn(_rank_main, args=(nproc, address, target, args), nprocs=nproc, join=True)  # type: ignore[no-untyped-call]


def _rank_main(
    rank: int, world: int, address: str, target: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world)
    try:
        target(Ranks(rank, world), *args)
        # Rank 0 still writes and evaluates after the last step. A rank that tore down its
        # connections meanwhile made gloo abort the process ("terminate called without an
        # active exception", seen once in 8 runs): all ranks leave together.
        dist.barrier()
    finally:
        dist.destroy_process_group()
