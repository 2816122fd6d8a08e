"""tiny_lm: a synthetic language whose next-token rule at the explained position is known.

Every example is one short "program" followed by ``=``; the model (a causal LM, e.g.
``model=tiny_gpt2``) must predict the next token at the last non-padding position, and the rule
that decides that token is recorded as a concept:

=============  ===============================================  ================================
rule           text (example)                                   next token
=============  ===============================================  ================================
depth          ``depth ( ( ) ( =``                              bracket depth at the end (``2``)
copy           ``copy b e a g = b e``                           the next letter to copy (``a``)
sum            ``sum 3 5 4 =``                                  digit sum mod 10 (``2``)
=============  ===============================================  ================================

Concepts: ``rule_depth``, ``rule_copy``, ``rule_sum`` (which rule applies) and three finer ones:
``sum_wraps`` (the digit sum is ≥ 10), ``depth_zero`` (the brackets are balanced) and
``copy_started`` (at least one letter is already copied). Labels are token ids (the model's
classes are the vocabulary); sequences are right-padded with an attention mask, and examples are
distinct across the splits.
"""

from __future__ import annotations

import numpy as np
import torch

from npeff.errors import NpeffUserError
from npeff.tasks.base import NpeffTask, SplitData, TaskInfo

SPECIAL = ("[PAD]", "[UNK]")
RULES = ("depth", "copy", "sum")
DIGITS = tuple(str(i) for i in range(10))
LETTERS = tuple("abcdefgh")
VOCAB = (*SPECIAL, *RULES, "(", ")", "=", *DIGITS, *LETTERS)
CONCEPT_NAMES = ["rule_depth", "rule_copy", "rule_sum", "sum_wraps", "depth_zero", "copy_started"]


def make_program(rng: np.random.Generator) -> tuple[list[str], str, dict[str, bool]]:
    """One example: (tokens ending in '=' or a copied letter, next token, concepts)."""
    rule = RULES[int(rng.integers(3))]
    c = dict.fromkeys(CONCEPT_NAMES, False)
    c[f"rule_{rule}"] = True
    if rule == "depth":
        depth, toks = 0, []
        for _ in range(int(rng.integers(3, 10))):
            if depth > 0 and (depth >= 5 or rng.random() < 0.5):
                toks.append(")")
                depth -= 1
            else:
                toks.append("(")
                depth += 1
        c["depth_zero"] = depth == 0
        return ["depth", *toks, "="], str(depth), c
    if rule == "copy":
        n = int(rng.integers(3, 6))
        letters = [LETTERS[i] for i in rng.integers(len(LETTERS), size=n)]
        j = int(rng.integers(n))
        c["copy_started"] = j > 0
        return ["copy", *letters, "=", *letters[:j]], letters[j], c
    digits = [int(d) for d in rng.integers(10, size=int(rng.integers(2, 5)))]
    c["sum_wraps"] = sum(digits) >= 10
    return ["sum", *map(str, digits), "="], str(sum(digits) % 10), c


class TinyLmTask(NpeffTask):
    """The synthetic next-token language above; labels are next-token ids.

    Args: n_train, n_fit, n_eval (split sizes), max_length (padded length, ≥ 12).
    """

    name = "tiny_lm"

    def __init__(
        self,
        n_train: int = 4000,
        n_fit: int = 1000,
        n_eval: int = 1000,
        max_length: int = 14,
        seed: int = 0,
        batch_size: int | None = 64,
    ):
        super().__init__(seed=seed, batch_size=batch_size)
        if int(max_length) < 12:
            raise NpeffUserError(
                f"tiny_lm needs max_length ≥ 12 (its longest program), got {max_length}"
            )
        self.sizes = {"train": int(n_train), "fit": int(n_fit), "eval": int(n_eval)}
        self.max_length = int(max_length)
        self.index = {w: i for i, w in enumerate(VOCAB)}

    def word_token_ids(self, word: str) -> list[int]:
        """Token ids of a word (for ``fisher.label_words``): one id per space-separated token."""
        return [self.index.get(w, self.index["[UNK]"]) for w in str(word).split()]

    def _build(self) -> tuple[TaskInfo, dict[str, SplitData]]:
        rng = np.random.default_rng(self.seed)
        total = sum(self.sizes.values())
        seen: set[tuple[str, ...]] = set()
        items = []
        for _ in range(200 * total + 1000):
            if len(items) == total:
                break
            toks, nxt, c = make_program(rng)
            key = tuple(toks)
            if key not in seen:
                seen.add(key)
                items.append((toks, nxt, c))
        else:
            raise NpeffUserError(
                f"tiny_lm cannot make {total} distinct examples; lower the split sizes"
            )
        splits, start = {}, 0
        for split, size in self.sizes.items():
            splits[split] = self._make_split(items[start : start + size])
            start += size
        info = TaskInfo(
            num_classes=len(VOCAB),
            label_names=list(VOCAB),
            concept_names=list(CONCEPT_NAMES),
            hints={"vocab_size": len(VOCAB), "max_length": self.max_length},
        )
        return info, splits

    def _make_split(self, items) -> SplitData:
        n, length = len(items), self.max_length
        ids = torch.zeros(n, length, dtype=torch.long)
        mask = torch.zeros(n, length, dtype=torch.long)
        for i, (toks, _, _) in enumerate(items):
            ids[i, : len(toks)] = torch.tensor([self.index[t] for t in toks])
            mask[i, : len(toks)] = 1
        labels = torch.tensor([self.index[nxt] for _, nxt, _ in items], dtype=torch.long)
        records = [
            {"text": " ".join(t), "label": self.index[nxt], "next": nxt} for t, nxt, _ in items
        ]
        concepts = np.array([[c[k] for k in CONCEPT_NAMES] for _, _, c in items], dtype=bool)
        tensors = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        return SplitData(tensors=tensors, records=records, concepts=concepts.reshape(n, -1))
