"""Step ``baselines`` (paper §3.4; on when ``baselines=[...]`` lists any): each baseline in its
own stage directory (activations captured once), then the comparison with NPEFF
(``comparison/comparison.json``, a report section). Settings: ``stages.baseline`` for every
baseline stage and the comparison (``conf/baseline.yaml``), ``stages.baseline_<name>`` for one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from npeff.errors import NpeffUserError
from npeff.run.configs import stage_config, stage_settings
from npeff.run.steps import Context, Step, fmt


def baseline_names(cfg: DictConfig) -> list[str]:
    """The configured ``baselines=[...]``, checked."""
    from npeff.baselines import BASELINES

    names = [str(b) for b in (cfg.get("baselines") or [])]
    unknown = [b for b in names if b not in BASELINES]
    if unknown:
        raise NpeffUserError(f"unknown baselines {unknown}; choose from {list(BASELINES)}")
    if len(set(names)) != len(names):
        raise NpeffUserError(f"baselines={names} lists a baseline twice")
    return names


def _check(cfg: DictConfig) -> None:
    if not baseline_names(cfg):
        raise NpeffUserError(
            "steps.baselines.enabled=true but no baseline is listed: set e.g. "
            "baselines=[kmeans,gradient_kmeans,sae]"
        )


def baseline_config(cfg: DictConfig, ckpt: Path, **settings: Any) -> DictConfig:
    """conf/baseline.yaml for this pipeline: the NPEFF run's checkpoint, example counts, component
    count, parameters and K; then ``stages.baseline`` and ``stages.baseline_<name>``."""
    pefs_fit, pefs_eval = (
        stage_config(cfg, "pefs", "pefs_fit"),
        stage_config(cfg, "pefs", "pefs_eval"),
    )
    params = pefs_fit.get("params") or {}
    base = {
        "inputs": {"checkpoint": str(ckpt)},
        "seed": int(cfg.get("seed", 0)),
        "n_components": int(cfg.decomp.n_components),
        "n_examples": {"fit": pefs_fit.get("n_examples"), "eval": pefs_eval.get("n_examples")},
        "params": OmegaConf.to_container(params, resolve=True)
        if OmegaConf.is_config(params)
        else {},
        "gradient": {"n_values": int(cfg.fisher.n_values)},
    }
    out = OmegaConf.merge(stage_config(cfg, "baseline", "-"), OmegaConf.create(base))
    name = settings.get("baseline")
    for section in ("baseline", f"baseline_{name}" if name else None):
        if section:
            extra = stage_settings(cfg, out, "baseline", section)
            if extra:
                out = OmegaConf.merge(out, extra)
    return OmegaConf.merge(out, OmegaConf.create(settings)) if settings else out


def _baselines(ctx: Context) -> dict:
    from npeff.run import baseline

    names = baseline_names(ctx.cfg)
    ckpt, coeffs = ctx.artifacts["checkpoint"], ctx.artifacts["coeffs"]
    acts: dict[str, str] = {}
    base_cfg = baseline_config(ctx.cfg, ckpt)
    if any(n != "gradient_kmeans" for n in names):
        step = ctx.dir("baseline_activations")

        def capture() -> dict:
            return {
                f"activations_{s}": str(p)
                for s, p in baseline.capture_splits(base_cfg, step).items()
            }

        acts = ctx.stage("baseline_activations", capture)
    files = {}
    for name in names:
        bcfg = baseline_config(ctx.cfg, ckpt, baseline=name, inputs=acts)
        ctx.stage(f"baseline_{name}", baseline.run, bcfg, ctx.dir(f"baseline_{name}"))
        files[name] = ctx.dir(f"baseline_{name}") / "baseline.h5"
    pert = ctx.metrics.get("perturb", {})
    step = ctx.dir("comparison")
    ctx.stage(
        "comparison",
        lambda: baseline.run_comparison(
            base_cfg, step, npeff_coeffs=coeffs, baselines=files, selectivity=pert
        ),
    )
    return {"comparison": step / "comparison.json"}


def _headline(ctx: Context) -> dict:
    cmp = ctx.metrics.get("comparison", {})
    return {"methods": cmp["methods"]} if "methods" in cmp else {}


def _summary(metrics: dict) -> list[str]:
    lines = []
    for name, row in (metrics.get("methods") or {}).items():
        lines.append(
            f"  {name:>16}: concept components {fmt(row.get('concept_components'))} "
            f"(shuffled {fmt(row.get('concept_components_shuffled'))}), TCAV-significant "
            f"{fmt(row.get('tcav_significant_share'))}"
            + (
                f", avg max cos vs NPEFF {fmt(row['avg_max_cos_vs_npeff'])} / "
                f"{fmt(row['avg_max_cos_npeff_vs'])}"
                if "avg_max_cos_vs_npeff" in row
                else ""
            )
        )
    return lines


STEPS = [
    Step(
        "baselines",
        100,
        _baselines,
        needs=("checkpoint", "coeffs"),
        auto=lambda cfg: bool(baseline_names(cfg)),
        check=_check,
        headline=_headline,
        summary=_summary,
    )
]
