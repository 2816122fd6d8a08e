"""The group-operation zoo's analysis, per model and over the zoo (seed-systems.md): each seed's
neuron irreps, circuits and proved accuracy bound vs brute force, and their aggregate."""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def _opt_float(v) -> float | None:
    return None if v is None else float(v)


def analyze_seed(group, state, cfg) -> tuple[dict, Any, list]:
    """One model's neuron analysis, circuits and bound (a JSON-ready dict, the analysis, circuits).

    ``state``: one seed's parameters (:func:`~npeff.groups.network.seed_state`); ``cfg``: the
    ``groups`` settings (threshold, circuit_tol, max_orbit, min_coverage, fourier_share,
    block_size, member_share).
    """
    from npeff.groups.bound import bound_vs_brute_force, group_tables
    from npeff.groups.network import fold
    from npeff.groups.neurons import analyze_neurons

    net = fold(state)
    group.irrep_info()  # built once per group, not part of any one model's bound
    group_tables(group)  # the same for the verifier's group-only tables
    t0 = time.perf_counter()  # the explanation's irrep part: projections, per-neuron irrep
    analyze_neurons(group, net, threshold=float(cfg.threshold), subgroups=[])
    t_irreps = time.perf_counter() - t0
    na = analyze_neurons(group, net, threshold=float(cfg.threshold))  # + coset concentration
    res, circuits = bound_vs_brute_force(
        group,
        net,
        na.irrep,
        na.live,
        tol=float(cfg.circuit_tol),
        max_orbit=cfg.get("max_orbit"),
        min_coverage=float(cfg.min_coverage),
        fourier_share=float(cfg.get("fourier_share", 0.01)),
        block_size=int(cfg.get("block_size", 8)),
        member_share=_opt_float(cfg.get("member_share", 0.0)),
    )
    b = res.summary()
    b["seconds_with_irreps"] = b["seconds"] + t_irreps
    b["time_ratio_with_irreps"] = b["seconds_with_irreps"] / max(b["brute_force_seconds"], 1e-12)
    out = {
        "neurons": na.summary(float(cfg.threshold)),
        "irrep_names": na.irrep_names,
        "irrep_dims": na.irrep_dims,
        "bound": b,
        "circuits": [c.summary() for c in circuits],
        "neuron_irrep": na.irrep.tolist(),
        "neuron_purity": na.purity.tolist(),
        "left_subgroup_order": na.left_subgroup_order.tolist(),
        "right_subgroup_order": na.right_subgroup_order.tolist(),
    }
    return out, na, circuits


def aggregate(seeds: list[dict], threshold_bound: float = 0.95) -> dict:
    """The zoo's figures over the per-seed dicts of :func:`analyze_seed` (each with its
    ``heldout_accuracy``): fractions of seeds, means and medians of bounds and timings."""
    bounds = [s["bound"]["bound"] for s in seeds]
    accs = [s["bound"]["brute_force_accuracy"] for s in seeds]
    ratios = [s["bound"]["time_ratio"] for s in seeds]
    ratios_irr = [s["bound"]["time_ratio_with_irreps"] for s in seeds]
    held = [s["heldout_accuracy"] for s in seeds if s.get("heldout_accuracy") is not None]
    frac_irrep = [s["neurons"]["frac_live_ge_threshold_one_irrep"] for s in seeds]
    return {
        "n_seeds": len(seeds),
        "frac_seeds_heldout_ge_99": float(np.mean([a >= 0.99 for a in held])) if held else None,
        "mean_frac_live_neurons_ge_95_one_irrep": float(np.mean(frac_irrep)),
        "bound_sound_all_seeds": bool(all(s["bound"]["sound"] for s in seeds)),
        "frac_seeds_bound_ge_95": float(np.mean([b >= threshold_bound for b in bounds])),
        "mean_bound": float(np.mean(bounds)),
        "mean_brute_force_accuracy": float(np.mean(accs)),
        "median_time_ratio": float(np.median(ratios)),
        "median_time_ratio_verifier": float(
            np.median([s["bound"]["time_ratio_verifier"] for s in seeds])
        ),
        "n_certified_wrong_all_seeds": int(sum(s["bound"]["n_certified_wrong"] for s in seeds)),
        "median_slack_over_margin": float(
            np.median([s["bound"]["median_slack_over_margin"] for s in seeds])
        ),
        "median_time_ratio_with_irreps": float(np.median(ratios_irr)),
        "median_gap_over_margin": float(
            np.median(
                [s["bound"]["median_error"] / max(s["bound"]["ideal_margin"], 1e-12) for s in seeds]
            )
        ),
    }
