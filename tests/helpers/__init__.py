"""Shared test helpers (problems, references, config composition, artifact digests)."""
