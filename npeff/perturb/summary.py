"""``perturbation.json``: a perturbation result as per-component figures and medians."""

from __future__ import annotations

import math

from npeff.artifacts.perturbation import PerturbationResult
from npeff.perturb.metrics import summary_medians


def summarize(res: PerturbationResult) -> dict:
    """The ``perturbation.json`` content: medians and one entry per component (NaN → null)."""
    comps = []
    extras = res.metadata.get("component_extra", [{}] * res.n_components)
    untargeted = res.metadata.get("kl_ratio_untargeted")
    for c in range(res.n_components):
        kl = float(res.kl_ratio[c])
        comps.append(
            {
                "component": int(res.component_indices[c]),
                "kl_ratio": kl,
                "log2_kl_ratio": math.log2(kl) if kl > 0 and math.isfinite(kl) else None,
                "best_sign": int(res.best_sign[c]),
                **({"kl_ratio_untargeted": float(untargeted[c])} if untargeted else {}),
                "pef_norm_ratio": float(res.pef_norm_ratio[c]),
                "kl_top": res.kl_top[c].tolist(),
                "kl_baseline": res.kl_baseline[c].tolist(),
                "kl_top_reverse": res.kl_top_reverse[c].tolist(),
                "kl_baseline_reverse": res.kl_baseline_reverse[c].tolist(),
                "acc_top_before": float(res.acc_top_before[c]),
                "acc_top_after": res.acc_top_after[c].tolist(),
                "acc_baseline_before": float(res.acc_baseline_before[c]),
                "acc_baseline_after": res.acc_baseline_after[c].tolist(),
                "acc_all_after": res.acc_all_after[c].tolist(),
                **({"extra": extras[c]} if extras[c] else {}),
            }
        )
    out = {
        "kind": res.metadata.get("kind"),
        "magnitude": res.magnitude,
        "n_components": res.n_components,
        "n_top": int(res.top_indices.shape[1]),
        "n_baseline": int(len(res.baseline_indices)),
        "acc_all_before": res.acc_all_before,
        "sign_policy": res.metadata.get("sign_policy", "best"),
        **summary_medians(res.kl_ratio, res.pef_norm_ratio),
        "components": comps,
        "skipped_components": list(res.metadata.get("skipped_components", [])),
    }
    return out
