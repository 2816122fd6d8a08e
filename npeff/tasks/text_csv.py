"""text_csv: text classification from a local CSV or JSONL file.

Each row needs a text column and a label column, optionally a second text column (a pair). Labels
may be strings or integers; ``label_names`` fixes their order, otherwise the sorted distinct
values are used. Tokenization: ``tokenizer: word`` builds a word-level vocabulary from the train
split; any other value is a local Hugging Face tokenizer folder (or a ``pkg:`` reference, see
:mod:`npeff.artifacts.files`), loaded offline.

Splits: rows are (optionally) de-duplicated, shuffled with the seed and cut into ``n_fit``,
``n_eval`` and ``n_train`` rows (``n_train: null`` = all remaining rows).

Shortcut knob (``shortcut=``, off by default; :mod:`npeff.tasks.shortcut`), a column rule: the cue
word ``word`` is written at the ``position`` (``end`` | ``start``) of column ``column`` (``text``
= the text column, ``text_pair`` = the pair column) of a share ``rate`` of each split's rows; in
``train`` it predicts ``label`` with probability ``p``, in ``fit``/``eval`` it is independent of
the label. The task then has the concepts ``cue`` and ``cue_conflict``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npeff.artifacts.files import resolve_path
from npeff.errors import NpeffUserError
from npeff.tasks.base import NpeffTask, SplitData, TaskInfo, split_indices
from npeff.tasks.shortcut import CONCEPT_NAMES as SHORTCUT_CONCEPTS
from npeff.tasks.shortcut import parse_shortcut
from npeff.tasks.tokenizer import WordTokenizer


def read_rows(
    path: Path, fmt: str = "auto", encoding_errors: str = "replace"
) -> list[dict[str, Any]]:
    """Rows of a CSV (header line required) or JSONL file as dicts; clear errors when malformed."""
    if fmt == "auto":
        fmt = "jsonl" if path.suffix.lower() in (".jsonl", ".json", ".ndjson") else "csv"
    if fmt not in ("csv", "jsonl"):
        raise NpeffUserError(f"unknown format {fmt!r}; available: 'auto', 'csv', 'jsonl'")
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8", errors=encoding_errors, newline="") as f:
        if fmt == "jsonl":
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise NpeffUserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise NpeffUserError(f"{path}:{lineno}: expected a JSON object per line")
                rows.append(obj)
        else:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise NpeffUserError(
                    f"{path}: empty CSV file (a header line with column names is required)"
                )
            n_cols = len(reader.fieldnames)
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    n_fields = sum(v is not None for k, v in row.items() if k is not None)
                    n_fields += len(row.get(None) or [])
                    raise NpeffUserError(
                        f"{path}:{reader.line_num}: row has {n_fields} fields but the header has "
                        f"{n_cols} ({reader.fieldnames}); fix the file or quote fields with commas"
                    )
                rows.append(row)
    if not rows:
        raise NpeffUserError(f"{path}: no data rows")
    return rows


SHORTCUT_DEFAULTS = {"word": "zqcue", "column": "text", "position": "end"}
SHORTCUT_COLUMNS = ("text", "text_pair")


class TextCsvTask(NpeffTask):
    """Text (pair) classification from a local CSV/JSONL file."""

    name = "text_csv"

    def __init__(
        self,
        path: str,
        text_column: str = "text",
        label_column: str = "label",
        text_pair_column: str | None = None,
        label_names: list[str] | None = None,
        format: str = "auto",
        tokenizer: str = "word",
        max_vocab: int = 5000,
        max_length: int = 64,
        n_train: int | None = None,
        n_fit: int = 500,
        n_eval: int = 500,
        deduplicate: bool = True,
        seed: int = 0,
        batch_size: int | None = 32,
        shortcut: dict | None = None,
    ):
        super().__init__(seed=seed, batch_size=batch_size)
        if path is None or str(path) in ("", "???"):
            raise NpeffUserError("text_csv needs task.path=<a local .csv or .jsonl file>")
        self.path = resolve_path(
            path, what="text_csv data file", extra_hint="pip install -e '.[data]'"
        )
        self.text_column, self.label_column = text_column, label_column
        self.text_pair_column = text_pair_column
        self.label_names_arg = list(label_names) if label_names else None
        self.format, self.tokenizer_spec = format, str(tokenizer)
        self.max_vocab, self.max_length = int(max_vocab), int(max_length)
        self.n_train = None if n_train is None else int(n_train)
        self.n_fit, self.n_eval = int(n_fit), int(n_eval)
        self.deduplicate = bool(deduplicate)
        self.tokenizer: Any = None
        self.shortcut_cfg = dict(shortcut) if shortcut else None
        if self.shortcut_cfg is not None:
            column = self.shortcut_cfg.get("column", "text")
            if column not in SHORTCUT_COLUMNS or (column == "text_pair" and not text_pair_column):
                raise NpeffUserError(
                    f"text_csv shortcut.column={column!r}: use 'text' (task.text_column) or "
                    "'text_pair' (needs task.text_pair_column)"
                )
            if self.shortcut_cfg.get("position", "end") not in ("end", "start"):
                raise NpeffUserError("text_csv shortcut.position must be 'end' or 'start'")

    def _columns(self) -> list[str]:
        cols = [self.text_column, self.label_column]
        return cols + ([self.text_pair_column] if self.text_pair_column else [])

    def _build(self) -> tuple[TaskInfo, dict[str, SplitData]]:
        rows = read_rows(self.path, self.format)
        available = list(rows[0].keys())
        missing = [c for c in self._columns() if c not in available]
        if missing:
            raise NpeffUserError(
                f"{self.path}: missing column(s) {missing}; available columns: {available} "
                "(set task.text_column / task.label_column / task.text_pair_column)"
            )
        texts, pairs, raw_labels = [], [], []
        seen = set()
        for i, row in enumerate(rows):
            missing_here = [c for c in self._columns() if row.get(c) is None]
            if missing_here:
                raise NpeffUserError(f"{self.path}: data row {i + 1} lacks {missing_here}")
            label = str(row[self.label_column]).strip()
            if label == "":
                raise NpeffUserError(f"{self.path}: data row {i + 1} has an empty label")
            text = str(row[self.text_column])
            pair = str(row[self.text_pair_column]) if self.text_pair_column else None
            if self.deduplicate:
                key = (text, pair)
                if key in seen:
                    continue
                seen.add(key)
            texts.append(text)
            pairs.append(pair)
            raw_labels.append(label)
        label_names = self.label_names_arg or sorted(set(raw_labels))
        label_index = {name: i for i, name in enumerate(label_names)}
        unknown = sorted(set(raw_labels) - set(label_index))
        if unknown:
            raise NpeffUserError(
                f"{self.path}: labels {unknown[:10]} are not in label_names {label_names}"
            )
        if len(label_names) < 2:
            raise NpeffUserError(
                f"{self.path}: need at least 2 distinct labels, found {label_names}"
            )
        labels = np.array([label_index[v] for v in raw_labels], dtype=np.int64)

        n = len(texts)
        n_train = n - self.n_fit - self.n_eval if self.n_train is None else self.n_train
        if n_train <= 0:
            raise NpeffUserError(
                f"{self.path}: {n} usable rows; n_fit={self.n_fit} + n_eval={self.n_eval} leave none for train"
            )
        idx = split_indices(
            n, {"train": n_train, "fit": self.n_fit, "eval": self.n_eval}, self.seed
        )
        concepts: dict[str, np.ndarray | None] = {split: None for split in idx}
        train_labels = labels[idx["train"]]
        if self.shortcut_cfg is not None:
            concepts, train_labels = self._plant_shortcut(idx, texts, pairs, labels, label_names)
        self.tokenizer = self._make_tokenizer(
            [texts[i] for i in idx["train"]], [pairs[i] for i in idx["train"]]
        )
        splits = {}
        for split, rows_idx in idx.items():
            t = [texts[i] for i in rows_idx]
            p = [pairs[i] for i in rows_idx] if self.text_pair_column else None
            tensors = self._encode(t, p)
            y = train_labels if split == "train" else labels[rows_idx]
            tensors["labels"] = torch.from_numpy(np.ascontiguousarray(y))
            records = []
            for j in range(len(rows_idx)):
                rec: dict[str, Any] = {"text": t[j], "label": int(y[j])}
                if p is not None:
                    rec["text_pair"] = p[j]
                records.append(rec)
            splits[split] = SplitData(tensors, records, concepts[split])
        hints = {"max_length": self.max_length}
        if isinstance(self.tokenizer, WordTokenizer):
            hints["vocab_size"] = self.tokenizer.vocab_size
        info = TaskInfo(
            num_classes=len(label_names),
            label_names=list(label_names),
            concept_names=list(SHORTCUT_CONCEPTS) if self.shortcut_cfg is not None else [],
            hints=hints,
        )
        return info, splits

    def _plant_shortcut(
        self,
        idx: dict[str, np.ndarray],
        texts: list[str],
        pairs: list[str | None],
        labels: np.ndarray,
        label_names: list[str],
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Write the cue into ``texts``/``pairs`` (in place) by the column rule.

        Returns the cue concepts of every split (bool [n_split, 2]) and the train labels.
        """
        sc = parse_shortcut(self.shortcut_cfg, label_names, SHORTCUT_DEFAULTS)
        assert sc is not None
        word, column = str(sc.options["word"]), sc.options["column"]
        target = pairs if column == "text_pair" else texts
        if not word.strip() or len(word.split()) != 1:
            raise NpeffUserError(f"text_csv shortcut.word={word!r} must be one word")
        n_hits = sum(word.lower() in str(x).lower().split() for x in target)
        if n_hits:
            raise NpeffUserError(
                f"text_csv shortcut.word={word!r} already occurs in {n_hits} rows of column "
                f"{column!r}; choose a word absent from the data"
            )
        concepts, train_labels = {}, labels[idx["train"]]
        for split, rows_idx in idx.items():
            y = labels[rows_idx]
            cue = sc.assign(y, split, self.seed)
            for i in np.asarray(rows_idx)[cue]:
                x = str(target[i])
                target[i] = f"{x} {word}" if sc.options["position"] == "end" else f"{word} {x}"
            concepts[split] = sc.concepts(cue, y)
            if split == "train":
                train_labels = sc.train_labels(y, cue, self.seed, len(label_names))
        return concepts, train_labels

    def _make_tokenizer(self, texts: list[str], pairs: list[str | None]) -> Any:
        if self.tokenizer_spec == "word":
            corpus = texts + [p for p in pairs if p is not None]
            return WordTokenizer.from_texts(corpus, max_vocab=self.max_vocab)
        from transformers import AutoTokenizer

        folder = resolve_path(
            self.tokenizer_spec, what="tokenizer folder", extra_hint="pip install -e '.[data]'"
        )
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)

    def _encode(self, texts: list[str], pairs: list[str] | None) -> dict[str, torch.Tensor]:
        if isinstance(self.tokenizer, WordTokenizer):
            return self.tokenizer.encode(texts, pairs, max_length=self.max_length)
        enc = self.tokenizer(
            texts,
            pairs,
            max_length=self.max_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        )
        out = {k: enc[k].long() for k in ("input_ids", "attention_mask")}
        out["token_type_ids"] = (
            enc["token_type_ids"].long()
            if "token_type_ids" in enc
            else torch.zeros_like(out["input_ids"])
        )
        return out
