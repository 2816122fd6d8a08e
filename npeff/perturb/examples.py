"""The evaluation examples held in memory, and batched logits over any subset of them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from npeff.errors import NpeffUserError

ForwardFn = Callable[[nn.Module, dict], torch.Tensor]


def default_forward_logits(model: nn.Module, batch: dict) -> torch.Tensor:
    """The forward contract: ``labels`` are dropped, every other key is a model kwarg."""
    from npeff.models import forward_logits

    return forward_logits(model, batch)


def _batch_size_of(batch: dict) -> int:
    if "labels" not in batch:
        raise KeyError("a batch must hold the labels under the key 'labels'")
    return int(len(batch["labels"]))


def _take(batch: dict, rows: np.ndarray, size: int) -> dict:
    """Rows ``rows`` of every per-example entry of ``batch`` (tensors/lists with ``size`` rows)."""
    out = {}
    idx = torch.as_tensor(rows, dtype=torch.long)
    for k, v in batch.items():
        if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == size:
            out[k] = v.index_select(0, idx.to(v.device))
        elif isinstance(v, list | tuple) and len(v) == size:
            out[k] = [v[i] for i in rows]
        else:
            out[k] = v
    return out


def _signature(batch: dict) -> tuple:
    """What must agree for two pieces to be concatenated into one batch."""
    sig = []
    for k in sorted(batch):
        v = batch[k]
        if torch.is_tensor(v):
            sig.append((k, tuple(v.shape[1:]), v.dtype))
        else:
            sig.append((k, type(v).__name__))
    return tuple(sig)


def _concat(pieces: list[dict]) -> dict:
    if len(pieces) == 1:
        return pieces[0]
    out = {}
    for k, v in pieces[0].items():
        if torch.is_tensor(v) and v.ndim >= 1:
            out[k] = torch.cat([p[k] for p in pieces])
        elif isinstance(v, list | tuple):
            out[k] = [x for p in pieces for x in p[k]]
        else:
            out[k] = v
    return out


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


class ExampleCache:
    """The first ``n_examples`` examples of a DataLoader, kept as its (CPU) batches.

    The order is the loader's order, which must be the order of the PEF / coefficient file rows.
    :meth:`batches` yields batches of any sorted subset, re-grouping rows from neighbouring
    batches when their tensors' trailing shapes agree (fixed-size inputs), so a subset costs
    about ``ceil(len(subset) / batch_size)`` forward passes.
    """

    def __init__(self, loader: Iterable[dict], n_examples: int | None = None):
        self._batches: list[dict] = []
        self._starts: list[int] = []
        n = 0
        for batch in loader:
            if n_examples is not None and n >= n_examples:
                break
            b = _batch_size_of(batch)
            if n_examples is not None and n + b > n_examples:
                batch = _take(batch, np.arange(n_examples - n), b)
                b = n_examples - n
            batch = {k: (v.detach().cpu() if torch.is_tensor(v) else v) for k, v in batch.items()}
            self._batches.append(batch)
            self._starts.append(n)
            n += b
        if n_examples is not None and n < n_examples:
            raise NpeffUserError(
                f"the data split has {n} examples but the coefficients have {n_examples} rows; "
                "evaluate on the split (and example count) the PEFs were computed on"
            )
        self.n = n
        self._ends = np.asarray(self._starts[1:] + [n], dtype=np.int64)
        self.labels = (
            torch.cat([torch.as_tensor(b["labels"]).reshape(-1) for b in self._batches]).long()
            if self._batches
            else torch.zeros(0, dtype=torch.long)
        )

    def subset(self, positions: np.ndarray, batch_size: int = 64) -> ExampleCache:
        """A cache of the examples at ``positions`` (ascending, unique), renumbered 0..k−1.

        For PEF files that hold a subset of a split (``example_indices``, e.g. after filtering).
        """
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and np.any(np.diff(positions) <= 0):
            raise NpeffUserError(
                "the PEF file's example_indices are not ascending and unique; cannot match them "
                "to the data split"
            )
        return ExampleCache(list(self.batches(positions, batch_size)))

    def batches(self, indices: np.ndarray | None = None, batch_size: int = 64) -> Iterator[dict]:
        """Batches (dicts, CPU) holding the examples ``indices`` (ascending, unique) in order."""
        if indices is None:
            yield from self._batches
            return
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (
            np.any(np.diff(indices) <= 0) or indices[0] < 0 or indices[-1] >= self.n
        ):
            raise NpeffUserError("example indices must be ascending, unique and within range")
        which = np.searchsorted(self._ends, indices, side="right")
        pending: list[dict] = []
        pending_size, pending_sig = 0, None
        for bi in np.unique(which):
            rows = indices[which == bi] - self._starts[bi]
            batch = self._batches[bi]
            start = 0
            while start < len(rows):
                take = rows[start : start + batch_size]
                start += len(take)
                piece = _take(batch, take, _batch_size_of(batch))
                sig = _signature(piece)
                if pending and (sig != pending_sig or pending_size + len(take) > batch_size):
                    yield _concat(pending)
                    pending, pending_size = [], 0
                pending.append(piece)
                pending_size += len(take)
                pending_sig = sig
        if pending:
            yield _concat(pending)

    @torch.no_grad()
    def logits(
        self,
        model: nn.Module,
        indices: np.ndarray | None = None,
        batch_size: int = 64,
        forward: ForwardFn | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Logits [len(indices) or n, C] (float32, CPU) of ``model`` on the chosen examples."""
        forward = forward or default_forward_logits
        device = next(model.parameters()).device
        out = []
        it = self.batches(indices, batch_size)
        if progress:
            it = tqdm(it, desc="logits", leave=False)
        for batch in it:
            out.append(forward(model, to_device(batch, device)).float().cpu())
        if not out:
            return torch.zeros(0, 0)
        return torch.cat(out)
