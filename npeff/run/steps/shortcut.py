"""Step ``shortcut`` (the ``shortcut_fix`` experiment, paper §3.5 on a planted shortcut): the
expansion's flawed components edited, next to Coar-Edit on the same model (``npeff-shortcut``,
settings ``stages.shortcut``, i.e. ``conf/shortcut.yaml``'s ``shortcut_fix``)."""

from __future__ import annotations

from omegaconf import DictConfig

from npeff.errors import NpeffUserError
from npeff.run.steps import EVAL_INPUTS, Context, Step, fmt


def _shortcut(ctx: Context) -> dict:
    from npeff.run import fit, shortcut

    a = ctx.artifacts
    inputs = ctx.inputs(**EVAL_INPUTS)
    on = str(ctx.config("shortcut").shortcut_fix.select_on)
    if on == "eval":
        inputs["select_coeffs"] = str(a["coeffs"])
    elif on == "fit":  # the expanded decomposition's coefficients on the fit PEFs: the edits'
        # selection, sign and scale never see an eval label
        sel_cfg = ctx.config(
            "fit", inputs={"pefs": str(a["fit_pefs"]), "decomposition": str(a["decomposition"])}
        )
        ctx.stage("fit_select", fit.run, sel_cfg, ctx.dir("fit_select"), single=True)
        inputs["select_coeffs"] = str(ctx.dir("fit_select") / "coeffs.h5")
    else:
        raise NpeffUserError(f"stages.shortcut.select_on={on!r}: use fit (the default) or eval")
    cfg = ctx.config(
        "shortcut",
        inputs=inputs,
        shortcut_fix={"expansion_components": list(a["expansion"]["components"])},
    )
    ctx.stage("shortcut", shortcut.run, cfg, ctx.dir("shortcut"), single=True)
    return {"section": ctx.dir("shortcut") / "section.html"}


def _check(cfg: DictConfig) -> None:
    expand = ((cfg.get("steps") or {}).get("expand") or {}).get("enabled") is True
    if not (expand and str(cfg.decomp.kind) == "lrm"):
        raise NpeffUserError(
            "steps.shortcut needs the flawed-heuristic expansion on an LRM decomposition: set "
            "steps.expand.enabled=true with fisher=lrm decomp=lrm_npeff (experiment=shortcut_fix)"
        )


def _headline(ctx: Context) -> dict:
    sc = ctx.metrics.get("shortcut", {}).get("shortcut")
    return {"shortcut": sc} if sc is not None else {}


def _summary(metrics: dict) -> list[str]:
    sc = metrics.get("shortcut")
    if sc is None:
        return []
    return [
        f"  shortcut: cue-conflicting eval acc {fmt(sc['conflict_acc_before'])} (rest "
        f"{fmt(sc['other_acc_before'])}); NPEFF edit {fmt(sc['npeff']['conflict_acc_after'])} "
        f"(rest {fmt(sc['npeff']['other_acc_after'])}); Coar-Edit "
        f"{fmt(sc['coar']['conflict_acc_after'])} (rest {fmt(sc['coar']['other_acc_after'])})"
    ]


STEPS = [
    Step(
        "shortcut",
        130,
        _shortcut,
        needs=("checkpoint", "fit_pefs", "decomposition", "coeffs", "eval_pefs", "expansion"),
        auto=lambda cfg: False,
        check=_check,
        headline=_headline,
        summary=_summary,
    )
]
