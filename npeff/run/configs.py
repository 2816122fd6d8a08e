"""A stage's config inside the pipeline: its own ``conf/<stage>.yaml`` with the pipeline's shared
groups in place of its own, then the pipeline's ``stages.<step>`` settings, then the step's own.

``stages.<step>`` is flat: a key the stage config has at its root is set there, any other key goes
into the stage's own section (``stages.fit.n_iters`` is ``fit.n_iters`` of ``conf/fit.yaml``,
``stages.coar.units`` is ``coar.units``, ``stages.shortcut.n_top`` is ``shortcut_fix.n_top``). The
doubled form (``stages.fit.fit.n_iters``) means the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from npeff.run.common import CONFIG_PATH

# Config groups (and settings) the pipeline shares with every stage config that has them.
SHARED_GROUPS = (
    "model",
    "task",
    "trainer",
    "logger",
    "fisher",
    "decomp",
    "perturb",
    "paths",
    "progress",
)
# Keys of the pipeline config that belong to the pipeline itself, never to the train stage.
PIPELINE_ONLY = ("stage", "stages", "steps", "cache_dir", "hydra", "baselines")
# A stage's own section when it is not named like the stage.
OWN_SECTION = {"shortcut": "shortcut_fix"}


def compose_stage_config(name: str, overrides: list[str] | None = None) -> DictConfig:
    """``conf/<name>.yaml`` composed with ``overrides`` (inside or outside a Hydra app)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name=name, overrides=overrides or [])
    with initialize_config_dir(CONFIG_PATH, version_base="1.3"):
        return compose(config_name=name, overrides=overrides or [])


def stage_settings(pipe: DictConfig, stage_cfg: DictConfig, name: str, section: str) -> DictConfig:
    """``stages.<section>`` of the pipeline config placed for stage ``name`` (see the module
    docstring): keys at ``stage_cfg``'s root stay there, the others go into its own section."""
    extra = (pipe.get("stages") or {}).get(section)
    if not extra:
        return OmegaConf.create({})
    own = OWN_SECTION.get(name, name)
    has_own = OmegaConf.is_dict(stage_cfg.get(own))
    placed: dict[str, Any] = {}
    for key, value in extra.items():
        if key in stage_cfg or not has_own or key == own:
            placed[key] = value
        else:
            placed.setdefault(own, {})[key] = value
    return OmegaConf.create(placed)


def stage_config(
    pipe: DictConfig, name: str, section: str | None = None, **settings: Any
) -> DictConfig:
    """The config of stage ``name``: its own primary config with the pipeline's shared groups in
    place of its own, then the pipeline section ``stages.<section or name>``, then ``settings``."""
    cfg = compose_stage_config(name, _same_choices(pipe) if name == "train" else None)
    OmegaConf.set_struct(cfg, False)
    for key in SHARED_GROUPS:
        if key in cfg and pipe.get(key) is not None:
            cfg[key] = pipe[key]
    if name == "train":  # the pipeline root holds the training recipe (task files set it)
        for key in pipe:
            if key not in PIPELINE_ONLY and key in cfg and key not in SHARED_GROUPS:
                top = pipe[key]
                cfg[key] = OmegaConf.merge(cfg[key], top) if OmegaConf.is_dict(top) else top
    extra = stage_settings(pipe, cfg, name, section or name)
    if extra:
        cfg = OmegaConf.merge(cfg, extra)
    if settings:
        cfg = OmegaConf.merge(cfg, OmegaConf.create(settings))
    return cfg


def _same_choices(pipe: DictConfig) -> list[str]:
    """Overrides that select the pipeline's task and model files, so the training recipe a task
    file sets globally (optimiser, batch size, epochs) is that task's and no other's."""
    out = []
    for group in ("model", "task"):
        name = (pipe.get(group) or {}).get("name")
        if name and (Path(CONFIG_PATH) / group / f"{name}.yaml").is_file():
            out.append(f"{group}={name}")
    return out
