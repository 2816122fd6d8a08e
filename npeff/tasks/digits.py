"""digits: scikit-learn's bundled 8×8 handwritten digits (1797 images, 10 classes; offline).

Batches carry ``x`` float32 ``[B, 1, 8, 8]`` in [0, 1]. Splits are a seeded permutation:
``n_fit`` and ``n_eval`` examples, the rest ``train``. No known concepts.
"""

from __future__ import annotations

import numpy as np
import torch

from npeff.errors import NpeffUserError
from npeff.tasks.base import NpeffTask, SplitData, TaskInfo, split_indices


class DigitsTask(NpeffTask):
    name = "digits"

    def __init__(
        self, n_fit: int = 300, n_eval: int = 400, seed: int = 0, batch_size: int | None = 64
    ):
        super().__init__(seed=seed, batch_size=batch_size)
        self.n_fit, self.n_eval = int(n_fit), int(n_eval)

    def _build(self) -> tuple[TaskInfo, dict[str, SplitData]]:
        from sklearn.datasets import load_digits

        data = load_digits()
        images = (data.images / 16.0).astype(np.float32)  # [1797, 8, 8]
        labels = data.target.astype(np.int64)
        n = len(labels)
        n_train = n - self.n_fit - self.n_eval
        if n_train <= 0:
            raise NpeffUserError(
                f"digits has {n} images; n_fit + n_eval = {self.n_fit + self.n_eval} leaves none to train on"
            )
        idx = split_indices(
            n, {"train": n_train, "fit": self.n_fit, "eval": self.n_eval}, self.seed
        )
        splits = {}
        for split, rows in idx.items():
            tensors = {
                "x": torch.from_numpy(images[rows]).unsqueeze(1),
                "labels": torch.from_numpy(labels[rows]),
            }
            records = [{"image": images[i], "label": int(labels[i]), "index": int(i)} for i in rows]
            splits[split] = SplitData(tensors, records, None)
        info = TaskInfo(
            num_classes=10,
            label_names=[str(d) for d in range(10)],
            hints={"in_channels": 1, "image_size": 8, "in_features": 64},
        )
        return info, splits
