"""``toy_nli``: an NLI-like RASP program in the spirit of the NPEFF paper's appendix H.

Input: ``[BOS] p_pol p_subj p_size p_col p_place h_pol h_subj h_size h_col h_place`` — a premise
and a hypothesis of five slots each (polarity, subject, size, colour, place). Word classes are disjoint, so a
token says which slot it fills. The program (compiled by tracr, see :func:`build_program`):

1. ``aligned_token``: each position reads the token in the same slot of the other sentence
   (one attention head).
2. ``slot_relation``: an MLP compares a token with its aligned token (``same``, ``conflict``,
   ``hypernym``, ``specific``, ``added``, ``dropped``, ``negated``, ``unnegated``,
   ``both_negative``).
3. ``<slot>_relation``: four heads broadcast the hypothesis slots' relations to every position.
4. Boolean intermediate variables (the concepts; every one feeds the label, so the compiled
   model computes each):

   ====================  =================================================  ==============
   variable              meaning                                            leads to
   ====================  =================================================  ==============
   polarity_conflict     exactly one sentence is negated                    contradiction
   negation_present      some sentence says "not"                           (flips details)
   subj_conflict         two different specific subjects (cat vs dog)       contradiction
   subj_generalised      hypothesis says "animal" for a specific subject    (removes)
   subj_specialised      premise says "animal", hypothesis a species        (adds)
   colour_conflict       two different colours                              contradiction
   colour_added          the hypothesis names a colour the premise lacks    (adds)
   colour_dropped        the premise names a colour the hypothesis drops    (removes)
   size_conflict         two different sizes                                contradiction
   size_added            the hypothesis names a size the premise lacks      (adds)
   size_dropped          the premise names a size the hypothesis drops      (removes)
   place_conflict        different places                                   contradiction
   content_conflict      any of the four conflicts above                    contradiction
   adds_detail           subj_specialised, colour_added or size_added       neutral if positive
   removes_detail        subj_generalised, colour_dropped or size_dropped   neutral if negated
   neutral_by_adding     adds_detail and not negation_present               neutral
   neutral_by_dropping   removes_detail and negation_present                neutral
   is_contradiction      content_conflict or polarity_conflict              contradiction
   is_neutral            neutral_by_adding or neutral_by_dropping           neutral
   ====================  =================================================  ==============

5. ``label``: contradiction if ``is_contradiction``; else neutral if ``is_neutral``; else
   entailment (negation is downward monotone: "the cat is not in the park" entails "the red cat
   is not in the park", not the reverse). Every position holds the label; the model's
   prediction is read at position 0.

Several variables lead to each label, so a label alone does not say which computation an
example needed. This module imports tracr only inside :func:`build_program`; the word lists
and :func:`sample_pairs` are plain Python (used by the compile step to draw examples, and as an independent oracle in tests).
"""

from __future__ import annotations

import numpy as np

from npeff.errors import NpeffUserError

POLARITY = ("is", "not")
SUBJECTS = ("cat", "dog", "bird", "fish", "horse", "animal")
SIZES = ("big", "small", "nosize")
COLOURS = ("red", "blue", "green", "black", "nocolour")
PLACES = ("park", "house", "garden")
SLOTS = ("pol", "subj", "size", "col", "place")
SLOT_WORDS = (POLARITY, SUBJECTS, SIZES, COLOURS, PLACES)
N_SLOTS = len(SLOTS)
SEQ_LEN = 2 * N_SLOTS
GENERIC_SUBJECT = "animal"
NO_COLOUR = "nocolour"
NO_SIZE = "nosize"
LABELS = ("contradiction", "entailment", "neutral")

VARIABLES = (
    "polarity_conflict",
    "negation_present",
    "subj_conflict",
    "subj_generalised",
    "subj_specialised",
    "colour_conflict",
    "colour_added",
    "colour_dropped",
    "size_conflict",
    "size_added",
    "size_dropped",
    "place_conflict",
    "content_conflict",
    "adds_detail",
    "removes_detail",
    "neutral_by_adding",
    "neutral_by_dropping",
    "is_contradiction",
    "is_neutral",
)


