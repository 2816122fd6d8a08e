"""The task base class: a LightningDataModule with three fixed, seeded splits.

Splits: ``train`` (fits the classifier), ``fit`` (examples whose Fishers are decomposed) and
``eval`` (held-out examples). A subclass implements :meth:`NpeffTask._build`, which returns one
:class:`SplitData` per split; everything else (data loaders, display records, concept labels) is
shared here.

Batches are dicts: ``labels`` holds the labels ``[B]`` and every other key is a keyword argument of
the model's ``forward`` (design.md §3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from npeff.errors import NpeffUserError

SPLITS = ("train", "fit", "eval")


@dataclass
class SplitData:
    """One split held in memory.

    ``tensors`` maps batch keys to tensors with a leading example axis ``[n, ...]`` and must
    include ``labels`` (int64 ``[n]``). ``records`` holds one display dict per example (same
    order). ``concepts`` is a bool array ``[n, n_concepts]`` or None.
    """

    tensors: dict[str, torch.Tensor]
    records: list[dict[str, Any]]
    concepts: np.ndarray | None = None

    def __post_init__(self) -> None:
        if "labels" not in self.tensors:
            raise NpeffUserError("a split needs a 'labels' tensor")
        n = len(self.tensors["labels"])
        for key, t in self.tensors.items():
            if len(t) != n:
                raise NpeffUserError(f"tensor {key!r} has {len(t)} rows, labels have {n}")
        if len(self.records) != n:
            raise NpeffUserError(f"{len(self.records)} records for {n} examples")
        if self.concepts is not None and self.concepts.shape[0] != n:
            raise NpeffUserError(f"concepts have {self.concepts.shape[0]} rows for {n} examples")

    def __len__(self) -> int:
        return len(self.tensors["labels"])


class DictDataset(Dataset):
    """Indexes a dict of equally long tensors; item ``i`` is ``{key: tensor[i]}``."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors
        self.n = len(tensors["labels"])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}

    def __getitems__(self, idx: list[int]) -> list[dict[str, torch.Tensor]]:
        # Batched indexing: the default collate then stacks these per-example dicts.
        index = torch.as_tensor(idx, dtype=torch.long)
        batch = {k: v[index] for k, v in self.tensors.items()}
        return [{k: v[j] for k, v in batch.items()} for j in range(len(idx))]


@dataclass
class TaskInfo:
    """Static facts about a task that model builders may use (see ``model_hints``)."""

    num_classes: int
    label_names: list[str]
    concept_names: list[str] = field(default_factory=list)
    hints: dict[str, Any] = field(default_factory=dict)


class NpeffTask(L.LightningDataModule):
    """Base class of all npeff tasks.

    Args:
        seed: seeds the split assignment, data generation and the train-loader shuffle.
        batch_size: default batch size of ``train_dataloader``/``val_dataloader``; None = full batch.
    """

    name: str = "task"

    def __init__(self, *, seed: int = 0, batch_size: int | None = 64):
        super().__init__()
        self.seed = int(seed)
        self.batch_size = batch_size
        self._splits: dict[str, SplitData] | None = None
        self._info: TaskInfo | None = None

    # -- to implement -----------------------------------------------------------------------
    def _build(self) -> tuple[TaskInfo, dict[str, SplitData]]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- setup ------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Build the splits (once; later calls are no-ops)."""
        if self._splits is not None:
            return
        info, splits = self._build()
        missing = [s for s in SPLITS if s not in splits]
        if missing:
            raise RuntimeError(f"task {self.name!r} did not build splits {missing}")
        self._info, self._splits = info, splits

    def _split(self, split: str) -> SplitData:
        if split not in SPLITS:
            raise NpeffUserError(f"unknown split {split!r}; available: {list(SPLITS)}")
        self.setup()
        assert self._splits is not None
        return self._splits[split]

    @property
    def info(self) -> TaskInfo:
        self.setup()
        assert self._info is not None
        return self._info

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def label_names(self) -> list[str]:
        return list(self.info.label_names)

    @property
    def concept_names(self) -> list[str]:
        return list(self.info.concept_names)

    def model_hints(self) -> dict[str, Any]:
        """Facts a model builder may need: ``num_classes`` plus task-specific ones
        (``vocab_size``, ``max_length``, ``in_features``, ``in_channels``, ``group_order``...)."""
        return {"num_classes": self.num_classes, **self.info.hints}

    # -- data access ------------------------------------------------------------------------
    def num_examples(self, split: str) -> int:
        return len(self._split(split))

    def tensors(self, split: str) -> dict[str, torch.Tensor]:
        """The whole split as one batch dict ``{key: [n, ...]}`` (the same tensors the loader uses)."""
        return dict(self._split(split).tensors)

    def examples(self, split: str) -> list[dict[str, Any]]:
        """Display records, in the order of ``dataloader(split)`` (without shuffling)."""
        return list(self._split(split).records)

    def concepts(self, split: str) -> np.ndarray | None:
        """Known concept labels, bool ``[n, len(concept_names)]``, or None when the task has none."""
        c = self._split(split).concepts
        return None if c is None else c.copy()

    def labels(self, split: str) -> np.ndarray:
        return self._split(split).tensors["labels"].numpy().copy()

    def dataloader(
        self,
        split: str,
        batch_size: int | None = None,
        shuffle: bool = False,
        *,
        seed: int | None = None,
        drop_last: bool = False,
    ) -> DataLoader:
        """A loader of dict batches over ``split``.

        ``batch_size=None`` gives one full batch. Without ``shuffle`` the order is the split's
        fixed order (the order of :meth:`examples`); with it, a generator seeded by ``seed``
        (default: the task seed) makes the order reproducible.
        """
        data = self._split(split)
        n = len(data)
        bs = n if batch_size is None else max(1, min(int(batch_size), n))
        generator = None
        if shuffle:
            generator = torch.Generator().manual_seed(self.seed if seed is None else int(seed))
        return DataLoader(
            DictDataset(data.tensors),
            batch_size=bs,
            shuffle=shuffle,
            generator=generator,
            drop_last=drop_last,
            num_workers=0,
        )

    # Lightning hooks ----------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("eval", self.batch_size or None)

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("eval", self.batch_size or None)


def split_indices(n: int, sizes: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Disjoint random index sets of the given sizes from ``range(n)`` (seeded, sorted)."""
    total = sum(sizes.values())
    if total > n:
        raise NpeffUserError(f"requested {total} examples ({sizes}) but only {n} are available")
    perm = np.random.default_rng(seed).permutation(n)
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = np.sort(perm[start : start + size])
        start += size
    return out
