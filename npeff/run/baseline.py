"""Stage ``npeff-baseline``: a baseline fitted on the ``fit`` split and applied to ``eval``.

    npeff-baseline baseline=kmeans inputs.checkpoint=<run dir of npeff-train>/model.ckpt
    npeff-baseline baseline=gradient_kmeans inputs.checkpoint=... gradient.n_values=5000
    npeff-baseline baseline=sae inputs.checkpoint=... sae.kind=l1

``kmeans`` and ``sae`` work on the activations of ``activations.module`` (captured into
``activations_<split>.h5``, resumable, unless ``inputs.activations_<split>`` gives them);
``gradient_kmeans`` on the normalized top-K gradients of the predicted class's log-probability
(``gradients_<split>.h5``, the PEF engine's streaming files). Writes ``baseline.h5`` (score
matrices of both splits), ``report.html`` (the existing report on the eval scores) and
``metrics.json``. The pipeline's comparison step (``run_comparison``) is here too.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from npeff.baselines import BASELINES
from npeff.baselines.fit import fit_baseline
from npeff.errors import NpeffUserError
from npeff.run.common import log_stage_metrics, stage_main, write_metrics

log = logging.getLogger(__name__)

SPLITS = ("fit", "eval")


def _check_name(cfg: DictConfig) -> str:
    name = str(cfg.baseline)
    if name not in BASELINES:
        raise NpeffUserError(f"unknown baseline {name!r}; choose one of {list(BASELINES)}")
    return name


def _loaders(cfg: DictConfig, task) -> dict[str, Any]:
    from npeff.run.pefs import build_loader

    n = cfg.get("n_examples") or {}
    return {s: build_loader(task, s, int(cfg.batch_size), n.get(s)) for s in SPLITS}


def module_choice(cfg: DictConfig, model) -> tuple[str, Any]:
    """(module name, token) from ``cfg.activations`` (``auto`` picks a layer near the output)."""
    from npeff.baselines.capture import check_token, default_module, resolve_module

    name = str(cfg.activations.module)
    name = default_module(model) if name == "auto" else name
    resolve_module(model, name)
    return name, check_token(cfg.activations.token)


def capture_splits(cfg: DictConfig, output_dir: Path, loaded=None, loaders=None) -> dict[str, Path]:
    """Activation files of both splits (given in ``inputs`` or captured into ``output_dir``)."""
    from npeff.baselines.capture import capture_activations, probe
    from npeff.tasks.checkpoint import load_checkpoint

    given = {s: cfg.inputs.get(f"activations_{s}") for s in SPLITS}
    if all(given.values()):
        return {s: Path(str(p)) for s, p in given.items()}
    loaded = loaded or load_checkpoint(cfg.inputs.checkpoint)
    loaders = loaders or _loaders(cfg, loaded.task)
    module, token = module_choice(cfg, loaded.model)
    probe(loaded.model, loaders["fit"], module, token)  # a non-tensor output fails here
    out = {}
    for s in SPLITS:
        out[s] = capture_activations(
            loaded.model,
            loaders[s],
            Path(output_dir) / f"activations_{s}.h5",
            module,
            token,
            metadata={"split": s, "checkpoint": str(loaded.path)},
            progress=bool(cfg.get("progress", True)),
        )
    return out


def _features(cfg: DictConfig, name: str, output_dir: Path, loaded, loaders) -> dict[str, Any]:
    """Per split: (features [n, d] or CSR [n, m], labels [n], example indices [n])."""
    if name == "gradient_kmeans":
        from npeff.artifacts.pefs import load_pefs
        from npeff.baselines.gradients import compute_gradients, gradient_features

        params = cfg.get("params") or {}
        out = {}
        for s in SPLITS:
            path = compute_gradients(
                loaded.model,
                loaders[s],
                output_dir / f"gradients_{s}.h5",
                n_values=int(cfg.gradient.n_values),
                params=None if params.get("include") is None else list(params.include),
                exclude_params=None if params.get("exclude") is None else list(params.exclude),
                chunk_size=int(cfg.gradient.chunk_size),
                metadata={"split": s, "baseline": name},
                progress=bool(cfg.get("progress", True)),
            )
            p = load_pefs(path)
            out[s] = (gradient_features(p), np.asarray(p.labels), p.source_indices)
        return out
    from npeff.artifacts.activations import load_activations

    files = capture_splits(cfg, output_dir, loaded, loaders)
    out = {}
    for s in SPLITS:
        a = load_activations(files[s])
        out[s] = (a.features, a.labels, a.source_indices)
    return out


def _validate(cfg: DictConfig, name: str, loaded, loaders) -> None:
    """Every check that needs no real work: cluster count, module, SAE options."""
    from npeff.baselines.capture import probe
    from npeff.baselines.kmeans import check_n_clusters
    from npeff.baselines.sae import SAE_KINDS

    n_fit = len(loaders["fit"].dataset)
    if name in ("kmeans", "gradient_kmeans"):
        check_n_clusters(int(cfg.n_components), n_fit)
    if name == "sae":
        if str(cfg.sae.kind) not in SAE_KINDS:
            raise NpeffUserError(f"unknown sae.kind {cfg.sae.kind!r}; choose one of {SAE_KINDS}")
        if str(cfg.sae.kind) == "topk" and not 1 <= int(cfg.sae.k) <= int(cfg.n_components):
            raise NpeffUserError(
                f"sae.k={cfg.sae.k} must be between 1 and n_components={cfg.n_components}"
            )
    if name != "gradient_kmeans" and not all(cfg.inputs.get(f"activations_{s}") for s in SPLITS):
        module, token = module_choice(cfg, loaded.model)
        probe(loaded.model, loaders["fit"], module, token)


def run(cfg: DictConfig, output_dir: Path) -> dict:
    """Fit baseline ``cfg.baseline`` on ``fit``, apply it to ``eval``; write into ``output_dir``."""
    from npeff.artifacts.baseline import save_baseline
    from npeff.baselines.compare import concept_protocol
    from npeff.tasks.checkpoint import load_checkpoint

    name = _check_name(cfg)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    loaded = load_checkpoint(cfg.inputs.checkpoint)
    loaders = _loaders(cfg, loaded.task)
    _validate(cfg, name, loaded, loaders)

    feats = _features(cfg, name, output_dir, loaded, loaders)
    res, extra = fit_baseline(name, feats, cfg)
    res.metadata = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "checkpoint": str(loaded.path),
    }
    path = save_baseline(res, output_dir / "baseline.h5")

    task = loaded.task
    labels = feats["eval"][1]
    metrics: dict[str, Any] = {
        "baseline": name,
        "baseline_file": str(path),
        "n_components": res.n_components,
        "n_examples_fit": int(res.scores_fit.shape[0]),
        "n_examples_eval": int(res.scores_eval.shape[0]),
        **extra,
    }
    concepts = task.concepts("eval")
    rc = cfg.report
    if concepts is not None and concepts.shape[1] > 0:
        concepts = concepts[res.example_indices_eval]
        metrics.update(
            concept_protocol(
                res.scores_eval,
                concepts,
                list(task.concept_names),
                labels,
                rc.get("top_k"),
                int(rc.n_shuffles),
                int(cfg.seed),
            )
        )
    if rc.get("enabled", True):
        from npeff.report import build_report

        examples = task.examples("eval")
        build_report(
            coeffs=res.scores_eval,
            examples=[examples[i] for i in res.example_indices_eval],
            concepts=concepts,
            label_names=list(task.label_names),
            concept_names=list(task.concept_names) or None,
            output_dir=output_dir,
            title=f"{name} baseline",
            n_shuffles=int(rc.n_shuffles),
            n_display=int(rc.n_display),
            seed=int(cfg.seed),
            log_to_wandb=False,
            **({} if rc.get("top_k") is None else {"top_k": int(rc.top_k)}),
        )
        metrics["report"] = str(output_dir / "report.html")
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    write_metrics(output_dir, metrics)
    log_stage_metrics(cfg, output_dir, metrics, f"baseline_{name}")
    return metrics


def run_comparison(
    cfg: DictConfig,
    output_dir: Path,
    *,
    npeff_coeffs: str | Path,
    baselines: dict[str, str | Path],
    selectivity: dict | None = None,
) -> dict:
    """The comparison table of NPEFF and the baselines on the eval split → ``comparison.json``.

    ``cfg`` is a ``conf/baseline.yaml`` config (its ``activations``, ``compare``, ``report`` and
    ``inputs.checkpoint``); ``npeff_coeffs`` the eval coefficients (coeffs.h5) of NPEFF;
    ``baselines`` {name: baseline.h5}.
    """
    from npeff.artifacts.baseline import load_baseline
    from npeff.artifacts.comparison import save_comparison
    from npeff.artifacts.decomposition import load_decomposition
    from npeff.baselines.compare import MethodScores, compare_methods
    from npeff.baselines.tcav import feature_gradients
    from npeff.tasks.checkpoint import load_checkpoint

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    loaded = load_checkpoint(cfg.inputs.checkpoint)
    coeffs = load_decomposition(npeff_coeffs)
    n = coeffs.n_examples
    methods = {"npeff": MethodScores(np.asarray(coeffs.W))}
    for name, p in baselines.items():
        b = load_baseline(p)
        methods[name] = MethodScores(b.scores_eval, b.membership_eval)
    loader = _loaders(cfg, loaded.task)["eval"]
    if len(loader.dataset) != n:
        raise NpeffUserError(
            f"the NPEFF coefficients cover {n} eval examples but the eval split has "
            f"{len(loader.dataset)}; use the same n_examples for both"
        )
    cc = cfg.compare
    tcav_inputs = None
    if cc.get("tcav", True):
        module, token = module_choice(cfg, loaded.model)
        tcav_inputs = feature_gradients(loaded.model, loader, module, token)
    task = loaded.task
    concepts = task.concepts("eval")
    labels = (
        tcav_inputs[2]
        if tcav_inputs is not None
        else np.concatenate([np.asarray(b["labels"]) for b in loader])
    )
    table = compare_methods(
        methods,
        concepts=concepts[:n] if concepts is not None and concepts.shape[1] else None,
        concept_names=list(task.concept_names) or None,
        labels=labels,
        tcav_inputs=tcav_inputs,
        tcav_examples=int(cc.tcav_examples),
        tcav_random=int(cc.tcav_random),
        tcav_alpha=float(cc.tcav_alpha),
        top_k=cfg.report.get("top_k"),
        n_shuffles=int(cfg.report.n_shuffles),
        match_shuffles=int(cc.match_shuffles),
        seed=int(cfg.seed),
        selectivity=selectivity,
    )
    info = {
        "module": module_choice(cfg, loaded.model)[0],
        "token": str(cfg.activations.token),
        "n_examples": n,
        "tcav_alpha": float(cc.tcav_alpha),
        "tcav_examples": int(cc.tcav_examples),
        "tcav_random": int(cc.tcav_random),
    }
    path = save_comparison(output_dir, table, info)
    metrics = {"methods": table, "comparison": str(path), **info}
    write_metrics(output_dir, metrics)
    flat = {f"{m}/{k}": v for m, row in table.items() for k, v in row.items()}
    log_stage_metrics(cfg, output_dir, flat, "comparison")
    return metrics


main = stage_main("baseline", run)


if __name__ == "__main__":
    main()
