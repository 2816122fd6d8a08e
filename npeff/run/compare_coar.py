"""Stage ``npeff-compare-coar``: NPEFF vs COAR on one model (seed-systems.md §4.4).

    npeff-compare-coar inputs.checkpoint=<model.ckpt> inputs.coeffs=<fit/coeffs.h5> \\
        inputs.pefs=<pefs_eval/pefs.h5> inputs.perturbation=<perturb/perturbation.h5> \\
        inputs.attributions=<npeff-coar run>/attributions.h5
    npeff experiment=coar_compare_s4        # the same inside the pipeline (steps.coar_compare.enabled)

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

import numpy as np
from omegaconf import DictConfig, OmegaConf

from npeff.artifacts.atomic import atomic_path, json_ready, write_json_atomic
from npeff.artifacts.coar_summary import coar_summary_path
from npeff.errors import NpeffUserError
from npeff.run.common import log_stage_metrics, stage_main, write_metrics

log = logging.getLogger(__name__)
JSON_NAME = "compare_coar.json"
SECTION_NAME = "section.html"


def check_same_model(att, pefs, loaded) -> None:
    """The checkpoint must be the model of both the attributions and the PEF file (by file hash
    and, for the attributions, by weights); clear errors otherwise."""
    from npeff.models.identity import check_identity

    fix = (
        "NPEFF and COAR must be compared on the same checkpoint; run npeff-coar "
        "inputs.checkpoint=<the NPEFF run's model.ckpt> coar.split=eval (or npeff ... "
        "steps.coar_compare.enabled=true)"
    )
    check_identity(
        att.model_identity, f"the attributions {att.path}", fix, loaded.path, loaded.model
    )
    att.units.check_model(loaded.model)
    pid = (pefs.metadata or {}).get("model_identity")
    check_identity(pid, "the PEFs (and the NPEFF run)", fix, loaded.path)


def align_examples(
    pef_positions: np.ndarray, att_positions: np.ndarray, min_examples: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Examples both files cover: (split positions, rows of W, rows of the attributions)."""
    pef_positions = np.asarray(pef_positions, dtype=np.int64)
    att_positions = np.asarray(att_positions, dtype=np.int64)
    common, rows_w, rows_a = np.intersect1d(pef_positions, att_positions, return_indices=True)
    if len(common) < min_examples:
        raise NpeffUserError(
            f"the PEF file and the attributions share only {len(common)} examples of the split "
            f"(need ≥ {min_examples}): run npeff-coar on the split and examples of the NPEFF run "
            "(coar.split, coar.n_examples)"
        )
    return common, rows_w, rows_a


# --- the stage --------------------------------------------------------------------------------
def run(cfg: DictConfig, output_dir: str | Path) -> dict:
    """Run the stage; returns its metrics (also in ``metrics.json``)."""
    from npeff.artifacts.coefficients import with_components
    from npeff.artifacts.decomposition import load_decomposition
    from npeff.artifacts.pefs import load_dataset_fisher, load_pefs, pefs_split
    from npeff.coar import load_attributions
    from npeff.coar.npeff_compare import compare_with_npeff
    from npeff.perturb.examples import ExampleCache
    from npeff.tasks.checkpoint import load_checkpoint

    t0 = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    inputs, s = _resolve_inputs(cfg.inputs), cfg.compare_coar
    for key in ("checkpoint", "coeffs", "pefs", "attributions"):
        if inputs.get(key) in (None, "", "???"):
            raise NpeffUserError(
                f"npeff-compare-coar needs inputs.{key}=<path> (or inputs.run=<an npeff run dir>)"
            )
    att = load_attributions(inputs.attributions)
    k = int(s.top_units)
    if not 1 <= k <= att.n_units:
        raise NpeffUserError(f"compare_coar.top_units={k} must be in 1..{att.n_units} (the units)")
    if int(s.n_random) < 0 or int(s.top_examples) < 1:
        raise NpeffUserError(
            "compare_coar.n_random must be >= 0 and compare_coar.top_examples >= 1"
        )
    pefs = load_pefs(inputs.pefs)
    dec, _ = with_components(
        load_decomposition(inputs.coeffs), inputs.get("decomposition"), inputs.coeffs
    )
    if dec.n_examples != pefs.n_examples:
        raise NpeffUserError(
            f"the coefficients have {dec.n_examples} rows but {inputs.pefs} holds "
            f"{pefs.n_examples} PEFs; pass the PEF file the coefficients were fitted to"
        )
    loaded = load_checkpoint(inputs.checkpoint)
    check_same_model(att, pefs, loaded)
    layout = dec.layout or pefs.layout
    if layout is None:
        raise NpeffUserError(
            "neither the coefficient file nor the PEF file stores a parameter layout"
        )
    missing = [p for p in att.units.params if p not in layout.names]
    if missing:
        raise NpeffUserError(
            f"the NPEFF run's PEFs do not cover the unit weights {missing[:5]}: compute the PEFs "
            "on parameters that include every COAR unit (pefs params.include), or run npeff-coar "
            "with units inside the PEFs' parameters"
        )
    split = pefs_split(pefs, cfg.get("split"))
    att_split = (_att_config(att).get("coar") or {}).get("split")
    if att_split and att_split != split:
        raise NpeffUserError(
            f"the attributions are of split {att_split!r} but the NPEFF coefficients of split "
            f"{split!r}: run npeff-coar with coar.split={split}"
        )
    common, rows_w, rows_a = align_examples(pefs.source_indices, att.example_indices)
    if not np.array_equal(np.asarray(pefs.labels).reshape(-1)[rows_w], att.labels[rows_a]):
        raise NpeffUserError(
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
        raise NpeffUserError(
            f"the labels of split {split!r} differ from the PEF file's: pass the split and "
            "checkpoint the PEFs were computed with"
        )
    result = compare_with_npeff(
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
    write_json_atomic(output_dir / JSON_NAME, json_ready(result))

    coar_html = ""
    coar_dir = Path(str(inputs.attributions)).parent
    if s.get("coar_section", True) and coar_summary_path(coar_dir).is_file():
        from npeff.artifacts.coar_summary import load_coar_summary
        from npeff.report.coar import coar_section

        coar_html = coar_section(load_coar_summary(coar_dir), att)
    from npeff.report.sections.compare_coar import compare_coar_section

    with atomic_path(output_dir / SECTION_NAME) as tmp:
        tmp.write_text(compare_coar_section(result, coar_html), encoding="utf-8")

    metrics = {k: v for k, v in result.items() if k != "components"}
    metrics["section"] = str(output_dir / SECTION_NAME)
    metrics = json_ready(metrics)
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
        raise NpeffUserError(f"inputs.run={run_dir} is not a directory (an npeff run dir)")
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


main = stage_main("compare_coar", run, single_process=True)


if __name__ == "__main__":
    main()
