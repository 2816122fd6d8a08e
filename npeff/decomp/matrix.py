"""Preprocessing: the sparse PEF matrix A (algorithm.md §3, §6.1) and its column blocks.

A is stacked class rows as CSR: row i·C + c is class row c of example i (LRM), or row i is the
diagonal PEF of example i (D, C = 1). LVRM PEFs (variable rank R_i, §5.2) stack their Σ_i R_i
rows example after example (an example of rank 0 has no rows and contributes nothing); the
decomposition is LRM-NPEFF's with per-example row counts (``PefMatrix.rows``).
Steps: build → prune columns with fewer than ``min_nonzero_per_col`` stored entries (counting
class rows) or map them through an existing index map → normalize each example (LRM: by
sqrt(max(‖F_i‖_F, 1e-12)); LVRM: eps 1e-6; D: by ‖f_i‖ + 1e-9) → sort within rows → the
constant term in float64 (LRM/LVRM: T = Σ_i ‖Ã_iÃ_iᵀ‖²_F; D: ‖A‖²_F).

The factorization works on ``ColumnBlocks``: the columns of one rank's range, cut further into
cache-sized sub-blocks (a CSR of each block and of its transpose), so that A·Gᵀ reads a slice of
Gᵀ that fits in cache and Aᵀ·Q is a plain CSR product.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from npeff.artifacts.pefs import Pefs, lvrm_row_layout
from npeff.errors import NpeffUserError

LRM_NORM_EPS = 1e-12
LVRM_NORM_EPS = 1e-6
DIAG_NORM_EPS = 1e-9
DECOMP_FOR_PEF = {"lrm": "lrm", "lvrm": "lrm", "diag": "diag"}


@dataclass
class PefMatrix:
    """The preprocessed PEF matrix.

    kind: "lrm" (also for LVRM PEFs) or "diag". A: scipy CSR float64 [n_rows, m'] (sorted
    column indices); n_rows = n·C, or Σ_i R_i for LVRM.
    n_examples: n. n_classes: C (1 for D, −1 for LVRM). new_to_old_col_indices: int64 [m']
    ascending. n_parameters: m. const: T (LRM) or ‖A‖²_F (D), float64.
    row_example: LVRM only, int64 [n_rows] the example of each row (non-decreasing), else None.
    """

    kind: str
    A: sp.csr_matrix
    n_examples: int
    n_classes: int
    new_to_old_col_indices: np.ndarray
    n_parameters: int
    const: float
    row_example: np.ndarray | None = None

    @property
    def n_cols(self) -> int:
        return int(self.A.shape[1])

    @property
    def rows(self) -> int | torch.Tensor:
        """The rows of each example as the LRM update rules take them (``lrm.Rows``): the fixed
        count C, or for LVRM the example of each row, int64 tensor [n_rows]."""
        if self.row_example is None:
            return self.n_classes
        return torch.from_numpy(self.row_example)


def check_pef_kind(pefs: Pefs, kind: str) -> None:
    """Raise a clear error if ``pefs`` cannot be decomposed by decomposition ``kind``
    (LRM and LVRM PEFs go to kind "lrm", D-PEFs to "diag")."""
    if DECOMP_FOR_PEF.get(pefs.kind) != kind:
        want = {"lrm": "decomp=lrm_npeff", "lvrm": "decomp=lrm_npeff", "diag": "decomp=d_npeff"}[
            pefs.kind
        ]
        raise NpeffUserError(
            f"the PEF file holds {pefs.kind!r} PEFs but the decomposition kind is {kind!r}; "
            f"use {want} for this file (or compute PEFs of the other kind)."
        )


def _stacked_csr(
    pefs: Pefs, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray | None]:
    """(values, indices, indptr, C, row_example) of the stacked CSR before pruning, first n
    examples; C = −1 and row_example int64 [Σ R_i] for LVRM (its padding values are dropped)."""
    values = np.asarray(pefs.values[:n])
    indices = np.asarray(pefs.indices[:n]).astype(np.int64)
    K = values.shape[1]
    if pefs.kind == "lvrm":
        ranks = np.asarray(pefs.ranks[:n], dtype=np.int64)
        sizes = np.asarray(pefs.col_sizes[: int(ranks.sum())], dtype=np.int64)
        row_example, row_start = lvrm_row_layout(ranks, sizes)
        indptr = np.concatenate([[0], np.cumsum(sizes)])
        # position of each row entry among the n·K stored values
        within = np.arange(indptr[-1], dtype=np.int64) - np.repeat(indptr[:-1], sizes)
        pos = np.repeat(row_example * K + row_start, sizes) + within
        return values.reshape(-1)[pos], indices.reshape(-1)[pos], indptr, -1, row_example
    if pefs.kind == "lrm":
        offsets = np.asarray(pefs.col_offsets[:n]).astype(np.int64)
        C = offsets.shape[1] - 1
        if (
            (offsets[:, 0] != 0).any()
            or (offsets[:, -1] != K).any()
            or (np.diff(offsets, axis=1) < 0).any()
        ):
            raise NpeffUserError(
                "col_offsets must be cumulative per example (start at 0, end at K, non-decreasing); "
                "legacy non-cumulative PEF files are not supported."
            )
        starts = (np.arange(n, dtype=np.int64)[:, None] * K + offsets[:, :C]).reshape(-1)
        indptr = np.concatenate([starts, [n * K]])
    else:
        C = 1
        indptr = np.arange(n + 1, dtype=np.int64) * K
    return values.reshape(-1), indices.reshape(-1), indptr, C, None


def build_matrix(
    pefs: Pefs,
    kind: str,
    *,
    n_examples: int | None = None,
    min_nonzero_per_col: int = 1,
    col_map: np.ndarray | None = None,
) -> PefMatrix:
    """Build, prune (or map), normalize and sort A; compute the constant term.

    col_map: an existing ``new_to_old_col_indices`` (fitting, expansion): keep exactly those
    columns, in that order, and drop entries elsewhere; ``min_nonzero_per_col`` is then ignored.
    """
    check_pef_kind(pefs, kind)
    n = pefs.n_examples if n_examples in (None, -1) else min(int(n_examples), pefs.n_examples)
    m = int(pefs.n_parameters)
    values, indices, indptr, C, row_example = _stacked_csr(pefs, n)
    n_rows = len(indptr) - 1
    if indices.size and (indices.min() < 0 or indices.max() >= m):
        raise NpeffUserError(f"PEF parameter indices fall outside [0, {m}); the file is corrupt.")

    if col_map is None:
        counts = np.bincount(indices, minlength=m)
        new_to_old = np.flatnonzero(counts >= max(int(min_nonzero_per_col), 1))
    else:
        new_to_old = np.asarray(col_map).astype(np.int64)
        if new_to_old.size and new_to_old.max() >= m:
            raise NpeffUserError(
                f"the decomposition's column map reaches parameter {int(new_to_old.max())} but the "
                f"PEFs have only {m} parameters."
            )
    lut = np.full(m, -1, dtype=np.int64)
    lut[new_to_old] = np.arange(new_to_old.size)
    new_cols = lut[indices]
    keep = new_cols >= 0
    if not keep.all():
        row_of = np.repeat(np.arange(n_rows), np.diff(indptr))
        indptr = np.concatenate([[0], np.cumsum(np.bincount(row_of[keep], minlength=n_rows))])
        values, new_cols = values[keep], new_cols[keep]

    norms = np.asarray(pefs.norms[:n], dtype=np.float64)
    if pefs.kind == "lrm":
        scale = 1.0 / np.sqrt(np.maximum(norms, LRM_NORM_EPS))
    elif pefs.kind == "lvrm":
        scale = 1.0 / np.sqrt(np.maximum(norms, LVRM_NORM_EPS))
    else:
        scale = 1.0 / (norms + DIAG_NORM_EPS)
    row_scale = np.repeat(scale, C) if row_example is None else scale[row_example]
    data = values.astype(np.float64) * np.repeat(row_scale, np.diff(indptr))
    A = sp.csr_matrix((data, new_cols, indptr), shape=(n_rows, new_to_old.size))
    A.sum_duplicates()  # also sorts the column indices within rows
    A.sort_indices()

    if kind == "lrm":
        const = lrm_constant(A, n, C if row_example is None else row_example)
    else:
        const = float(np.dot(A.data, A.data))
    return PefMatrix(kind, A, n, C, new_to_old, m, const, row_example)


def padded_rows(A: sp.csr_matrix, n: int, row_example: np.ndarray) -> tuple[sp.csr_matrix, int]:
    """Variable-rank rows [Σ R_i, m'] laid out as fixed-rank ones: (A_pad [n·R_max, m'], R_max),
    row c of example i at i·R_max + c, empty rows where c ≥ R_i."""
    ranks = np.bincount(row_example, minlength=n)
    r_max = max(int(ranks.max()) if n else 0, 1)
    first = np.cumsum(ranks) - ranks
    target = row_example * r_max + (np.arange(row_example.size) - first[row_example])
    move = sp.csr_matrix(
        (np.ones(row_example.size), (target, np.arange(row_example.size))),
        shape=(n * r_max, row_example.size),
    )
    return sp.csr_matrix(move @ A), r_max


def lrm_constant(A: sp.csr_matrix, n: int, C: int | np.ndarray) -> float:
    """T = Σ_i Σ_{c,c'} (Ã_iÃ_iᵀ)²_{cc'} in float64 (each unordered pair counted correctly).

    C: rows per example, or (LVRM) the example of each row, int [n_rows]."""
    if not isinstance(C, int | np.integer):
        A, C = padded_rows(A, n, np.asarray(C, dtype=np.int64))
    rows = [A[c::C] for c in range(C)]
    total = 0.0
    for c in range(C):
        for d in range(c, C):
            m_cd = np.asarray(rows[c].multiply(rows[d]).sum(axis=1)).ravel()
            total += (1.0 if c == d else 2.0) * float(np.dot(m_cd, m_cd))
    return total


def column_range(n_cols: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous column range of ``rank``: ⌊m'/P⌋ columns each, the last takes the remainder."""
    size = n_cols // world
    lo = rank * size
    hi = n_cols if rank == world - 1 else lo + size
    return lo, hi


