"""Step ``expand`` (paper §3.5, the ``flawed_heuristics`` experiment): new components learned on
the incorrectly predicted fit-split examples with the first decomposition's components frozen;
the perturbation step then perturbs the flawed ones among the new components.

Settings ``steps.expand``: ``n_new_components`` (paper: 64), ``magnitude`` (paper: 0.3). The
decompose settings of the expansion are ``stages.expand``."""

from __future__ import annotations

from omegaconf import DictConfig

from npeff.errors import NpeffUserError
from npeff.run.steps import Context, Step
from npeff.run.steps.core import projected


def _expand(ctx: Context) -> dict:
    from npeff.artifacts.pefs import load_pefs
    from npeff.run import decompose, filter_pefs

    settings = ctx.settings("expand")
    n_new = int(settings.n_new_components)
    filt_cfg = ctx.config(
        "filter_pefs",
        inputs={"pefs": str(ctx.artifacts["fit_pefs"])},
        filter={"incorrect_only": True},
    )
    ctx.stage(
        "filter_incorrect", filter_pefs.run, filt_cfg, ctx.dir("filter_incorrect"), single=True
    )
    incorrect = ctx.dir("filter_incorrect") / "pefs.h5"
    n_incorrect = load_pefs(incorrect).n_examples
    if n_incorrect < n_new:
        raise NpeffUserError(
            f"the model predicts only {n_incorrect} fit-split examples incorrectly, fewer than "
            f"steps.expand.n_new_components={n_new}: use a harder task (e.g. "
            "task.drop_with_conflict=0.3), more fit examples (task.n_fit) or fewer new components"
        )
    exp_cfg = ctx.config(
        "decompose",
        "expand",
        inputs={"pefs": str(incorrect)},
        decomp={"expand_from": str(ctx.artifacts["decomposition"]), "n_components": n_new},
    )
    ctx.stage("expand", decompose.run, exp_cfg, ctx.dir("expand"))
    return {
        "decomposition": ctx.dir("expand") / "decomposition.h5",
        "expansion": {"components": list(range(n_new)), "magnitude": float(settings.magnitude)},
    }


def _headline(ctx: Context) -> dict:
    loss = ctx.metrics.get("expand", {}).get("final_loss")
    return {"final_loss": loss} if loss is not None else {}


def _check(cfg: DictConfig) -> None:
    if projected(cfg):
        raise NpeffUserError(
            "steps.expand expands a decomposition with more components of the same PEFs; it "
            "does not work on projected PEFs: use fisher.compression=topk"
        )


STEPS = [
    Step(
        "expand",
        50,
        _expand,
        needs=("fit_pefs", "decomposition"),
        auto=lambda cfg: False,
        check=_check,
        headline=_headline,
    )
]
