"""npeff.perturb."""
