"""KL targeting for D-NPEFF perturbations: search (δ, λ) so the top-example KL lands in a range.

algorithm.md §8.3 (``KlTargeter``): δ starts log-uniform in ``delta_range``, λ uniform in
``lambda_range``. Rounds alternate between λ (round 0, 2, ...: a linear move halfway toward its
bound) and δ (round 1, 3, ...: a geometric move halfway toward its bound in log space), up in KL
when it is too low and down when too high. Each move tries up to ``max_backoffs`` steps, halving
the step whenever it overshoots the range; a step that stays on the same side is accepted and a
new round begins; if every attempt overshoots, the smallest step is kept. KL is assumed
monotone in δ and λ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from npeff.errors import NpeffUserError


@dataclass(frozen=True)
class KlTargetSettings:
    min_kl: float = 0.05
    max_kl: float = 0.1
    delta_range: tuple[float, float] = (1e-3, 1.0)
    lambda_range: tuple[float, float] = (0.035, 0.965)
    max_iters: int = 25
    max_backoffs: int = 10

    def __post_init__(self) -> None:
        if not 0 <= self.min_kl < self.max_kl:
            raise NpeffUserError(f"need 0 ≤ min_kl < max_kl, got [{self.min_kl}, {self.max_kl}]")
        lo, hi = self.delta_range
        if not 0 < lo <= hi:
            raise NpeffUserError(f"delta_range must satisfy 0 < lo ≤ hi, got {self.delta_range}")
        lo, hi = self.lambda_range
        if not 0 < lo <= hi < 1:
            raise NpeffUserError(f"lambda_range must lie inside (0, 1), got {self.lambda_range}")


@dataclass
class KlTargetResult:
    delta: float
    lam: float
    kl: float
    found: bool
    n_evals: int


def target_kl(
    kl_fn: Callable[[float, float], float],
    settings: KlTargetSettings,
    rng,
) -> KlTargetResult:
    """Search (δ, λ) with ``kl_fn(δ, λ)`` (mean top-example KL) inside [min_kl, max_kl].

    ``rng`` is a ``numpy.random.Generator`` for the initial point.
    """
    s = settings
    log_dlo, log_dhi = math.log(s.delta_range[0]), math.log(s.delta_range[1])
    log_delta = float(rng.uniform(log_dlo, log_dhi))
    lam = float(rng.uniform(*s.lambda_range))
    kl = kl_fn(math.exp(log_delta), lam)
    n_evals = 1

    def in_range(x: float) -> bool:
        return s.min_kl <= x <= s.max_kl

    if in_range(kl):
        return KlTargetResult(math.exp(log_delta), lam, kl, True, n_evals)

    for rnd in range(s.max_iters):
        too_low = kl < s.min_kl
        if rnd % 2 == 0:  # λ
            bound = s.lambda_range[1] if too_low else s.lambda_range[0]
            step = (bound - lam) / 2
        else:  # δ, in log space
            bound = log_dhi if too_low else log_dlo
            step = (bound - log_delta) / 2
        for attempt in range(s.max_backoffs):
            new_lam = lam + step if rnd % 2 == 0 else lam
            new_log_delta = log_delta + step if rnd % 2 == 1 else log_delta
            new_kl = kl_fn(math.exp(new_log_delta), new_lam)
            n_evals += 1
            if in_range(new_kl):
                return KlTargetResult(math.exp(new_log_delta), new_lam, new_kl, True, n_evals)
            same_side = (new_kl < s.min_kl) == too_low
            if same_side or attempt == s.max_backoffs - 1:
                lam, log_delta, kl = new_lam, new_log_delta, new_kl
                break
            step /= 2
    return KlTargetResult(math.exp(log_delta), lam, kl, False, n_evals)
