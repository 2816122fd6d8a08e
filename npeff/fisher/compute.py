"""``compute_pefs``: per-example Fishers of a classifier over a data loader, streamed to HDF5.

Semantics: algorithm.md §1. Rows of an LRM/LVRM PEF are sqrt(p_c)·∇_θ log p_c with the full
softmax; a D-PEF is f = Σ_c p_c (∇_θ log p_c)². Each loader batch is processed in sub-chunks of
``chunk_size`` examples: dense rows [chunk, C, m] are formed, their norms taken, and they are
sparsified at once, so memory is bounded by chunk_size·C·m and never grows with n.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, SequentialSampler, Subset
from tqdm.auto import tqdm

from npeff.artifacts.pefs import PefsWriter, save_dataset_fisher
from npeff.errors import NpeffUserError
from npeff.fisher.classes import ClassSelection, select_rows
from npeff.fisher.fast import ENGINES, FisherEngine
from npeff.fisher.grads import LABELS_KEY, select_named_parameters
from npeff.fisher.lm_answers import answer_length, answer_logits, answer_rows, has_answers
from npeff.fisher.lm_answers import expand as expand_answers
from npeff.fisher.projection import projected_rows
from npeff.fisher.sparsify import sparsify_diag, sparsify_rows

DSF_MODES = ("expectation", "sampling")
_GLIBC_M_TRIM_THRESHOLD, _GLIBC_M_MMAP_THRESHOLD = -1, -3


def keep_large_allocations(limit_bytes: int = 1 << 30) -> None:
    """Let glibc reuse freed blocks of up to ``limit_bytes`` instead of unmapping them.

    Every chunk allocates and frees the same few [chunk, C, m] tensors (tens of MB). By default
    glibc serves such blocks with mmap and returns them to the OS on free, so the next chunk
    page-faults all of it in again; measured here that doubled the time of the per-example
    gradients and of the sparsification. Process-wide and idempotent; a no-op without glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_GLIBC_M_MMAP_THRESHOLD, int(limit_bytes))
        libc.mallopt(_GLIBC_M_TRIM_THRESHOLD, int(limit_bytes))
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): keep the default
        pass


