"""npeff.analysis: top examples, concept purity, PEF-norm ratios and cross-run component matching.

Pure numpy functions over coefficient matrices W [n_examples, n_components]; nothing here reads
files or recomputes Fishers.
"""

from npeff.analysis.concepts import (
    ConceptAnalysis,
    analyze_concepts,
    concept_shares,
    count_all_share,
)
from npeff.analysis.convergence import cosine_to_final, first_step_reaching
from npeff.analysis.matching import (
    MatchResult,
    average_max_cosine,
    coefficient_cosine,
    component_similarity,
    component_splits,
    match_runs,
    shuffled_average_max_cosine,
)
from npeff.analysis.top_examples import pef_norm_ratio, top_examples, top_indices

__all__ = [
    "ConceptAnalysis",
    "MatchResult",
    "analyze_concepts",
    "average_max_cosine",
    "coefficient_cosine",
    "component_similarity",
    "component_splits",
    "cosine_to_final",
    "first_step_reaching",
    "concept_shares",
    "count_all_share",
    "match_runs",
    "pef_norm_ratio",
    "shuffled_average_max_cosine",
    "top_examples",
    "top_indices",
]
