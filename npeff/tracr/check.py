"""The tracr step of the pipeline: compile when needed, then the ground-truth checks.

:func:`ensure_model` exports the program when ``model.path`` names a file that does not exist
yet (needs the ``tracr`` extra). :func:`run` (after the fit step) writes ``tracr_check.json``:
fidelity figures from the file, the model's accuracy at its output temperature, the concept /
variable table, and the layer check (:mod:`npeff.tracr.layers`). Its tables go into the report.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from npeff.artifacts.atomic import write_json_atomic

log = logging.getLogger(__name__)


def ensure_model(cfg: DictConfig) -> None:
    """Compile ``cfg.tracr_compile.program`` into ``model.path`` when that file is missing."""
    path = cfg.model.get("path")
    if not path or Path(str(path)).is_file():
        return

    from npeff.tracr.compile import compile_and_export

    options = OmegaConf.to_container(cfg.get("tracr_compile") or {}, resolve=True)
    base = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "tracr_compile.yaml")
    base.pop("defaults", None)
    merged = OmegaConf.merge(base, options)
    log.info("model.path %s does not exist: compiling program %s", path, merged.program)
    compile_and_export(merged, path)


def run(
    cfg: DictConfig,
    output_dir: Path,
    checkpoint: Path,
    decomposition: Path,
    coeffs: Path,
    split: str = "eval",
) -> dict:
    """Write ``tracr_check.json`` into ``output_dir`` and return its headline numbers.

    ``coeffs`` holds W of the ``split`` examples (the pipeline: eval coefficients with G frozen;
    the decomposition itself with ``split="fit"``)."""
    from npeff.analysis.concepts import analyze_concepts
    from npeff.artifacts.decomposition import load_decomposition
    from npeff.models import load_checkpoint
    from npeff.tracr.layers import layer_check, variable_masks

    output_dir = Path(output_dir)
    loaded = load_checkpoint(checkpoint)
    task, model = loaded.task, loaded.model
    export = task.export
    rc = cfg.get("tracr_check") or {}
    # the same k as the report's concept statistic (one setting: stages.report.report.concept_top_k)
    k = int(OmegaConf.select(cfg, "stages.report.report.concept_top_k", default=None) or 128)
    n_shuffles = int(rc.get("n_shuffles", 20))

    # accuracy at the output temperature
    batch = task.tensors(split)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"])
    y = batch["labels"]
    p = torch.softmax(logits, -1)
    accuracy = float((logits.argmax(-1) == y).float().mean())
    mean_p = float(p[torch.arange(len(y)), y].mean())

    dec = load_decomposition(decomposition)
    W = np.asarray(load_decomposition(coeffs).W)
    concepts = task.concepts(split)[: W.shape[0]]
    names = task.concept_names
    analysis = analyze_concepts(W, concepts, names, k=k, n_shuffles=n_shuffles, seed=0)
    within = analyze_concepts(
        W,
        concepts,
        names,
        k=k,
        n_shuffles=n_shuffles,
        seed=0,
        strata=task.labels(split)[: W.shape[0]],
    )
    base_rates = dict(zip(names, concepts.mean(axis=0).tolist()))
    shared = [c.shared_concepts for c in analysis.components]

    layers = None
    if dec.G is not None and dec.layout is not None:
        masks = variable_masks(export, dec.layout)
        layers = layer_check(dec.G, dec.new_to_old_col_indices, masks, shared, base_rates)

    blocks = task.variable_blocks()
    table = []
    for i, name in enumerate(names):
        parts = name.split("&")
        table.append(
            {
                "concept": name,
                "base_rate": round(float(concepts[:, i].mean()), 4),
                "components_sharing": int(sum(name in s for s in shared)),
                "blocks": " + ".join(sorted({b for p_ in parts for b in blocks[p_]})),
            }
        )
    fid = dict(export.meta.get("fidelity", {}))
    out = {
        "program": export.program,
        "uid": export.uid,
        "temperature": float(model.temperature),
        "accuracy": accuracy,
        "mean_p_label": mean_p,
        "tracr_port_max_abs_err": fid.get("port_max_abs_err"),
        "tracr_rasp_agreement": fid.get("rasp_agreement"),
        "tracr_rasp_n_inputs": fid.get("rasp_n_inputs"),
        "tracr_rasp_exhaustive": fid.get("rasp_exhaustive"),
        "concept_top_k": analysis.top_k,
        "concept_components": analysis.n_all_share,
        "concept_components_shuffled": float(analysis.shuffled_n_all_share.mean()),
        "concept_components_within_label_shuffled": float(within.shuffled_n_all_share.mean()),
        "n_components": analysis.n_components,
        "n_examples": int(W.shape[0]),
        "paper": {"32": "30/32", "128": "92/128", "n_examples": 1616, "top_k": 128},
        "concept_table": table,
        "layer_check": layers,
    }
    out["report_tables"] = report_tables(out)
    write_json_atomic(output_dir / "tracr_check.json", out)
    log.info(
        "tracr: %d/%d components share a concept in their top %d (shuffled %.1f); layer share %s",
        out["concept_components"],
        out["n_components"],
        k,
        out["concept_components_shuffled"],
        None if layers is None else round(layers["unit_share_mean"] or 0, 3),
    )
    flat = {key: v for key, v in out.items() if not isinstance(v, (list, dict))}
    if layers:
        flat.update({f"layer_{key}": v for key, v in layers.items() if key != "components"})
    return flat


def report_tables(check: dict) -> dict[str, list[tuple[str, str]]]:
    """The check's tables as (row name, value) lists for the HTML report."""
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    head = [
        (key, fmt(check[key]))
        for key in (
            "program",
            "temperature",
            "accuracy",
            "mean_p_label",
            "tracr_port_max_abs_err",
            "tracr_rasp_agreement",
            "tracr_rasp_n_inputs",
            "concept_top_k",
            "concept_components",
            "concept_components_shuffled",
            "concept_components_within_label_shuffled",
            "n_components",
            "n_examples",
        )
    ]
    head.append(("paper (32 / 128 components, 1,616 examples)", "30/32, 92/128"))
    tables = {"tracr ground truth": head}
    rows = [
        (
            r["concept"],
            f"base rate {r['base_rate']:.3f}; {r['components_sharing']} components; {r['blocks']}",
        )
        for r in check["concept_table"]
        if r["components_sharing"] > 0 or "&" not in r["concept"]
    ]
    tables["concepts / RASP variables (components whose top-k all hold it; writing blocks)"] = rows
    lc = check.get("layer_check")
    if lc:
        tables["layer check (share of pseudo-Fisher mass)"] = [
            (key, fmt(lc[key]))
            for key in (
                "n_components_checked",
                "block_share_mean",
                "block_share_other_variables_mean",
                "block_param_fraction_mean",
                "unit_share_mean",
                "unit_share_other_variables_mean",
            )
        ]
    return tables