def compute_pefs(
    model: nn.Module,
    loader: DataLoader,
    path: str | os.PathLike,
    *,
    kind: str = "lrm",
    n_values: int,
    top_k_classes: int | None = None,
    min_prob_class: float | None = None,
    max_classes: int | None = None,
    params: Sequence[str] | None = None,
    exclude_params: Sequence[str] | None = None,
    chunk_size: int = 16,
    dataset_fisher: str | None = None,
    dataset_fisher_path: str | os.PathLike | None = None,
    seed: int = 0,
    metadata: dict | None = None,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
    index_offset: int = 0,
    engine: str = "auto",
    classes=None,
    compression: dict | None = None,
) -> Path:
    """Compute the PEFs of ``model`` on every example of ``loader`` and write them to ``path``.

    Args:
      model: a classifier in eval mode; called as ``model(**batch_without_labels)``, returns
        logits [B, C_model] or an object with ``.logits``.
      loader: yields dict batches with ``labels`` [B] plus the model's keyword inputs; its order
        is the order of the PEFs.
      kind: "lrm", "lvrm" or "diag". n_values: K, values kept per example.
      top_k_classes / min_prob_class / max_classes: class selection (algorithm.md §1.7 rules).
      params / exclude_params: fnmatch name patterns selecting the parameters (default: all with
        requires_grad).
      chunk_size: examples per vectorised sub-chunk (bounds memory: chunk_size·C·m floats).
      dataset_fisher: None, "expectation" or "sampling": also accumulate the dataset-level
        diagonal Fisher [m] and write it to ``dataset_fisher_path`` (default: ``dsf.h5`` next to
        ``path``).
      seed: seeds the class sampling of the "sampling" mode (per example, so independent of
        batching, resumption and ranks).
      metadata: stored in the file (``config``, ``model_identity``, ``source`` get their own attrs).
      on_chunk: called with the number of committed examples after each chunk (tests, progress).
      index_offset: global index of the loader's first example (shards of a multi-process run).
      engine: "auto" (per-layer fast path where it covers a parameter, torch.func elsewhere),
        "fast" (error if it does not cover all) or "func" (torch.func for all). The choice per
        parameter is stored in the file's metadata under ``fisher_engine``; values are the same.
      classes: an :class:`npeff.fisher.lm_classes.LMClasses` (next-token classes of a language
        model: all | top_p | sample | label_words); it sets the kind (top_p: lvrm, else lrm) and
        replaces top_k_classes / min_prob_class / max_classes. Recorded as ``fisher_classes``.
      compression: None (top-K) or {"kind": "projection", "projection": "sparse_jl"|"sign_hash",
        "d": d, "seed": .., "s": ..}: rows projected to d dims and stored densely (n_values is
        then C·d), see :mod:`npeff.fisher.projection`. Recorded as ``compression``.

    Rerunning with the same arguments after an interruption resumes after the last committed
    chunk; a complete file is left as it is. Returns ``path``.
    """
    # -- issue 18: next-token classes (npeff.fisher.lm_classes), projection (fisher.projection)
    if classes is not None:
        if kind not in ("lrm", classes.pef_kind) or any(
            v is not None for v in (top_k_classes, min_prob_class, max_classes)
        ):
            raise NpeffUserError(
                f"fisher.classes={classes.mode} sets the PEF kind ({classes.pef_kind}) and the "
                "classes itself; leave kind=lrm and top_k_classes/min_prob_class/max_classes unset"
            )
        kind = classes.pef_kind
        lvrm = kind == "lvrm"
        min_prob_class, max_classes = (0.0, int(classes.k)) if lvrm else (None, None)
        if dataset_fisher == "expectation" and classes.mode in ("top_p", "sample"):
            raise NpeffUserError(
                f"dataset_fisher=expectation sums over every class, which fisher.classes="
                f"{classes.mode} exists to avoid; use fisher.dataset_fisher_mode=sampling"
            )
    if compression is not None and compression.get("kind", "topk") == "topk":
        compression = None
    if compression is not None:
        if compression.get("kind") != "projection":
            raise NpeffUserError(
                f"fisher.compression={compression.get('kind')!r}; choose topk or projection"
            )
        if kind == "diag":
            raise NpeffUserError("fisher.compression=projection applies to LRM/LVRM PEFs, not diag")
    # -- end issue 18
    sel = ClassSelection(kind, top_k_classes, min_prob_class, max_classes)
    if n_values < 1:
        raise NpeffUserError(f"n_values must be ≥ 1, got {n_values}")
    if chunk_size < 1:
        raise NpeffUserError(f"chunk_size must be ≥ 1, got {chunk_size}")
    if dataset_fisher not in (None, *DSF_MODES):
        raise NpeffUserError(
            f"dataset_fisher must be None or one of {DSF_MODES}, got {dataset_fisher!r}"
        )
    if engine not in ENGINES:
        raise NpeffUserError(f"engine must be one of {ENGINES}, got {engine!r}")
    path = Path(path)
    dsf_path = Path(dataset_fisher_path) if dataset_fisher_path else path.parent / "dsf.h5"

    named = select_named_parameters(model, params, exclude_params)
    engine = FisherEngine(model, named, engine)
    m = engine.n_parameters
    keep_large_allocations()
    proj = None
    if compression is not None:  # issue 18: validated against m (d ≤ m) before any work
        from npeff.fisher.projection import SparseProjection

        proj = SparseProjection(
            m,
            int(compression["d"]),
            int(compression.get("seed", 0)),
            str(compression.get("projection", "sparse_jl")),
            int(compression.get("s", 4)),
        )
    if kind == "diag" and n_values > m:
        raise NpeffUserError(f"n_values={n_values} exceeds the {m} parameters of a {kind} PEF")
    n_total = loader_len(loader)
    fingerprint = {
        "kind": kind,
        "n_values": int(n_values),
        "top_k_classes": top_k_classes,
        "min_prob_class": min_prob_class,
        "max_classes": max_classes,
        "parameters": [list(engine.layout.names), [list(s) for s in engine.layout.shapes]],
        "dataset_fisher": dataset_fisher,
        "seed": int(seed) if dataset_fisher == "sampling" else None,
        "n_examples": n_total,
    }
    if classes is not None:
        fingerprint["classes"] = classes.settings()
    if proj is not None:
        fingerprint["compression"] = proj.settings()
    meta = dict(metadata or {})
    meta.setdefault(
        "model_identity",
        {"model_class": f"{type(model).__module__}.{type(model).__qualname__}"},
    )
    if classes is not None:
        meta["fisher_classes"] = classes.settings()
    if proj is not None:
        meta["compression"] = {**proj.settings(), "layout": engine.layout.to_json()}
    writer = PefsWriter(path, fingerprint=fingerprint) if path.exists() else None
    if writer is not None and writer.done:
        writer.close()
        return path
    start = writer.n_written if writer is not None else 0
    dsf_sum = writer.dataset_fisher_sum() if writer is not None else None
    if dsf_sum is None:
        dsf_sum = np.zeros(m, dtype=np.float64)

    bar = tqdm(total=n_total, initial=start, unit="ex", desc=f"{kind} PEFs", disable=not progress)
    n_done = start
    restrict = classes.restricted(model) if classes is not None else contextlib.nullcontext()
    try:
        restrict.__enter__()
        for batch in batches_from(loader, start):
            if LABELS_KEY not in batch:
                raise NpeffUserError(
                    f"a batch must be a dict with {LABELS_KEY!r} [B] plus the model's keyword "
                    f"inputs; got keys {sorted(batch)}"
                )
            batch = {k: v.to(engine.device) for k, v in batch.items()}
            multi = classes is not None and has_answers(batch)  # issue 18: multi-token answers
            if multi and dataset_fisher:
                raise NpeffUserError("dataset_fisher is not supported with multi-token answers")
            engine.prepare(expand_answers(batch)[0] if multi else batch)
            meta["fisher_engine"] = engine.assignment()
            if multi:
                logits = answer_logits(engine, batch)
            else:
                logits = engine.logits(batch, keep=chunk_size >= len(batch[LABELS_KEY]))
            n_logits = int(logits.shape[-1])
            if writer is None:
                n_rows = classes.n_rows(n_logits) if classes is not None else sel.n_rows(n_logits)
                n_rows *= answer_length(batch) if classes is not None else 1
                if proj is not None:  # every projected entry is stored
                    n_values, m_file = n_rows * proj.d, proj.d
                if kind in ("lrm", "lvrm") and n_values > n_rows * m:
                    # LVRM examples of lower rank pad with explicit zeros (sparsify_rows)
                    raise NpeffUserError(
                        f"n_values={n_values} exceeds the {n_rows * m} entries of an {kind} PEF "
                        f"({n_rows} classes × {m} parameters)"
                    )
                writer = PefsWriter(
                    path,
                    fingerprint=fingerprint,
                    kind=kind,
                    n_values=n_values,
                    n_parameters=m if proj is None else m_file,
                    n_rows=n_rows,
                    n_logits=n_logits,
                    min_prob_class=sel.min_prob_class,
                    layout=engine.layout if proj is None else None,
                    metadata=meta,
                    dataset_fisher_mode=dataset_fisher,
                )
            chunk = _process_batch(
                engine,
                sel,
                batch,
                logits,
                n_values,
                chunk_size,
                dataset_fisher,
                dsf_sum,
                seed,
                index_offset + n_done,
                classes,
                proj,
            )
            writer.append(chunk, dsf_sum if dataset_fisher else None)
            n_done = writer.n_written
            bar.update(len(chunk["labels"]))
            if on_chunk is not None:
                on_chunk(n_done)
        if writer is None:
            raise NpeffUserError("the loader yielded no examples")
        if dataset_fisher:
            save_dataset_fisher(
                dsf_sum / max(n_done, 1),
                dsf_path,
                metadata={
                    "mode": dataset_fisher,
                    "n_examples": n_done,
                    "pefs": str(path),
                    **{k: v for k, v in meta.items() if k in ("config", "model_identity")},
                },
            )
        writer.finalize({"fisher_engine": engine.assignment()})
    finally:
        restrict.__exit__(None, None, None)
        bar.close()
        if writer is not None:
            writer.close()
    return path


