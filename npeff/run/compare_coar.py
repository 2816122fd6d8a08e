"""Stage ``npeff-compare-coar``: NPEFF vs COAR on one model (seed-systems.md §4.4).

    npeff-compare-coar inputs.checkpoint=<model.ckpt> inputs.coeffs=<fit/coeffs.h5> \\
        inputs.pefs=<pefs_eval/pefs.h5> inputs.perturbation=<perturb/perturbation.h5> \\
        inputs.attributions=<npeff-coar run>/attributions.h5
    npeff experiment=coar_compare_s4        # the same inside the pipeline (coar_compare.enabled)

Inputs: an NPEFF run's coefficients (W of the eval examples, with G/H or their decomposition),
the PEF file of those examples, optionally its perturbation result, and a COAR attributions file
computed on the SAME checkpoint (refused otherwise, before any work). On the examples both cover:

1. Each component's mass share on every unit (``‖g_j‖²`` for LRM, ``h_j`` for D-NPEFF, on the
   unit's weight entries); S_j = the ``top_units`` units with the largest share.
2. The effect of ablating S_j on every example's correct-class margin, as COAR predicts it
   (``−Σ_{c∈S_j} A[:, c]``) and as it really is (S_j ablated with the batched ablation engine),
   and the true effect of ``n_random`` random unit sets of the same size.
3. Per component: Spearman ρ across examples between its coefficients and |effect| (predicted,
   true, random), the Jaccard overlap of their top-``top_examples`` example sets, COAR's Pearson
   r of predicted vs true effect, and — with the perturbation result — the Spearman ρ of the NPEFF
   perturbation's per-example KL (the reported sign and scale, recomputed per example) with the
   true |effect| (and with the random sets').

Writes ``compare_coar.json`` (per component and means), ``section.html`` (the COAR section and
the NPEFF-vs-COAR table, for the report's ``inputs.sections``) and ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from npeff.artifacts.atomic import atomic_path, write_json_atomic
from npeff.run.common import log_stage_metrics, stage_main, write_metrics

log = logging.getLogger(__name__)
JSON_NAME = "compare_coar.json"
SECTION_NAME = "section.html"
# Per-component statistics averaged into the summary (nan-ignoring).
STATS = (
    "spearman_coar",
    "spearman_true",
    "spearman_random",
    "jaccard_coar",
    "jaccard_true",
    "jaccard_random",
    "pearson_coar_vs_true",
    "kl_spearman_true",
    "kl_spearman_random",
    "spearman_true_kl",
    "spearman_random_kl",
    "kl_spearman_ablation_kl",
    "kl_spearman_ablation_kl_random",
    "share_top_units",
    "share_all_units",
)
# The comparison table's columns after the component (per component, then their means).
TABLE_COLUMNS = (
    "share_top_units",
    "spearman_coar",
    "spearman_true",
    "spearman_random",
    "jaccard_coar",
    "jaccard_true",
    "jaccard_random",
    "pearson_coar_vs_true",
    "kl_spearman_true",
    "kl_spearman_random",
    "spearman_true_kl",
    "kl_spearman_ablation_kl",
    "kl_spearman_ablation_kl_random",
)


def _split_of(meta: dict) -> str | None:
    if meta.get("split"):
        return str(meta["split"])
    conf = meta.get("config")
    if isinstance(conf, dict) and conf.get("split"):
        return str(conf["split"])
    return None


def check_same_model(att, pefs, loaded) -> None:
    """The checkpoint must be the model of both the attributions and the PEF file (by file hash
    and, for the attributions, by weights); clear errors otherwise."""
    from npeff.artifacts.digest import file_sha256

    want = att.model_identity.get("sha256")  # attributions ↔ checkpoint: file hash, then weights
    if want and want != file_sha256(loaded.path):
        raise ValueError(
            f"inputs.checkpoint {loaded.path} is not the model the attributions {att.path} were "
            f"computed on ({att.model_identity.get('checkpoint')}): NPEFF and COAR must be "
            "compared on the same checkpoint; run npeff-coar inputs.checkpoint=<the NPEFF run's "
            "model.ckpt> coar.split=eval (or npeff ... coar_compare.enabled=true)"
        )
    att.check_model(loaded.model)
    pid = (pefs.metadata or {}).get("model_identity") or {}
    want = pid.get("sha256")
    if want and want != file_sha256(loaded.path):
        raise ValueError(
            f"inputs.checkpoint {loaded.path} is not the model the PEFs (and the NPEFF run) were "
            f"computed on ({pid.get('checkpoint')}): NPEFF and COAR must be compared on the same "
            "checkpoint; run npeff-coar with inputs.checkpoint=<the NPEFF run's model.ckpt>"
        )


def align_examples(
    pef_positions: np.ndarray, att_positions: np.ndarray, min_examples: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Examples both files cover: (split positions, rows of W, rows of the attributions)."""
    pef_positions = np.asarray(pef_positions, dtype=np.int64)
    att_positions = np.asarray(att_positions, dtype=np.int64)
    common, rows_w, rows_a = np.intersect1d(pef_positions, att_positions, return_indices=True)
    if len(common) < min_examples:
        raise ValueError(
            f"the PEF file and the attributions share only {len(common)} examples of the split "
            f"(need ≥ {min_examples}): run npeff-coar on the split and examples of the NPEFF run "
            "(coar.split, coar.n_examples)"
        )
    return common, rows_w, rows_a


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _perturbation_vectors(evaluator, dec, res, components, dataset_fisher):
    """Per perturbed component j: (ParameterVector, scale) of the reported perturbation."""
    from npeff.perturb.components import diag_merge
    from npeff.perturb.directions import lrm_direction, normalize_rows, unit_dataset_fisher

    layout = evaluator.layout
    where = {int(j): c for c, j in enumerate(res.component_indices)}
    out = {}
    if dec.kind == "lrm":
        tau = res.metadata.get("tau", (res.metadata.get("config") or {}).get("tau"))
        g_unit = normalize_rows(dec.G)
        for j in components:
            if j in where:
                c = where[j]
                v = lrm_direction(dec.G, dec.new_to_old_col_indices, layout, j, tau, g_unit)
                out[j] = (v, float(res.magnitude) * int(res.best_sign[c]))
        return out
    if dataset_fisher is None:
        return out
    fisher_unit = unit_dataset_fisher(dataset_fisher)
    floor = float(res.metadata.get("fisher_floor", 1e-6))
    extras = res.metadata.get("component_extra") or [{}] * res.n_components
    for j in components:
        if j not in where:
            continue
        c = where[j]
        info = extras[c]
        if "delta" not in info:
            continue
        top = np.asarray(res.top_indices[c], dtype=np.int64)
        vector = diag_merge(evaluator, dec, j, fisher_unit, floor, top)
        out[j] = (vector(info["delta"], info["lambda"]), float(res.best_sign[c]))
    return out


