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

from npeff import config_dir
from npeff.artifacts.tracr_check import save_tracr_check

log = logging.getLogger(__name__)


def ensure_model(model_cfg: DictConfig, options: DictConfig | dict | None = None) -> None:
    """Compile ``options.program`` (settings of ``conf/tracr_compile.yaml``; the pipeline's
    ``steps.tracr_compile``) into ``model_cfg.path`` when that file is missing."""
    path = model_cfg.get("path")
    if not path or Path(str(path)).is_file():
        return

    from npeff.tracr.compile import compile_and_export

    options = OmegaConf.to_container(OmegaConf.create(dict(options or {})), resolve=True)
    options.pop("enabled", None)
    base = OmegaConf.load(config_dir() / "tracr_compile.yaml")
    base.pop("defaults", None)
    merged = OmegaConf.merge(base, options)
    log.info("model.path %s does not exist: compiling program %s", path, merged.program)
    compile_and_export(merged, path)


PAPER = {32: "30/32", 128: "92/128"}  # paper §3.2, 1,616 examples, top 128


def run(
    settings: DictConfig | dict,
    output_dir: Path,
    checkpoint: Path,
    decomposition: Path,
    coeffs: Path,
    split: str = "eval",
    extra: dict | None = None,
    concept_top_k: int = 128,
) -> dict:
    """Write ``tracr_check.json`` into ``output_dir`` and return its headline numbers.

    ``coeffs`` holds W of the ``split`` examples (the pipeline: eval coefficients with G frozen;
    the decomposition itself with ``split="fit"``). ``extra``: ``{n_components: (decomposition,
    coeffs)}`` of further decompositions of the same PEFs (the pipeline's
    ``steps.tracr_check.extra_n_components``); each gets the concept statistic and the layer check too
    (``by_n_components``)."""
    from npeff.tasks.checkpoint import load_checkpoint

    output_dir = Path(output_dir)
    loaded = load_checkpoint(checkpoint)
    task, model = loaded.task, loaded.model
    export = task.export
    # ``concept_top_k``: the same k as the report's concept statistic (stages.report.concept_top_k)
    k = int(concept_top_k)
    n_shuffles = int((settings or {}).get("n_shuffles", 20))

    # accuracy at the output temperature
    batch = task.tensors(split)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"])
    y = batch["labels"]
    p = torch.softmax(logits, -1)
    accuracy = float((logits.argmax(-1) == y).float().mean())
    mean_p = float(p[torch.arange(len(y)), y].mean())

    main = _decomposition_check(task, split, decomposition, coeffs, k, n_shuffles)
    by_n = {main["n_components"]: main}
    for path_d, path_w in (extra or {}).values():
        one = _decomposition_check(task, split, path_d, path_w, k, n_shuffles)
        by_n[one["n_components"]] = one

    names = task.concept_names
    concepts = task.concepts(split)
    blocks = task.variable_blocks()
    table = []
    for i, name in enumerate(names):
        parts = name.split("&")
        table.append(
            {
                "concept": name,
                "base_rate": round(float(concepts[:, i].mean()), 4),
                "components_sharing": int(sum(name in s for s in main["shared"])),
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
        "concept_top_k": main["concept_top_k"],
        "concept_components": main["concept_components"],
        "concept_components_shuffled": main["concept_components_shuffled"],
        "concept_components_within_label_shuffled": main[
            "concept_components_within_label_shuffled"
        ],
        "concept_components_true_or_false": main["concept_components_true_or_false"],
        "concept_components_true_or_false_shuffled": main[
            "concept_components_true_or_false_shuffled"
        ],
        "n_components": main["n_components"],
        "n_examples": main["n_examples"],
        "paper": {"32": "30/32", "128": "92/128", "n_examples": 1616, "top_k": 128},
        "concept_table": table,
        "layer_check": main["layer_check"],
        "by_n_components": {
            str(r): {key: v for key, v in d.items() if key != "shared"}
            for r, d in sorted(by_n.items())
        },
    }
    out["report_tables"] = report_tables(out)
    save_tracr_check(output_dir, out)
    for r, d in sorted(by_n.items()):
        lc = d["layer_check"]
        log.info(
            "tracr: %d/%d components share a concept in their top %d (shuffled %.1f, within-label"
            " %.1f; paper %s); layer unit share %s",
            d["concept_components"],
            r,
            k,
            d["concept_components_shuffled"],
            d["concept_components_within_label_shuffled"],
            PAPER.get(r, "-"),
            None if lc is None else round(lc["unit_share_mean"] or 0, 3),
        )
    flat = {key: v for key, v in out.items() if not isinstance(v, (list, dict))}
    layers = main["layer_check"]
    if layers:
        flat.update({f"layer_{key}": v for key, v in layers.items() if key != "components"})
    flat["by_n_components"] = {r: _summary(d) for r, d in out["by_n_components"].items()}
    return flat


def _summary(d: dict) -> dict:
    """The headline numbers of one decomposition's check (no per-component rows)."""
    out = {key: v for key, v in d.items() if not isinstance(v, (list, dict))}
    lc = d.get("layer_check")
    if lc:
        out.update({f"layer_{key}": v for key, v in lc.items() if key != "components"})
    return out


def _decomposition_check(task, split, decomposition, coeffs, k: int, n_shuffles: int) -> dict:
    """Concept statistic (with shuffled and within-label controls) and layer check of one
    decomposition, on the coefficients ``coeffs`` of the ``split`` examples."""
    from npeff.analysis.concepts import analyze_concepts
    from npeff.artifacts.decomposition import load_decomposition
    from npeff.tracr.layers import layer_check, variable_masks

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
    # beyond the paper's protocol: a variable's False value as a concept too (tracr writes a
    # boolean as two residual directions, <var>:True and <var>:False, from the same MLP)
    n_vars = len(task.export.variable_names)
    both = np.concatenate([concepts, ~concepts[:, :n_vars]], axis=1)
    both_names = names + [f"not {v}" for v in names[:n_vars]]
    with_false = analyze_concepts(W, both, both_names, k=k, n_shuffles=n_shuffles, seed=0)
    layers = None
    if dec.G is not None and dec.layout is not None:
        masks = variable_masks(task.export, dec.layout)
        layers = layer_check(dec.G, dec.new_to_old_col_indices, masks, shared, base_rates)
    return {
        "concept_top_k": analysis.top_k,
        "concept_components": analysis.n_all_share,
        "concept_components_shuffled": float(analysis.shuffled_n_all_share.mean()),
        "concept_components_within_label_shuffled": float(within.shuffled_n_all_share.mean()),
        "concept_components_true_or_false": with_false.n_all_share,
        "concept_components_true_or_false_shuffled": float(with_false.shuffled_n_all_share.mean()),
        "n_components": int(analysis.n_components),
        "n_examples": int(W.shape[0]),
        "paper": PAPER.get(int(analysis.n_components)),
        "layer_check": layers,
        "shared": shared,
    }


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
            "concept_components_true_or_false",
            "concept_components_true_or_false_shuffled",
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
    by_n = check.get("by_n_components") or {}
    if len(by_n) > 1:
        rows = []
        for r, d in by_n.items():
            lcr = d.get("layer_check") or {}
            rows.append(
                (
                    f"{r} components",
                    f"{d['concept_components']}/{r} share a concept in their top "
                    f"{d['concept_top_k']} (shuffled {d['concept_components_shuffled']:.1f}, "
                    f"within-label {d['concept_components_within_label_shuffled']:.1f}; paper "
                    f"{d.get('paper') or '-'}); counting False values too "
                    f"{d['concept_components_true_or_false']}/{r} (shuffled "
                    f"{d['concept_components_true_or_false_shuffled']:.1f}); layer check unit share "
                    f"{fmt(lcr.get('unit_share_mean'))} vs other variables "
                    f"{fmt(lcr.get('unit_share_other_variables_mean'))}",
                )
            )
        tables["concept statistic by number of components"] = rows
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