def _process_batch(
    engine: FisherEngine,
    sel: ClassSelection,
    batch: Mapping[str, torch.Tensor],
    logits: torch.Tensor,
    n_values: int,
    chunk_size: int,
    dsf_mode: str | None,
    dsf_sum: np.ndarray,
    seed: int,
    first_index: int,
    classes=None,
    proj=None,
) -> dict[str, np.ndarray]:
    """PEFs of one loader batch as a writer chunk; adds the batch to ``dsf_sum`` in place."""
    multi = classes is not None and has_answers(batch)
    if classes is None:
        rows = select_rows(sel, logits)
    elif not multi:
        rows = classes.select(logits, first_index)
    n_logits = logits.shape[-1]
    b = logits.shape[0]
    pieces: dict[str, list] = {}
    # Rows already hold every class with weight sqrt(p_c): their squares sum to the D-PEF.
    rows_are_full = (sel.kind == "lrm" and sel.top_k_classes is None and classes is None) or (
        sel.kind == "diag" and sel.min_prob_class is None
    )
    for lo in range(0, b, chunk_size):
        hi = min(lo + chunk_size, b)
        sub = {k: v[lo:hi] for k, v in batch.items()}
        if sel.kind == "diag":
            a = dense = engine.diag_fisher(sub, rows.classes[lo:hi], n_logits, rows.weights[lo:hi])
            sp = sparsify_diag(dense, n_values)
            _add(pieces, values=sp.values, indices=sp.indices, norms=sp.norms)
        else:
            if multi:  # issue 18: the answer positions' rows stacked (npeff.fisher.lm_answers)
                a, ranks, _ = answer_rows(engine, classes, sub, first_index + lo)
            else:
                a = engine.class_grads(sub, rows.classes[lo:hi], n_logits, rows.weights[lo:hi])
                ranks = None if rows.ranks is None else rows.ranks[lo:hi]
            if proj is None:
                sp = sparsify_rows(a, n_values, ranks)
            else:  # issue 18: all d projected entries of each row, dense norms
                sp = projected_rows(proj, a, ranks)
            _add(pieces, values=sp.values, indices=sp.row_indices, norms=sp.norms)
            if sel.kind == "lrm":
                zero = torch.zeros(hi - lo, 1, dtype=sp.counts.dtype, device=sp.counts.device)
                _add(pieces, col_offsets=torch.cat([zero, sp.counts.cumsum(1)], dim=1))
            else:
                _add(pieces, ranks=ranks)
                _add(
                    pieces, col_sizes=torch.cat([sp.counts[i, : ranks[i]] for i in range(hi - lo)])
                )
        if dsf_mode == "expectation":
            if rows_are_full:  # a: rows [b, C, m], or the D-PEFs [b, m]
                dims = (0,) if sel.kind == "diag" else (0, 1)
                dsf_sum += (
                    (a if sel.kind == "diag" else a.pow(2)).sum(dim=dims).double().cpu().numpy()
                )
            else:
                dsf_sum += _full_expectation(engine, sub, logits[lo:hi])
        elif dsf_mode == "sampling":
            dsf_sum += _sampled(engine, sub, logits[lo:hi], seed, first_index + lo)
        del a
    chunk = {
        k: torch.cat(v).numpy() if isinstance(v[0], torch.Tensor) else v for k, v in pieces.items()
    }
    labels = batch[LABELS_KEY] if classes is None else classes.map_labels(batch[LABELS_KEY])
    chunk["labels"] = labels.cpu().numpy()
    chunk["logits"] = logits.float().cpu().numpy()
    chunk["example_indices"] = np.arange(first_index, first_index + b, dtype=np.int64)
    return chunk


