"""Keep-masks: i.i.d. Bernoulli(1−α) per unit, a pure function of (seed, mask index).

Mask i is drawn from its own generator seeded by ``(seed, stream, i)``, so any range of masks is
the same whatever the chunking, the number of processes or a resume point.
"""

from __future__ import annotations

import numpy as np
import torch

from npeff.errors import NpeffUserError

# Separate streams: the training dataset, each held-out evaluation rate.
TRAIN_STREAM = 0


def check_alpha(alpha: float, what: str = "alpha") -> float:
    """``alpha`` as a float in the open interval (0, 1), else a clear error."""
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise NpeffUserError(f"{what} must be a number in (0, 1), got {alpha!r}") from None
    if not 0.0 < a < 1.0:
        raise NpeffUserError(
            f"{what}={alpha} is outside (0, 1): it is the probability that a unit is ablated "
            "(the paper uses 0.05-0.1)"
        )
    return a


def sample_masks(
    n_units: int, alpha: float, seed: int, start: int, stop: int, stream: int = TRAIN_STREAM
) -> torch.Tensor:
    """Keep-masks ``bool [stop-start, n_units]`` for mask indices ``start:stop``; each unit is
    ablated (False) with probability ``alpha``."""
    alpha = check_alpha(alpha)
    rows = [
        np.random.default_rng([int(seed), int(stream), i]).random(n_units) >= alpha
        for i in range(int(start), int(stop))
    ]
    if not rows:
        return torch.zeros(0, n_units, dtype=torch.bool)
    return torch.from_numpy(np.stack(rows))


def eval_stream(alpha: float) -> int:
    """The generator stream of held-out masks at evaluation rate ``alpha`` (a function of the
    rate alone, so the masks at a rate do not depend on which other rates are evaluated)."""
    return 1000 + int(round(float(alpha) * 1e6))
