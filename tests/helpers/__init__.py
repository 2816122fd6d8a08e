"""Shared test helpers: tiny problems (``problems``), dense references (``references``), config
composition (``compose``), helper scripts in a fresh interpreter (``scripts``) and artifact digests
(``digests``). Tests import them as ``tests.helpers.<module>`` (pytest puts the repository root on
the path: ``tests/`` is a package)."""
