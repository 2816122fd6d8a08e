"""NPEFF decompositions: LRM-NPEFF and D-NPEFF behind one framework (a ``kind``, not copies).

Modules, one job each:
  matrix       preprocessing (stacked CSR, pruning, normalization, T) and per-rank column blocks
  lrm, diag    the update rules as pure functions (closed-form loss, gradients, MU)
  kinds        ``Factorization`` per kind (state + step + loss), seeded init, schedules
  collectives  all-reduce / broadcast over column-block ranks (no-ops outside DDP)
  module       the LightningModule shell (manual optimization, checkpoints with the full state)
  callbacks    seconds per step, convergence snapshots, progress
  runner       ``decompose(pefs, settings, output_dir, ...)``: checks, Trainer, resume
  fitting      ``fit_coefficients(pefs, decomposition, ...)``: W with G/H frozen (both kinds)
  postprocess  component normalization, H sparsification
  synthetic    PEF sets with planted components (tests, benches)
"""

_LAZY = {
    "build_matrix": "npeff.decomp.matrix",
    "DecompSettings": "npeff.decomp.module",
    "DecompositionModule": "npeff.decomp.module",
    "decompose": "npeff.decomp.runner",
    "fit_coefficients": "npeff.decomp.fitting",
    "normalize_components": "npeff.decomp.postprocess",
    "sparsify_h": "npeff.decomp.postprocess",
    "sparsify_decomposition": "npeff.decomp.postprocess",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'npeff.decomp' has no attribute {name!r}")
