"""Tasks: concept labels vs an independent recomputation, deterministic disjoint splits, loaders,
and clear errors for bad input."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from npeff.tasks import TASKS, build_task

# Word lists written out here on purpose (not imported) so the recomputation is independent.
COLOURS = {"red", "blue", "green", "yellow", "black", "white"}
SIZES = {"big", "small"}
OBJECTS = {"cat", "dog", "ball", "box", "hat", "car"}
PLACES = {"table", "garden", "bed", "door"}


def _parse(sentence: str) -> dict:
    words = sentence.split()
    return {
        "colour": next((w for w in words if w in COLOURS), None),
        "size": next((w for w in words if w in SIZES), None),
        "obj": next(w for w in words if w in OBJECTS),
        "place": next(w for w in words if w in PLACES),
        "negated": "not" in words,
        "paraphrase": words[:3] == ["there", "is", "a"],
    }


def _recompute_nli(premise: str, hypothesis: str) -> tuple[dict, int]:
    p, h = _parse(premise), _parse(hypothesis)
    c = {
        "colour_conflict": bool(p["colour"] and h["colour"] and p["colour"] != h["colour"]),
        "object_conflict": p["obj"] != h["obj"],
        "location_conflict": p["place"] != h["place"],
        "negation": h["negated"],
        "added_colour": bool(h["colour"] and not p["colour"]),
        "added_size": bool(h["size"] and not p["size"]),
        "dropped_detail": bool((p["colour"] and not h["colour"]) or (p["size"] and not h["size"])),
        "paraphrase": h["paraphrase"],
        "full_overlap": set(hypothesis.split()) <= set(premise.split()),
    }
    contradiction = any(
        c[k] for k in ("colour_conflict", "object_conflict", "location_conflict", "negation")
    )
    neutral = c["added_colour"] or c["added_size"]
    label = 2 if contradiction else (1 if neutral else 0)
    return c, label


SMALL_NLI = {"name": "toy_nli", "n_train": 300, "n_fit": 100, "n_eval": 100, "seed": 3}
HARD_NLI = {**SMALL_NLI, "drop_with_conflict": 0.5}


@pytest.fixture(scope="module")
def nli():
    return build_task(SMALL_NLI)


@pytest.mark.parametrize("cfg", [SMALL_NLI, HARD_NLI], ids=["default", "drop_with_conflict"])
def test_toy_nli_concepts_and_labels_match_recomputation(cfg):
    nli = build_task(cfg)
    assert nli.label_names == ["entailment", "neutral", "contradiction"]
    assert len(nli.concept_names) >= 6
    for split in ("train", "fit", "eval"):
        concepts = nli.concepts(split)
        for i, ex in enumerate(nli.examples(split)):
            expected, label = _recompute_nli(ex["text"], ex["text_pair"])
            got = dict(zip(nli.concept_names, concepts[i].tolist()))
            assert got == expected, (ex, got, expected)
            assert ex["label"] == label == int(nli.labels(split)[i])


def test_toy_nli_several_concepts_per_label(nli):
    """Each label is reached through at least two different concepts, and every concept occurs."""
    concepts, labels = nli.concepts("train"), nli.labels("train")
    assert concepts.any(axis=0).all(), dict(zip(nli.concept_names, concepts.sum(0)))
    for label in range(3):
        rows = concepts[labels == label]
        # concepts that are present in these rows and in no row of another label
        exclusive = [
            j
            for j in range(concepts.shape[1])
            if rows[:, j].any() and not concepts[labels != label][:, j].any()
        ]
        if label == 0:
            # entailment: identical, dropped detail, paraphrase (the latter two also appear elsewhere)
            idx = [
                nli.concept_names.index(n) for n in ("full_overlap", "dropped_detail", "paraphrase")
            ]
            assert all(rows[:, j].any() for j in idx)
        else:
            assert len(exclusive) >= 2, (label, exclusive)
    assert np.bincount(labels, minlength=3).min() > 0.15 * len(labels)


def test_toy_nli_tokens_decode_to_the_text(nli):
    tok = nli.tokenizer
    t = nli.tensors("eval")
    for i, ex in enumerate(nli.examples("eval")[:50]):
        ids = t["input_ids"][i][t["attention_mask"][i].bool()].tolist()
        words = [tok.vocab[j] for j in ids]
        assert words == ["[CLS]", *ex["text"].split(), "[SEP]", *ex["text_pair"].split(), "[SEP]"]
        types = t["token_type_ids"][i][t["attention_mask"][i].bool()].tolist()
        n_a = len(ex["text"].split()) + 2
        assert types == [0] * n_a + [1] * (len(words) - n_a)
        assert "[UNK]" not in words


def _split_keys(task, split):
    if task.name == "group":
        t = task.tensors(split)
        return set(zip(t["x"].tolist(), t["y"].tolist()))
    if task.name == "digits":
        return {ex["index"] for ex in task.examples(split)}
    return {(ex["text"], ex.get("text_pair")) for ex in task.examples(split)}


@pytest.mark.parametrize(
    "cfg",
    [
        SMALL_NLI,
        {"name": "group", "group": "S4"},
        {"name": "group", "group": "Z7"},
        {"name": "digits"},
    ],
    ids=["toy_nli", "group_S4", "group_Z7", "digits"],
)
def test_splits_deterministic_and_disjoint(cfg):
    a, b = build_task(cfg), build_task(cfg)
    for split in ("train", "fit", "eval"):
        ta, tb = a.tensors(split), b.tensors(split)
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k])
        if a.name != "digits":  # digits records hold arrays; the tensors above cover them
            assert a.examples(split) == b.examples(split)
    keys = {s: _split_keys(a, s) for s in ("train", "fit", "eval")}
    for s in keys:
        assert len(keys[s]) == a.num_examples(s) > 0  # no duplicates inside a split
    for s, t in itertools.combinations(keys, 2):
        assert not keys[s] & keys[t], (s, t)
    other = build_task({**cfg, "seed": 11})
    assert not torch.equal(
        other.tensors("train")["labels"][:50], a.tensors("train")["labels"][:50]
    ) or (_split_keys(other, "train") != keys["train"])


def _perm_name(p):
    return "(" + " ".join(map(str, p)) + ")"


def test_group_labels_and_concepts_match_recomputation():
    task = build_task({"name": "group", "group": "S4", "train_fraction": 0.5})
    perms = list(itertools.permutations(range(4)))
    assert task.num_classes == 24 and len(perms) == 24
    by_name = {_perm_name(p): p for p in perms}
    identity = tuple(range(4))

    def compose(a, b):  # (a·b)(i) = a(b(i))
        return tuple(a[b[i]] for i in range(4))

    def even(p):
        return sum(p[i] > p[j] for i in range(4) for j in range(i + 1, 4)) % 2 == 0

    n_total = 0
    for split in ("train", "fit", "eval"):
        concepts = task.concepts(split)
        for i, ex in enumerate(task.examples(split)):
            a_name, b_name = ex["inputs"][1:-1].split(", ")
            a, b = by_name[a_name], by_name[b_name]
            z = compose(a, b)
            assert task.label_names[ex["label"]] == _perm_name(z)
            expected = [
                a == identity,
                b == identity,
                a == b,
                z == identity,
                z == compose(b, a),
                even(a),
                even(b),
            ]
            assert concepts[i].tolist() == expected
        n_total += task.num_examples(split)
    assert n_total == 24 * 24
    assert task.num_examples("train") == 288


def test_group_cyclic_is_addition_mod_n():
    task = build_task({"name": "group", "group": "Z5", "train_fraction": 0.6})
    t = task.tensors("train")
    assert torch.equal(t["labels"], (t["x"] + t["y"]) % 5)


def test_digits_match_sklearn():
    from sklearn.datasets import load_digits

    data = load_digits()
    task = build_task({"name": "digits"})
    t = task.tensors("eval")
    for j, ex in enumerate(task.examples("eval")[:20]):
        assert ex["label"] == data.target[ex["index"]]
        np.testing.assert_allclose(t["x"][j, 0].numpy(), data.images[ex["index"]] / 16.0, atol=1e-6)
        assert ex["image"].shape == (8, 8) and 0.0 <= ex["image"].min() <= ex["image"].max() <= 1.0
    assert task.concepts("eval") is None and task.concept_names == []


def test_dataloader_order_and_shuffle(nli):
    ordered = torch.cat([b["labels"] for b in nli.dataloader("eval", 32)])
    assert torch.equal(ordered, torch.as_tensor(nli.labels("eval")))
    s1 = torch.cat([b["labels"] for b in nli.dataloader("train", 32, shuffle=True, seed=5)])
    s2 = torch.cat([b["labels"] for b in nli.dataloader("train", 32, shuffle=True, seed=5)])
    assert torch.equal(s1, s2)
    full = next(iter(nli.dataloader("fit", None)))
    assert full["labels"].shape[0] == nli.num_examples("fit")
    assert set(full) == {"input_ids", "attention_mask", "token_type_ids", "labels"}


def test_unknown_task_and_option_fail_with_what_is_available():
    with pytest.raises(ValueError, match="available tasks.*toy_nli"):
        build_task({"name": "nope"})
    with pytest.raises(ValueError, match="unknown option.*n_trian.*n_train"):
        build_task({"name": "toy_nli", "n_trian": 5})
    with pytest.raises(ValueError, match="unknown split"):
        build_task({"name": "group", "group": "Z3"}).dataloader("test")
    with pytest.raises(ValueError, match="unknown group"):
        build_task({"name": "group", "group": "Q8"})
    assert sorted(TASKS) == [
        "digits",
        "digits_backdoor",
        "group",
        "text_csv",
        "tiny_lm",
        "toy_nli",
        "toy_nli_zero_shot",
        "tracr",
    ]


# --- text_csv --------------------------------------------------------------------------------------


def _write_csv(path, rows, header=("sentence", "other", "y")):
    lines = [",".join(header)] + [",".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _rows(n=60):
    rng = np.random.default_rng(0)
    words = ["good", "bad", "fine", "awful", "great", "poor"]
    out = []
    for i in range(n):
        w = words[i % 6]
        out.append(
            (
                f"this is {w} number {i}",
                f"pair {int(rng.integers(100))}",
                "pos" if i % 6 in (0, 2, 4) else "neg",
            )
        )
    return out


def test_text_csv_csv_and_pairs(tmp_path):
    path = _write_csv(tmp_path / "d.csv", _rows())
    task = build_task(
        {
            "name": "text_csv",
            "path": str(path),
            "text_column": "sentence",
            "text_pair_column": "other",
            "label_column": "y",
            "n_fit": 10,
            "n_eval": 10,
            "max_length": 16,
        }
    )
    assert task.label_names == ["neg", "pos"]
    assert (task.num_examples("train"), task.num_examples("fit"), task.num_examples("eval")) == (
        40,
        10,
        10,
    )
    rows = {r[0]: r for r in _rows()}
    for ex in task.examples("eval"):
        assert ex["text_pair"] == rows[ex["text"]][1]
        assert task.label_names[ex["label"]] == rows[ex["text"]][2]
    t = task.tensors("eval")
    assert t["input_ids"].shape == (10, 16) and t["token_type_ids"].max() == 1
    keys = [{ex["text"] for ex in task.examples(s)} for s in ("train", "fit", "eval")]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])


def test_text_csv_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": r[0], "label": r[2]}) for r in _rows()) + "\n")
    task = build_task(
        {
            "name": "text_csv",
            "path": str(path),
            "n_fit": 5,
            "n_eval": 5,
            "label_names": ["pos", "neg"],
        }
    )
    assert task.label_names == ["pos", "neg"]
    rows = {r[0]: r[2] for r in _rows()}
    assert all(task.label_names[ex["label"]] == rows[ex["text"]] for ex in task.examples("train"))


def test_text_csv_malformed_files_fail_clearly(tmp_path):
    good = _write_csv(tmp_path / "good.csv", _rows())
    with pytest.raises(
        ValueError, match=r"missing column.*\['text'\].*available columns.*sentence"
    ):
        build_task({"name": "text_csv", "path": str(good), "label_column": "y"})
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("text,label\nhello,pos\nthis, has, too many,fields\n")
    with pytest.raises(ValueError, match="ragged.csv:3.*fields but the header has 2"):
        build_task({"name": "text_csv", "path": str(ragged)})
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "a", "label": "x"}\n{"text": oops}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: not valid JSON"):
        build_task({"name": "text_csv", "path": str(bad_json)})
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty CSV"):
        build_task({"name": "text_csv", "path": str(empty)})
    with pytest.raises(FileNotFoundError, match="not found"):
        build_task({"name": "text_csv", "path": str(tmp_path / "missing.csv")})
    with pytest.raises(FileNotFoundError, match="not installed"):
        build_task({"name": "text_csv", "path": "pkg:no-such-dist-xyz/file.csv"})