def _to_torch_csr(M: sp.csr_matrix, dtype: torch.dtype) -> torch.Tensor:
    idx = np.int32 if M.nnz < 2**31 - 1 and max(M.shape) < 2**31 - 1 else np.int64
    return torch.sparse_csr_tensor(
        torch.from_numpy(M.indptr.astype(idx)),
        torch.from_numpy(M.indices.astype(idx)),
        torch.from_numpy(M.data.astype(np.float32 if dtype == torch.float32 else np.float64)),
        size=M.shape,
    )


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="npeff-spmm")
    return _POOLS[workers]


class ColumnBlocks:
    """Columns [lo, hi) of A (one rank's block) with the two sparse products of a step.

    A_p is kept once, as CSC (scipy); the same three arrays are, byte for byte, a CSR of A_pᵀ, which
    torch wraps without a copy.

    ``mm_t(Xt)``: A_p · Xt with Xt [hi−lo, r] → [n·C, r]  (P = A Gᵀ with Xt = Gᵀ). Computed column
    by column (CSC × dense): Xt is streamed once in order and the small output stays in cache, where
    a CSR product would gather rows of Xt at random. Column chunks of at most ``block_cols`` run
    on ``torch.get_num_threads()`` threads (scipy releases the GIL) and are summed.
    ``rmm(Q)``:  A_pᵀ · Q with Q [n·C, r] → [hi−lo, r]   (the transpose of Qᵀ A): a torch CSR
    product whose dense operand is small.
    """

    def __init__(
        self,
        A: sp.csr_matrix,
        lo: int,
        hi: int,
        *,
        block_cols: int = 262144,
        dtype: torch.dtype = torch.float32,
    ):
        self.lo, self.hi = int(lo), int(hi)
        self.n_rows = int(A.shape[0])
        self.dtype = dtype
        np_dtype = np.float32 if dtype == torch.float32 else np.float64
        sub = A[:, self.lo : self.hi] if (lo, hi) != (0, A.shape[1]) else A
        csc = sp.csc_matrix(sub, dtype=np_dtype)
        csc.sort_indices()
        idx = np.int32 if csc.nnz < 2**31 - 1 and max(csc.shape) < 2**31 - 1 else np.int64
        csc.indices = csc.indices.astype(idx, copy=False)
        csc.indptr = csc.indptr.astype(idx, copy=False)
        self.csc = csc
        width = self.hi - self.lo
        self.at = torch.sparse_csr_tensor(
            torch.from_numpy(csc.indptr),
            torch.from_numpy(csc.indices),
            torch.from_numpy(csc.data),
            size=(width, self.n_rows),
        )
        step = max(int(block_cols), 1)
        self.bounds = [(a, min(a + step, width)) for a in range(0, width, step)]
        self.chunks = [csc[:, a:b] for a, b in self.bounds]

    @property
    def n_cols(self) -> int:
        return self.hi - self.lo

    @property
    def nnz(self) -> int:
        return int(self.csc.nnz)

    def mm_t(self, Xt: torch.Tensor) -> torch.Tensor:
        X = Xt.detach().contiguous().numpy()
        if X.dtype != self.csc.dtype:
            X = X.astype(self.csc.dtype)
        if not self.chunks:
            return torch.zeros(self.n_rows, Xt.shape[1], dtype=Xt.dtype)

        def part(i: int) -> np.ndarray:
            a, b = self.bounds[i]
            return np.asarray(self.chunks[i] @ X[a:b])

        workers = min(max(torch.get_num_threads(), 1), len(self.chunks))
        if workers == 1:
            out = part(0)
            for i in range(1, len(self.chunks)):
                out += part(i)
        else:
            # One running sum per worker, then a fixed-order total (deterministic).
            groups = [list(range(w, len(self.chunks), workers)) for w in range(workers)]

            def run(ids: list[int]) -> np.ndarray:
                acc = part(ids[0])
                for i in ids[1:]:
                    acc += part(i)
                return acc

            sums = list(_pool(workers).map(run, groups))
            out = sums[0]
            for x in sums[1:]:
                out += x
        return torch.from_numpy(np.ascontiguousarray(out)).to(Xt.dtype)

    def rmm(self, Q: torch.Tensor) -> torch.Tensor:
        if self.n_cols == 0:
            return torch.zeros(0, Q.shape[1], dtype=Q.dtype)
        return torch.sparse.mm(self.at, Q.to(self.dtype).contiguous())
