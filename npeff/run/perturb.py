"""Stage ``npeff-perturb``: guided perturbations of NPEFF components and their evaluation.

Inputs: a model checkpoint, a coefficient (or decomposition) file whose W rows are the evaluation
examples, and the PEF file of the same examples (dense norms, labels, logits); D-NPEFF also needs
the dataset-level diagonal Fisher. The model is loaded once; its unperturbed logits are computed
once; every component is perturbed with both signs. Writes ``perturbation.h5`` (the
:class:`PerturbationResult`), ``perturbation.json`` (per-component figures and medians) and
``metrics.json``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from npeff.artifacts.atomic import json_ready, write_json_atomic
from npeff.artifacts.coefficients import with_components
from npeff.artifacts.perturbation import save_perturbation
from npeff.errors import NpeffUserError
from npeff.perturb.components import perturb_diag, perturb_lrm
from npeff.perturb.evaluation import EvalSettings, PerturbationEvaluator
from npeff.perturb.examples import ExampleCache
from npeff.perturb.flawed import accuracy_changes, expansion_components, select_flawed_components
from npeff.perturb.summary import summarize
from npeff.perturb.targeting import KlTargetSettings
from npeff.run.common import (
    log_stage_metrics,
    stage_main,
    write_metrics,
)

log = logging.getLogger(__name__)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run(cfg: DictConfig, output_dir: str | Path) -> dict:
    """Run the perturbation stage; returns the metrics (also written to ``metrics.json``)."""
    from npeff.artifacts.decomposition import load_decomposition
    from npeff.artifacts.pefs import load_dataset_fisher, load_pefs, pefs_split
    from npeff.tasks.checkpoint import load_checkpoint

    t0 = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    pc = cfg.perturb
    if pc.kind not in ("lrm", "diag"):
        raise NpeffUserError(f"perturb.kind must be 'lrm' or 'diag', got {pc.kind!r}")

    dec, comp = with_components(
        load_decomposition(cfg.inputs.coeffs), cfg.inputs.get("decomposition"), cfg.inputs.coeffs
    )
    pefs = load_pefs(cfg.inputs.pefs)
    if dec.kind != pc.kind:
        raise NpeffUserError(
            f"{cfg.inputs.coeffs} holds a {dec.kind!r} decomposition but perturb.kind is "
            f"{pc.kind!r}; pass perturb={dec.kind}"
        )
    if dec.n_examples != pefs.n_examples:
        raise NpeffUserError(
            f"the coefficients have {dec.n_examples} rows but {cfg.inputs.pefs} holds "
            f"{pefs.n_examples} PEFs; pass the PEF file the coefficients were fitted to"
        )
    layout = dec.layout or pefs.layout
    if layout is None:
        raise NpeffUserError(
            "neither the coefficient file nor the PEF file stores a parameter layout"
        )
    if layout.n_parameters != dec.n_parameters:
        raise NpeffUserError(
            f"the layout has {layout.n_parameters} parameters but the decomposition "
            f"{dec.n_parameters}"
        )

    loaded = load_checkpoint(cfg.inputs.checkpoint)  # the only model load of the stage
    model = loaded.model.to(_device(cfg.get("device", "cpu"))).eval()
    split = pefs_split(pefs, cfg.get("split"))
    loader = loaded.task.dataloader(split, batch_size=int(pc.batch_size))
    positions = pefs.source_indices  # rows of W / the PEF file → positions in the split
    if np.array_equal(positions, np.arange(len(positions))):
        cache = ExampleCache(loader, n_examples=dec.n_examples)
    else:
        n_needed = int(positions.max()) + 1 if len(positions) else 0
        cache = ExampleCache(loader, n_examples=n_needed).subset(positions, int(pc.batch_size))
    from npeff.fisher.lm_classes import stored_labels  # label_words files store label indices

    want = stored_labels(cache.labels.numpy(), pefs.metadata)
    if not np.array_equal(want, np.asarray(pefs.labels).reshape(-1)):
        raise NpeffUserError(
            f"the labels of the first {cache.n} examples of split {split!r} differ from the PEF "
            "file's; pass the split (and checkpoint) the PEFs were computed with"
        )
    settings = EvalSettings(
        n_top=int(pc.n_top),
        n_baseline=int(pc.n_baseline),
        seed=int(pc.seed),
        batch_size=int(pc.batch_size),
        eval_all=bool(pc.eval_all),
        cache_prefix=bool(pc.get("cache_prefix", True)),
        sets_per_forward=int(pc.get("sets_per_forward", 1)),
    )
    progress = bool(cfg.get("progress", True))
    ev = PerturbationEvaluator(model, cache, layout, dec.W, pefs.norms, settings, progress=progress)
    logit_diff = None
    if pefs.logits is not None and np.shape(pefs.logits) == tuple(ev.base_logits.shape):
        logit_diff = float(np.abs(np.asarray(pefs.logits) - ev.base_logits.numpy()).max())
        if logit_diff > 1e-3 * (1 + float(np.abs(pefs.logits).max())):
            log.warning(
                "the model's logits differ from the PEF file's by up to %.3g: is this the "
                "checkpoint the PEFs were computed with?",
                logit_diff,
            )

    components = None if pc.components is None else [int(j) for j in pc.components]
    flawed_info = None
    if pc.select == "flawed":
        candidates = expansion_components(dec, comp, pc.flawed.get("expansion_components"))
        if components is not None:
            candidates = [j for j in candidates if j in set(components)]
        preds = ev.base_logits.argmax(-1).numpy()
        components = select_flawed_components(
            dec.W,
            candidates,
            ev.labels,
            preds,
            n_top=int(pc.flawed.n_top),
            min_incorrect=int(pc.flawed.min_incorrect),
        ).tolist()
        flawed_info = {"candidates": candidates, "selected": components}
        log.info(
            "flawed heuristics: %d of %d expansion components", len(components), len(candidates)
        )
    elif pc.select != "all":
        raise NpeffUserError(f"perturb.select must be 'all' or 'flawed', got {pc.select!r}")

    if pc.kind == "lrm":
        res = perturb_lrm(
            ev,
            dec,
            components,
            magnitude=float(pc.magnitude),
            tau=None if pc.tau is None else float(pc.tau),
            progress=progress,
        )
    else:
        if not cfg.inputs.get("dataset_fisher"):
            raise NpeffUserError(
                "D-NPEFF perturbations need the dataset-level diagonal Fisher: pass "
                "inputs.dataset_fisher=<dsf.h5> (npeff-pefs fisher=diag fisher.dataset_fisher=true)"
            )
        kt = pc.kl_target
        res = perturb_diag(
            ev,
            dec,
            load_dataset_fisher(cfg.inputs.dataset_fisher),
            components,
            kl_settings=KlTargetSettings(
                min_kl=float(kt.min_kl),
                max_kl=float(kt.max_kl),
                delta_range=tuple(float(x) for x in kt.delta_range),
                lambda_range=tuple(float(x) for x in kt.lambda_range),
                max_iters=int(kt.max_iters),
                max_backoffs=int(kt.max_backoffs),
            ),
            fisher_floor=float(pc.fisher_floor),
            seed=int(pc.seed),
            progress=progress,
        )

    res.metadata.update(
        split=split,
        source={
            "checkpoint": str(cfg.inputs.checkpoint),
            "coeffs": str(cfg.inputs.coeffs),
            "decomposition": cfg.inputs.get("decomposition"),
            "pefs": str(cfg.inputs.pefs),
            "dataset_fisher": cfg.inputs.get("dataset_fisher"),
        },
        config=OmegaConf.to_container(pc, resolve=True),
        max_abs_logit_diff_vs_pefs=logit_diff,
    )
    if flawed_info is not None:
        res.metadata["flawed"] = flawed_info
    save_perturbation(res, output_dir / "perturbation.h5")

    summary = summarize(res)
    if flawed_info is not None:
        summary["flawed"] = dict(flawed_info)
        if pc.eval_all:
            summary["flawed"].update(
                accuracy_changes(res, threshold=float(pc.flawed.accuracy_threshold))
            )
    write_json_atomic(output_dir / "perturbation.json", json_ready(summary))

    metrics = {
        k: summary[k]
        for k in (
            "kind",
            "n_components",
            "kl_ratio_median",
            "pef_norm_ratio_median",
            "frac_kl_ratio_above_norm_ratio",
            "log2_kl_ratio_median",
            "log2_pef_norm_ratio_median",
            "n_components_scored",
            "acc_all_before",
            "n_baseline",
            "n_top",
        )
    }
    metrics["n_examples"] = cache.n
    metrics["runtime_s"] = time.perf_counter() - t0
    metrics["n_skipped_components"] = len(res.metadata.get("skipped_components", []))
    if flawed_info is not None:
        metrics["n_flawed_selected"] = len(flawed_info["selected"])
        if "n_raising_accuracy" in summary["flawed"]:
            metrics["n_components_raising_accuracy"] = summary["flawed"]["n_raising_accuracy"]
    metrics = json_ready(metrics)
    write_metrics(output_dir, metrics)
    log_stage_metrics(cfg, output_dir, metrics, "perturb")
    log.info(
        "perturbed %d components: median KL ratio %s, median PEF-norm ratio %s",
        metrics["n_components"],
        metrics["kl_ratio_median"],
        metrics["pef_norm_ratio_median"],
    )
    return metrics


main = stage_main("perturb", run, single_process=True)


if __name__ == "__main__":
    main()
