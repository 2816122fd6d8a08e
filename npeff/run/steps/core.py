"""The steps every pipeline job runs: train → PEFs on ``fit`` → decomposition → PEFs on ``eval``
→ coefficients on ``eval`` (G frozen) → perturbations → report."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from npeff.errors import NpeffUserError
from npeff.run.steps import EVAL_INPUTS, Context, Step


def projected(cfg: DictConfig) -> bool:
    """Whether the fit PEFs are projected (``fisher.compression=projection``)."""
    return str((cfg.get("fisher") or {}).get("compression") or "topk") == "projection"


def _train(ctx: Context) -> dict:
    from npeff.run.train_cache import cached_train

    ckpt, metrics = ctx.stage(
        "train", cached_train, ctx.config("train"), ctx.dir("train"), Path(str(ctx.cfg.cache_dir))
    )
    ctx.metrics["train"] = metrics
    return {"checkpoint": ckpt}


def _pefs_fit(ctx: Context) -> dict:
    from npeff.run import pefs

    diag = str(ctx.cfg.decomp.kind) == "diag"
    cfg = ctx.config(
        "pefs",
        "pefs_fit",
        split="fit",
        inputs={"checkpoint": str(ctx.artifacts["checkpoint"])},
        **({"fisher": {"dataset_fisher": True}} if diag else {}),
    )
    ctx.stage("pefs_fit", pefs.run, cfg, ctx.dir("pefs_fit"))
    out = {"fit_pefs": ctx.dir("pefs_fit") / "pefs.h5"}
    if diag:
        out["dataset_fisher"] = ctx.dir("pefs_fit") / "dsf.h5"
    return out


def _decompose(ctx: Context) -> dict:
    from npeff.run import decompose

    cfg = ctx.config("decompose", inputs={"pefs": str(ctx.artifacts["fit_pefs"])})
    ctx.stage("decompose", decompose.run, cfg, ctx.dir("decompose"))
    return {"decomposition": ctx.dir("decompose") / "decomposition.h5"}


def _pefs_eval(ctx: Context) -> dict:
    from npeff.run import pefs

    cfg = ctx.config(
        "pefs",
        "pefs_eval",
        split="eval",
        inputs={"checkpoint": str(ctx.artifacts["checkpoint"])},
        # the components are in parameter space again (step recover): eval PEFs are top-K
        **({"fisher": {"compression": "topk"}} if projected(ctx.cfg) else {}),
    )
    ctx.stage("pefs_eval", pefs.run, cfg, ctx.dir("pefs_eval"))
    return {"eval_pefs": ctx.dir("pefs_eval") / "pefs.h5"}


def _fit(ctx: Context) -> dict:
    from npeff.run import fit

    a = ctx.artifacts
    cfg = ctx.config(
        "fit", inputs={"pefs": str(a["eval_pefs"]), "decomposition": str(a["decomposition"])}
    )
    ctx.stage("fit", fit.run, cfg, ctx.dir("fit"), single=True)
    return {"coeffs": ctx.dir("fit") / "coeffs.h5"}


def _perturb(ctx: Context) -> dict:
    from npeff.run import perturb

    a = ctx.artifacts
    inputs = ctx.inputs(checkpoint="checkpoint", coeffs="coeffs", pefs="eval_pefs")
    if "dataset_fisher" in a:
        inputs |= ctx.inputs(dataset_fisher="dataset_fisher")
    cfg = ctx.config("perturb", inputs=inputs, split="eval")
    expansion = a.get("expansion")
    if expansion:  # perturb the flawed-heuristic components (step expand, paper §3.5)
        cfg = OmegaConf.merge(
            cfg,
            {
                "perturb": {
                    "select": "flawed",
                    "magnitude": float(expansion["magnitude"]),
                    "flawed": {"expansion_components": list(expansion["components"])},
                }
            },
        )
    ctx.stage("perturb", perturb.run, cfg, ctx.dir("perturb"), single=True)
    return {"perturbation": ctx.dir("perturb") / "perturbation.h5"}


def _report(ctx: Context) -> dict:
    from npeff.run import report

    a = ctx.artifacts
    inputs = ctx.inputs(**EVAL_INPUTS, perturbation="perturbation")
    for optional in ("comparison", "tables"):  # made by steps baselines / tracr_check
        if optional in a:
            inputs |= ctx.inputs(**{optional: optional})
    inputs["sections"] = list(ctx.sections)
    cfg = ctx.config("report", split="eval", inputs=inputs)
    ctx.stage("report", report.run, cfg, ctx.dir("report"), single=True)
    return {"report": ctx.dir("report") / "report.html"}


def _check_kinds(cfg: DictConfig) -> None:
    kind = str(cfg.decomp.kind)
    if (kind == "diag") != (str(cfg.fisher.kind) == "diag"):
        raise NpeffUserError(
            f"fisher={cfg.fisher.kind} PEFs do not match decomp={kind}: use fisher=diag with "
            "decomp=d_npeff and fisher=lrm (or lvrm) with decomp=lrm_npeff"
        )


STEPS = [
    Step("train", 10, _train, check=_check_kinds),
    Step("pefs_fit", 20, _pefs_fit, needs=("checkpoint",)),
    Step("decompose", 30, _decompose, needs=("fit_pefs",)),
    Step("pefs_eval", 60, _pefs_eval, needs=("checkpoint",)),
    Step("fit", 70, _fit, needs=("eval_pefs", "decomposition")),
    Step("perturb", 80, _perturb, needs=("checkpoint", "coeffs", "eval_pefs")),
    Step(
        "report",
        200,
        _report,
        needs=("checkpoint", "decomposition", "coeffs", "eval_pefs", "perturbation"),
    ),
]
