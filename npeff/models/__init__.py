"""npeff.models."""
