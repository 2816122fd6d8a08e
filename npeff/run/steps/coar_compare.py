"""Step ``coar_compare`` (the ``coar_compare_*`` experiments): ``npeff-coar`` on the trained
model's eval examples (stage ``coar``, settings ``stages.coar``), then ``npeff-compare-coar``
(stage ``compare_coar``, settings ``stages.compare_coar``): NPEFF against COAR on one model, both
as report sections."""

from __future__ import annotations

from npeff.run.configs import stage_settings
from npeff.run.steps import Context, Step, fmt

HEADLINE_KEYS = (
    "spearman_coar_mean",
    "spearman_true_mean",
    "spearman_random_mean",
    "jaccard_true_mean",
    "jaccard_random_mean",
    "kl_spearman_true_mean",
    "kl_spearman_random_mean",
    "frac_spearman_true_above_random",
)


def _coar_compare(ctx: Context) -> dict:
    from npeff.run import coar, compare_coar

    a = ctx.artifacts
    coar_settings = {"split": "eval"}
    base = ctx.config("coar")
    given = stage_settings(ctx.cfg, base, "coar", "coar").get("coar") or {}
    if given.get("n_examples") is None:  # COAR on the examples the eval PEFs cover
        coar_settings["n_examples"] = ctx.config("pefs", "pefs_eval").get("n_examples")
    coar_cfg = ctx.config("coar", inputs={"checkpoint": str(a["checkpoint"])}, coar=coar_settings)
    ctx.stage("coar", coar.run, coar_cfg, ctx.dir("coar"))
    inputs = ctx.inputs(
        checkpoint="checkpoint", coeffs="coeffs", pefs="eval_pefs", perturbation="perturbation"
    )
    inputs["attributions"] = str(ctx.dir("coar") / coar.ATTRIBUTIONS_NAME)
    if "dataset_fisher" in a:
        inputs |= ctx.inputs(dataset_fisher="dataset_fisher")
    cmp_cfg = ctx.config("compare_coar", inputs=inputs, split="eval")
    step = ctx.dir("compare_coar")
    ctx.stage("compare_coar", compare_coar.run, cmp_cfg, step, single=True)
    return {"section": step / compare_coar.SECTION_NAME}


def _headline(ctx: Context) -> dict:
    cc = ctx.metrics.get("compare_coar", {})
    if not cc:
        return {}
    out = {k: cc.get(k) for k in HEADLINE_KEYS}
    out["corr_heldout_mean"] = ctx.metrics.get("coar", {}).get("corr_heldout_mean")
    return {"coar_compare": out}


def _summary(metrics: dict) -> list[str]:
    cc = metrics.get("coar_compare")
    if not cc:
        return []
    return [
        f"  NPEFF vs COAR: Spearman coef~|ablating S_j| {fmt(cc['spearman_true_mean'])} "
        f"(COAR-predicted {fmt(cc['spearman_coar_mean'])}, random sets "
        f"{fmt(cc['spearman_random_mean'])}); KL~|effect| {fmt(cc['kl_spearman_true_mean'])}"
    ]


STEPS = [
    Step(
        "coar_compare",
        120,
        _coar_compare,
        needs=("checkpoint", "coeffs", "eval_pefs", "perturbation"),
        auto=lambda cfg: False,
        headline=_headline,
        summary=_summary,
    )
]