def vocabulary() -> list[str]:
    return [w for words in SLOT_WORDS for w in words]


def relate(tok: str, other: str) -> str:
    """Relation of a hypothesis word ``tok`` to the premise word ``other`` of the same slot."""
    if tok in POLARITY:
        if tok == other:
            return "both_negative" if tok == "not" else "same"
        return "negated" if tok == "not" else "unnegated"
    if tok == other:
        return "same"
    if tok in SUBJECTS:
        if tok == GENERIC_SUBJECT:
            return "hypernym"
        if other == GENERIC_SUBJECT:
            return "specific"
        return "conflict"
    if tok in COLOURS or tok in SIZES:
        if other in (NO_COLOUR, NO_SIZE):
            return "added"
        if tok in (NO_COLOUR, NO_SIZE):
            return "dropped"
        return "conflict"
    return "conflict"  # places (and any cross-class pair, which valid inputs never hold)


def build_program():
    """The RASP program. Returns ``(label_sop, {variable name: boolean SOp})``; needs tracr."""
    from tracr.rasp import rasp

    partner = rasp.Map(lambda i: (i + N_SLOTS) % SEQ_LEN, rasp.indices).named("partner_index")
    aligned = rasp.Aggregate(
        rasp.Select(rasp.indices, partner, rasp.Comparison.EQ).named("same_slot"),
        rasp.tokens,
    ).named("aligned_token")
    relation = rasp.SequenceMap(relate, rasp.tokens, aligned).named("slot_relation")

    rel = {}
    for s, slot in enumerate(SLOTS):
        pos = N_SLOTS + s
        sel = rasp.Select(rasp.indices, rasp.indices, lambda k, q, pos=pos: k == pos)
        rel[slot] = rasp.Aggregate(sel.named(f"read_h_{slot}"), relation).named(f"{slot}_relation")

    def is_(sop, values, name):
        return rasp.Map(lambda r, values=values: r in values, sop).named(name)

    v = {
        "polarity_conflict": is_(rel["pol"], ("negated", "unnegated"), "polarity_conflict"),
        "negation_present": is_(
            rel["pol"], ("negated", "unnegated", "both_negative"), "negation_present"
        ),
        "subj_conflict": is_(rel["subj"], ("conflict",), "subj_conflict"),
        "subj_generalised": is_(rel["subj"], ("hypernym",), "subj_generalised"),
        "subj_specialised": is_(rel["subj"], ("specific",), "subj_specialised"),
        "colour_conflict": is_(rel["col"], ("conflict",), "colour_conflict"),
        "colour_added": is_(rel["col"], ("added",), "colour_added"),
        "colour_dropped": is_(rel["col"], ("dropped",), "colour_dropped"),
        "size_conflict": is_(rel["size"], ("conflict",), "size_conflict"),
        "size_added": is_(rel["size"], ("added",), "size_added"),
        "size_dropped": is_(rel["size"], ("dropped",), "size_dropped"),
        "place_conflict": is_(rel["place"], ("conflict",), "place_conflict"),
    }

    def or_(a, b, name):
        return rasp.SequenceMap(lambda x, y: bool(x or y), a, b).named(name)

    subj_or_colour = or_(v["subj_conflict"], v["colour_conflict"], "subj_or_colour_conflict")
    size_or_place = or_(v["size_conflict"], v["place_conflict"], "size_or_place_conflict")
    v["content_conflict"] = or_(subj_or_colour, size_or_place, "content_conflict")
    modifier_added = or_(v["colour_added"], v["size_added"], "modifier_added")
    v["adds_detail"] = or_(v["subj_specialised"], modifier_added, "adds_detail")
    modifier_dropped = or_(v["colour_dropped"], v["size_dropped"], "modifier_dropped")
    v["removes_detail"] = or_(v["subj_generalised"], modifier_dropped, "removes_detail")
    v["neutral_by_adding"] = rasp.SequenceMap(
        lambda a, n: bool(a and not n), v["adds_detail"], v["negation_present"]
    ).named("neutral_by_adding")
    v["neutral_by_dropping"] = rasp.SequenceMap(
        lambda r, n: bool(r and n), v["removes_detail"], v["negation_present"]
    ).named("neutral_by_dropping")
    v["is_contradiction"] = or_(v["content_conflict"], v["polarity_conflict"], "is_contradiction")
    v["is_neutral"] = or_(v["neutral_by_adding"], v["neutral_by_dropping"], "is_neutral")
    label = rasp.SequenceMap(
        lambda c, n: "contradiction" if c else ("neutral" if n else "entailment"),
        v["is_contradiction"],
        v["is_neutral"],
    ).named("label")
    return label, {name: v[name] for name in VARIABLES}


