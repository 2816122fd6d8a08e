"""npeff.tasks."""
