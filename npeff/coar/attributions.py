"""The COAR front door: ``compute_attributions`` (ablate → regress → evaluate) and
``load_attributions``.

    from npeff.coar import compute_attributions, load_attributions
    att = compute_attributions(model, loader, "attributions.h5", units="neurons", alpha=0.1,
                               n_masks=2000)
    att.weights   # float32 [n, |C|]: margin of example i gained by keeping unit c
    att.bias      # float32 [n]
    att.units     # npeff.models.units.UnitMap
    att.settings  # alpha, seed, solver, ...
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from npeff.analysis.top_examples import top_indices
from npeff.artifacts import coar as store
from npeff.coar import regression
from npeff.coar.ablation import AblationEngine, collect_batches, margin
from npeff.coar.baselines import gp_attributions, loo_attributions, loo_margins
from npeff.coar.dataset import run_ablations
from npeff.coar.evaluation import correlation_table, eval_alphas
from npeff.coar.masks import check_alpha, eval_stream, sample_masks
from npeff.errors import NpeffUserError
from npeff.models.core import LABELS_KEY, forward_logits
from npeff.models.identity import check_identity, weights_digest
from npeff.models.units import UnitMap, build_unit_map

DEFAULT_EVAL_FACTORS = (0.5, 1.0, 2.0, 4.0)


@dataclass
class Attributions:
    """Fitted COAR attributions of n examples over |C| units (see :func:`load_attributions`)."""

    weights: np.ndarray  # float32 [n, |C|]
    bias: np.ndarray  # float32 [n]
    units: UnitMap
    settings: dict
    labels: np.ndarray  # int64 [n]
    base_margins: np.ndarray  # float32 [n]
    example_indices: np.ndarray  # int64 [n]
    n_masks: int
    model_identity: dict
    path: Path | None = None
    eval: dict = field(default_factory=dict)

    @property
    def n_examples(self) -> int:
        return int(self.weights.shape[0])

    @property
    def n_units(self) -> int:
        return int(self.weights.shape[1])

    def predict(self, keep) -> np.ndarray:
        """Predicted margins ``[t, n]`` for keep-masks ``[t, |C|]``."""
        return regression.predict(self.weights, self.bias, keep)

    def top_units(self, example: int, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` units with the largest |attribution| for one example: ``(name, weight)``."""
        w = self.weights[int(example)]
        order = top_indices(np.abs(w)[:, None], k)[0]  # ties: the lower unit first
        return [(self.units.names[c], float(w[c])) for c in order]

    def check_model(self, model: nn.Module) -> None:
        """Fail clearly unless ``model`` is the model these attributions were computed on."""
        self.units.check_model(model)
        check_identity(
            self.model_identity,
            f"the attributions {self.path}",
            "pass that model's checkpoint, or recompute the attributions with npeff-coar",
            model=model,
        )


def load_attributions(path: str | os.PathLike) -> Attributions:
    """Read a fitted ``attributions.h5``; fails clearly on a foreign, unfinished or unfitted file."""
    d = store.read_attributions(path)
    return Attributions(
        weights=d.weights,
        bias=d.bias,
        units=UnitMap.from_json(d.unit_map_json),
        settings=d.settings,
        labels=d.labels,
        base_margins=d.base_margins,
        example_indices=d.example_indices,
        n_masks=d.n_masks,
        model_identity=d.model_identity,
        path=Path(path),
        eval=d.eval,
    )


def check_settings(
    unit_map: UnitMap, alpha, n_masks, solver, val_fraction, eval_factors
) -> tuple[float, int]:
    alpha = check_alpha(alpha)
    if int(n_masks) < 1:
        raise NpeffUserError(f"n_masks must be >= 1, got {n_masks}")
    if solver not in regression.SOLVERS:
        raise NpeffUserError(f"unknown solver {solver!r}; available: {list(regression.SOLVERS)}")
    if solver == "lstsq" and int(n_masks) < unit_map.n_units + 1:
        raise NpeffUserError(
            f"least squares on {unit_map.n_units} units needs at least {unit_map.n_units + 1} "
            f"masks; n_masks={n_masks}: raise n_masks or use solver=ridge / lasso"
        )
    if solver == "lasso" and not 0.0 < float(val_fraction) < 1.0:
        raise NpeffUserError(f"the lasso path needs val_fraction in (0, 1), got {val_fraction}")
    if eval_factors is not None:
        eval_alphas(alpha, eval_factors)
    return alpha, int(n_masks)