def compare(
    *,
    model,
    cache,
    dec,
    pefs,
    att,
    rows_w: np.ndarray,
    rows_a: np.ndarray,
    settings: DictConfig | dict,
    perturbation=None,
    dataset_fisher: np.ndarray | None = None,
    progress: bool = True,
) -> dict:
    """The statistics (see the module docstring) as a JSON-ready dict.

    ``cache``: the examples of W's rows in order (:class:`~npeff.perturb.examples.ExampleCache`);
    ``rows_w`` / ``rows_a``: rows of W / of the attributions of the compared examples (aligned).
    """
    from npeff.coar import compare as stats
    from npeff.coar.ablation import AblationEngine, margin
    from npeff.models.core import LABELS_KEY, forward_logits
    from npeff.perturb.evaluation import EvalSettings, PerturbationEvaluator

    s = settings
    layout = dec.layout or pefs.layout
    units = att.units
    k = int(s["top_units"])
    if not 1 <= k <= units.n_units:
        raise ValueError(f"compare_coar.top_units={k} must be in 1..{units.n_units} (the units)")
    vectors = dec.G if dec.kind == "lrm" else dec.H
    shares = stats.unit_shares(vectors, layout, units, dec.kind, dec.new_to_old_col_indices)
    r = dec.n_components
    comps = list(range(r)) if s.get("components") is None else [int(j) for j in s["components"]]
    sets = stats.top_unit_sets(shares[comps], k)
    n_random = int(s["n_random"])
    rng_sets = [
        stats.random_unit_sets(units.n_units, [k] * len(comps), seed=int(s["seed"]) + 1 + i)
        for i in range(n_random)
    ]

    bs = int(s["batch_size"])
    batches = list(cache.batches(np.sort(rows_w), bs))
    order = np.argsort(rows_w)  # batches hold the rows in ascending order
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    engine = AblationEngine(
        model, units, method=str(s["method"]), masks_per_forward=int(s["masks_per_forward"])
    )
    with torch.no_grad():
        base = torch.cat([margin(forward_logits(model, b), b[LABELS_KEY]) for b in batches])
    t0 = time.perf_counter()
    all_sets = np.concatenate([sets, *rng_sets])
    effects, abl_kl = stats.true_effect_and_kl(engine, batches, all_sets)
    effects, abl_kl = effects[:, inv], abl_kl[:, inv]  # [(1 + n_random)·|comps|, n], rows_w order
    t_ablate = time.perf_counter() - t0
    true = effects[: len(comps)]
    rand = effects[len(comps) :].reshape(n_random, len(comps), -1)
    true_kl = abl_kl[: len(comps)]
    rand_kl = abl_kl[len(comps) :].reshape(n_random, len(comps), -1)
    pred = stats.coar_predicted_effect(att.weights[rows_a], sets)
    base_np = base.numpy()[inv]
    margin_diff = float(np.abs(base_np - att.base_margins[rows_a]).max())

    kls: dict[int, np.ndarray] = {}
    kl_check: list[float] = []
    t_kl = 0.0
    if perturbation is not None and s.get("kl", True):
        t1 = time.perf_counter()
        ev = PerturbationEvaluator(
            model,
            cache,
            layout,
            dec.W,
            pefs.norms,
            EvalSettings(
                n_top=int(perturbation.top_indices.shape[1]),
                batch_size=bs,
                eval_all=False,
                n_baseline=1,
            ),
            progress=False,
        )
        vecs = _perturbation_vectors(ev, dec, perturbation, comps, dataset_fisher)
        idx = np.sort(rows_w)
        where = {int(j): c for c, j in enumerate(perturbation.component_indices)}
        pos = {int(r): i for i, r in enumerate(rows_w)}
        for j, (v, scale) in vecs.items():
            kls[j] = ev.example_kls(v, scale, idx)[inv]
            c = where[j]
            top_rows = [pos.get(int(t)) for t in perturbation.top_indices[c]]
            if None not in top_rows:  # the recomputed KL against the perturbation stage's
                ref = perturbation.kl_top[c, 0 if perturbation.best_sign[c] > 0 else 1]
                got = float(kls[j][top_rows].mean())
                kl_check.append(abs(got - ref) / max(abs(ref), 1e-12))
        t_kl = time.perf_counter() - t1

    W = np.asarray(dec.W, dtype=np.float64)[rows_w]
    # top-k example sets: at most a fraction of the examples (top-128 of 144 would be trivial)
    frac = s.get("top_examples_max_fraction")
    top = min(int(s["top_examples"]), W.shape[0])
    if frac is not None:
        top = max(1, min(top, int(float(frac) * W.shape[0])))

    def jac(a, b):
        return stats._jaccard(np.argsort(-a)[:top], np.argsort(-b)[:top])

    rows = []
    for i, j in enumerate(comps):
        w = W[:, j]
        t_abs, p_abs = np.abs(true[i]), np.abs(pred[i])
        row: dict[str, Any] = {
            "component": j,
            "top_units": [units.names[c] for c in sets[i]],
            "share_top_units": float(shares[j, sets[i]].sum()),
            "share_all_units": float(shares[j].sum()),
            "spearman_coar": _spearman(w, p_abs),
            "spearman_true": _spearman(w, t_abs),
            "spearman_random": float(
                np.nanmean([_spearman(w, np.abs(rand[d, i])) for d in range(n_random)])
            )
            if n_random
            else None,
            "jaccard_coar": jac(w, p_abs),
            "jaccard_true": jac(w, t_abs),
            "jaccard_random": float(np.mean([jac(w, np.abs(rand[d, i])) for d in range(n_random)]))
            if n_random
            else None,
            "pearson_coar_vs_true": _pearson(pred[i], true[i]),
            "spearman_true_kl": _spearman(w, true_kl[i]),
            "spearman_random_kl": float(
                np.nanmean([_spearman(w, rand_kl[d, i]) for d in range(n_random)])
            )
            if n_random
            else None,
            "mean_true_effect": float(true[i].mean()),
            "mean_abs_true_effect": float(t_abs.mean()),
        }
        if j in kls:
            row["kl_mean"] = float(kls[j].mean())
            row["kl_spearman_true"] = _spearman(kls[j], t_abs)
            row["kl_spearman_random"] = (
                float(np.nanmean([_spearman(kls[j], np.abs(rand[d, i])) for d in range(n_random)]))
                if n_random
                else None
            )
            row["kl_spearman_coefficient"] = _spearman(kls[j], w)
            # the same in distribution space: KL of the perturbation vs KL of ablating S_j
            row["kl_spearman_ablation_kl"] = _spearman(kls[j], true_kl[i])
            row["kl_spearman_ablation_kl_random"] = (
                float(np.nanmean([_spearman(kls[j], rand_kl[d, i]) for d in range(n_random)]))
                if n_random
                else None
            )
        rows.append(row)

    def mean(key):
        vals = [r.get(key) for r in rows if r.get(key) is not None]
        vals = [v for v in vals if np.isfinite(v)]
        return float(np.mean(vals)) if vals else None

    summary = {f"{key}_mean": mean(key) for key in STATS}
    pairs = [
        (r["spearman_true"], r["spearman_random"])
        for r in rows
        if r["spearman_random"] is not None and np.isfinite(r["spearman_true"])
    ]
    summary["frac_spearman_true_above_random"] = (
        float(np.mean([a > b for a, b in pairs])) if pairs else None
    )
    return {
        "kind": dec.kind,
        "n_examples": int(len(rows_w)),
        "n_components": len(comps),
        "n_units": units.n_units,
        "top_units": k,
        "top_examples": top,
        "n_random": n_random,
        "n_components_with_kl": len(kls),
        # max relative difference of the recomputed KL's mean over each component's top examples
        # from the perturbation stage's kl_top (a check of the recomputation; null: not covered)
        "kl_top_max_rel_diff_vs_perturbation": max(kl_check) if kl_check else None,
        "max_abs_base_margin_diff_vs_attributions": margin_diff,
        "seconds_ablations": t_ablate,
        "seconds_kl": t_kl,
        **summary,
        "components": rows,
    }


