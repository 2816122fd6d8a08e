"""npeff.report."""
