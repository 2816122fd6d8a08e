"""Multi-process PEF computation with Lightning Fabric: contiguous shards, merged in order.

Rank r of N computes the examples [r·n/N, (r+1)·n/N) of the loader's dataset into its own shard
file (resumable like any PEF file); after a barrier rank 0 concatenates the shards in rank order
into the final file, which therefore has the same content and order as a one-process run.
Parallel HDF5 is not available, so every file has exactly one writer.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, SequentialSampler, Subset

from npeff.artifacts.atomic import atomic_path
from npeff.artifacts.pefs import (
    PefsFileError,
    PefsWriter,
    iter_pefs_chunks,
    load_dataset_fisher,
    read_pefs_header,
    read_pefs_progress,
    save_dataset_fisher,
)
from npeff.errors import NpeffUserError
from npeff.fisher.compute import compute_pefs


def shard_bounds(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """Contiguous [lo, hi) of rank ``rank``; sizes differ by at most one."""
    return (n * rank) // world_size, (n * (rank + 1)) // world_size


def shard_path(path: Path, rank: int, world_size: int) -> Path:
    return path.parent / f".{path.name}.shard{rank}-of-{world_size}.h5"


def compute_pefs_multiprocess(
    model: nn.Module,
    loader: DataLoader,
    path: str | os.PathLike,
    *,
    devices: int,
    strategy: str = "ddp_spawn",
    accelerator: str = "cpu",
    num_nodes: int = 1,
    threads_per_process: int | None = None,
    **kwargs,
) -> Path:
    """``compute_pefs`` split over ``devices`` processes (Lightning Fabric); one output file.

    ``loader`` must be a non-shuffling ``DataLoader`` (its dataset is split into contiguous
    shards). ``strategy``: "ddp_spawn" (works anywhere, also inside pytest) or "ddp" (re-launches
    the current command per rank, as Lightning does). Other arguments as in ``compute_pefs``.
    """
    from lightning.fabric import Fabric

    if not isinstance(loader, DataLoader) or not isinstance(loader.sampler, SequentialSampler):
        raise NpeffUserError(
            "multi-process PEFs need a DataLoader without shuffling (shuffle=False)"
        )
    path = Path(path)
    if path.exists():
        n_written, complete = read_pefs_progress(path)
        if complete:
            return path
        raise PefsFileError(
            f"{path} is an unfinished single-process PEF file ({n_written} examples); resume it "
            "with one process (trainer.devices=1) or delete it"
        )
    fabric = Fabric(
        accelerator=accelerator, devices=devices, strategy=strategy, num_nodes=num_nodes
    )
    fabric.launch(_worker, model, loader, path, threads_per_process, kwargs)
    return path


def _worker(fabric, model, loader, path: Path, threads: int | None, kwargs: dict) -> None:
    rank, world = fabric.global_rank, fabric.world_size
    # Each rank is its own process: share the cores instead of oversubscribing them.
    local_world = max(1, world // max(int(getattr(fabric.strategy, "num_nodes", 1) or 1), 1))
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // local_world))
    n = len(loader.dataset)
    lo, hi = shard_bounds(n, world, rank)
    dsf_mode = kwargs.get("dataset_fisher")
    shard = shard_path(path, rank, world)
    if hi > lo:
        sub = DataLoader(
            Subset(loader.dataset, range(lo, hi)),
            batch_size=loader.batch_size,
            collate_fn=loader.collate_fn,
        )
        kw = dict(kwargs)
        kw["progress"] = bool(kw.get("progress", True)) and rank == 0
        kw["dataset_fisher_path"] = _dsf_shard(shard) if dsf_mode else None
        compute_pefs(model, sub, shard, index_offset=lo, **kw)
    fabric.barrier()
    if rank == 0:
        shards = [
            shard_path(path, r, world)
            for r in range(world)
            if shard_bounds(n, world, r)[1] > shard_bounds(n, world, r)[0]
        ]
        dsf_path = kwargs.get("dataset_fisher_path") or path.parent / "dsf.h5"
        merge_pefs_shards(shards, path, dsf_mode=dsf_mode, dsf_path=dsf_path)
        for s in shards:
            s.unlink()
            if dsf_mode:
                _dsf_shard(s).unlink()
    fabric.barrier()


def _dsf_shard(shard: Path) -> Path:
    return shard.with_suffix(".dsf.h5")


def merge_pefs_shards(
    shards: list[Path], path: Path, *, dsf_mode: str | None = None, dsf_path: Path | None = None
) -> Path:
    """Concatenate complete PEF shard files in order into ``path`` (atomically, streamed)."""
    headers = [read_pefs_header(s) for s in shards]
    h0 = headers[0]
    n_total = sum(h["n"] for h in headers)
    meta = dict(h0["meta"])
    fingerprint = dict(meta.pop("fingerprint", {}) or {})
    fingerprint["n_examples"] = n_total
    meta.pop("schema_version", None)
    meta.pop("dataset_fisher_mode", None)
    n_rows = max(h["n_rows"] for h in headers)
    if h0["kind"] == "lrm" and any(h["n_rows"] != n_rows for h in headers):
        raise NpeffUserError("shards disagree on the number of class rows")
    if dsf_mode:
        total = sum(
            load_dataset_fisher(_dsf_shard(s)).astype(np.float64) * h["n"]
            for s, h in zip(shards, headers)
        )
        save_dataset_fisher(
            total / n_total,
            dsf_path,
            metadata={"mode": dsf_mode, "n_examples": n_total, "pefs": str(path)},
        )
    with atomic_path(path) as tmp:
        tmp.unlink()
        writer = PefsWriter(
            tmp,
            kind=h0["kind"],
            n_values=h0["n_values"],
            n_parameters=h0["m"],
            n_rows=n_rows,
            n_logits=h0["n_logits"],
            min_prob_class=h0["min_prob_class"],
            layout=h0["layout"],
            metadata=meta,
            fingerprint=fingerprint,
            dataset_fisher_mode=dsf_mode,
        )
        try:
            for s in shards:
                for chunk in iter_pefs_chunks(s):
                    writer.append(chunk)
            writer.finalize()
        finally:
            writer.close()
    return path