def reference_variables(x: list[str]) -> dict[str, bool]:
    """The variables of one input computed directly in Python (an oracle independent of tracr)."""
    rel = {slot: relate(x[N_SLOTS + s], x[s]) for s, slot in enumerate(SLOTS)}
    v = {
        "polarity_conflict": rel["pol"] in ("negated", "unnegated"),
        "negation_present": rel["pol"] != "same",
        "subj_conflict": rel["subj"] == "conflict",
        "subj_generalised": rel["subj"] == "hypernym",
        "subj_specialised": rel["subj"] == "specific",
        "colour_conflict": rel["col"] == "conflict",
        "colour_added": rel["col"] == "added",
        "colour_dropped": rel["col"] == "dropped",
        "size_conflict": rel["size"] == "conflict",
        "size_added": rel["size"] == "added",
        "size_dropped": rel["size"] == "dropped",
        "place_conflict": rel["place"] == "conflict",
    }
    v["content_conflict"] = (
        v["subj_conflict"] or v["colour_conflict"] or v["size_conflict"] or v["place_conflict"]
    )
    v["adds_detail"] = v["subj_specialised"] or v["colour_added"] or v["size_added"]
    v["removes_detail"] = v["subj_generalised"] or v["colour_dropped"] or v["size_dropped"]
    v["neutral_by_adding"] = v["adds_detail"] and not v["negation_present"]
    v["neutral_by_dropping"] = v["removes_detail"] and v["negation_present"]
    v["is_contradiction"] = v["content_conflict"] or v["polarity_conflict"]
    v["is_neutral"] = v["neutral_by_adding"] or v["neutral_by_dropping"]
    return v


def reference_label(x: list[str]) -> str:
    v = reference_variables(x)
    return (
        "contradiction"
        if v["is_contradiction"]
        else ("neutral" if v["is_neutral"] else "entailment")
    )


def sample_pairs(rng: np.random.Generator, n: int) -> list[list[str]]:
    """``n`` distinct inputs (8 words each) with balanced labels: draw a label uniformly, then
    pairs until one has it (:func:`reference_label`; the exported labels are RASP's). A pair is a
    random premise and a hypothesis keeping each premise slot with probability 0.7 (else another
    word of the slot's class); the premise is negated with probability 0.3."""
    space = int(np.prod([len(w) for w in SLOT_WORDS])) ** 2
    if n > space // 2:
        raise NpeffUserError(f"toy_nli has {space} distinct inputs; ask for at most {space // 2}")
    seen: set[tuple[str, ...]] = set()
    out: list[list[str]] = []
    while len(out) < n:
        target = LABELS[int(rng.integers(len(LABELS)))]
        for _ in range(10_000):
            premise = [str(rng.choice(words)) for words in SLOT_WORDS]
            premise[0] = "not" if rng.random() < 0.3 else "is"
            hyp = [
                w if rng.random() < 0.7 else str(rng.choice([x for x in words if x != w]))
                for w, words in zip(premise, SLOT_WORDS)
            ]
            key = tuple(premise + hyp)
            if key not in seen and reference_label(premise + hyp) == target:
                seen.add(key)
                out.append(premise + hyp)
                break
    return out


def all_inputs() -> list[list[str]]:
    """Every valid input (291,600): each premise with each hypothesis."""
    import itertools

    sentences = [list(s) for s in itertools.product(*SLOT_WORDS)]
    return [p + h for p in sentences for h in sentences]
