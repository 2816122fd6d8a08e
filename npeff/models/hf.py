"""Hugging Face sequence classifiers: a tiny BERT from a config, or a model from a local folder.

Both are wrapped in :class:`HFClassifier`, which takes ``input_ids``, a 2-D ``attention_mask``
(1 = token) and ``token_type_ids`` (each ``[B, T]``) and returns logits ``[B, C]``. The wrapper
turns the 2-D mask into the 4-D additive mask ``[B, 1, 1, T]`` itself, because transformers'
own mask handling calls data-dependent ops that break ``torch.func.vmap`` (environment.md).
Models are returned in eval mode (dropout would break vmap).
"""

from __future__ import annotations

import torch
from torch import nn

from npeff.artifacts.files import resolve_path
from npeff.errors import NpeffFileNotFoundError


class HFClassifier(nn.Module):
    """Wraps a ``*ForSequenceClassification`` model; ``forward(...) -> logits [B, C]``."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf = hf_model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        mask = None
        if attention_mask is not None:
            dtype = next(self.hf.parameters()).dtype
            keep = attention_mask[:, None, None, :].to(dtype)  # [B, 1, 1, T]
            mask = (1.0 - keep) * torch.finfo(dtype).min
        kwargs = {"input_ids": input_ids, "attention_mask": mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return self.hf(**kwargs).logits


def build_tiny_bert(
    num_classes: int,
    vocab_size: int,
    max_length: int = 32,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 128,
    dropout: float = 0.0,
    attn_implementation: str = "eager",
    initializer_range: float = 0.02,
) -> HFClassifier:
    """A randomly initialised ``BertForSequenceClassification`` built from a config (no download)."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=int(vocab_size),
        hidden_size=int(hidden_size),
        num_hidden_layers=int(num_layers),
        num_attention_heads=int(num_heads),
        intermediate_size=int(intermediate_size),
        max_position_embeddings=int(max_length),
        type_vocab_size=2,
        num_labels=int(num_classes),
        hidden_dropout_prob=float(dropout),
        attention_probs_dropout_prob=float(dropout),
        initializer_range=float(initializer_range),
    )
    model = BertForSequenceClassification._from_config(
        config, attn_implementation=attn_implementation
    )
    return HFClassifier(model).eval()


def build_hf_local(
    num_classes: int, path: str, attn_implementation: str = "eager", dropout: float | None = 0.0
) -> HFClassifier:
    """``AutoModelForSequenceClassification`` from a local folder (or ``pkg:`` reference), offline.

    A folder holding only an encoder (e.g. a sentence-transformers model) gets a new,
    randomly initialised classification head with ``num_classes`` outputs.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    folder = resolve_path(
        path, what="Hugging Face model folder", extra_hint="pip install -e '.[data]'"
    )
    if not (folder / "config.json").exists():
        raise NpeffFileNotFoundError(
            f"{folder} has no config.json; hf_local needs a Hugging Face model folder"
        )
    extra = {}
    if dropout is not None:
        extra = {
            "hidden_dropout_prob": float(dropout),
            "attention_probs_dropout_prob": float(dropout),
        }
    config = AutoConfig.from_pretrained(
        str(folder), num_labels=int(num_classes), local_files_only=True, **extra
    )
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized head" is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(folder),
            config=config,
            local_files_only=True,
            attn_implementation=attn_implementation,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    return HFClassifier(model).eval()
