"""The two decomposition kinds behind one interface, used by the LightningModule and the benches.

A ``Factorization`` holds one rank's state: W [n, r] (replicated) and Ft [m'_p, r] (its column
block of G or H, transposed); ``C`` is the rows of each example (``lrm.Rows``: a fixed count, or
the example of each row for LVRM). ``step(phase)`` applies one update of that phase; ``loss()``
computes the logged loss from fresh products. With an expansion, the last ``n_frozen`` rows of
G are frozen and the first r − n_frozen are learned (new components first, algorithm.md §7.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from npeff.decomp import diag, lrm
from npeff.decomp.collectives import all_reduce_sum, broadcast
from npeff.decomp.matrix import ColumnBlocks
from npeff.errors import NpeffUserError

LRM_PHASES = ("G_only", "expansion_only", "joint")
DIAG_PHASES = ("joint",)


@dataclass
class Hyper:
    """Update hyper-parameters (config names in conf/decomp/*.yaml)."""

    lr_g: float = 1e-3
    lr_g_only: float | None = None
    mu_eps: float = 1e-9
    ortho_strength: float = 0.0


class Factorization:
    """Base: shared state and bookkeeping; subclasses implement ``step`` and ``loss``."""

    kind: str = ""
    phases: tuple[str, ...] = ()

    def __init__(
        self,
        blocks: ColumnBlocks,
        *,
        n_examples: int,
        n_classes: lrm.Rows,
        n_cols_total: int,
        const: float,
        hyper: Hyper,
        W: torch.Tensor,
        Ft: torch.Tensor,
        n_frozen: int = 0,
        reduce=all_reduce_sum,
    ):
        self.blocks = blocks
        self.n, self.C = n_examples, n_classes
        self.n_cols_total = n_cols_total
        self.const = const
        self.hyper = hyper
        self.W = W
        self.Ft = Ft
        self.n_frozen = n_frozen
        self.reduce = reduce
        self._cache: tuple | None = None  # products of the current Ft from loss(), for step()

    def _products(self, fn):
        """``fn(blocks, Ft, reduce)`` for the current Ft, reusing what ``loss()`` just computed."""
        if self._cache is not None and self._cache[0] is self.Ft:
            out = self._cache[1]
        else:
            out = fn(self.blocks, self.Ft, self.reduce)
        self._cache = None
        return out

    @property
    def r(self) -> int:
        return int(self.W.shape[1])

    @property
    def n_learned(self) -> int:
        return self.r - self.n_frozen

    def step(self, phase: str) -> None:
        raise NotImplementedError

    def loss(self) -> float:
        raise NotImplementedError


class LrmFactorization(Factorization):
    """LRM-NPEFF: MU on W, exact-gradient descent on G (algorithm.md §4)."""

    kind = "lrm"
    phases = LRM_PHASES

    def step(self, phase: str) -> None:
        P, S = self._products(lrm.products)
        k = None if self.n_frozen == 0 else self.n_learned
        if phase == "joint":
            self.W = lrm.w_update(self.W, lrm.numerator(P, self.n, self.C), S, self.hyper.mu_eps)
        elif phase == "expansion_only":
            N = lrm.numerator(P, self.n, self.C)
            self.W = lrm.w_update(self.W, N, S, self.hyper.mu_eps, n_cols=self.n_learned)
        elif phase != "G_only":
            raise NpeffUserError(f"unknown LRM phase {phase!r}")
        lr = self.hyper.lr_g
        if phase == "G_only" and self.hyper.lr_g_only is not None and self.hyper.lr_g_only > 0:
            lr = self.hyper.lr_g_only
        if k is None:
            self.Ft = lrm.g_step_t(
                self.blocks, self.Ft, self.W, P, S, self.n, self.C, lr, self.hyper.ortho_strength
            )
            return
        if self.hyper.ortho_strength > 0:
            raise NpeffUserError("orthogonal regularization is not supported with an expansion")
        grad = lrm.g_gradient_t(self.blocks, self.Ft, self.W, P, S, self.n, self.C, n_rows=k)
        self.Ft[:, :k].sub_(lr * grad)

    def loss(self) -> float:
        P, S = lrm.products(self.blocks, self.Ft, self.reduce)
        self._cache = (self.Ft, (P, S))
        return lrm.loss(self.const, self.W, lrm.numerator(P, self.n, self.C), S)


class DiagFactorization(Factorization):
    """D-NPEFF: Lee–Seung multiplicative updates, W first, then H (algorithm.md §6.1)."""

    kind = "diag"
    phases = DIAG_PHASES

    def step(self, phase: str) -> None:
        if phase != "joint":
            raise NpeffUserError(f"D-NPEFF has only the 'joint' phase, got {phase!r}")
        AHt, HHt = self._products(diag.products)
        self.W = diag.w_update(self.W, AHt, HHt, self.hyper.mu_eps)
        self.Ft = diag.h_update(self.blocks, self.Ft, self.W, self.hyper.mu_eps)

    def loss(self) -> float:
        AHt, HHt = diag.products(self.blocks, self.Ft, self.reduce)
        self._cache = (self.Ft, (AHt, HHt))
        return diag.loss(self.const, self.W, AHt, HHt)


KINDS: dict[str, type[Factorization]] = {"lrm": LrmFactorization, "diag": DiagFactorization}


def initial_factors(
    kind: str,
    *,
    n: int,
    r: int,
    n_cols_total: int,
    lo: int,
    hi: int,
    seed: int,
    dtype: torch.dtype,
    r_total_for_scale: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded initial (W [n, r], Ft [hi − lo, r]) for columns [lo, hi) of m' = ``n_cols_total``.

    LRM: W ~ U(0,1], G ~ N(0, 2/(r_tot·m')) (algorithm.md §4.3). D: W, H ~ U(0,1].
    Identical on every rank layout; W is also broadcast from rank 0.
    """
    W = broadcast(lrm.init_w(n, r, seed, dtype))
    if kind == "lrm":
        r_tot = r_total_for_scale or r
        std = math.sqrt(2.0 / (r_tot * max(n_cols_total, 1)))
        Ft = lrm.init_columns(lo, hi, r, seed, dtype, std=std)
    else:
        Ft = lrm.init_columns(lo, hi, r, seed, dtype, std=None)
    return W, Ft


def build_factorization(
    mat,
    *,
    n_components: int,
    seed: int,
    hyper: Hyper,
    dtype: torch.dtype = torch.float32,
    block_cols: int = 262144,
    rank: int = 0,
    world: int = 1,
    frozen=None,
    W_frozen=None,
    reduce=all_reduce_sum,
) -> Factorization:
    """A seeded ``Factorization`` of ``mat`` (a ``PefMatrix``) for columns of ``rank`` of ``world``.

    frozen: optional frozen components G_f [r_f, m'] (expansion): the ``n_components`` new rows
    come first, then G_f. W_frozen: optional initial W_f [n, r_f] (else random).
    """
    from npeff.decomp.matrix import column_range

    if n_components < 1:
        raise NpeffUserError(f"n_components must be ≥ 1, got {n_components}")
    if n_components > mat.n_examples:
        raise NpeffUserError(
            f"n_components={n_components} is larger than the number of examples "
            f"({mat.n_examples}); lower decomp.n_components or use more PEFs."
        )
    lo, hi = column_range(mat.n_cols, rank, world)
    blocks = ColumnBlocks(mat.A, lo, hi, block_cols=block_cols, dtype=dtype)
    r_f = 0 if frozen is None else int(frozen.shape[0])
    r = n_components + r_f
    W, Ft = initial_factors(
        mat.kind,
        n=mat.n_examples,
        r=n_components,
        n_cols_total=mat.n_cols,
        lo=lo,
        hi=hi,
        seed=seed,
        dtype=dtype,
        r_total_for_scale=r,
    )
    if r_f:
        Gf_t = torch.as_tensor(frozen[:, lo:hi]).T.to(dtype)
        Ft = torch.cat([Ft, Gf_t], dim=1).contiguous()
        if W_frozen is not None:
            Wf = torch.as_tensor(W_frozen).to(dtype)
        else:
            Wf = broadcast(lrm.init_w(mat.n_examples, r_f, seed + 1, dtype))
        W = torch.cat([W, Wf], dim=1)
    cls = KINDS[mat.kind]
    return cls(
        blocks,
        n_examples=mat.n_examples,
        n_classes=mat.rows,
        n_cols_total=mat.n_cols,
        const=mat.const,
        hyper=hyper,
        W=W,
        Ft=Ft,
        n_frozen=r_f,
        reduce=reduce,
    )


def schedule(kind: str, n_iters_g_only: int, n_iters_joint: int, n_iters_expansion_only: int = 0):
    """[(phase, n_steps)] in run order, dropping empty phases."""
    if kind == "lrm":
        plan = [("G_only", n_iters_g_only), ("expansion_only", n_iters_expansion_only)]
        plan.append(("joint", n_iters_joint))
    else:
        plan = [("joint", n_iters_joint)]
    return [(p, int(k)) for p, k in plan if int(k) > 0]


def run_schedule(fac: Factorization, plan, log_every: int = 10) -> dict[str, list[float]]:
    """Run ``plan`` without Lightning (tests, benches); returns the logged losses per phase."""
    losses: dict[str, list[float]] = {}
    for phase, n_steps in plan:
        for step in range(n_steps):
            fac.step(phase)
            if log_every and (step + 1) % log_every == 0:
                losses.setdefault(phase, []).append(fac.loss())
    return losses
