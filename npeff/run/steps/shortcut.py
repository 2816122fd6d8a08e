"""Step ``shortcut`` (the ``shortcut_fix`` experiment, paper §3.5 on a planted shortcut): the
expansion's flawed components edited, next to Coar-Edit on the same model (``npeff-shortcut``,
settings ``stages.shortcut``, i.e. ``conf/shortcut.yaml``'s ``shortcut_fix``)."""

from __future__ import annotations

from omegaconf import DictConfig

from npeff.run.steps import Context, Step, fmt


def _shortcut(ctx: Context) -> dict:
    from npeff.run import shortcut

    a = ctx.artifacts
    cfg = ctx.config(
        "shortcut",
        inputs={
            "checkpoint": str(a["checkpoint"]),
            "decomposition": str(a["decomposition"]),
            "coeffs": str(a["coeffs"]),
            "pefs": str(a["eval_pefs"]),
        },
        shortcut_fix={"expansion_components": list(a["expansion"]["components"])},
    )
    ctx.stage("shortcut", shortcut.run, cfg, ctx.dir("shortcut"), single=True)
    return {"section": ctx.dir("shortcut") / "section.html"}


def _check(cfg: DictConfig) -> None:
    expand = ((cfg.get("steps") or {}).get("expand") or {}).get("enabled") is True
    if not (expand and str(cfg.decomp.kind) == "lrm"):
        raise ValueError(
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
        needs=("checkpoint", "decomposition", "coeffs", "eval_pefs", "expansion"),
        auto=lambda cfg: False,
        check=_check,
        headline=_headline,
        summary=_summary,
    )
]
