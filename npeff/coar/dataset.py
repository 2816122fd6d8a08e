"""The ablation dataset: margins of every example under m random keep-masks → attributions.h5.

Masks are committed in chunks of ``chunk_masks`` (mask order). With ``devices > 1`` (or
``num_nodes > 1``) Lightning Fabric runs one process per device; in each round rank r evaluates
the r-th chunk of the round, the margins are gathered, and rank 0 alone writes them in mask
order. Masks are a function of their index (``masks.sample_masks``), so the file is the same for
any number of processes and after any resume.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from npeff.artifacts.coar import AttributionsWriter, read_progress
from npeff.coar.ablation import AblationEngine
from npeff.coar.masks import sample_masks
from npeff.models.units import UnitMap


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="COAR ablations", unit="mask")


def run_ablations(
    model: nn.Module,
    unit_map: UnitMap,
    batches: list[Mapping],
    path: Path,
    *,
    writer_kwargs: dict,
    alpha: float,
    n_masks: int,
    seed: int,
    chunk_masks: int = 64,
    masks_per_forward: int = 32,
    method: str = "auto",
    devices: int = 1,
    num_nodes: int = 1,
    strategy: str = "ddp_spawn",
    accelerator: str = "cpu",
    progress: bool = True,
) -> int:
    """Extend ``path`` to ``n_masks`` ablations (resuming it); returns the masks now held."""
    kw = dict(
        alpha=alpha,
        n_masks=n_masks,
        seed=seed,
        chunk_masks=chunk_masks,
        masks_per_forward=masks_per_forward,
        method=method,
        progress=progress,
    )
    if devices * num_nodes > 1:
        from lightning.fabric import Fabric

        if "spawn" in strategy:
            torch.multiprocessing.set_sharing_strategy("file_system")
        fabric = Fabric(
            accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy
        )
        fabric.launch(
            _worker,
            model,
            unit_map.to_json(),  # Lightning's argument walk rejects frozen dataclasses
            batches,
            Path(path),
            writer_kwargs,
            kw,
        )
        return read_progress(path)[0]
    return _loop(None, model, unit_map, batches, Path(path), writer_kwargs, **kw)


def _worker(fabric, model, unit_map_json, batches, path, writer_kwargs, kw) -> None:
    unit_map = UnitMap.from_json(unit_map_json)
    world = fabric.world_size
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # share the cores
    dev = fabric.device
    model = model.to(dev)
    batches = [{k: v.to(dev) for k, v in b.items()} for b in batches]
    _loop(fabric, model, unit_map, batches, path, writer_kwargs, **kw)
    fabric.barrier()


def _loop(
    fabric,
    model,
    unit_map,
    batches,
    path: Path,
    writer_kwargs: dict,
    *,
    alpha,
    n_masks,
    seed,
    chunk_masks,
    masks_per_forward,
    method,
    progress,
) -> int:
    rank = 0 if fabric is None else fabric.global_rank
    world = 1 if fabric is None else fabric.world_size
    writer = AttributionsWriter(path, **writer_kwargs) if rank == 0 else None
    n0 = writer.n_written if writer is not None else 0
    if fabric is not None:
        n0 = int(fabric.broadcast(torch.tensor(n0), src=0))
    engine = AblationEngine(model, unit_map, method=method, masks_per_forward=masks_per_forward)
    n_ex = sum(int(b["labels"].shape[0]) for b in batches)
    bar = _progress(n_masks, n0, progress and rank == 0)
    try:
        for round_start in range(n0, n_masks, chunk_masks * world):
            lo = min(round_start + rank * chunk_masks, n_masks)
            hi = min(lo + chunk_masks, n_masks)
            keep = sample_masks(unit_map.n_units, alpha, seed, lo, hi)
            y = engine.margins(keep, batches) if hi > lo else torch.zeros(0, n_ex)
            if fabric is None:
                writer.append(keep.numpy(), y.cpu().numpy())
                if bar is not None:
                    bar.update(hi - lo)
                continue
            pad = torch.zeros(chunk_masks, n_ex, dtype=torch.float32, device=fabric.device)
            pad[: hi - lo] = y.float()
            gathered = fabric.all_gather(pad)  # [world, chunk, n]
            if rank == 0:
                for r in range(world):
                    rlo = min(round_start + r * chunk_masks, n_masks)
                    rhi = min(rlo + chunk_masks, n_masks)
                    if rhi > rlo:
                        k = sample_masks(unit_map.n_units, alpha, seed, rlo, rhi)
                        writer.append(k.numpy(), gathered[r, : rhi - rlo].cpu().numpy())
                        if bar is not None:
                            bar.update(rhi - rlo)
        if writer is not None:
            n_done = writer.n_written
            writer.finalize()
            return n_done
        return n_masks
    finally:
        if writer is not None:
            writer.close()
        if bar is not None:
            bar.close()
