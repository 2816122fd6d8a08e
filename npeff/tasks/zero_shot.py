"""toy_nli_zero_shot: toy NLI as text for a causal LM, "premise hypothesis → label word".

The pairs and the 9 concepts are :class:`npeff.tasks.toy_nli.ToyNliTask`'s; each example is
``[CLS] premise [SEP] hypothesis [SEP]`` (right-padded, attention mask, no token types) and its
label is the token id of the label word that follows (``yes`` / ``maybe`` / ``no`` for
entailment / neutral / contradiction). A causal LM trained on it is explained with
``fisher.classes=label_words fisher.label_words=[yes,maybe,no]``: the next-token distribution
renormalised over the three label words (algorithm: :mod:`npeff.fisher.lm_classes`).
"""

from __future__ import annotations

from npeff.tasks.base import SplitData, TaskInfo
from npeff.tasks.toy_nli import ToyNliTask

LABEL_WORDS = ("yes", "maybe", "no")


class ToyNliZeroShotTask(ToyNliTask):
    """Toy NLI whose labels are the label words' token ids (see the module docstring)."""

    name = "toy_nli_zero_shot"

    def __init__(
        self,
        n_train: int = 4000,
        n_fit: int = 1000,
        n_eval: int = 1000,
        max_length: int = 24,
        drop_with_conflict: float = 0.0,
        seed: int = 0,
        batch_size: int | None = 64,
    ):
        super().__init__(
            n_train=n_train,
            n_fit=n_fit,
            n_eval=n_eval,
            max_length=max_length,
            drop_with_conflict=drop_with_conflict,
            seed=seed,
            batch_size=batch_size,
        )
        from npeff.tasks.tokenizer import WordTokenizer

        self.tokenizer = WordTokenizer([*self.tokenizer.vocab, *LABEL_WORDS])

    def word_token_ids(self, word: str) -> list[int]:
        """Token ids of ``word`` under the task's tokenizer (for ``fisher.label_words``)."""
        return self.tokenizer.ids(str(word))

    def _build(self) -> tuple[TaskInfo, dict[str, SplitData]]:
        info, splits = super()._build()
        label_ids = [self.tokenizer.index[w] for w in LABEL_WORDS]
        for s in splits.values():
            s.tensors.pop("token_type_ids", None)
            s.tensors["labels"] = s.tensors["labels"].new_tensor(label_ids)[s.tensors["labels"]]
        vocab = list(self.tokenizer.vocab)
        info = TaskInfo(
            num_classes=len(vocab),
            label_names=vocab,
            concept_names=info.concept_names,
            hints={**info.hints, "vocab_size": len(vocab)},
        )
        return info, splits
