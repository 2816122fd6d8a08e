"""npeff.fisher."""
