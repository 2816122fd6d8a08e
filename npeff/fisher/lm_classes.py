"""Class rows for large output spaces (language models): ``fisher.classes``.

The exact Fisher of a next-token distribution p over V tokens is F = Σ_c p_c g_c g_cᵀ with
g_c = ∇_θ log p_c (V rows). :class:`LMClasses` picks a few rows instead; only the chosen rows'
gradients are ever formed (k·m floats per example, never V·m):

- ``all``: every class, rows sqrt(p_c)·g_c (an LRM PEF; only for small V, ``max_all``).
- ``top_p``: the smallest set of most probable tokens with cumulative probability ≥ q, capped at
  k tokens; rows sqrt(p_c)·g_c (an LVRM PEF, rank R_i = the set's size). Each row equals the exact
  PEF's row of that token.
- ``sample``: S tokens y_1..y_S drawn i.i.d. from p, rows g_{y_s}/√S (an LRM PEF with C = S):
  E[Σ_s rows_sᵀ rows_s] = F, so the PEF is an unbiased Monte-Carlo estimate whose relative error
  falls like 1/√S. The draw is seeded by (seed, the example's global index), so resumed and
  multi-process runs write the same file.
- ``label_words``: zero-shot classification over label tokens t_1..t_C: the distribution
  renormalised over them, p̃ = softmax(z_{t_1..t_C}); rows sqrt(p̃_c)·∇log p̃_c — exactly the LRM
  PEF of a classifier whose logits are those tokens' logits. Done by a forward hook that keeps only
  those logits (:meth:`LMClasses.restricted`), so parameter names and the engine are unchanged;
  stored labels become the index of the label's token in ``label_token_ids`` (−1 if none).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from npeff.errors import NpeffUserError
from npeff.fisher.classes import Rows

CLASS_MODES = ("all", "top_p", "sample", "label_words")


@dataclass(frozen=True)
class LMClasses:
    """Which next-token classes give PEF rows (see the module docstring). Validated on creation.

    mode: one of ``CLASS_MODES``. q: top_p's cumulative probability, in (0, 1]. k: top_p's cap.
    n_samples: S for ``sample``. label_token_ids: the label words' token ids (``label_words``).
    seed: seeds ``sample``. max_all: the largest vocabulary ``all`` accepts.
    """

    mode: str
    q: float = 0.9
    k: int = 16
    n_samples: int = 8
    label_token_ids: tuple[int, ...] | None = None
    seed: int = 0
    max_all: int = 1024

    def __post_init__(self):
        if self.mode not in CLASS_MODES:
            raise NpeffUserError(f"fisher.classes={self.mode!r}; choose one of {CLASS_MODES}")
        if self.mode == "top_p":
            if not (isinstance(self.q, (int, float)) and 0.0 < float(self.q) <= 1.0):
                raise NpeffUserError(
                    f"fisher.q={self.q} must be in (0, 1]: top_p keeps the smallest set of tokens "
                    "whose probabilities sum to at least q"
                )
            if int(self.k) < 1:
                raise NpeffUserError(f"fisher.k={self.k} must be ≥ 1 (the cap on top_p's tokens)")
        if self.mode == "sample" and int(self.n_samples) < 1:
            raise NpeffUserError(f"fisher.n_samples={self.n_samples} must be ≥ 1")
        if self.mode == "label_words":
            ids = self.label_token_ids
            if not ids or len(ids) < 2:
                raise NpeffUserError(
                    "fisher.classes=label_words needs at least 2 label words "
                    "(fisher.label_words=[word, ...] or token ids)"
                )
            if len(set(ids)) != len(ids):
                raise NpeffUserError(f"the label words' token ids {list(ids)} are not distinct")

    @property
    def pef_kind(self) -> str:
        """The PEF file kind: ``lvrm`` for top_p (variable rank), else ``lrm``."""
        return "lvrm" if self.mode == "top_p" else "lrm"

    def n_rows(self, n_logits: int) -> int:
        """C (LVRM: the largest rank) for a model with ``n_logits`` outputs (after restriction)."""
        if self.mode == "all":
            if n_logits > self.max_all:
                raise NpeffUserError(
                    f"fisher.classes=all on {n_logits} classes would form {n_logits} gradients "
                    f"per example (limit {self.max_all}); use fisher.classes=top_p or sample"
                )
            return n_logits
        if self.mode == "top_p":
            return min(int(self.k), n_logits)
        if self.mode == "sample":
            return int(self.n_samples)
        return len(self.label_token_ids)

    def check_vocab(self, vocab_size: int) -> None:
        """Label token ids must lie in [0, vocab_size) (called on the model's full logits)."""
        if self.mode == "label_words":
            bad = [t for t in self.label_token_ids if not 0 <= t < vocab_size]
            if bad:
                raise NpeffUserError(
                    f"label token ids {bad} are outside the model's vocabulary [0, {vocab_size})"
                )

    def settings(self) -> dict:
        """What is recorded in the PEF file (metadata ``fisher_classes``) and its fingerprint."""
        out: dict = {"mode": self.mode}
        if self.mode == "top_p":
            out.update(q=float(self.q), k=int(self.k))
        elif self.mode == "sample":
            out.update(n_samples=int(self.n_samples), seed=int(self.seed))
        elif self.mode == "label_words":
            out.update(label_token_ids=[int(t) for t in self.label_token_ids])
        return out

    # ------------------------------------------------------------------ rows
    def select(
        self,
        logits: torch.Tensor,
        first_index: int,
        indices: torch.Tensor | None = None,
        slots: torch.Tensor | None = None,
    ) -> Rows:
        """Class rows for logits [B, C_model] of examples first_index, first_index+1, … (or of
        the global example ``indices`` [B] at answer positions ``slots`` [B], lm_answers)."""
        b, c = logits.shape
        probs = torch.softmax(logits.double(), dim=-1)
        if self.mode in ("all", "label_words"):
            classes = torch.arange(c, device=logits.device).expand(b, c)
            return Rows(classes, probs.sqrt().to(logits.dtype), None)
        if self.mode == "top_p":
            return top_p_rows(probs, float(self.q), self.n_rows(c), logits.dtype)
        y = sample_tokens(probs, int(self.n_samples), int(self.seed), first_index, indices, slots)
        w = torch.full(y.shape, float(self.n_samples) ** -0.5, dtype=logits.dtype)
        return Rows(y.to(logits.device), w.to(logits.device), None)

    def map_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """label_words: token-id labels → the index of that token among the label words (−1 if
        none); other modes unchanged."""
        if self.mode != "label_words":
            return labels
        out = stored_labels(labels.cpu().numpy(), {"fisher_classes": self.settings()})
        return torch.as_tensor(out, dtype=labels.dtype, device=labels.device)

    @contextlib.contextmanager
    def restricted(self, model: nn.Module):
        """label_words: while active, ``model``'s logits [B, V] become [B, C] (the label tokens').
        Other modes: nothing."""
        if self.mode != "label_words":
            yield model
            return
        ids = list(self.label_token_ids)

        def hook(module, args, out):
            logits = out.logits if hasattr(out, "logits") else out
            self.check_vocab(int(logits.shape[-1]))
            return logits[..., ids]

        handle = model.register_forward_hook(hook)
        try:
            yield model
        finally:
            handle.remove()


def stored_labels(labels: np.ndarray, metadata: dict) -> np.ndarray:
    """The labels a PEF file stores for task labels ``labels`` [n]: for ``label_words`` files
    (metadata ``fisher_classes``) the label word's index (−1 if none), else unchanged."""
    fc = (metadata or {}).get("fisher_classes") or {}
    if fc.get("mode") != "label_words":
        return np.asarray(labels).reshape(-1)
    ids = np.asarray(fc["label_token_ids"])
    labels = np.asarray(labels).reshape(-1)
    hit = labels[:, None] == ids[None, :]
    return np.where(hit.any(1), hit.argmax(1), -1)


def top_p_rows(probs: torch.Tensor, q: float, k: int, dtype: torch.dtype) -> Rows:
    """Rows of the smallest most-probable token set with Σ p ≥ q, capped at k, for probs [B, V]."""
    p_sorted, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    cum = p_sorted.cumsum(-1)
    # the number of tokens before the cumulative sum reaches q, plus the one that reaches it
    n_keep = ((cum < q).sum(-1) + 1).clamp(1, k)
    keep = torch.arange(k, device=probs.device)[None, :] < n_keep[:, None]
    weights = (p_sorted[:, :k].sqrt() * keep).to(dtype)
    return Rows(order[:, :k], weights, n_keep)


def sample_tokens(
    probs: torch.Tensor,
    n: int,
    seed: int,
    first_index: int,
    indices: torch.Tensor | None = None,
    slots: torch.Tensor | None = None,
) -> torch.Tensor:
    """int64 [B, n]: n i.i.d. draws from each row of probs [B, V], seeded per example by
    (seed, global index[, answer position if > 0]) so the draw is independent of batching,
    resumption and ranks. ``indices`` [B] default to first_index + row."""
    p = probs.double().cpu().numpy()
    out = np.empty((p.shape[0], n), dtype=np.int64)
    for i in range(p.shape[0]):
        idx = int(first_index) + i if indices is None else int(indices[i])
        key = [int(seed), idx, 18]
        if slots is not None and int(slots[i]) > 0:
            key.append(int(slots[i]))
        u = np.random.default_rng(key).random(n)
        cdf = np.cumsum(p[i])
        out[i] = np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), p.shape[1] - 1)
    return torch.from_numpy(out)


def label_word_ids(
    words: Iterable[str | int], encode: Callable[[str], Sequence[int]] | None
) -> tuple[int, ...]:
    """Token ids of the label words: ints are taken as ids; a string must encode to exactly one
    token (``encode``: the task's word → token ids), else a clear error."""
    out = []
    for w in words:
        if isinstance(w, (bool, np.bool_)):
            raise NpeffUserError(
                f"label word {w!r} is a boolean: YAML reads unquoted yes/no/on/off as true/false; "
                'quote the words (fisher.label_words: ["yes", "maybe", "no"])'
            )
        if isinstance(w, (int, np.integer)):
            out.append(int(w))
            continue
        if encode is None:
            raise NpeffUserError(
                f"label word {w!r} is text, but the task has no tokenizer to encode it; "
                "give token ids instead (fisher.label_words=[id, ...])"
            )
        ids = list(encode(str(w)))
        if len(ids) != 1:
            raise NpeffUserError(
                f"label word {w!r} is {len(ids)} tokens ({ids}); fisher.classes=label_words needs "
                "each label word to be a single token of the vocabulary (choose other words)"
            )
        out.append(int(ids[0]))
    return tuple(out)