# --- HTML -------------------------------------------------------------------------------------
def section_html(result: dict, coar_html: str = "") -> str:
    """The report section: COAR's own section (if given) and the NPEFF-vs-COAR table."""
    from html import escape

    from npeff.report.html import _fmt

    def f(v):
        return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else _fmt(v)

    jk = f"J{result['top_examples']}"
    head = (
        "<tr><th>component</th><th>share S_j</th><th>ρ coef~|COAR pred|</th>"
        f"<th>ρ coef~|true|</th><th>ρ coef~|random|</th><th>{jk} COAR</th><th>{jk} true</th>"
        f"<th>{jk} random</th><th>r COAR vs true</th><th>ρ KL~|true|</th><th>ρ KL~|random|</th>"
        "<th>ρ coef~KL(ablate)</th><th>ρ KL~KL(ablate)</th><th>ρ KL~KL(random)</th>"
        "<th>S_j</th></tr>"
    )
    body = ""
    for r in result["components"]:
        cells = [r["component"], *(r.get(k) for k in TABLE_COLUMNS)]
        body += (
            "<tr>"
            + "".join(f"<td>{f(c)}</td>" for c in cells)
            + f"<td>{escape(', '.join(r['top_units'][:4]))}"
            + (" …" if len(r["top_units"]) > 4 else "")
            + "</td></tr>"
        )
    mean = "".join(f"<td>{f(result.get(k + '_mean'))}</td>" for k in TABLE_COLUMNS)
    return (
        coar_html
        + "\n<h2>NPEFF vs COAR on one model</h2>"
        + f"<p class='muted'>{result['n_components']} {escape(str(result['kind']))}-NPEFF "
        f"components, {result['n_examples']} examples, {result['n_units']} units; S_j = the "
        f"{result['top_units']} units with the largest share of the component's mass. ρ: Spearman "
        "across examples between the component's coefficient (or the NPEFF perturbation's "
        "per-example KL) and the size of the margin change when S_j is ablated, as COAR predicts "
        f"it and as measured; random: {result['n_random']} random unit sets of the same size. "
        "KL(ablate): the per-example KL between the model's and the ablated model's predictions. "
        f"{jk}: Jaccard overlap of the top-{result['top_examples']} example sets (top-128, at "
        "most a quarter of the examples). Fraction of "
        f"components with ρ(true) > ρ(random): {f(result.get('frac_spearman_true_above_random'))}"
        ".</p>" + f'<table class="summary">{head}{body}<tr><td><b>mean</b></td>{mean}<td></td></tr>'
        "</table>"
    )


