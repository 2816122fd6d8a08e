"""Step ``recover`` (``fisher.compression=projection``): the projected decomposition's components
back in parameter space, fitted on top-K PEFs of the fit examples, for every later step.

Settings ``steps.recover``: ``method`` fit (G-only fit, W fixed) | sparse (iterative hard
thresholding; needs ``sparsity``), ``n_iters``."""

from __future__ import annotations

from npeff.errors import NpeffUserError
from npeff.run.steps import Context, Step
from npeff.run.steps.core import projected


def _recover(ctx: Context) -> dict:
    from npeff.run import pefs

    rec = ctx.settings("recover")
    fit_pefs, projected_dec = ctx.artifacts["fit_pefs"], ctx.artifacts["decomposition"]
    topk_cfg = ctx.config(
        "pefs",
        "pefs_fit",
        split="fit",
        inputs={"checkpoint": str(ctx.artifacts["checkpoint"])},
        fisher={"compression": "topk"},
    )
    ctx.stage("pefs_fit_topk", pefs.run, topk_cfg, ctx.dir("pefs_fit_topk"))
    topk_pefs = ctx.dir("pefs_fit_topk") / "pefs.h5"
    out = ctx.dir("recover") / "decomposition.h5"

    def recover() -> dict:
        from npeff.artifacts.decomposition import load_decomposition, save_decomposition
        from npeff.artifacts.pefs import load_pefs, read_pefs_header
        from npeff.fisher.projection import SparseProjection, components_to_parameter_space

        proj = SparseProjection.from_settings(read_pefs_header(fit_pefs)["meta"]["compression"])
        back = components_to_parameter_space(
            load_decomposition(projected_dec),
            load_pefs(topk_pefs),
            proj,
            method=str(rec.get("method", "fit")),
            sparsity=rec.get("sparsity"),
            n_iters=int(rec.get("n_iters", 300)),
        )
        save_decomposition(back, out)
        return {"recovery": dict(back.metadata["recovery"])}

    ctx.stage("recover", recover, single=True)
    return {"decomposition": out}


def _check(cfg) -> None:
    if not projected(cfg):
        raise NpeffUserError(
            "steps.recover maps projected components back to parameter space: it needs "
            "fisher.compression=projection (or leave steps.recover.enabled=auto)"
        )


STEPS = [
    Step(
        "recover",
        40,
        _recover,
        needs=("checkpoint", "fit_pefs", "decomposition"),
        auto=projected,
        check=_check,
    )
]
