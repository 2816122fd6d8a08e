"""The LightningModule that trains any npeff classifier with cross-entropy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import nn

from npeff.errors import NpeffUserError
from npeff.models.core import LABELS_KEY, forward_logits

OPTIMIZERS = ("adamw", "adam", "sgd")


def build_optimizer(model: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Optimizer from ``cfg`` = {name: adamw|adam|sgd, lr, weight_decay, betas, momentum, decay_biases}.

    ``adam`` with ``weight_decay`` is coupled L2 (added to the gradient); ``adamw`` is decoupled.
    Unless ``decay_biases``, parameters with fewer than 2 dims (biases, norms) get no decay.
    """
    name = str(cfg.get("name", "adamw")).lower()
    if name not in OPTIMIZERS:
        raise NpeffUserError(f"unknown optimizer {name!r}; available: {list(OPTIMIZERS)}")
    lr = float(cfg.get("lr", 1e-3))
    wd = float(cfg.get("weight_decay", 0.0))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.get("decay_biases", False):
        groups = [{"params": [p for _, p in trainable], "weight_decay": wd}]
    else:
        groups = [
            {"params": [p for _, p in trainable if p.ndim >= 2], "weight_decay": wd},
            {"params": [p for _, p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(cfg.get("momentum", 0.0)))
    betas = tuple(float(b) for b in cfg.get("betas", (0.9, 0.999)))
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return cls(groups, lr=lr, betas=betas)


class ClassifierModule(L.LightningModule):
    """Cross-entropy training of ``model`` on dict batches; logs ``train/loss``, ``train/acc``,
    ``eval/loss``, ``eval/acc``."""

    def __init__(self, model: nn.Module, optim: Mapping[str, Any]):
        super().__init__()
        self.model = model
        self.optim_cfg = dict(optim)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return forward_logits(self.model, batch)

    def _step(self, batch: Mapping[str, torch.Tensor], prefix: str) -> torch.Tensor:
        logits = self(batch)
        labels = batch[LABELS_KEY]
        loss = nn.functional.cross_entropy(logits, labels)
        acc = (logits.argmax(-1) == labels).float().mean()
        bs = labels.shape[0]
        self.log(f"{prefix}/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=bs)
        self.log(f"{prefix}/acc", acc, prog_bar=True, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "eval")

    def configure_optimizers(self) -> Any:
        opt = build_optimizer(self.model, self.optim_cfg)
        schedule = str(self.optim_cfg.get("schedule", "constant"))
        if schedule == "constant":
            return opt
        if schedule != "linear":
            raise NpeffUserError(
                f"unknown schedule {schedule!r}; available: ['constant', 'linear']"
            )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(float(self.optim_cfg.get("warmup_fraction", 0.0)) * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / max(1, warmup)
            return max(0.0, (total - step) / max(1, total - warmup))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