# --- the stage --------------------------------------------------------------------------------
def run(cfg: DictConfig, output_dir: str | Path) -> dict:
    """Run the stage; returns its metrics (also in ``metrics.json``)."""
    from npeff.artifacts.decomposition import load_decomposition
    from npeff.artifacts.pefs import load_dataset_fisher, load_pefs
    from npeff.coar import load_attributions
    from npeff.models import load_checkpoint
    from npeff.perturb.examples import ExampleCache
    from npeff.run.perturb import _with_components

    t0 = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    inputs, s = _resolve_inputs(cfg.inputs), cfg.compare_coar
    for key in ("checkpoint", "coeffs", "pefs", "attributions"):
        if inputs.get(key) in (None, "", "???"):
            raise ValueError(
                f"npeff-compare-coar needs inputs.{key}=<path> (or inputs.run=<an npeff run dir>)"
            )
    att = load_attributions(inputs.attributions)
    k = int(s.top_units)
    if not 1 <= k <= att.n_units:
        raise ValueError(f"compare_coar.top_units={k} must be in 1..{att.n_units} (the units)")
    if int(s.n_random) < 0 or int(s.top_examples) < 1:
        raise ValueError("compare_coar.n_random must be >= 0 and compare_coar.top_examples >= 1")
    pefs = load_pefs(inputs.pefs)
    dec, _ = _with_components(cfg, load_decomposition(inputs.coeffs))
    if dec.n_examples != pefs.n_examples:
        raise ValueError(
            f"the coefficients have {dec.n_examples} rows but {inputs.pefs} holds "
            f"{pefs.n_examples} PEFs; pass the PEF file the coefficients were fitted to"
        )
    loaded = load_checkpoint(inputs.checkpoint)
    check_same_model(att, pefs, loaded)
    layout = dec.layout or pefs.layout
    if layout is None:
        raise ValueError("neither the coefficient file nor the PEF file stores a parameter layout")
    missing = [p for p in att.units.params if p not in layout.names]
    if missing:
        raise ValueError(
            f"the NPEFF run's PEFs do not cover the unit weights {missing[:5]}: compute the PEFs "
            "on parameters that include every COAR unit (pefs params.include), or run npeff-coar "
            "with units inside the PEFs' parameters"
        )
    split = cfg.get("split") or _split_of(pefs.metadata or {})
    att_split = (_att_config(att).get("coar") or {}).get("split")
    if not split:
        raise ValueError("cannot tell the PEF file's split from its metadata; pass split=eval")
    if att_split and att_split != split:
        raise ValueError(
            f"the attributions are of split {att_split!r} but the NPEFF coefficients of split "
            f"{split!r}: run npeff-coar with coar.split={split}"
        )
    common, rows_w, rows_a = align_examples(pefs.source_indices, att.example_indices)
    if not np.array_equal(np.asarray(pefs.labels).reshape(-1)[rows_w], att.labels[rows_a]):
        raise ValueError(
            "the labels of the shared examples differ between the PEF file and the attributions: "
            "they do not index the same examples of the split"
        )
    res = None
    if inputs.get("perturbation"):
        from npeff.artifacts.perturbation import load_perturbation

        res = load_perturbation(inputs.perturbation)
    dsf = None
    if dec.kind == "diag" and res is not None:
        path = inputs.get("dataset_fisher") or (res.metadata.get("source") or {}).get(
            "dataset_fisher"
        )
        if path and Path(str(path)).is_file():
            dsf = np.asarray(load_dataset_fisher(path)).reshape(-1)
        else:
            log.warning("no dataset Fisher for the D-NPEFF perturbations: no per-example KL")

    model = loaded.model.eval()
    positions = pefs.source_indices
    loader = loaded.task.dataloader(split, batch_size=int(s.batch_size))
    if np.array_equal(positions, np.arange(len(positions))):
        cache = ExampleCache(loader, n_examples=dec.n_examples)
    else:
        cache = ExampleCache(loader, n_examples=int(positions.max()) + 1).subset(
            positions, int(s.batch_size)
        )
    if not np.array_equal(cache.labels.numpy(), np.asarray(pefs.labels).reshape(-1)):
        raise ValueError(
            f"the labels of split {split!r} differ from the PEF file's: pass the split and "
            "checkpoint the PEFs were computed with"
        )
    result = compare(
        model=model,
        cache=cache,
        dec=dec,
        pefs=pefs,
        att=att,
        rows_w=rows_w,
        rows_a=rows_a,
        settings=OmegaConf.to_container(s, resolve=True),
        perturbation=res,
        dataset_fisher=dsf,
        progress=bool(cfg.get("progress", True)),
    )
    result["split"] = split
    result["sources"] = {
        k: (None if inputs.get(k) is None else str(inputs.get(k)))
        for k in ("checkpoint", "coeffs", "decomposition", "pefs", "perturbation", "attributions")
    }
    result["seconds"] = time.perf_counter() - t0
    write_json_atomic(output_dir / JSON_NAME, _finite(result))

    coar_html = ""
    coar_json = Path(str(inputs.attributions)).parent / "coar.json"
    if s.get("coar_section", True) and coar_json.is_file():
        from npeff.report.coar import coar_section

        coar_html = coar_section(json.loads(coar_json.read_text()), att)
    with atomic_path(output_dir / SECTION_NAME) as tmp:
        tmp.write_text(section_html(result, coar_html), encoding="utf-8")

    metrics = {k: v for k, v in result.items() if k != "components"}
    metrics["section"] = str(output_dir / SECTION_NAME)
    metrics = _finite(metrics)
    write_metrics(output_dir, metrics)
    log_stage_metrics(cfg, output_dir, metrics, "compare_coar")
    log.info(
        "NPEFF vs COAR: %d components, mean Spearman coef~|true effect| %s (random %s), "
        "COAR-predicted %s; KL~|true| %s",
        result["n_components"],
        metrics.get("spearman_true_mean"),
        metrics.get("spearman_random_mean"),
        metrics.get("spearman_coar_mean"),
        metrics.get("kl_spearman_true_mean"),
    )
    return metrics


