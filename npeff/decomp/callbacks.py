"""Lightning callbacks of a decomposition run: seconds per step, convergence snapshots, progress.

Records live in ``pl_module.records`` (so a checkpoint carries them and a resumed run continues
them); metrics go to every Lightning logger (W&B when that logger is on).
"""

from __future__ import annotations

import time

import lightning as L
import numpy as np
from tqdm.auto import tqdm


def log_metrics(pl_module, metrics: dict, step: int) -> None:
    """Send ``metrics`` to all loggers of the module's trainer (rank 0 only, by the loggers)."""
    for logger in pl_module.loggers:
        logger.log_metrics(metrics, step=step)


class StepTimer(L.Callback):
    """Wall-clock seconds of each decomposition step; logs the mean every ``log_every`` steps."""

    def __init__(self, log_every: int = 10):
        self.log_every = max(int(log_every), 1)
        self._t0 = 0.0
        self._window: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        dt = time.perf_counter() - self._t0
        rec = pl_module.records
        rec["seconds"] = rec.get("seconds", 0.0) + dt
        rec["n_steps_timed"] = rec.get("n_steps_timed", 0) + 1
        self._window.append(dt)
        step = trainer.current_epoch + 1
        if step % self.log_every == 0:
            log_metrics(pl_module, {"seconds_per_step": float(np.mean(self._window))}, step)
            self._window = []


class ConvergenceTracker(L.Callback):
    """Every ``every`` steps: per-component cosine similarity of W[:, k] to the previous snapshot
    (paper Fig. 5), stored in ``records["convergence"]``; the snapshots are kept if asked."""

    def __init__(self, every: int = 50, keep_snapshots: bool = True):
        self.every = int(every)
        self.keep_snapshots = keep_snapshots

    def on_train_start(self, trainer, pl_module):
        conv = pl_module.records.setdefault("convergence", {})
        if "previous" not in conv:
            self._snapshot(pl_module, 0, cosine=None)

    def on_train_epoch_end(self, trainer, pl_module):
        step = trainer.current_epoch + 1
        if self.every > 0 and step % self.every == 0:
            prev = pl_module.records["convergence"]["previous"]
            W = pl_module.fac.W.double().numpy()
            num = (W * prev).sum(0)
            den = np.linalg.norm(W, axis=0) * np.linalg.norm(prev, axis=0)
            cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
            self._snapshot(pl_module, step, cosine=cos)
            log_metrics(
                pl_module,
                {
                    "convergence/mean_cos_prev": float(cos.mean()),
                    "convergence/min_cos_prev": float(cos.min()),
                },
                step,
            )

    def _snapshot(self, pl_module, step: int, cosine):
        conv = pl_module.records["convergence"]
        W = pl_module.fac.W.double().numpy().copy()
        conv["previous"] = W
        if cosine is not None:
            conv.setdefault("steps", []).append(step)
            conv.setdefault("cosine", []).append(cosine.astype(np.float32))
        if self.keep_snapshots:
            conv.setdefault("snapshot_steps", []).append(step)
            conv.setdefault("snapshots", []).append(W.astype(np.float32))


class Progress(L.Callback):
    """One tqdm bar over all decomposition steps (Lightning's bar would restart every step)."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.enabled, self.bar = total, enabled, None

    def on_train_start(self, trainer, pl_module):
        if self.enabled and trainer.is_global_zero:
            self.bar = tqdm(total=self.total, initial=trainer.current_epoch, desc="decompose")

    def on_train_epoch_end(self, trainer, pl_module):
        if self.bar is not None:
            self.bar.update(1)
            loss = pl_module.records.get("last_loss")
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.5g}")

    def on_train_end(self, trainer, pl_module):
        if self.bar is not None:
            self.bar.close()
