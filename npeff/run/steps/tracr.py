"""Steps for TRACR-compiled models (paper §3.2; ``model=tracr``): ``tracr_compile`` exports the
program into ``model.path`` when that file does not exist yet (settings ``steps.tracr_compile``,
as ``conf/tracr_compile.yaml``); ``tracr_check`` (after the fit) checks the components against
the compiled ground truth, also on decompositions with ``steps.tracr_check.extra_n_components``
components, and hands the report its tables."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from npeff.errors import NpeffUserError
from npeff.run.steps import Context, Step, fmt


def is_tracr(cfg: DictConfig) -> bool:
    return str((cfg.get("model") or {}).get("name")) == "tracr"


def _check(cfg: DictConfig) -> None:
    if not is_tracr(cfg):
        raise NpeffUserError(
            "steps.tracr_compile and steps.tracr_check work on compiled models: use model=tracr "
            "(experiment=tracr_nli) or leave their enabled=auto"
        )


def _compile(ctx: Context) -> dict:
    from npeff.tracr import check

    ctx.stage(
        "tracr_compile",
        check.ensure_model,
        ctx.cfg.model,
        ctx.settings("tracr_compile"),
        single=True,
    )
    return {}


def _extra_decompositions(ctx: Context) -> dict[int, tuple[Path, Path]]:
    """``steps.tracr_check.extra_n_components``: more decompositions of the same fit PEFs (e.g.
    the paper's 128 next to 32), each with eval coefficients. Returns ``{n_components:
    (decomposition.h5, coeffs.h5)}``."""
    from npeff.run import decompose, fit

    a = ctx.artifacts
    out = {}
    for r in ctx.settings("tracr_check").get("extra_n_components") or []:
        r = int(r)
        if r == int(ctx.cfg.decomp.n_components):
            continue
        dec_cfg = ctx.config(
            "decompose", inputs={"pefs": str(a["fit_pefs"])}, decomp={"n_components": r}
        )
        ctx.stage(f"decompose_{r}", decompose.run, dec_cfg, ctx.dir(f"decompose_{r}"))
        dec = ctx.dir(f"decompose_{r}") / "decomposition.h5"
        fit_cfg = ctx.config("fit", inputs={"pefs": str(a["eval_pefs"]), "decomposition": str(dec)})
        ctx.stage(f"fit_{r}", fit.run, fit_cfg, ctx.dir(f"fit_{r}"), single=True)
        out[r] = (dec, ctx.dir(f"fit_{r}") / "coeffs.h5")
    return out


def _tracr_check(ctx: Context) -> dict:
    from npeff.tracr import check

    a = ctx.artifacts
    extra = _extra_decompositions(ctx)
    check_dir = ctx.dir("tracr_check")
    ctx.stage(
        "tracr_check",
        check.run,
        ctx.settings("tracr_check"),
        check_dir,
        a["checkpoint"],
        a["decomposition"],
        a["coeffs"],
        "eval",
        extra,
        int(ctx.config("report").report.concept_top_k),
        single=True,
    )
    return {"tables": check_dir / "tracr_check.json"}


LAYER_KEYS = (
    "layer_unit_share_mean",
    "layer_unit_share_other_variables_mean",
    "layer_block_share_mean",
    "layer_block_share_other_variables_mean",
    "layer_block_param_fraction_mean",
    "layer_n_components_checked",
)


def _headline(ctx: Context) -> dict:
    tracr = ctx.metrics.get("tracr_check", {})
    out = {}
    for key in ("tracr_port_max_abs_err", "tracr_rasp_agreement", "mean_p_label", "temperature"):
        if key in tracr:
            out[key if key.startswith("tracr") else f"tracr_{key}"] = tracr[key]
    if tracr.get("by_n_components"):
        out["tracr_by_n_components"] = tracr["by_n_components"]
    for key in LAYER_KEYS:
        if key in tracr:
            out[f"tracr_{key}"] = tracr[key]
    return out


def _summary(metrics: dict) -> list[str]:
    lines = []
    for r, d in (metrics.get("tracr_by_n_components") or {}).items():
        lines.append(
            f"  tracr, {r} components: {d['concept_components']}/{r} share a concept in their top"
            f" {d['concept_top_k']} (shuffled {fmt(d['concept_components_shuffled'])}, within-label"
            f" {fmt(d['concept_components_within_label_shuffled'])}; paper {d.get('paper') or '-'});"
            f" with False values {d['concept_components_true_or_false']}/{r} (shuffled"
            f" {fmt(d['concept_components_true_or_false_shuffled'])});"
            f" layer unit share {fmt(d.get('layer_unit_share_mean'))} (other variables"
            f" {fmt(d.get('layer_unit_share_other_variables_mean'))})"
        )
    return lines


STEPS = [
    Step("tracr_compile", 5, _compile, auto=is_tracr, check=_check),
    Step(
        "tracr_check",
        150,
        _tracr_check,
        needs=("checkpoint", "fit_pefs", "eval_pefs", "decomposition", "coeffs"),
        auto=is_tracr,
        check=_check,
        headline=_headline,
        summary=_summary,
    ),
]
