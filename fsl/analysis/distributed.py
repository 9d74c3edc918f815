"""Sharding and gathering for analyses that run under DDP (plain torch.distributed)."""
from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(index: torch.Tensor) -> torch.Tensor:
    """This rank's share of ``index``: every ``world_size``-th entry starting at ``rank``."""
    rank, size = world()
    return index[rank::size]


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor of varying first dimension from every rank (on every rank), rank order."""
    rank, size = world()
    if size == 1:
        return t
    backend_device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    local = t.to(backend_device).contiguous()
    n = torch.tensor([local.shape[0]], device=backend_device)
    sizes = [torch.zeros_like(n) for _ in range(size)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    pad = max(sizes) - local.shape[0]
    if pad:
        local = torch.cat([local, local.new_zeros((pad, *local.shape[1:]))])
    out = [torch.empty_like(local) for _ in range(size)]
    dist.all_gather(out, local)
    return torch.cat([o[:s] for o, s in zip(out, sizes)]).to(t.device)


def unshard(parts: torch.Tensor, index_parts: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Reorder gathered rows so that row i belongs to ``index[i]`` (``index_parts`` = gathered indices)."""
    order = torch.full((int(index.max()) + 1 if len(index) else 0,), -1, dtype=torch.long)
    order[index_parts] = torch.arange(len(index_parts))
    if bool((order[index] < 0).any()):
        raise RuntimeError("unshard: some rows came back from no rank (the shards do not cover the index)")
    return parts[order[index]]


def sharded(fn, n: int) -> dict[str, torch.Tensor]:
    """Run ``fn(rows) -> {name: tensor with one row per entry of rows}`` on this rank's share of
    ``range(n)``, gather every output from all ranks and return them in row order (every rank gets
    all rows; outside DDP: ``fn(arange(n))``)."""
    index = torch.arange(n)
    mine = shard(index)
    out = fn(mine)
    got = gather_cat(mine)
    return {k: unshard(gather_cat(v.cpu()), got, index) for k, v in out.items()}