def compute_attributions(
    model: nn.Module,
    loader: Iterable[Mapping[str, torch.Tensor]],
    path: str | os.PathLike,
    *,
    units: Any,
    alpha: float = 0.1,
    n_masks: int = 1000,
    seed: int = 0,
    solver: str = "lstsq",
    ridge: float = 0.0,
    val_fraction: float = 0.1,
    lasso: Mapping | None = None,
    method: str = "auto",
    masks_per_forward: int = 32,
    chunk_masks: int = 64,
    devices: int = 1,
    num_nodes: int = 1,
    strategy: str = "ddp_spawn",
    accelerator: str = "cpu",
    evaluate: bool = True,
    eval_masks: int = 100,
    eval_factors: Iterable[float] | None = DEFAULT_EVAL_FACTORS,
    baselines: bool = True,
    metadata: Mapping | None = None,
    progress: bool = True,
) -> Attributions:
    """COAR on ``model`` over the examples of ``loader``; writes (or resumes) ``path``.

    1. ``n_masks`` keep-masks, each unit ablated with probability ``alpha``; margins of every
       example under every mask (batched, sharded over ``devices × num_nodes`` processes).
    2. One linear model per example on the keep-mask (``solver``: lstsq | ridge | lasso).
    3. With ``evaluate``: ``eval_masks`` fresh masks at each rate α·``eval_factors``; Pearson
       correlation per example of predicted vs true margins, next to LOO and GP baselines.

    All inputs are checked before any work. Returns :class:`Attributions` with ``.eval``.
    """
    unit_map = build_unit_map(model, units)
    factors = list(eval_factors) if (evaluate and eval_factors is not None) else None
    alpha, n_masks = check_settings(unit_map, alpha, n_masks, solver, val_fraction, factors)
    path = Path(path)
    t0 = time.perf_counter()
    model.eval()
    batches = collect_batches(loader)
    with torch.no_grad():
        base = torch.cat([margin(forward_logits(model, b), b[LABELS_KEY]) for b in batches])
    labels = torch.cat([b[LABELS_KEY] for b in batches]).numpy()
    identity = dict((metadata or {}).get("model_identity", {}))
    identity["weights_sha256"] = weights_digest(model)
    identity["model_class"] = type(model).__name__
    fingerprint = {
        "alpha": alpha,
        "seed": int(seed),
        "units": hashlib.sha256(unit_map.to_json().encode()).hexdigest(),
        "n_examples": int(labels.shape[0]),
        "labels": hashlib.sha256(labels.astype(np.int64).tobytes()).hexdigest(),
        "weights_sha256": identity["weights_sha256"],
    }
    settings = {"alpha": alpha, "seed": int(seed), "units_spec": _plain(units)}
    meta = {"model_identity": identity}
    if metadata and "config" in metadata:
        meta["config"] = metadata["config"]
    writer_kwargs = dict(
        fingerprint=fingerprint,
        n_units=unit_map.n_units,
        labels=labels,
        base_margins=base.numpy(),
        example_indices=(metadata or {}).get("example_indices"),
        unit_map_json=unit_map.to_json(),
        settings=settings,
        metadata=meta,
    )
    run_ablations(
        model,
        unit_map,
        batches,
        path,
        writer_kwargs=writer_kwargs,
        alpha=alpha,
        n_masks=n_masks,
        seed=int(seed),
        chunk_masks=int(chunk_masks),
        masks_per_forward=int(masks_per_forward),
        method=method,
        devices=int(devices),
        num_nodes=int(num_nodes),
        strategy=str(strategy),
        accelerator=str(accelerator),
        progress=progress,
    )
    t_abl = time.perf_counter() - t0
    fit_attributions(
        path, solver=solver, ridge=ridge, val_fraction=val_fraction, lasso=lasso, n_masks=n_masks
    )
    t_fit = time.perf_counter() - t0 - t_abl
    att = load_attributions(path)
    if evaluate:
        engine = AblationEngine(model, unit_map, method=method, masks_per_forward=masks_per_forward)
        att.eval = evaluate_attributions(
            att, engine, batches, base, n_masks=eval_masks, factors=factors, baselines=baselines
        )
    att.eval["seconds"] = {
        "ablations": t_abl,
        "regression": t_fit,
        "total": time.perf_counter() - t0,
    }
    return att


