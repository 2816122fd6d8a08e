"""toy_nli: synthetic premise/hypothesis pairs whose label comes from known boolean concepts.

A premise describes one object: ``the [size] [colour] <object> is <place>``. A hypothesis is made
from it by edits, and the concepts recorded per example say which edits are present:

==================  =========================================================  =============
concept             meaning (computed from the two sentences)                  leads to
==================  =========================================================  =============
colour_conflict     both name a colour and the colours differ                  contradiction
object_conflict     the objects differ                                         contradiction
location_conflict   the places differ                                          contradiction
negation            the hypothesis says "is not"                               contradiction
added_colour        the hypothesis names a colour the premise does not         neutral
added_size          the hypothesis names a size the premise does not           neutral
dropped_detail      the premise names a colour or size the hypothesis drops    (entailment)
paraphrase          the hypothesis is phrased "there is a ... <place>"         (entailment)
full_overlap        every hypothesis word occurs in the premise (lexical        entailment
                    overlap, the HANS heuristic)
==================  =========================================================  =============

Label rule: contradiction if any contradiction concept holds; otherwise neutral if any neutral
concept holds; otherwise entailment. Several concepts lead to each label, so the label alone
does not reveal which strategy an example needs. All pairs are distinct across the splits.

Shortcut knob (``shortcut=``, off by default; :mod:`npeff.tasks.shortcut`): a cue that predicts
one label with probability ``p`` in ``train`` and is independent of the label in ``fit``/``eval``.
``cue: word`` appends ``word`` to the hypothesis (``position: hypothesis_end``) or the premise
(``premise_end``); ``cue: article`` is a template feature, the premise starting with "a" instead of
"the". Two concepts are added: ``cue`` and ``cue_conflict``. The nine concepts above are computed
from the sentences' structure, without the cue. With the knob off, everything is as before.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from npeff.errors import NpeffUserError
from npeff.tasks.base import NpeffTask, SplitData, TaskInfo
from npeff.tasks.shortcut import CONCEPT_NAMES as SHORTCUT_CONCEPTS
from npeff.tasks.shortcut import Shortcut, parse_shortcut
from npeff.tasks.tokenizer import WordTokenizer

LABEL_NAMES = ["entailment", "neutral", "contradiction"]
ENTAILMENT, NEUTRAL, CONTRADICTION = 0, 1, 2

CONCEPT_NAMES = [
    "colour_conflict",
    "object_conflict",
    "location_conflict",
    "negation",
    "added_colour",
    "added_size",
    "dropped_detail",
    "paraphrase",
    "full_overlap",
]
CONTRADICTION_CONCEPTS = ("colour_conflict", "object_conflict", "location_conflict", "negation")
NEUTRAL_CONCEPTS = ("added_colour", "added_size")

COLOURS = ("red", "blue", "green", "yellow", "black", "white")
SIZES = ("big", "small")
OBJECTS = ("cat", "dog", "ball", "box", "hat", "car")
PLACES = ("on the table", "in the garden", "under the bed", "near the door")
FUNCTION_WORDS = ("the", "is", "not", "there", "a")
SHORTCUT_DEFAULTS = {"cue": "word", "word": "indeed", "position": "hypothesis_end"}
CUE_KINDS = ("word", "article")
CUE_POSITIONS = ("hypothesis_end", "premise_end")


@dataclass(frozen=True)
class Sentence:
    """A structured sentence: an object with optional size/colour at a place."""

    obj: str
    place: str
    colour: str | None = None
    size: str | None = None
    negated: bool = False
    paraphrase: bool = False

    def text(self) -> str:
        mods = " ".join(m for m in (self.size, self.colour) if m)
        noun = f"{mods} {self.obj}" if mods else self.obj
        if self.paraphrase:
            return f"there is a {noun} {self.place}"
        return f"the {noun} is {'not ' if self.negated else ''}{self.place}"


def sentence_concepts(p: Sentence, h: Sentence) -> dict[str, bool]:
    """The concepts of a (premise, hypothesis) pair, from their structure."""
    return {
        "colour_conflict": p.colour is not None and h.colour is not None and p.colour != h.colour,
        "object_conflict": p.obj != h.obj,
        "location_conflict": p.place != h.place,
        "negation": h.negated,
        "added_colour": h.colour is not None and p.colour is None,
        "added_size": h.size is not None and p.size is None,
        "dropped_detail": (p.colour is not None and h.colour is None)
        or (p.size is not None and h.size is None),
        "paraphrase": h.paraphrase,
        "full_overlap": set(h.text().split()) <= set(p.text().split()),
    }


def label_from_concepts(c: dict[str, bool]) -> int:
    if any(c[k] for k in CONTRADICTION_CONCEPTS):
        return CONTRADICTION
    if any(c[k] for k in NEUTRAL_CONCEPTS):
        return NEUTRAL
    return ENTAILMENT


def vocabulary() -> list[str]:
    words = list(FUNCTION_WORDS) + list(SIZES) + list(COLOURS) + list(OBJECTS)
    for place in PLACES:
        words += place.split()
    return list(dict.fromkeys(words))


def _other(rng: np.random.Generator, options: tuple[str, ...], current: str | None) -> str:
    return str(rng.choice([o for o in options if o != current]))


def _drop_one(rng: np.random.Generator, h: Sentence) -> Sentence:
    present = [k for k in ("colour", "size") if getattr(h, k) is not None]
    if not present:
        return h
    return replace(h, **{str(rng.choice(present)): None})


def generate_pair(
    rng: np.random.Generator, drop_with_conflict: float = 0.0
) -> tuple[Sentence, Sentence]:
    """Draw a label uniformly, then a strategy for it, then optional label-preserving edits.

    ``drop_with_conflict``: probability that an object/location/negation contradiction also drops
    a detail. Above 0 the task needs cross-sentence word matching, which a tiny BERT learns
    slowly (about 93 % eval accuracy at 0.3 within the default budget, measured here).
    """
    p = Sentence(
        obj=str(rng.choice(OBJECTS)),
        place=str(rng.choice(PLACES)),
        colour=str(rng.choice(COLOURS)) if rng.random() < 0.75 else None,
        size=str(rng.choice(SIZES)) if rng.random() < 0.5 else None,
    )
    label = int(rng.integers(3))
    if label == ENTAILMENT:
        # No identical pairs: there are too few distinct ones (one per premise) to learn from.
        strategy = rng.choice(["drop", "paraphrase"])
        if strategy == "drop":
            if p.colour is None and p.size is None:
                p = replace(p, colour=str(rng.choice(COLOURS)))
            h = _drop_one(rng, p)
            if rng.random() < 0.3:
                h = _drop_one(rng, h)
        else:
            h = replace(p, paraphrase=True)
            if rng.random() < 0.4:
                h = _drop_one(rng, h)
    elif label == CONTRADICTION:
        strategy = rng.choice(["colour", "object", "location", "negation"])
        h = p
        if strategy == "colour":
            if p.colour is None:
                p = h = replace(p, colour=str(rng.choice(COLOURS)))
            h = replace(h, colour=_other(rng, COLOURS, p.colour))
        elif strategy == "object":
            h = replace(h, obj=_other(rng, OBJECTS, p.obj))
        elif strategy == "location":
            h = replace(h, place=_other(rng, PLACES, p.place))
        else:
            h = replace(h, negated=True)
        # A dropped detail keeps the label but makes word-by-word matching necessary:
        # "the ball is on the table" vs "the box is on the table" after "the red ball ...".
        if strategy != "colour" and rng.random() < drop_with_conflict:
            h = _drop_one(rng, h)
    else:
        strategy = rng.choice(["colour", "size"])
        if strategy == "colour" or rng.random() < 0.3:
            p = replace(p, colour=None)
        if strategy == "size" or rng.random() < 0.3:
            p = replace(p, size=None)
        h = p
        if p.colour is None:
            h = replace(h, colour=str(rng.choice(COLOURS)))
        if p.size is None:
            h = replace(h, size=str(rng.choice(SIZES)))
        if rng.random() < 0.3:
            h = replace(h, paraphrase=True)
    return p, h


class ToyNliTask(NpeffTask):
    """Synthetic NLI with 3 labels and 9 recorded concepts; see the module docstring.

    Args:
        n_train, n_fit, n_eval: split sizes (all pairs distinct across splits).
        max_length: padded token length of ``[CLS] premise [SEP] hypothesis [SEP]``.
        drop_with_conflict: see :func:`generate_pair` (0 = contradictions keep every detail).
        shortcut: None (off) or the planted shortcut's settings: ``label`` (name or index),
            ``p``, ``rate``, ``cue`` (word | article), ``word``, ``position``; see the module
            docstring.
    """

    name = "toy_nli"

    def __init__(
        self,
        n_train: int = 4000,
        n_fit: int = 1000,
        n_eval: int = 1000,
        max_length: int = 24,
        drop_with_conflict: float = 0.0,
        seed: int = 0,
        batch_size: int | None = 64,
        shortcut: dict | None = None,
    ):
        super().__init__(seed=seed, batch_size=batch_size)
        self.sizes = {"train": int(n_train), "fit": int(n_fit), "eval": int(n_eval)}
        self.max_length = int(max_length)
        self.drop_with_conflict = float(drop_with_conflict)
        self.shortcut = _check_shortcut(parse_shortcut(shortcut, LABEL_NAMES, SHORTCUT_DEFAULTS))
        words = vocabulary()
        if self.shortcut is not None and self.shortcut.options["cue"] == "word":
            words.append(str(self.shortcut.options["word"]))
        self.tokenizer = WordTokenizer(words)

    def _build(self) -> tuple[TaskInfo, dict[str, SplitData]]:
        rng = np.random.default_rng(self.seed)
        total = sum(self.sizes.values())
        seen: set[tuple[str, str]] = set()
        pairs: list[tuple[Sentence, Sentence]] = []
        attempts = 0
        while len(pairs) < total:
            attempts += 1
            if attempts > 50 * total + 1000:
                raise NpeffUserError(
                    f"toy_nli cannot make {total} distinct pairs; lower n_train/n_fit/n_eval"
                )
            p, h = generate_pair(rng, self.drop_with_conflict)
            key = (p.text(), h.text())
            if key not in seen:
                seen.add(key)
                pairs.append((p, h))
        # Shuffle before cutting: rare pair types run out while drawing, so the stream's order
        # is not exchangeable; a permutation gives the three splits one distribution.
        order = rng.permutation(len(pairs))
        pairs = [pairs[i] for i in order]
        splits, start = {}, 0
        for split, size in self.sizes.items():
            chunk = pairs[start : start + size]
            start += size
            splits[split] = self._make_split(chunk, split)
        concept_names = list(CONCEPT_NAMES)
        if self.shortcut is not None:
            concept_names += list(SHORTCUT_CONCEPTS)
        info = TaskInfo(
            num_classes=3,
            label_names=list(LABEL_NAMES),
            concept_names=concept_names,
            hints={"vocab_size": self.tokenizer.vocab_size, "max_length": self.max_length},
        )
        return info, splits

    def _make_split(self, pairs: list[tuple[Sentence, Sentence]], split: str) -> SplitData:
        premises = [p.text() for p, _ in pairs]
        hypotheses = [h.text() for _, h in pairs]
        concepts = [sentence_concepts(p, h) for p, h in pairs]
        labels = [label_from_concepts(c) for c in concepts]
        cue_concepts = None
        if self.shortcut is not None:
            cue = self.shortcut.assign(np.asarray(labels), split, self.seed)
            premises, hypotheses = _render_cue(self.shortcut, premises, hypotheses, cue)
            cue_concepts = self.shortcut.concepts(cue, np.asarray(labels))
            if split == "train":
                labels = self.shortcut.train_labels(np.asarray(labels), cue, self.seed, 3).tolist()
        tensors = self.tokenizer.encode(premises, hypotheses, max_length=self.max_length)
        tensors["labels"] = torch.tensor(labels, dtype=torch.long)
        records = [
            {"text": a, "text_pair": b, "label": y} for a, b, y in zip(premises, hypotheses, labels)
        ]
        concept_array = np.array(
            [[c[name] for name in CONCEPT_NAMES] for c in concepts], dtype=bool
        ).reshape(len(pairs), len(CONCEPT_NAMES))
        if cue_concepts is not None:
            concept_array = np.concatenate([concept_array, cue_concepts], axis=1)
        return SplitData(tensors=tensors, records=records, concepts=concept_array)


def _check_shortcut(sc: Shortcut | None) -> Shortcut | None:
    if sc is None:
        return None
    o = sc.options
    if o["cue"] not in CUE_KINDS:
        raise NpeffUserError(f"toy_nli shortcut.cue={o['cue']!r}; available: {list(CUE_KINDS)}")
    if o["cue"] == "word":
        word = str(o["word"])
        if not word.isalpha() or word != word.lower() or word in vocabulary():
            raise NpeffUserError(
                f"toy_nli shortcut.word={word!r} must be one lower-case word outside the task's "
                f"vocabulary {vocabulary()}"
            )
        if o["position"] not in CUE_POSITIONS:
            raise NpeffUserError(
                f"toy_nli shortcut.position={o['position']!r}; available: {list(CUE_POSITIONS)}"
            )
    return sc


def _render_cue(
    sc: Shortcut, premises: list[str], hypotheses: list[str], cue: np.ndarray
) -> tuple[list[str], list[str]]:
    """The texts with the cue rendered on the examples where ``cue`` [n] is set."""
    prem, hyp = list(premises), list(hypotheses)
    kind, word, position = sc.options["cue"], sc.options["word"], sc.options["position"]
    for i in np.flatnonzero(cue):
        if kind == "article":  # every premise starts with "the"
            prem[i] = "a" + prem[i][len("the") :]
        elif position == "premise_end":
            prem[i] = f"{prem[i]} {word}"
        else:
            hyp[i] = f"{hyp[i]} {word}"
    return prem, hyp