def _add(pieces: dict, **tensors) -> None:
    for k, v in tensors.items():
        pieces.setdefault(k, []).append(v.detach().cpu())


def _full_expectation(engine, sub, logits) -> np.ndarray:
    """Σ_examples Σ_c p_c (∇log p_c)² [m] over all classes (float64)."""
    b, c = logits.shape
    classes = torch.arange(c, device=logits.device).expand(b, c)
    rows = engine.class_grads(sub, classes, c, torch.softmax(logits, dim=-1).sqrt())
    return rows.pow(2).sum(dim=(0, 1)).double().cpu().numpy()


def sample_classes(logits: torch.Tensor, seed: int, first_index: int) -> torch.Tensor:
    """One class per example, y ~ Categorical(softmax(logits)), seeded by the example's global
    index (so the draw does not depend on batching, resumption or the number of ranks)."""
    p = torch.softmax(logits.double(), dim=-1).cpu().numpy()
    out = []
    for i in range(p.shape[0]):
        u = np.random.default_rng([int(seed), first_index + i]).random()
        out.append(min(int(np.searchsorted(np.cumsum(p[i]), u, side="right")), p.shape[1] - 1))
    return torch.tensor(out, dtype=torch.long)


def _sampled(engine, sub, logits, seed, first_index) -> np.ndarray:
    """Σ_examples (∇log p_y)² [m] with y sampled from the model (float64)."""
    y = sample_classes(logits.cpu(), seed, first_index).to(logits.device)
    grads = engine.class_grads(sub, y[:, None], logits.shape[-1])
    return grads[:, 0].pow(2).sum(dim=0).double().cpu().numpy()


def loader_len(loader) -> int | None:
    try:
        return len(loader.dataset)  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        return None


def batches_from(loader, start: int) -> Iterator[dict[str, torch.Tensor]]:
    """The loader's batches from example ``start`` on (the resume point)."""
    if start == 0:
        yield from loader
        return
    if (
        isinstance(loader, DataLoader)
        and isinstance(loader.sampler, SequentialSampler)
        and loader.batch_size is not None
    ):
        rest = Subset(loader.dataset, range(start, len(loader.dataset)))
        yield from DataLoader(
            rest,
            batch_size=loader.batch_size,
            collate_fn=loader.collate_fn,
            num_workers=loader.num_workers,
        )
        return
    seen = 0
    for batch in loader:
        b = len(batch[LABELS_KEY])
        if seen + b > start:
            skip = max(start - seen, 0)
            yield {k: v[skip:] for k, v in batch.items()} if skip else batch
        seen += b
