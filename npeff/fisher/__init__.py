"""Per-example Fisher (D and LRM/LVRM PEFs) with torch.func, sparsified and streamed to HDF5.

- ``compute_pefs(model, loader, path, kind=..., n_values=...)``: one process, resumable.
- ``compute_pefs_multiprocess(..., devices=N)``: N ranks (Lightning Fabric), one file.
- ``filter_pefs`` (subsets), ``captured_fraction`` (‖F̂‖²/‖F‖² of the kept entries).
"""

from npeff.fisher.classes import ClassSelection
from npeff.fisher.compute import compute_pefs
from npeff.fisher.distributed import compute_pefs_multiprocess
from npeff.fisher.filter import filter_pefs
from npeff.fisher.grads import PerExampleGrads, select_named_parameters
from npeff.fisher.quality import captured_fraction

__all__ = [
    "ClassSelection",
    "PerExampleGrads",
    "captured_fraction",
    "compute_pefs",
    "compute_pefs_multiprocess",
    "filter_pefs",
    "select_named_parameters",
]
