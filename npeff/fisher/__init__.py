"""Per-example Fisher (D and LRM/LVRM PEFs) with torch.func, sparsified and streamed to HDF5."""

from npeff.fisher.classes import ClassSelection
from npeff.fisher.compute import compute_pefs
from npeff.fisher.grads import PerExampleGrads, select_named_parameters

__all__ = ["ClassSelection", "PerExampleGrads", "compute_pefs", "select_named_parameters"]
