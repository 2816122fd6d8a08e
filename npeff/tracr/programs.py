"""The RASP programs ``npeff-tracr-compile`` knows, by name.

Each :class:`ProgramSpec` says how to build the program (tracr imported only then), its
vocabulary and length, the input domain its fidelity is checked on (exhaustive where small),
and, for programs used as classifiers, the readout position and an example sampler.

Standard programs from tracr's library (``tracr.compiler.lib``): ``hist``, ``sort_unique``
(domain: inputs without repeated tokens, the program's stated precondition), ``frac_prevs`` (of
token ``x``; numerical output), ``length`` (numerical; google-deepmind/tracr#9 reports
compiled/RASP disagreements for it in other settings — here it agrees on every input). Our own: ``toy_nli``
(:mod:`npeff.tracr.nli_program`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from npeff.errors import NpeffUserError
from npeff.tracr import nli_program


@dataclass(frozen=True)
class ProgramSpec:
    """How to compile and check one program.

    ``build()`` returns ``(program_sop, {variable name: boolean SOp})``. ``domain(vocab, L)``
    lists every input to check (None: sample ``sample(rng, n, vocab, L)`` instead).
    ``readout_position`` is the model position (BOS = 0) a classifier reads, or None.
    ``dataset(rng, n)`` draws the examples exported for ``task=tracr`` (None: no dataset).
    """

    name: str
    description: str
    build: Callable[[], tuple[Any, dict[str, Any]]]
    vocab: tuple
    max_seq_len: int
    domain: Callable[[Sequence, int], list[list]] | None = None
    readout_position: int | None = None
    dataset: Callable[[np.random.Generator, int], list[list]] | None = None
    pair_split: int | None = None
    fixed_length: bool = False


def all_sequences(vocab: Sequence, max_len: int) -> list[list]:
    """Every sequence over ``vocab`` of length 1..max_len."""
    return [list(s) for n in range(1, max_len + 1) for s in itertools.product(vocab, repeat=n)]


def distinct_sequences(vocab: Sequence, max_len: int) -> list[list]:
    """Every sequence of distinct tokens of length 1..max_len."""
    return [list(s) for n in range(1, max_len + 1) for s in itertools.permutations(vocab, n)]


def sample_sequences(rng: np.random.Generator, n: int, vocab: Sequence, max_len: int) -> list[list]:
    lengths = rng.integers(1, max_len + 1, size=n)
    return [[vocab[i] for i in rng.integers(len(vocab), size=k)] for k in lengths]


def _lib():
    from tracr.compiler import lib
    from tracr.rasp import rasp

    return lib, rasp


def _hist():
    lib, _ = _lib()
    return lib.make_hist(), {}


def _sort_unique():
    lib, rasp = _lib()
    return lib.make_sort_unique(rasp.tokens, rasp.tokens), {}


def _frac_prevs():
    lib, rasp = _lib()
    is_x = rasp.numerical(rasp.Map(lambda t: t == "x", rasp.tokens).named("is_x"))
    return lib.make_frac_prevs(is_x), {}


def _length():
    lib, _ = _lib()
    return lib.make_length(), {}


PROGRAMS: dict[str, ProgramSpec] = {
    "toy_nli": ProgramSpec(
        name="toy_nli",
        description="NLI-like premise/hypothesis program with 19 boolean variables (ours)",
        build=nli_program.build_program,
        vocab=tuple(nli_program.vocabulary()),
        max_seq_len=nli_program.SEQ_LEN,
        domain=lambda vocab, L: nli_program.all_inputs(),
        readout_position=1,
        dataset=nli_program.sample_pairs,
        pair_split=nli_program.N_SLOTS,
        fixed_length=True,
    ),
    "hist": ProgramSpec(
        name="hist",
        description="tracr lib.make_hist: how often each token occurs",
        build=_hist,
        vocab=("a", "b", "c", "d"),
        max_seq_len=5,
        domain=all_sequences,
    ),
    "sort_unique": ProgramSpec(
        name="sort_unique",
        description="tracr lib.make_sort_unique(tokens, tokens) on distinct tokens",
        build=_sort_unique,
        vocab=(1, 2, 3, 4, 5),
        max_seq_len=5,
        domain=distinct_sequences,
    ),
    "frac_prevs": ProgramSpec(
        name="frac_prevs",
        description="tracr lib.make_frac_prevs(tokens == 'x'): running share of x (numerical)",
        build=_frac_prevs,
        vocab=("x", "y", "z"),
        max_seq_len=5,
        domain=all_sequences,
    ),
    "length": ProgramSpec(
        name="length",
        description="tracr lib.make_length: the input length at every position (numerical)",
        build=_length,
        vocab=("a", "b"),
        max_seq_len=5,
        domain=all_sequences,
    ),
}


def get_program(name: str) -> ProgramSpec:
    """The spec of ``name``; an unknown name fails with the list of programs."""
    if name not in PROGRAMS:
        raise NpeffUserError(
            f"unknown tracr program {name!r}; available programs: {sorted(PROGRAMS)}"
        )
    return PROGRAMS[name]
