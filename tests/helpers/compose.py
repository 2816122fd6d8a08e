"""Composing npeff's Hydra configs (``conf/``) in tests, as the console scripts would."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from npeff import CONFIG_PATH


def compose_config(
    name: str, overrides: Sequence[str] = (), *, hydra_cfg: bool = False
) -> DictConfig:
    """``conf/<name>.yaml`` with ``overrides``; with ``hydra_cfg`` the ``hydra`` node is kept."""
    with initialize_config_dir(CONFIG_PATH, version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=hydra_cfg)


def run_pipeline(overrides: Sequence[str], out: Path) -> dict:
    """``npeff <overrides>`` run into ``out``; returns the pipeline's metrics."""
    from npeff.run import pipeline

    return pipeline.run(compose_config("pipeline", overrides), out)
