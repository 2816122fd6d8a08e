"""Multi-token answers (teacher forcing): a PEF summed over several explained positions.

A batch names the positions of an answer y_1..y_T as ``explain_pos`` int ``[B, T]`` (−1 = unused,
for answers shorter than T); the inputs hold the answer tokens themselves (teacher forcing), so
position t's next-token distribution is p(· | x, y_<t). The PEF of the answer is the sum of its
positions' PEFs, F = Σ_t A_tᵀA_t, i.e. the rows of all positions stacked: C = T·k rows (LRM; an
unused position gives zero rows, which change nothing) or, for top_p (LVRM), each position's kept
rows one after another (rank Σ_t R_t).

Each (example, position) pair is run as its own row of an expanded batch whose ``explain_pos`` is
1-D, so the gradient engine (fast path or torch.func) is used exactly as for one position.
Sampled classes are seeded by (seed, example index, position), position 0 as in the 1-D case.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from npeff.errors import NpeffUserError

EXPLAIN_KEY = "explain_pos"  # the batch key of the explained positions (npeff.models.causal_lm)


def has_answers(batch: Mapping[str, torch.Tensor]) -> bool:
    """The batch names several positions per example (``explain_pos`` [B, T])."""
    pos = batch.get(EXPLAIN_KEY)
    return pos is not None and pos.ndim == 2


def answer_length(batch: Mapping[str, torch.Tensor]) -> int:
    """T (1 for a batch without multi-token answers)."""
    return int(batch[EXPLAIN_KEY].shape[1]) if has_answers(batch) else 1


def expand(batch: Mapping[str, torch.Tensor]):
    """(expanded batch with one row per used (example, position), owner int [E], slot int [E])."""
    pos = batch[EXPLAIN_KEY]
    if bool((pos[:, 0] < 0).any()):
        raise NpeffUserError(
            "every example needs at least one explained position (explain_pos[:, 0] ≥ 0)"
        )
    owner, slot = (pos >= 0).nonzero(as_tuple=True)
    out = {k: v[owner] for k, v in batch.items() if k != EXPLAIN_KEY}
    out[EXPLAIN_KEY] = pos[owner, slot]
    return out, owner, slot


def answer_logits(engine, batch) -> torch.Tensor:
    """Logits [B, V] at each example's first explained position (stored in the PEF file)."""
    expanded, owner, slot = expand(batch)
    logits = engine.logits(expanded)
    first = slot == 0
    return logits[first][torch.argsort(owner[first])]


def answer_rows(engine, classes, batch, first_index: int):
    """Rows of the answers' PEFs → (rows [B, T·k, m], ranks int [B] or None, logits [B, V]).

    ``classes``: an :class:`npeff.fisher.lm_classes.LMClasses`; ``first_index``: the global index
    of the batch's first example (seeds ``sample``).
    """
    expanded, owner, slot = expand(batch)
    logits = engine.logits(expanded)
    index = first_index + owner
    rows = classes.select(logits, first_index, indices=index, slots=slot)
    g = engine.class_grads(expanded, rows.classes, logits.shape[-1], rows.weights)  # [E, k, m]
    b, t = batch[EXPLAIN_KEY].shape
    e, k, m = g.shape
    out = torch.zeros((b, t * k, m), dtype=g.dtype, device=g.device)
    ranks = None
    if rows.ranks is None:  # LRM: position t's rows at t·k … t·k + k − 1
        out.view(b, t, k, m)[owner, slot] = g
    else:  # LVRM: each example's kept rows one after another, positions in order
        ranks = torch.zeros(b, dtype=torch.long, device=g.device)
        for j in range(e):
            i, r = int(owner[j]), int(rows.ranks[j])
            out[i, int(ranks[i]) : int(ranks[i]) + r] = g[j, :r]
            ranks[i] += r
    first = slot == 0
    return out, ranks, logits[first][torch.argsort(owner[first])]
