"""npeff.run."""
