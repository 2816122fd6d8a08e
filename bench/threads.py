"""The ``--threads`` option the benchmarks share: one thread budget for every library in a run."""

from __future__ import annotations

import argparse

import torch


def add_threads_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads and BLAS threads for every library in the run "
        "(default: torch's default); 1 is faster on a shared, overloaded machine",
    )


def apply_threads(threads: int | None) -> None:
    """Give torch and numpy/scipy BLAS (scikit-learn) the same thread budget, when one is set."""
    if threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)
        threadpool_limits(threads)
