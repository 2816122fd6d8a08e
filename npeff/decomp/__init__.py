"""npeff.decomp."""
