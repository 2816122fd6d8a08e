"""Random-projection PEFs (``fisher.compression=projection``) and components back in parameter space.

A seeded very sparse Johnson–Lindenstrauss map S: R^m → R^d (Kane–Nelson block construction):
the d outputs are cut into s blocks of d/s; parameter j goes to one output h_t(j) of each block t
with sign σ_t(j)/√s. s = 1 is sign hashing (CountSketch). S is never formed: h and σ are drawn
from the seed in fixed chunks of parameters (the same values whatever the batching), O(s·m)
small integers, and applying S to rows [B, C, m] is s ``index_add_`` calls. E⟨Sx, Sy⟩ = ⟨x, y⟩
and Var⟨Sx, Sy⟩ ≤ 2‖x‖²‖y‖²/d, so every PEF inner product (hence the decomposition's loss) is
kept up to O(1/√d) relative error with high probability.

A projected PEF file is an LRM/LVRM file whose "parameters" are the d projected coordinates, all
stored (K = C·d), with the dense PEF's true Frobenius norm; the projection's kind, seed, s, m and
the original parameter layout are in its metadata (``compression``). LRM-NPEFF runs on it as it is
(dense A). Its components g̃_k ∈ R^d are brought back to parameter space by

- :func:`fit_components` (the default, what the tests show works): G in parameter space fitted to
  top-K PEFs of the same examples with W fixed to the projected decomposition's W (gradient steps
  on the LRM-NPEFF loss, started from Sᵀg̃_k restricted to the kept columns);
- :func:`sparse_recover`: compressed sensing from g̃_k alone (iterative hard thresholding to an
  s-sparse g with S g ≈ g̃); works when the components are sparse (support ≪ d), tested so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from npeff.errors import NpeffUserError

PROJECTION_KINDS = ("sparse_jl", "sign_hash")
CHUNK = 65536


@dataclass(frozen=True)
class SparseProjection:
    """S: R^m → R^d with ``s`` non-zeros ±1/√s per column (``sign_hash``: s = 1), seeded."""

    m: int
    d: int
    seed: int = 0
    kind: str = "sparse_jl"
    s: int = 4

    def __post_init__(self):
        if self.kind not in PROJECTION_KINDS:
            raise NpeffUserError(
                f"fisher.projection.kind={self.kind!r}; choose one of {PROJECTION_KINDS}"
            )
        if int(self.d) < 1:
            raise NpeffUserError(f"fisher.projection.d={self.d} must be ≥ 1")
        if int(self.d) > int(self.m):
            raise NpeffUserError(
                f"fisher.projection.d={self.d} is larger than the {self.m} parameters: a projection "
                "must reduce the dimension; lower d or use fisher.compression=topk"
            )
        s = self.n_nonzero
        if int(self.d) % s:
            raise NpeffUserError(f"fisher.projection.d={self.d} must be a multiple of s={s}")

    @property
    def n_nonzero(self) -> int:
        return 1 if self.kind == "sign_hash" else int(self.s)

    def settings(self) -> dict:
        """Recorded in the projected PEF file (metadata ``compression``)."""
        return {
            "kind": "projection",
            "projection": self.kind,
            "seed": int(self.seed),
            "d": int(self.d),
            "m": int(self.m),
            "s": self.n_nonzero,
        }

    @classmethod
    def from_settings(cls, c: dict) -> SparseProjection:
        return cls(int(c["m"]), int(c["d"]), int(c["seed"]), str(c["projection"]), int(c["s"]))

    def hashes(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(buckets int64 [s, m] in [0, d), signs float32 [s, m] = ±1/√s), from the seed."""
        cache = self.__dict__.get("_cache")
        if cache is not None and cache[0].device == torch.device(device or "cpu"):
            return cache
        s, m, block = self.n_nonzero, int(self.m), int(self.d) // self.n_nonzero
        buckets = torch.empty(s, m, dtype=torch.int64)
        signs = torch.empty(s, m, dtype=torch.float32)
        for c in range(0, m, CHUNK):
            e = min(c + CHUNK, m)
            gen = torch.Generator().manual_seed((int(self.seed) * 1_000_003 + c // CHUNK) % 2**63)
            full = torch.randint(0, block, (s, CHUNK), generator=gen)
            sg = torch.randint(0, 2, (s, CHUNK), generator=gen)
            buckets[:, c:e] = full[:, : e - c] + torch.arange(s)[:, None] * block
            signs[:, c:e] = (sg[:, : e - c] * 2 - 1).float() / math.sqrt(s)
        out = (buckets.to(device), signs.to(device))
        object.__setattr__(self, "_cache", out)
        return out

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """S x for x [..., m] → [..., d] (never forms S)."""
        if x.shape[-1] != self.m:
            raise NpeffUserError(
                f"the projection maps {self.m} parameters, got rows of {x.shape[-1]}"
            )
        buckets, signs = self.hashes(x.device)
        out = torch.zeros((*x.shape[:-1], int(self.d)), dtype=x.dtype, device=x.device)
        for t in range(self.n_nonzero):
            out.index_add_(-1, buckets[t], x * signs[t].to(x.dtype))
        return out

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Sᵀ y for y [..., d] → [..., m]."""
        buckets, signs = self.hashes(y.device)
        out = torch.zeros((*y.shape[:-1], int(self.m)), dtype=y.dtype, device=y.device)
        for t in range(self.n_nonzero):
            out += y[..., buckets[t]] * signs[t].to(y.dtype)
        return out


def projected_rows(proj: SparseProjection, rows: torch.Tensor, ranks=None):
    """Project class rows [B, C, m] → the writer's arrays for a dense d-dim LRM/LVRM PEF.

    Returns ``SparseRows`` (all C·d entries kept, flat index c·d + j) whose ``norms`` are the
    dense, unprojected ‖AᵀA‖_F (the normalisation the decomposition applies).
    """
    from npeff.fisher.sparsify import gram_frobenius_norms, sparsify_rows

    b, c, _ = rows.shape
    out = sparsify_rows(proj.apply(rows), c * int(proj.d), ranks)
    out.norms = gram_frobenius_norms(rows)
    return out


def sparse_recover(
    proj: SparseProjection, y: torch.Tensor, sparsity: int, n_iters: int = 100
) -> torch.Tensor:
    """Compressed sensing: x [r, m] with ≤ ``sparsity`` non-zeros per row and S x ≈ y [r, d].

    Normalised iterative hard thresholding (step ‖Sᵀe‖²/‖S Sᵀe‖² per iteration), started from the
    top entries of Sᵀy. Recovers s-sparse rows when d is a few times s·log(m/s).
    """
    y = y.double()
    x = _hard(proj.adjoint(y), sparsity)
    for _ in range(int(n_iters)):
        grad = proj.adjoint(y - proj.apply(x))
        sg = proj.apply(grad)
        mu = grad.square().sum(-1, keepdim=True) / sg.square().sum(-1, keepdim=True).clamp_min(
            1e-30
        )
        x = _hard(x + mu * grad, sparsity)
    return x


def _hard(x: torch.Tensor, k: int) -> torch.Tensor:
    idx = x.abs().topk(min(int(k), x.shape[-1]), dim=-1).indices
    return torch.zeros_like(x).scatter_(-1, idx, x.gather(-1, idx))


def fit_components(
    pefs_topk,
    W: np.ndarray,
    init: np.ndarray,
    *,
    n_iters: int = 300,
    lr: float = 0.1,
) -> tuple[np.ndarray, np.ndarray, float]:
    """G [r, m'] in parameter space for fixed W [n, r], fitted to top-K PEFs of the same examples.

    Minimises the LRM-NPEFF loss Σ_i ‖F̃_i − Σ_k W_ik g_k g_kᵀ‖²_F (F̃_i: the normalised top-K
    PEFs) over G with W fixed, by Adam on the exact gradient (``npeff.decomp.lrm``), steps of
    ``lr`` × the mean |entry| of the start; ``init`` [r, m] is the start (Sᵀg̃ of the projected
    components), restricted to the top-K PEFs' columns. (A random start with the projected W
    diverged in the tests: the start must carry the projected components' scale.)
    Returns (G [r, m'], new_to_old_col_indices [m'], final loss / constant term).
    """
    from npeff.decomp import lrm
    from npeff.decomp.matrix import ColumnBlocks, build_matrix

    mat = build_matrix(pefs_topk, "lrm")
    n, r = W.shape
    if n != mat.n_examples:
        raise NpeffUserError(f"W has {n} examples, the top-K PEFs {mat.n_examples}")
    blocks = ColumnBlocks(mat.A, 0, mat.n_cols, dtype=torch.float64)
    Wt = torch.as_tensor(W, dtype=torch.float64)
    init = np.asarray(init)
    if init.shape != (r, mat.n_parameters):
        raise NpeffUserError(f"init must be [r={r}, m={mat.n_parameters}], got {list(init.shape)}")
    Gt = torch.as_tensor(init[:, mat.new_to_old_col_indices].T, dtype=torch.float64).clone()
    rows = mat.rows
    m1, m2 = torch.zeros_like(Gt), torch.zeros_like(Gt)
    b1, b2 = 0.9, 0.999
    scale = None
    for t in range(1, int(n_iters) + 1):
        P, S = lrm.products(blocks, Gt)
        grad = lrm.g_gradient_t(blocks, Gt, Wt, P, S, n, rows)
        m1.mul_(b1).add_(grad, alpha=1 - b1)
        m2.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        step = (m1 / (1 - b1**t)) / ((m2 / (1 - b2**t)).sqrt() + 1e-12)
        if scale is None:  # Adam steps are ~lr per coordinate: scale lr to G's size
            scale = float(Gt.abs().mean()) or 1.0
        Gt -= lr * scale * step
    P, S = lrm.products(blocks, Gt)
    final = lrm.loss(mat.const, Wt, lrm.numerator(P, n, rows), S) / max(mat.const, 1e-30)
    return Gt.T.contiguous().numpy(), mat.new_to_old_col_indices, float(final)


RECOVERY_METHODS = ("fit", "sparse")


def components_to_parameter_space(
    dec,
    pefs_topk,
    proj: SparseProjection,
    *,
    method: str = "fit",
    sparsity: int | None = None,
    n_iters: int = 300,
):
    """A decomposition of projected PEFs with its components brought back to parameter space.

    dec: the :class:`~npeff.artifacts.decomposition.Decomposition` of a projected PEF file (G is
    [r, d'] over projected coordinates). pefs_topk: top-K PEFs of the same examples in parameter
    space (``method="fit"``, the default: :func:`fit_components` with W fixed) — also the source
    of the parameter layout. ``method="sparse"``: :func:`sparse_recover` with ``sparsity``
    non-zeros per component (needs no top-K PEFs' values, only their layout; for sparse
    components). Returns a parameter-space LRM Decomposition (same W) that the perturbation,
    report and COAR comparison stages read like any other; metadata ``recovery`` says how.
    """
    from npeff.artifacts.decomposition import Decomposition

    if method not in RECOVERY_METHODS:
        raise NpeffUserError(f"recovery method {method!r}; choose one of {RECOVERY_METHODS}")
    if dec.kind != "lrm" or dec.G is None:
        raise NpeffUserError(
            "only an LRM decomposition with G can be brought back to parameter space"
        )
    if dec.n_parameters != proj.d:
        raise NpeffUserError(
            f"the decomposition has {dec.n_parameters} columns but the projection maps to {proj.d}"
        )
    if pefs_topk.n_parameters != proj.m:
        raise NpeffUserError(
            f"the top-K PEFs have {pefs_topk.n_parameters} parameters, the projection {proj.m}"
        )
    r = dec.W.shape[1]
    Gp = torch.zeros(r, int(proj.d), dtype=torch.float64)
    Gp[:, torch.as_tensor(dec.new_to_old_col_indices, dtype=torch.long)] = torch.as_tensor(
        np.asarray(dec.G), dtype=torch.float64
    )
    info: dict = {"method": method, "projection": proj.settings()}
    if method == "fit":
        init = proj.adjoint(Gp).numpy()
        G, cols, rel = fit_components(pefs_topk, np.asarray(dec.W), init, n_iters=n_iters)
        info.update(relative_loss=rel, n_iters=int(n_iters))
    else:
        if sparsity is None or int(sparsity) < 1:
            raise NpeffUserError("method='sparse' needs sparsity ≥ 1 (non-zeros per component)")
        full = sparse_recover(proj, Gp, int(sparsity)).numpy()
        cols = np.flatnonzero(np.abs(full).sum(0) > 0)
        G = full[:, cols]
        info.update(sparsity=int(sparsity))
    meta = {**dict(dec.metadata), "recovery": info}
    return Decomposition(
        kind="lrm",
        W=np.asarray(dec.W, dtype=np.float32),
        G=np.asarray(G, dtype=np.float32),
        new_to_old_col_indices=np.asarray(cols, dtype=np.int64),
        n_parameters=int(proj.m),
        n_classes=dec.n_classes,
        layout=pefs_topk.layout,
        metadata=meta,
    )
