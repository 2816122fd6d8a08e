"""npeff.analysis."""
