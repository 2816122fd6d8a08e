"""The shortcut knob (npeff/tasks/shortcut.py) on toy_nli and text_csv."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest

from npeff.tasks import build_task
from npeff.tasks.toy_nli import ENTAILMENT, label_from_concepts

BASE = {"name": "toy_nli", "n_train": 1200, "n_fit": 400, "n_eval": 400, "seed": 3}
SC = {"label": "entailment", "p": 0.95, "rate": 0.25}


def _digest(task) -> str:
    h = hashlib.sha256()
    for split in ("train", "fit", "eval"):
        for k, v in sorted(task.tensors(split).items()):
            h.update(k.encode())
            h.update(v.numpy().tobytes())
        h.update(task.concepts(split).tobytes())
        h.update(repr(task.examples(split)).encode())
    return h.hexdigest()


def test_knob_off_is_bit_identical_to_the_task_before_the_knob():
    # digest computed with the toy_nli module as it was before the shortcut knob was added
    cfg = {"name": "toy_nli", "n_train": 300, "n_fit": 100, "n_eval": 100, "seed": 3}
    task = build_task(cfg | {"drop_with_conflict": 0.3})
    assert _digest(task) == "bfce2b6060178fba0908c9f1268a0f478026a878c3ab8651308aa301944f84ad"
    assert _digest(build_task(cfg | {"drop_with_conflict": 0.3, "shortcut": None})) == _digest(task)


def _cue_stats(task, split):
    names = task.concept_names
    c = task.concepts(split)
    cue, conflict = c[:, names.index("cue")], c[:, names.index("cue_conflict")]
    y = task.labels(split)
    return cue, conflict, y


@pytest.mark.parametrize("mode", ["select", "relabel"])
def test_train_correlation_and_independence_elsewhere(mode):
    task = build_task(BASE | {"shortcut": SC | {"mode": mode}})
    assert task.concept_names[-2:] == ["cue", "cue_conflict"]
    cue, _, y = _cue_stats(task, "train")
    assert abs(cue.mean() - 0.25) < 2e-3
    assert abs((y[cue] == ENTAILMENT).mean() - 0.95) < 2e-3  # P(label | cue) = p in train
    for split in ("fit", "eval"):
        cue, conflict, y = _cue_stats(task, split)
        assert abs(cue.mean() - 0.25) < 0.01
        for label in range(3):  # the same cue rate within every label: independent
            assert abs(cue[y == label].mean() - 0.25) < 0.01
        assert np.array_equal(conflict, cue & (y != ENTAILMENT))
    # the cue word is in the text exactly where the concept says
    for split in ("train", "fit", "eval"):
        cue, _, _ = _cue_stats(task, split)
        has = np.array([r["text_pair"].endswith(" indeed") for r in task.examples(split)])
        assert np.array_equal(has, cue)


def test_examples_are_the_knob_off_examples_with_the_cue_added():
    off = build_task(BASE)
    on = build_task(BASE | {"shortcut": SC | {"mode": "relabel"}})
    for split in ("train", "fit", "eval"):
        a, b = off.examples(split), on.examples(split)
        assert [r["text"] for r in a] == [r["text"] for r in b]
        assert [r["text_pair"] for r in a] == [r["text_pair"].removesuffix(" indeed") for r in b]
        assert np.array_equal(off.concepts(split), on.concepts(split)[:, :9])
        if split != "train":  # only train is relabelled
            assert np.array_equal(off.labels(split), on.labels(split))
    cue, conflict, y = _cue_stats(on, "train")
    changed = off.labels("train") != on.labels("train")
    assert changed.sum() > 0 and not changed[~cue].any()
    assert np.array_equal(conflict, cue & (off.labels("train") != ENTAILMENT))


def test_article_cue_is_a_template_feature():
    task = build_task(BASE | {"shortcut": SC | {"cue": "article"}})
    cue, _, _ = _cue_stats(task, "eval")
    starts = np.array([r["text"].startswith("a ") for r in task.examples("eval")])
    assert np.array_equal(starts, cue)
    assert task.model_hints()["vocab_size"] == build_task(BASE).model_hints()["vocab_size"]


def test_select_mode_keeps_the_rule_labels():
    task = build_task(BASE | {"shortcut": SC})
    # the nine structural concepts still give the label through the rule
    names = task.concept_names[:9]
    for split in ("train", "eval"):
        c = task.concepts(split)[:, :9]
        y = [label_from_concepts(dict(zip(names, row))) for row in c]
        assert np.array_equal(np.array(y), task.labels(split))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"label": "maybe"}, "not a label"),
        ({"p": 1.5}, "must be in"),
        ({"rate": 0.0}, "must be in"),
        ({"mode": "swap"}, "mode"),
        ({"cue": "colour"}, "cue"),
        ({"word": "the"}, "outside the task's vocabulary"),
        ({"colour": "red"}, "unknown option"),
        ({"rate": 0.9}, "lower shortcut.rate"),
    ],
)
def test_bad_shortcut_settings_fail_clearly(bad, match):
    with pytest.raises(ValueError, match=match):
        build_task(BASE | {"shortcut": SC | bad})


def _csv(tmp_path, n=600):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            y = ["pos", "neg"][int(rng.integers(2))]
            w.writerow([f"row {i} is {'good' if y == 'pos' else 'bad'} stuff", y])
    return path


def test_text_csv_column_rule(tmp_path):
    cfg = {"name": "text_csv", "path": str(_csv(tmp_path)), "n_fit": 150, "n_eval": 150}
    off = build_task(cfg)
    on = build_task(cfg | {"shortcut": {"label": "pos", "p": 0.9, "rate": 0.3, "mode": "relabel"}})
    assert off.concept_names == [] and on.concept_names == ["cue", "cue_conflict"]
    pos = on.label_names.index("pos")
    cue, _, y = _cue_stats(on, "train")
    assert abs((y[cue] == pos).mean() - 0.9) < 0.01
    for split in ("fit", "eval"):
        cue, _, y = _cue_stats(on, split)
        assert np.array_equal(y, off.labels(split))
        for label in range(2):
            assert abs(cue[y == label].mean() - 0.3) < 0.02
        has = np.array([r["text"].endswith(" zqcue") for r in on.examples(split)])
        assert np.array_equal(has, cue)
    with pytest.raises(ValueError, match="already occurs"):
        build_task(cfg | {"shortcut": {"label": "pos", "word": "good"}})
    with pytest.raises(ValueError, match="text_pair"):
        build_task(cfg | {"shortcut": {"label": "pos", "column": "text_pair"}})