def _plain(units: Any) -> Any:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(units):
            return OmegaConf.to_container(units, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return units


def _chunks(path: Path, start: int, stop: int, step: int = 1024):
    for lo in range(start, stop, step):
        masks, y = store.read_ablations(path, lo, min(lo + step, stop))
        yield torch.from_numpy(masks), torch.from_numpy(y)


def fit_attributions(
    path: str | os.PathLike,
    *,
    solver: str = "lstsq",
    ridge: float = 0.0,
    val_fraction: float = 0.1,
    lasso: Mapping | None = None,
    n_masks: int | None = None,
) -> dict:
    """Fit the regression on the first ``n_masks`` ablations of ``path`` (all: None) and store
    weights and bias. Asking for more masks than the file holds is an error."""
    path = Path(path)
    h = store.read_header(path)
    m = h["n_masks"] if n_masks is None else int(n_masks)
    if m > h["n_masks"]:
        raise NpeffUserError(
            f"{m} masks requested but {path} holds {h['n_masks']}: run npeff-coar with "
            f"coar.n_masks={m} on the same model to add masks, or fit on fewer"
        )
    if solver not in regression.SOLVERS:
        raise NpeffUserError(f"unknown solver {solver!r}; available: {list(regression.SOLVERS)}")
    info: dict = {"solver": solver, "fit_masks": m}
    if solver == "lasso":
        n_val = max(1, int(round(m * float(val_fraction))))
        train = regression.gram(_chunks(path, 0, m - n_val))
        val = regression.gram(_chunks(path, m - n_val, m))
        res = regression.fit_lasso_path(train, val, **dict(lasso or {}))
        w, b = res.weights, res.bias
        info |= {
            "val_masks": n_val,
            "lasso_lambda_median": float(
                np.median(res.lambdas[res.chosen, np.arange(len(res.chosen))])
            ),
            "lasso_chosen_index_median": float(np.median(res.chosen)),
            "lasso_path_length": int(res.lambdas.shape[0]),
        }
    else:
        stats = regression.gram(_chunks(path, 0, m))
        w, b = regression.fit_closed_form(stats, ridge=float(ridge) if solver == "ridge" else 0.0)
        if solver == "ridge":
            info["ridge"] = float(ridge)
    store.write_fit(path, w, b, info)
    return info


def evaluate_attributions(
    att: Attributions,
    engine: AblationEngine,
    batches: list[Mapping],
    base: torch.Tensor,
    *,
    n_masks: int = 100,
    factors: Iterable[float] | None = DEFAULT_EVAL_FACTORS,
    baselines: bool = True,
) -> dict:
    """Held-out correlations at α_train·``factors`` (COAR, LOO, GP); stores the arrays in the
    attributions file and returns the summary (``corr_by_alpha`` etc.)."""
    alpha = float(att.settings["alpha"])
    alphas = eval_alphas(alpha, factors or DEFAULT_EVAL_FACTORS)
    seed = int(att.settings["seed"])
    c = att.n_units
    masks = [sample_masks(c, a, seed, 0, int(n_masks), stream=eval_stream(a)) for a in alphas]
    true = [engine.margins(k, batches).numpy() for k in masks]
    predictors = {"coar": (att.weights, att.bias)}
    arrays = {
        "alphas": np.asarray(alphas),
        "masks": np.stack([k.numpy() for k in masks]),
        "margins": np.stack(true),
    }
    zero = np.zeros(att.n_examples)
    if baselines:
        loo = loo_margins(engine, batches)
        predictors["loo"] = (loo_attributions(base, loo).numpy(), zero)
        arrays["loo_margins"] = loo.numpy()
        try:
            gp = gp_attributions(engine.model, att.units, batches).numpy()
            predictors["gp"] = (gp, zero)
            arrays["gp_weights"] = gp
        except ValueError:
            pass
    table = correlation_table([k.numpy() for k in masks], true, alphas, predictors)
    if att.path is not None:
        store.write_eval(att.path, arrays)
    at_train = table[f"{alpha:g}"]
    return {
        "alphas": alphas,
        "corr_by_alpha": table,
        "corr_heldout_mean": at_train["coar"]["mean"],
        "corr_heldout_median": at_train["coar"]["median"],
        "corr_loo_mean": at_train.get("loo", {}).get("mean"),
        "corr_gp_mean": at_train.get("gp", {}).get("mean"),
        "eval_masks": int(n_masks),
    }
