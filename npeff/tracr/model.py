"""``TracrTransformer``: a TRACR-compiled transformer as a plain PyTorch module (no jax).

The forward is tracr's (``tracr/transformer/model.py``): no LayerNorm; per layer
``x += MHA(x)`` then ``x += W2·relu(W1·x + b1) + b2``; attention is
``softmax(q kᵀ/√key_size)`` over every position (causal mask optional); tracr's model of this
version applies no padding mask. Embeddings and the unembedding (the projection of the residual
onto the output space) are buffers; the attention and MLP weights are the parameters.

Classification (the npeff forward contract): ``forward(input_ids [B, T]) -> logits [B, C]``,
the unembedded residual at ``readout_position`` divided by the output ``temperature`` (compiled
outputs are one-hot 0/1 values; the temperature sets how peaked the softmax the Fishers use is).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from npeff.artifacts.tracr_model import TracrExport, load_tracr_model

# The NLI model shipped with npeff; `npeff-tracr-compile program=toy_nli
# output=npeff/tracr/data/toy_nli.h5` regenerates it (tests check it against a fresh compile).
PACKAGED_TOY_NLI = Path(__file__).resolve().parent / "data" / "toy_nli.h5"


# our sub-module name -> tracr's name, per block (tracr stores w [in, out]; nn.Linear [out, in])
_TRACR_SUB = {
    "q_proj": "query",
    "k_proj": "key",
    "v_proj": "value",
    "out_proj": "linear",
    "linear_1": "linear_1",
    "linear_2": "linear_2",
}
_TRACR_LEAF = {"weight": "w", "bias": "b"}


def parse_param(param_name: str) -> tuple[int, str, str, str]:
    """``layers.3.attn.q_proj.weight`` -> ``(3, "attn", "query", "w")`` (tracr's names)."""
    parts = param_name.split(".")
    if (
        len(parts) != 5
        or parts[0] != "layers"
        or parts[2] not in ("attn", "mlp")
        or parts[3] not in _TRACR_SUB
        or parts[4] not in _TRACR_LEAF
    ):
        raise ValueError(f"{param_name!r} is not a TracrTransformer parameter name")
    return int(parts[1]), parts[2], _TRACR_SUB[parts[3]], _TRACR_LEAF[parts[4]]


def _linear(n_in: int, n_out: int) -> nn.Linear:
    lin = nn.Linear(n_in, n_out)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
    return lin


class _Attention(nn.Module):
    """tracr's multi-head attention as ``q_proj/k_proj/v_proj/out_proj`` ``nn.Linear`` modules
    (the per-layer Fisher fast path and the COAR ``heads`` preset recognise them)."""

    def __init__(self, d: int, heads: int, key_size: int):
        super().__init__()
        self.num_heads, self.key_size = heads, key_size
        hk = heads * key_size
        self.q_proj, self.k_proj, self.v_proj = _linear(d, hk), _linear(d, hk), _linear(d, hk)
        self.out_proj = _linear(hk, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, T, D] -> attention output [B, T, D]; mask bool [T, T] (True = may attend).

        Shapes are read from each projection's output (not from ``x``) so that forward hooks
        may change the batch size between them (COAR's activation masking)."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        H, K = self.num_heads, self.key_size
        q = q.view(*q.shape[:2], H, K)
        k = k.view(*k.shape[:2], H, K)
        v = v.view(*v.shape[:2], H, K)
        logits = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(K)
        if mask is not None:
            logits = logits.masked_fill(~mask, -1e30)
        weights = torch.softmax(logits, dim=-1)
        out = torch.einsum("bhts,bshd->bthd", weights, v)
        return self.out_proj(out.reshape(*out.shape[:2], H * K))


class _MLP(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.linear_1, self.linear_2 = _linear(d, hidden), _linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(torch.relu(self.linear_1(x)))


class _Layer(nn.Module):
    def __init__(self, d: int, heads: int, key_size: int, hidden: int):
        super().__init__()
        self.attn = _Attention(d, heads, key_size)
        self.mlp = _MLP(d, hidden)


class TracrTransformer(nn.Module):
    """The compiled model of a :class:`TracrExport` (see the module docstring).

    Parameter names: ``layers.<l>.attn.{q_proj,k_proj,v_proj,out_proj}.{weight,bias}`` and
    ``layers.<l>.mlp.linear_{1,2}.{weight,bias}``, all ``nn.Linear`` (weights ``[out, in]``,
    the transpose of tracr's ``w [in, out]``); :func:`parse_param` gives tracr's names and
    :meth:`block_of` tracr's blocks (``layer_<l>/attn``, ``layer_<l>/mlp``).
    """

    def __init__(self, export: TracrExport, temperature: float | None = None):
        super().__init__()
        meta, cfg = export.meta, export.meta["config"]
        self.meta = meta
        self.uid = export.uid
        self.program = str(meta["program"])
        self.temperature = float(
            meta.get("temperature", 1.0) if temperature is None else temperature
        )
        if not self.temperature > 0:
            raise ValueError(f"the output temperature must be > 0, got {self.temperature}")
        self.readout_position = meta.get("readout_position")
        d = int(export.token_embed.shape[1])
        self.register_buffer(
            "token_embed", torch.tensor(np.array(export.token_embed), dtype=torch.float32)
        )
        self.register_buffer(
            "pos_embed", torch.tensor(np.array(export.pos_embed), dtype=torch.float32)
        )
        self.register_buffer("unembed", torch.tensor(np.array(export.unembed), dtype=torch.float32))
        self.causal = bool(cfg.get("causal", False))
        self.layers = nn.ModuleList(
            _Layer(d, int(cfg["num_heads"]), int(cfg["key_size"]), int(cfg["mlp_hidden_size"]))
            for _ in range(int(cfg["num_layers"]))
        )
        own = dict(self.named_parameters())
        expected = {self._tracr_name(n) for n in own}
        if set(export.params) != expected:
            missing, extra = (
                sorted(expected - set(export.params)),
                sorted(set(export.params) - expected),
            )
            raise ValueError(
                f"the exported weights do not fit the architecture in its metadata "
                f"(missing {missing[:4]}, unexpected {extra[:4]}); re-export the model"
            )
        with torch.no_grad():
            for n, p in own.items():
                value = torch.tensor(
                    np.array(export.params[self._tracr_name(n)]), dtype=torch.float32
                )
                if value.ndim == 2:  # tracr w [in, out] -> nn.Linear weight [out, in]
                    value = value.T
                if value.shape != p.shape:
                    raise ValueError(
                        f"weight {n}: exported shape {tuple(value.shape)}, model {tuple(p.shape)}"
                    )
                p.copy_(value)

    @staticmethod
    def _tracr_name(param_name: str) -> str:
        """``layers.3.attn.q_proj.weight`` -> ``layer_3/attn/query/w``."""
        layer, block, sub, kind = parse_param(param_name)
        return f"layer_{layer}/{block}/{sub}/{kind}"

    @staticmethod
    def block_of(param_name: str) -> str:
        """The tracr block (``layer_<l>/attn`` or ``layer_<l>/mlp``) a parameter belongs to."""
        layer, block, _, _ = parse_param(param_name)
        return f"layer_{layer}/{block}"

    def unit_preset_specs(self, preset: str) -> list[dict] | None:
        """COAR unit presets on a compiled model (:func:`npeff.models.units.build_unit_map`):
        ``neurons`` = the MLP hidden units (rows of every ``mlp.linear_1`` weight), ``heads`` =
        every attention head; None for other presets (the generic rules apply)."""
        n = len(self.layers)
        if preset == "neurons":
            return [{"pattern": f"layers.{i}.mlp.linear_1.weight", "granularity": "neuron"}
                    for i in range(n)]
        if preset == "heads":
            return [{"pattern": f"layers.{i}.attn", "granularity": "head"} for i in range(n)]
        return None

    @property
    def n_classes(self) -> int:
        return int(self.unembed.shape[1])

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids int [B, T] (BOS first) -> embeddings [B, T, D]."""
        T = input_ids.shape[-1]
        return self.token_embed[input_ids] + self.pos_embed[:T]

    def residuals(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """The residual stream after every half-layer: 2·num_layers tensors [B, T, D] (tracr's
        ``residuals``); the last one is the model's output before unembedding."""
        x = self.embed(input_ids)
        T = x.shape[1]
        mask = None
        if self.causal:
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        out = []
        for layer in self.layers:
            x = x + layer.attn(x, mask)
            out.append(x)
            x = x + layer.mlp(x)
            out.append(x)
        return out

    def unembedded(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, T, C]: the residual's projection on the output space at every position."""
        return self.residuals(input_ids)[-1] @ self.unembed

    def decode_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Categorical programs: output ids [B, T] (argmax per position; position 0 is BOS)."""
        return self.unembedded(input_ids).argmax(-1)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids int [B, T] -> logits [B, C] at the readout position, divided by the
        temperature."""
        if self.readout_position is None:
            raise ValueError(
                f"tracr program {self.program!r} has no readout position (numerical output): "
                "it can be checked for fidelity but not used as a classifier"
            )
        x = self.residuals(input_ids)[-1][:, int(self.readout_position)]
        return (x @ self.unembed) / self.temperature


def build_tracr(
    path: str | os.PathLike,
    temperature: float | None = None,
    tracr_uid: str | None = None,
) -> TracrTransformer:
    """Model builder for ``model=tracr model.path=<file>``.

    ``tracr_uid`` is the task's hint: ``task=tracr`` reads its examples from the same file, and
    a model used with another task (or another export) is refused.
    """
    if path in (None, ""):
        path = PACKAGED_TOY_NLI
    export = load_tracr_model(path)
    if tracr_uid is None:
        raise ValueError(
            f"model=tracr ({path}) must be used with task=tracr reading the same file "
            "(task.path=<that file>); the current task does not provide the model's examples"
        )
    if str(tracr_uid) != export.uid:
        raise ValueError(
            f"model.path={path} (program {export.program!r}, uid {export.uid}) is not the file the "
            f"task reads (uid {tracr_uid}): point task.path and model.path at the same export"
        )
    return TracrTransformer(export, temperature=temperature)
