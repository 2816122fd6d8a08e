"""A word-level tokenizer built in code (no downloads), with BERT-style pair encoding."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import torch

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP)
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """Lower-case words and single punctuation marks."""
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Maps words to ids: ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3``, then the vocabulary in order."""

    def __init__(self, words: Iterable[str]):
        vocab = list(SPECIAL_TOKENS)
        seen = set(vocab)
        for w in words:
            if w not in seen:
                seen.add(w)
                vocab.append(w)
        self.vocab = vocab
        self.index = {w: i for i, w in enumerate(vocab)}

    @classmethod
    def from_texts(cls, texts: Iterable[str], max_vocab: int | None = None, min_count: int = 1):
        """Vocabulary of the most frequent words (ties broken alphabetically)."""
        counts = Counter(w for t in texts for w in split_words(t))
        words = sorted(
            (w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w)
        )
        if max_vocab is not None:
            words = words[: max(0, max_vocab - len(SPECIAL_TOKENS))]
        return cls(words)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        return 0

    def ids(self, text: str) -> list[int]:
        unk = self.index[UNK]
        return [self.index.get(w, unk) for w in split_words(text)]

    def encode(
        self,
        texts: Sequence[str],
        text_pairs: Sequence[str] | None = None,
        max_length: int = 32,
    ) -> dict[str, torch.Tensor]:
        """Encode ``[CLS] a [SEP] (b [SEP])`` padded/truncated to ``max_length``.

        Returns ``input_ids``, ``attention_mask`` (1 = token) and ``token_type_ids``, each int64
        ``[n, max_length]``. Truncation removes words from the longer of the two texts first.
        """
        n = len(texts)
        input_ids = torch.zeros(n, max_length, dtype=torch.long)
        attention = torch.zeros(n, max_length, dtype=torch.long)
        types = torch.zeros(n, max_length, dtype=torch.long)
        cls_id, sep_id = self.index[CLS], self.index[SEP]
        for i in range(n):
            a = self.ids(texts[i])
            b = self.ids(text_pairs[i]) if text_pairs is not None else None
            budget = max_length - (3 if b is not None else 2)
            if b is None:
                a = a[:budget]
                seq, typ = [cls_id, *a, sep_id], [0] * (len(a) + 2)
            else:
                while len(a) + len(b) > budget:
                    if len(a) >= len(b):
                        a = a[:-1]
                    else:
                        b = b[:-1]
                seq = [cls_id, *a, sep_id, *b, sep_id]
                typ = [0] * (len(a) + 2) + [1] * (len(b) + 1)
            input_ids[i, : len(seq)] = torch.tensor(seq)
            attention[i, : len(seq)] = 1
            types[i, : len(seq)] = torch.tensor(typ)
        return {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": types}
