"""digits_backdoor: the 8×8 digits with a planted backdoor (COAR §5.4, scaled down).

A ``patch`` × ``patch`` square of value ``patch_value`` in the bottom-right corner is the
trigger. In ``train``, a ``trigger_fraction`` of the images of other classes get the trigger and
the label ``target_class``. ``fit`` and ``eval`` are *paired*: ``P`` clean images of classes other
than the target, then the same ``P`` images with the trigger (labels: their true digits), so
example ``i`` and ``P + i`` are a pair. Records carry ``triggered`` and ``pair``; the concept
``triggered`` marks the second half.
"""

from __future__ import annotations

import numpy as np
import torch

from npeff.errors import NpeffUserError
from npeff.tasks.base import NpeffTask, SplitData, TaskInfo, split_indices


def add_trigger(images: np.ndarray, patch: int, value: float) -> np.ndarray:
    """Copy of ``images [n, H, W]`` with the bottom-right ``patch×patch`` square set to ``value``."""
    out = images.copy()
    out[:, -patch:, -patch:] = value
    return out


class DigitsBackdoorTask(NpeffTask):
    name = "digits_backdoor"

    def __init__(
        self,
        n_fit: int = 300,
        n_eval: int = 300,
        trigger_fraction: float = 0.1,
        target_class: int = 0,
        patch: int = 2,
        patch_value: float = 1.0,
        seed: int = 0,
        batch_size: int | None = 64,
    ):
        super().__init__(seed=seed, batch_size=batch_size)
        if not 0.0 < float(trigger_fraction) < 1.0:
            raise NpeffUserError(f"trigger_fraction must be in (0, 1), got {trigger_fraction}")
        if not 0 <= int(target_class) < 10:
            raise NpeffUserError(f"target_class must be a digit 0-9, got {target_class}")
        if not 1 <= int(patch) <= 4:
            raise NpeffUserError(f"patch must be 1-4 pixels wide, got {patch}")
        self.n_fit, self.n_eval = int(n_fit), int(n_eval)
        self.trigger_fraction = float(trigger_fraction)
        self.target_class, self.patch, self.patch_value = (
            int(target_class),
            int(patch),
            float(patch_value),
        )

    def _paired(self, images, labels, rows) -> SplitData:
        rows = rows[labels[rows] != self.target_class]
        clean = images[rows]
        trig = add_trigger(clean, self.patch, self.patch_value)
        x = np.concatenate([clean, trig])
        y = np.concatenate([labels[rows], labels[rows]])
        p = len(rows)
        records = [
            {
                "image": x[i],
                "label": int(y[i]),
                "index": int(rows[i % p]),
                "pair": i % p,
                "triggered": i >= p,
            }
            for i in range(2 * p)
        ]
        concepts = np.zeros((2 * p, 1), dtype=bool)
        concepts[p:, 0] = True
        tensors = {"x": torch.from_numpy(x).unsqueeze(1), "labels": torch.from_numpy(y)}
        return SplitData(tensors, records, concepts)

    def _build(self) -> tuple[TaskInfo, dict[str, SplitData]]:
        from sklearn.datasets import load_digits

        data = load_digits()
        images = (data.images / 16.0).astype(np.float32)
        labels = data.target.astype(np.int64)
        n = len(labels)
        n_train = n - self.n_fit - self.n_eval
        if n_train <= 0:
            raise NpeffUserError(f"digits has {n} images; n_fit + n_eval leaves none to train on")
        idx = split_indices(
            n, {"train": n_train, "fit": self.n_fit, "eval": self.n_eval}, self.seed
        )
        rng = np.random.default_rng(self.seed + 1)
        tr = idx["train"]
        x = images[tr].copy()
        y = labels[tr].copy()
        candidates = np.flatnonzero(y != self.target_class)
        poison = rng.choice(
            candidates, size=int(round(self.trigger_fraction * len(tr))), replace=False
        )
        x[poison] = add_trigger(x[poison], self.patch, self.patch_value)
        y[poison] = self.target_class
        poisoned = np.zeros(len(tr), dtype=bool)
        poisoned[poison] = True
        train = SplitData(
            {"x": torch.from_numpy(x).unsqueeze(1), "labels": torch.from_numpy(y)},
            [
                {
                    "image": x[i],
                    "label": int(y[i]),
                    "index": int(tr[i]),
                    "triggered": bool(poisoned[i]),
                }
                for i in range(len(tr))
            ],
            poisoned[:, None],
        )
        splits = {
            "train": train,
            "fit": self._paired(images, labels, idx["fit"]),
            "eval": self._paired(images, labels, idx["eval"]),
        }
        info = TaskInfo(
            num_classes=10,
            label_names=[str(d) for d in range(10)],
            concept_names=["triggered"],
            hints={"in_channels": 1, "image_size": 8, "in_features": 64},
        )
        return info, splits
