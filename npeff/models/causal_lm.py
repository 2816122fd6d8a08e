"""Causal language models under the forward contract: next-token logits at an explained position.

:class:`CausalLMExplainer` wraps a Hugging Face ``*ForCausalLM`` model (``transformer`` +
``lm_head``, e.g. ``GPT2LMHeadModel``) and returns the logits ``[B, V]`` of the next-token
distribution at one position per example, so every npeff stage (training, PEFs, perturbations)
treats it as a classifier over the vocabulary:

- ``input_ids`` ``[B, L]`` (right padding), ``attention_mask`` ``[B, L]`` (1 = token, optional);
- ``explain_pos`` int ``[B]`` (optional): the position whose next-token distribution is explained;
  default: the last non-padding token (``attention_mask.sum(1) − 1``, or ``L − 1`` without a mask).
  ``[B, T]`` (a multi-token answer, −1 = unused) gives logits ``[B, T, V]``; ``compute_pefs`` then
  sums the positions' PEFs (teacher forcing, :mod:`npeff.fisher.lm_answers`).

The position is picked from the hidden states by a one-hot product before the LM head (vmap-safe,
and the head runs on one position instead of L). The 2-D padding mask is turned into the full 4-D
additive mask ``[B, 1, L, L]`` (causal ∧ key padding) here, because transformers' own mask code
breaks ``torch.func.vmap`` (environment.md). Models are returned in eval mode.
"""

from __future__ import annotations

import torch
from torch import nn

from npeff.artifacts.files import resolve_path
from npeff.errors import NpeffFileNotFoundError, NpeffUserError


def additive_causal_mask(attention_mask: torch.Tensor | None, length: int, dtype, device):
    """The 4-D additive mask [B|1, 1, L, L]: 0 where query i may attend key j (j ≤ i, key kept)."""
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    keep = causal[None, None]
    if attention_mask is not None:
        keep = keep & attention_mask[:, None, None, :].bool()
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(keep, zero, torch.finfo(dtype).min)


def explained_positions(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    explain_pos: torch.Tensor | None,
) -> torch.Tensor:
    """int [B]: ``explain_pos`` or the last non-padding token of each example."""
    if explain_pos is not None:
        return explain_pos.long()
    b, length = input_ids.shape
    if attention_mask is None:
        return torch.full((b,), length - 1, dtype=torch.long, device=input_ids.device)
    return attention_mask.long().sum(-1) - 1


class CausalLMExplainer(nn.Module):
    """``forward(input_ids, attention_mask=None, explain_pos=None) -> logits [B, V]``.

    ``lm``: a Hugging Face causal LM with a base model attribute (``base_model``) and an output
    head (``get_output_embeddings()``). Parameter names keep the ``lm.`` prefix.
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        head = lm.get_output_embeddings()
        if head is None:
            raise NpeffUserError(f"{type(lm).__name__} has no output embeddings (an LM head)")

    @property
    def vocab_size(self) -> int:
        return int(self.lm.get_output_embeddings().weight.shape[0])

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        explain_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, length = input_ids.shape
        dtype = self.lm.get_output_embeddings().weight.dtype
        mask = additive_causal_mask(attention_mask, length, dtype, input_ids.device)
        hidden = self.lm.base_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        pos = explained_positions(input_ids, attention_mask, explain_pos)  # [B] or [B, T]
        grid = torch.arange(length, device=input_ids.device)
        onehot = (grid == pos[..., None]).to(dtype)  # [B, (T,) L]; a position −1 selects nothing
        if onehot.ndim == 2:
            h = torch.einsum("bl,blh->bh", onehot, hidden)  # [B, H]
        else:
            h = torch.einsum("btl,blh->bth", onehot, hidden)  # [B, T, H]
        return self.lm.get_output_embeddings()(h)  # [B, V] or [B, T, V]


def build_tiny_gpt2(
    vocab_size: int,
    max_length: int = 32,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    initializer_range: float = 0.02,
    attn_implementation: str = "eager",
    num_classes: int | None = None,
) -> CausalLMExplainer:
    """A randomly initialised ``GPT2LMHeadModel`` from a config (no download), tied embeddings.

    ``num_classes`` (a task hint) must equal ``vocab_size`` when given: the model's classes are
    the vocabulary's tokens.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    if num_classes is not None and int(num_classes) != int(vocab_size):
        raise NpeffUserError(
            f"tiny_gpt2 predicts the next token, so the task's labels must be token ids "
            f"(num_classes == vocab_size), got num_classes={num_classes}, vocab_size={vocab_size}; "
            "use a language-model task (task=tiny_lm, task=toy_nli_zero_shot)"
        )
    config = GPT2Config(
        vocab_size=int(vocab_size),
        n_positions=int(max_length),
        n_embd=int(hidden_size),
        n_layer=int(num_layers),
        n_head=int(num_heads),
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        initializer_range=float(initializer_range),
        bos_token_id=0,
        eos_token_id=0,
    )
    lm = GPT2LMHeadModel._from_config(config, attn_implementation=attn_implementation)
    return CausalLMExplainer(lm).eval()


def build_hf_causal_lm(
    path: str, attn_implementation: str = "eager", num_classes: int | None = None
) -> CausalLMExplainer:
    """``AutoModelForCausalLM`` from a local folder, offline, wrapped in :class:`CausalLMExplainer`.

    A folder holding a sequence classifier (``*ForSequenceClassification`` in ``architectures``)
    or a model type without a causal-LM head is refused before loading any weights.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = resolve_path(path, what="Hugging Face causal LM folder")
    if not (folder / "config.json").exists():
        raise NpeffFileNotFoundError(
            f"{folder} has no config.json; model=hf_causal_lm needs a Hugging Face model folder"
        )
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    archs = list(getattr(config, "architectures", None) or [])
    not_lm = [a for a in archs if not a.endswith(("ForCausalLM", "LMHeadModel"))]
    if archs and not_lm:
        raise NpeffUserError(
            f"{folder} holds a {', '.join(not_lm)}, not a causal language model; "
            "model=hf_causal_lm needs an AutoModelForCausalLM folder (e.g. GPT2LMHeadModel). "
            "Use model=hf_local for a sequence classifier"
        )
    if getattr(config, "vocab_size", None) is not None:  # refuse before loading any weights
        _check_task_classes(num_classes, int(config.vocab_size))
    try:
        lm = AutoModelForCausalLM.from_pretrained(
            str(folder), local_files_only=True, attn_implementation=attn_implementation
        )
    except ValueError as e:  # a config type without a causal-LM class
        raise NpeffUserError(
            f"{folder} ({config.model_type}) cannot be loaded as a causal LM: {e}"
        ) from None
    wrapped = CausalLMExplainer(lm)
    _check_task_classes(num_classes, wrapped.vocab_size)
    return wrapped.eval()


def _check_task_classes(num_classes: int | None, vocab_size: int) -> None:
    """Refuse a task whose number of classes is not the LM's vocabulary size."""
    if num_classes is not None and int(num_classes) != vocab_size:
        raise NpeffUserError(
            f"the task has {num_classes} classes but the causal LM predicts {vocab_size} "
            "tokens; model=hf_causal_lm needs a language-model task whose labels are token ids"
        )
