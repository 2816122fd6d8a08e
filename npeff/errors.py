"""The errors npeff raises on purpose: bad input, a bad config, a missing file.

Their message names what is wrong and how to fix it. A stage's entry point prints it as one line
and exits with status 2 (no traceback; ``HYDRA_FULL_ERROR=1`` keeps it). Any other exception is a
bug and keeps its traceback. They subclass the built-in errors they replace, so ``except
ValueError`` / ``except FileNotFoundError`` still catch them.
"""

from __future__ import annotations


class NpeffUserError(ValueError):
    """Bad input or config, refused on purpose; the message says how to fix it."""


class NpeffFileNotFoundError(NpeffUserError, FileNotFoundError):
    """A file or folder npeff needs is not there; the message says which and what makes it."""


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (its own line breaks joined with ' | ')."""
    return " | ".join(s.strip() for s in str(e).strip().splitlines() if s.strip())
