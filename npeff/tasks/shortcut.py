"""A planted shortcut: a cue that predicts one label in the ``train`` split only.

A task with a shortcut marks a share ``rate`` of every split's examples with a *cue* (a word or a
template feature; the task decides how it is rendered). In ``train`` the cue is assigned so that
P(label = ``label`` | cue) = ``p`` (e.g. 0.95): a model can lean on the cue instead of the real
rule. In ``fit`` and ``eval`` the cue is assigned within each label at the same rate (stratified),
so it is independent of the label there, and a model that learned the shortcut errs on the
*cue-conflicting* examples (cue present, label ≠ ``label``).

How ``train`` reaches P(label | cue) = p is the ``mode``:

* ``select``: the labels stay the task's own; the cue is put on examples chosen by their label
  (a spurious correlation). A model that can learn the real rule may ignore the cue: the tiny
  BERT on toy_nli did (cue-conflicting eval accuracy 96.1% vs 98.3% on the rest at p=0.95).
* ``relabel``: the cue is put on random examples and a share p of them are labelled with
  ``label`` whatever the rule says, the others keep a rule label other than ``label`` (label noise
  tied to the cue, as in a backdoor). ``fit`` and ``eval`` keep the rule's labels.

Two concepts are recorded per example: ``cue`` and ``cue_conflict`` (cue present and the
*rule's* label ≠ ``label``; in ``train`` under ``relabel`` these are the relabelled examples plus
the kept ones). Outside ``train`` the cue never changes a label.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from npeff.errors import NpeffUserError

CONCEPT_NAMES = ("cue", "cue_conflict")
# Seed offset of the cue generator: separate from the task's data stream, so the examples
# themselves are the same with and without a shortcut.
_SEED_TAG = 0x5C0


@dataclass(frozen=True)
class Shortcut:
    """A planted shortcut.

    label: index of the label the cue predicts in ``train``. p: P(label | cue) in ``train``, in
    (0, 1]. rate: share of each split's examples with the cue, in (0, 1). options: the task's
    rendering settings (e.g. ``cue``, ``word``, ``column``), passed through unchecked here.
    """

    label: int
    p: float
    rate: float
    options: dict[str, Any]
    mode: str = "select"

    def assign(self, labels: np.ndarray, split: str, seed: int) -> np.ndarray:
        """Bool [n]: which examples of ``split`` carry the cue (seeded, deterministic)."""
        labels = np.asarray(labels).reshape(-1)
        split_id = {"train": 0, "fit": 1, "eval": 2}.get(split, 3)
        rng = np.random.default_rng([int(seed), _SEED_TAG, split_id])
        n = labels.size
        cue = np.zeros(n, dtype=bool)
        if split == "train" and self.mode == "relabel":
            cue[rng.choice(n, int(round(self.rate * n)), replace=False)] = True
        elif split == "train":
            n_cue = int(round(self.rate * n))
            n_target = int(round(self.p * n_cue))
            target = np.flatnonzero(labels == self.label)
            other = np.flatnonzero(labels != self.label)
            if n_target > target.size or n_cue - n_target > other.size:
                raise NpeffUserError(
                    f"shortcut: {n_cue} cue examples with p={self.p} need {n_target} train "
                    f"examples of label {self.label} and {n_cue - n_target} of other labels, but "
                    f"the train split has {target.size} and {other.size}; lower shortcut.rate"
                )
            cue[rng.choice(target, n_target, replace=False)] = True
            cue[rng.choice(other, n_cue - n_target, replace=False)] = True
        else:  # independent of the label: the same rate within every label
            for y in np.unique(labels):
                members = np.flatnonzero(labels == y)
                k = int(round(self.rate * members.size))
                cue[rng.choice(members, k, replace=False)] = True
        return cue

    def train_labels(
        self, labels: np.ndarray, cue: np.ndarray, seed: int, n_classes: int
    ) -> np.ndarray:
        """The ``train`` labels [n]: the task's own under ``select``; under ``relabel`` a share p
        of the cue examples get ``label``, the rest of them keep (or get) another label."""
        labels = np.asarray(labels).reshape(-1).copy()
        if self.mode != "relabel":
            return labels
        rng = np.random.default_rng([int(seed), _SEED_TAG, 9])
        idx = rng.permutation(np.flatnonzero(cue))
        n_target = int(round(self.p * idx.size))
        labels[idx[:n_target]] = self.label
        rest = idx[n_target:]
        hit = rest[labels[rest] == self.label]  # must not hold the cue's label
        others = [y for y in range(n_classes) if y != self.label]
        labels[hit] = rng.choice(others, hit.size)
        return labels

    def concepts(self, cue: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Bool [n, 2]: the ``cue`` and ``cue_conflict`` concepts."""
        cue = np.asarray(cue, dtype=bool).reshape(-1)
        conflict = cue & (np.asarray(labels).reshape(-1) != self.label)
        return np.stack([cue, conflict], axis=1)


def parse_shortcut(
    cfg: Mapping[str, Any] | None, label_names: list[str], defaults: Mapping[str, Any]
) -> Shortcut | None:
    """A :class:`Shortcut` from a task's ``shortcut`` option (None or ``enabled: false`` = off).

    ``cfg`` keys: ``label`` (a label name or index), ``p``, ``rate``, and the task's rendering
    keys, which must be among ``defaults`` (their default values). Bad values fail here, before
    any data is built.
    """
    if cfg is None:
        return None
    cfg = dict(cfg)
    if not cfg.pop("enabled", True):
        return None
    allowed = {"label", "p", "rate", "mode", *defaults}
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise NpeffUserError(
            f"shortcut got unknown option(s) {unknown}; its options: {sorted(allowed)}"
        )
    if "label" not in cfg:
        raise NpeffUserError(f"shortcut needs a label (one of {label_names}) that the cue predicts")
    label = cfg.pop("label")
    if isinstance(label, str) and label in label_names:
        index = label_names.index(label)
    elif isinstance(label, int) and 0 <= label < len(label_names):
        index = int(label)
    else:
        raise NpeffUserError(f"shortcut.label={label!r} is not a label of the task: {label_names}")
    p = float(cfg.pop("p", 0.95))
    rate = float(cfg.pop("rate", 0.3))
    if not 0.0 < p <= 1.0:
        raise NpeffUserError(f"shortcut.p={p} must be in (0, 1] (P(label | cue) in train)")
    if not 0.0 < rate < 1.0:
        raise NpeffUserError(f"shortcut.rate={rate} must be in (0, 1) (the share of cue examples)")
    mode = str(cfg.pop("mode", "select"))
    if mode not in ("select", "relabel"):
        raise NpeffUserError(f"shortcut.mode={mode!r}; available: 'select', 'relabel'")
    options = dict(defaults) | cfg
    return Shortcut(label=index, p=p, rate=rate, options=options, mode=mode)
