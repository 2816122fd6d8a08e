"""Score perturbations of a loaded model over its evaluation examples (algorithm.md §8.2).

:class:`PerturbationEvaluator` holds one model, the examples (an :class:`ExampleCache`) and the
unperturbed logits, computed once. Each component's direction is applied with both signs;
per-example KL(p_θ ‖ p_θ+δ) and its reverse are averaged over the component's top examples (by
coefficient) and over a seeded random baseline; accuracies are taken on top, baseline and all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from npeff.analysis.top_examples import top_indices
from npeff.artifacts.layout import ParameterLayout
from npeff.artifacts.perturbation import PerturbationResult
from npeff.errors import NpeffUserError
from npeff.perturb.batched import StackedForward, split_sets
from npeff.perturb.examples import ExampleCache, ForwardFn, default_forward_logits
from npeff.perturb.metrics import (
    best_sign_index,
    per_example_kl,
    random_baseline,
    safe_ratio,
)
from npeff.perturb.prefix_cache import PrefixCache
from npeff.perturb.vector import ModelPerturber, ParameterVector

SIGNS = (1, -1)  # sign axis 0 = +, 1 = −


@dataclass(frozen=True)
class EvalSettings:
    """n_top: top examples per component; n_baseline: random baseline size (capped at n);
    seed: baseline seed; batch_size: forward batch size; eval_all: also run all n examples per
    perturbation (needed for the accuracy on all examples, else NaN); cache_prefix: reuse the
    outputs of the modules that run before the first perturbed one (npeff/perturb/prefix_cache.py);
    sets_per_forward: perturbed parameter sets (components x signs) evaluated in one vmapped
    forward (npeff/perturb/batched.py; 1 = one forward per set; memory grows with it)."""

    n_top: int = 128
    n_baseline: int = 10_000
    seed: int = 0
    batch_size: int = 64
    eval_all: bool = True
    cache_prefix: bool = True
    sets_per_forward: int = 1


@dataclass
class ComponentRecord:
    """Raw figures of one component; sign axis 0 = +, 1 = −."""

    component: int
    top: np.ndarray
    kl_top: np.ndarray
    kl_baseline: np.ndarray
    kl_top_reverse: np.ndarray
    kl_baseline_reverse: np.ndarray
    acc_top_after: np.ndarray
    acc_baseline_after: np.ndarray
    acc_all_after: np.ndarray
    extra: dict


class PerturbationEvaluator:
    """One model, its evaluation examples and the unperturbed logits, for many perturbations.

    W: float [n, r] coefficients whose rows are the cache's examples in order.
    pef_norms: float [n] dense PEF norms of the same examples.
    """

    def __init__(
        self,
        model: nn.Module,
        cache: ExampleCache,
        layout: ParameterLayout,
        W: np.ndarray,
        pef_norms: np.ndarray,
        settings: EvalSettings = EvalSettings(),
        forward: ForwardFn | None = None,
        progress: bool = True,
    ):
        W = np.asarray(W)
        pef_norms = np.asarray(pef_norms, dtype=np.float64).reshape(-1)
        if W.shape[0] != cache.n or pef_norms.shape[0] != cache.n:
            raise NpeffUserError(
                f"coefficients have {W.shape[0]} rows and the PEF file {pef_norms.shape[0]} norms, "
                f"but {cache.n} examples were loaded; they must describe the same examples"
            )
        self.model = model
        self.cache = cache
        self.layout = layout
        self.W = W
        self.pef_norms = pef_norms
        self.settings = settings
        self.forward = forward or default_forward_logits
        self.progress = progress
        self.perturber = ModelPerturber(model, layout)
        self.base_logits = cache.logits(
            model, None, settings.batch_size, self.forward, progress=progress
        )
        self.prefix = (
            PrefixCache.build(
                model, cache, layout.names, settings.batch_size, self.forward, progress
            )
            if settings.cache_prefix
            else None
        )
        self.stacker = StackedForward(self.perturber, self.forward, settings.sets_per_forward)
        self.labels = cache.labels.numpy()
        self.correct_before = (self.base_logits.argmax(-1).numpy() == self.labels).astype(
            np.float64
        )
        self.baseline = random_baseline(cache.n, settings.n_baseline, settings.seed)
        self.acc_all_before = float(self.correct_before.mean()) if cache.n else float("nan")

    @property
    def n(self) -> int:
        return self.cache.n

    def top(self, j: int) -> np.ndarray:
        """Top examples of component j by coefficient, descending [min(n_top, n)]."""
        return top_indices(self.W[:, [j]], self.settings.n_top)[0]

    def _logits(self, indices: np.ndarray | None, forward: ForwardFn | None = None) -> torch.Tensor:
        if self.prefix is not None:
            return self.prefix.logits(indices, self.settings.batch_size, forward)
        return self.cache.logits(
            self.model, indices, self.settings.batch_size, forward or self.forward
        )

    def _set_logits(
        self, indices: np.ndarray | None, vectors: list[ParameterVector], scales: list[float]
    ) -> list[torch.Tensor]:
        """Logits [len(indices) or n, C] under θ + scales[p]·vectors[p] for every p: groups of
        ``sets_per_forward`` stacked sets per forward where that works, else one by one."""
        p_max = self.stacker.max_sets
        if p_max > 1 and len(scales) > 1 and self.n:
            device = next(self.model.parameters()).device
            probe = next(self.cache.batches(np.arange(min(self.n, 4)), 4))
            probe = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in probe.items()}
            if self.stacker.check(probe, vectors[:p_max], scales[:p_max]):
                out: list[torch.Tensor] = []
                for lo in range(0, len(scales), p_max):
                    vs, ss = vectors[lo : lo + p_max], scales[lo : lo + p_max]
                    lg = self._logits(indices, self.stacker.forward_fn(vs, ss))
                    out.extend(split_sets(lg, len(ss)).unbind(1))
                return out
        out = []
        for v, s in zip(vectors, scales):
            with self.perturber.perturbed(v, s):
                out.append(self._logits(indices))
        return out

    def mean_top_kl(self, indices: np.ndarray, vector: ParameterVector, scale: float) -> float:
        """Mean KL(p_θ ‖ p_θ+scale·v) over ``indices`` (any order)."""
        idx = np.unique(indices)
        with self.perturber.perturbed(vector, scale):
            logits = self._logits(idx)
        return float(per_example_kl(self.base_logits[idx], logits).mean())

    def example_kls(
        self, vector: ParameterVector, scale: float, indices: np.ndarray | None = None
    ) -> np.ndarray:
        """float64 ``[len(indices) or n]``: KL(p_θ ‖ p_θ+scale·v) of each example (``indices``
        ascending and unique; None: all), e.g. to compare a perturbation's per-example effect
        with another method's (npeff-compare-coar)."""
        with self.perturber.perturbed(vector, scale):
            logits = self._logits(indices)
        orig = self.base_logits if indices is None else self.base_logits[indices]
        return per_example_kl(orig, logits).double().numpy()

    def gradient_batches(self, indices: np.ndarray):
        """Batches of the given examples (for loss gradients), on the model's device."""
        device = next(self.model.parameters()).device
        for b in self.cache.batches(np.unique(indices), self.settings.batch_size):
            yield {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()}

    def evaluate(
        self, j: int, vector: ParameterVector, scale: float, extra: dict | None = None
    ) -> ComponentRecord:
        """Apply θ ± scale·vector and score it for component j."""
        return self.evaluate_many([(j, vector, scale, extra)])[0]

    def evaluate_many(
        self, items: list[tuple[int, ParameterVector, float, dict | None]]
    ) -> list[ComponentRecord]:
        """``evaluate`` of several (j, vector, scale, extra) at once: their 2·len(items)
        parameter sets share forwards (``sets_per_forward`` per forward)."""
        base = self.baseline
        tops = [self.top(j) for j, *_ in items]
        if self.settings.eval_all:
            eval_idx = None
        else:
            eval_idx = np.unique(np.concatenate([*tops, base]))
        orig = self.base_logits if eval_idx is None else self.base_logits[eval_idx]
        labels = self.labels if eval_idx is None else self.labels[eval_idx]
        vectors = [v for _, v, _, _ in items for _ in SIGNS]
        scales = [sign * sc for _, _, sc, _ in items for sign in SIGNS]
        all_logits = self._set_logits(eval_idx, vectors, scales)
        records = []
        for i, ((j, _, _, extra), top) in enumerate(zip(items, tops)):
            if eval_idx is None:
                pos_top, pos_base = top, base
            else:
                pos_top = np.searchsorted(eval_idx, top)
                pos_base = np.searchsorted(eval_idx, base)
            f = {k: np.full(2, np.nan) for k in ("klt", "klb", "klrt", "klrb", "at", "ab", "aa")}
            for s_i in range(len(SIGNS)):
                logits = all_logits[i * len(SIGNS) + s_i]
                kl = per_example_kl(orig, logits).numpy()
                kl_rev = per_example_kl(logits, orig).numpy()
                correct = (logits.argmax(-1).numpy() == labels).astype(np.float64)
                f["klt"][s_i] = kl[pos_top].mean()
                f["klb"][s_i] = kl[pos_base].mean()
                f["klrt"][s_i] = kl_rev[pos_top].mean()
                f["klrb"][s_i] = kl_rev[pos_base].mean()
                f["at"][s_i] = correct[pos_top].mean()
                f["ab"][s_i] = correct[pos_base].mean()
                if eval_idx is None:
                    f["aa"][s_i] = correct.mean()
            records.append(
                ComponentRecord(
                    component=int(j),
                    top=top,
                    kl_top=f["klt"],
                    kl_baseline=f["klb"],
                    kl_top_reverse=f["klrt"],
                    kl_baseline_reverse=f["klrb"],
                    acc_top_after=f["at"],
                    acc_baseline_after=f["ab"],
                    acc_all_after=f["aa"],
                    extra=dict(extra or {}),
                )
            )
        return records

    def result(
        self,
        records: list[ComponentRecord],
        magnitude: float,
        metadata: dict | None = None,
        targeted_sign: int | None = None,
    ) -> PerturbationResult:
        """Collect records into a :class:`PerturbationResult`.

        targeted_sign: None reports the sign with the larger KL ratio (LRM, paper §2.3); +1 or −1
        reports that sign's ratio (D-NPEFF: the KL-targeted direction, §8.3) and keeps the other
        sign's ratio as the diagnostic ``metadata["kl_ratio_untargeted"]``.
        """
        c = len(records)
        n_top = min(self.settings.n_top, self.n)

        def stack(name: str) -> np.ndarray:
            return np.array([getattr(r, name) for r in records], dtype=np.float64).reshape(c, 2)

        kl_top, kl_base = stack("kl_top"), stack("kl_baseline")
        ratios = safe_ratio(kl_top, kl_base).reshape(c, 2)
        if targeted_sign is None:
            best = best_sign_index(ratios)
        else:
            best = np.full(c, SIGNS.index(int(targeted_sign)), dtype=np.int64)
        tops = np.array([r.top for r in records], dtype=np.int64).reshape(c, n_top)
        base = self.baseline
        norm_base = self.pef_norms[base].mean() if len(base) else np.nan
        pef_norm_ratio = np.array(
            [safe_ratio(self.pef_norms[t].mean(), norm_base) for t in tops], dtype=np.float64
        )
        meta = dict(metadata or {})
        meta.setdefault("settings", {})
        meta["settings"].update(
            n_top=self.settings.n_top,
            n_baseline=self.settings.n_baseline,
            seed=self.settings.seed,
            batch_size=self.settings.batch_size,
            eval_all=self.settings.eval_all,
        )
        meta["n_examples"] = self.n
        meta["kl_ratio_both_signs"] = ratios.tolist()
        meta["sign_policy"] = "best" if targeted_sign is None else "targeted"
        if targeted_sign is not None:
            meta["kl_ratio_untargeted"] = ratios[np.arange(c), 1 - best].tolist()
        meta["component_extra"] = [r.extra for r in records]
        return PerturbationResult(
            component_indices=np.array([r.component for r in records], dtype=np.int64),
            magnitude=float(magnitude),
            kl_top=kl_top,
            kl_baseline=kl_base,
            kl_top_reverse=stack("kl_top_reverse"),
            kl_baseline_reverse=stack("kl_baseline_reverse"),
            kl_ratio=ratios[np.arange(c), best] if c else np.zeros(0),
            best_sign=np.where(best == 0, 1, -1).astype(np.int8),
            pef_norm_ratio=pef_norm_ratio,
            acc_top_before=np.array(
                [self.correct_before[t].mean() for t in tops], dtype=np.float64
            ),
            acc_top_after=stack("acc_top_after"),
            acc_baseline_before=np.full(
                c, self.correct_before[base].mean() if len(base) else np.nan
            ),
            acc_baseline_after=stack("acc_baseline_after"),
            acc_all_before=self.acc_all_before,
            acc_all_after=stack("acc_all_after"),
            top_indices=tops,
            baseline_indices=base,
            metadata=meta,
        )
