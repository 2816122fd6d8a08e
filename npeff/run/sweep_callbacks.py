"""Hydra callbacks for sweeps: the comparison step that ends an ablation multirun."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class CompareAfterSweep(Callback):
    """After a multirun, match components across its jobs (``npeff-compare <sweep dir>``, paper
    §3.3) and write ``compare/`` (JSON table + heatmaps) into the sweep directory."""

    def __init__(self, prefer: str = "decomposition") -> None:
        self.prefer = prefer

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from npeff.run import compare
        from npeff.run.configs import compose_stage_config

        sweep_dir = Path(str(config.hydra.sweep.dir))
        cfg = compose_stage_config("compare")
        OmegaConf.set_struct(cfg, False)
        cfg.runs = [str(sweep_dir)]
        cfg.prefer = self.prefer
        out = sweep_dir / "compare"
        metrics = compare.run(cfg, out)
        log.info("component matching across the sweep written to %s", out)
        print(f"npeff sweep comparison: {out}", flush=True)
        return metrics
