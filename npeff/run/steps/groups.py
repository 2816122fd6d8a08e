"""Step ``groups`` (the ``group_s5`` experiment): ``npeff-groups`` on the trained group network —
the group-theoretic checks of Wu et al. next to NPEFF's components, a report section."""

from __future__ import annotations

from npeff.run.steps import Context, Step, fmt


def _groups(ctx: Context) -> dict:
    from npeff.run import groups

    inputs = ctx.inputs(zoo="checkpoint", decomposition="decomposition", coeffs="coeffs")
    inputs |= ctx.inputs(pefs="eval_pefs")
    cfg = ctx.config("groups", inputs=inputs, split="eval")
    ctx.stage("groups", groups.run, cfg, ctx.dir("groups"), single=True)
    return {"section": ctx.dir("groups") / "group_section.html"}


def _headline(ctx: Context) -> dict:
    if "groups" not in ctx.metrics:
        return {}
    return {"groups": {k: v for k, v in ctx.metrics["groups"].items() if k != "section"}}


def _summary(metrics: dict) -> list[str]:
    gm = metrics.get("groups")
    if not gm:
        return []
    return [
        f"  group: bound {fmt(gm.get('mean_bound'))} vs accuracy "
        f"{fmt(gm.get('mean_brute_force_accuracy'))}; component irrep purity "
        f"{fmt(gm.get('component_irrep_purity'))} (shuffled "
        f"{fmt(gm.get('component_irrep_purity_shuffled'))}), coset purity "
        f"{fmt(gm.get('component_coset_purity'))} (shuffled "
        f"{fmt(gm.get('component_coset_purity_shuffled'))})"
    ]


STEPS = [
    Step(
        "groups",
        110,
        _groups,
        needs=("checkpoint", "decomposition", "coeffs", "eval_pefs"),
        auto=lambda cfg: False,
        headline=_headline,
        summary=_summary,
    )
]
