"""Synthetic in-memory report inputs with planted structure (for tests and a quick demo).

``python -m npeff.report.synthetic OUT_DIR [text|image|inputs]`` writes a demo report without running
the pipeline. The numbers are made up (random with planted concept structure); use real artifacts
for real reports.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from npeff.analysis.top_examples import top_indices
from npeff.artifacts.decomposition import Decomposition
from npeff.artifacts.layout import ParameterLayout
from npeff.artifacts.pefs import Pefs
from npeff.artifacts.perturbation import PerturbationResult

_WORDS = [
    "cat",
    "dog",
    "red",
    "blue",
    "runs",
    "sleeps",
    "not",
    "a",
    "the",
    "big",
    "small",
    "man",
    "woman",
]


def synthetic_inputs(
    n: int = 120,
    r: int = 6,
    n_concepts: int = 4,
    kind: str = "text",
    seed: int = 0,
    k_planted: int = 16,
) -> dict[str, Any]:
    """Planted inputs: components 0..n_concepts−1 put their largest coefficients on holders of one concept.

    Returns a dict with keys decomposition, pefs, examples, concepts, concept_names, perturbation,
    label_names (arguments of ``build_report``).
    """
    rng = np.random.default_rng(seed)
    C, m, K = 3, 50, 20
    concepts = rng.random((n, n_concepts)) < 0.35
    W = (rng.random((n, r)) * (rng.random((n, r)) < 0.5)).astype(np.float32)
    for j in range(min(r, n_concepts)):
        holders = np.flatnonzero(concepts[:, j])
        chosen = rng.choice(holders, size=min(k_planted, holders.size), replace=False)
        W[chosen, j] += 3.0
    G = rng.normal(size=(r, m)).astype(np.float32)
    labels = rng.integers(0, C, size=n)
    logits = rng.normal(size=(n, C)).astype(np.float32)
    logits[np.arange(n), labels] += 1.5
    indices = np.sort(np.stack([rng.choice(m, K, replace=False) for _ in range(n)]), axis=1).astype(
        np.int32
    )
    layout = ParameterLayout(names=("w",), shapes=((5, 10),), offsets=(0,), n_parameters=m)
    pefs = Pefs(
        kind="lrm",
        values=rng.normal(size=(n, K)).astype(np.float32),
        indices=indices,
        norms=rng.uniform(0.5, 2.0, size=n).astype(np.float32),
        labels=labels.astype(np.int64),
        logits=logits,
        n_parameters=m,
        col_offsets=np.tile(np.array([0, 7, 14, K], dtype=np.int32), (n, 1)),
        layout=layout,
    )
    decomposition = Decomposition(
        kind="lrm",
        W=W,
        new_to_old_col_indices=np.arange(m, dtype=np.int64),
        n_parameters=m,
        n_classes=C,
        G=G,
        losses={
            "G_only": np.geomspace(10.0, 5.0, 5).astype(np.float32),
            "joint": np.geomspace(5.0, 1.0, 20).astype(np.float32),
        },
        log_loss_frequency=10,
        convergence={
            "steps": np.arange(50, 550, 50),
            "cosine": (
                1.0 - np.geomspace(0.3, 0.001, 10)[:, None] * rng.uniform(0.5, 1.5, size=(10, r))
            ).astype(np.float32),
            "snapshot_steps": np.arange(0, 550, 50),
            # W drifting towards its final value: snapshot t = final + noise halving every step.
            "snapshots": np.stack(
                [W + (0.5**t) * rng.random(W.shape).astype(np.float32) for t in range(11)]
            ),
        },
        layout=layout,
        metadata={"source": "synthetic"},
    )
    examples: list[dict] = []
    for i in range(n):
        ex: dict[str, Any] = {"label": int(labels[i])}
        if kind == "text":
            ex["text"] = " ".join(rng.choice(_WORDS, size=6))
            ex["text_pair"] = (
                " ".join(rng.choice(_WORDS, size=4)) + " <b>&amp;</b>"
            )  # must be escaped
        elif kind == "image":
            ex["image"] = rng.random((8, 8))
        else:
            ex["inputs"] = f"({rng.integers(0, 7)}, {rng.integers(0, 7)})"
        examples.append(ex)
    c = r
    kl_top = rng.uniform(0.5, 2.0, size=(c, 2)) * 1e-2
    kl_base = rng.uniform(0.1, 0.4, size=(c, 2)) * 1e-2
    ratios = kl_top / kl_base
    best = np.where(ratios[:, 0] >= ratios[:, 1], 1, -1).astype(np.int8)
    n_top = min(16, n)
    perturbation = PerturbationResult(
        component_indices=np.arange(c, dtype=np.int64),
        magnitude=0.1,
        kl_top=kl_top,
        kl_baseline=kl_base,
        kl_top_reverse=kl_top * 1.01,
        kl_baseline_reverse=kl_base * 1.01,
        kl_ratio=ratios.max(axis=1),
        best_sign=best,
        pef_norm_ratio=rng.uniform(0.8, 1.5, size=c),
        acc_top_before=rng.uniform(0.5, 1.0, size=c),
        acc_top_after=rng.uniform(0.2, 1.0, size=(c, 2)),
        acc_baseline_before=rng.uniform(0.5, 1.0, size=c),
        acc_baseline_after=rng.uniform(0.5, 1.0, size=(c, 2)),
        acc_all_before=0.8,
        acc_all_after=rng.uniform(0.7, 0.8, size=(c, 2)),
        top_indices=top_indices(W, n_top),
        baseline_indices=np.arange(min(50, n), dtype=np.int64),
        metadata={"kind": "lrm", "synthetic": True},
    )
    return {
        "decomposition": decomposition,
        "pefs": pefs,
        "examples": examples,
        "concepts": concepts,
        "concept_names": [f"concept_{i}" for i in range(n_concepts)],
        "perturbation": perturbation,
        "label_names": ["entailment", "neutral", "contradiction"],
    }


def main(argv: list[str] | None = None) -> int:
    from npeff.report.build import build_report

    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(
            "usage: python -m npeff.report.synthetic OUT_DIR [text|image|inputs]", file=sys.stderr
        )
        return 2
    inputs = synthetic_inputs(kind=argv[1] if len(argv) > 1 else "text")
    concept_names = inputs.pop("concept_names")
    path = build_report(
        **inputs,
        output_dir=Path(argv[0]),
        concept_names=concept_names,
        title="Synthetic NPEFF report (demo)",
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