# inputs.run=<npeff run dir>: where the pipeline puts each input (step/file)
RUN_LAYOUT = {
    "checkpoint": "train/model.ckpt",
    "coeffs": "fit/coeffs.h5",
    "pefs": "pefs_eval/pefs.h5",
    "perturbation": "perturb/perturbation.h5",
    "dataset_fisher": "pefs_fit/dsf.h5",
    "attributions": "coar/attributions.h5",
}


def _resolve_inputs(inputs: DictConfig) -> DictConfig:
    """``inputs`` with the files of ``inputs.run`` (an ``npeff`` run dir) filled in where unset."""
    run_dir = inputs.get("run")
    out = OmegaConf.to_container(inputs, resolve=True)
    if run_dir in (None, ""):
        return OmegaConf.create(out)
    run_dir = Path(str(run_dir))
    if not run_dir.is_dir():
        raise ValueError(f"inputs.run={run_dir} is not a directory (an npeff run dir)")
    for key, rel in RUN_LAYOUT.items():
        if out.get(key) in (None, "", "???") and (run_dir / rel).is_file():
            out[key] = str(run_dir / rel)
    train = run_dir / "train" / "metrics.json"
    if out.get("checkpoint") in (None, "", "???") and train.is_file():  # a cached training run
        ckpt = json.loads(train.read_text()).get("checkpoint")
        if ckpt and Path(ckpt).is_file():
            out["checkpoint"] = str(ckpt)
    return OmegaConf.create(out)


def _att_config(att) -> dict:
    """The run config stored with the attributions (npeff-coar's), or {}."""
    from npeff.artifacts.coar import read_header

    try:
        return (read_header(att.path).get("config") or {}) if att.path else {}
    except (OSError, ValueError, KeyError):
        return {}


def _finite(x: Any) -> Any:
    from npeff.run.perturb import _finite_or_none

    return _finite_or_none(x)


main = stage_main("compare_coar", run, single_process=True)


if __name__ == "__main__":
    main()
