"""``TracrTransformer``: a TRACR-compiled transformer as a plain PyTorch module (no jax).

The forward is tracr's (``tracr/transformer/model.py``): no LayerNorm; per layer
``x += MHA(x)`` then ``x += W2·relu(W1·x + b1) + b2``; attention is
``softmax(q kᵀ/√key_size)`` over every position (causal mask optional); tracr's model of this
version applies no padding mask. Embeddings and the unembedding (the projection of the residual
onto the output space) are buffers; the attention and MLP weights are the parameters.

Classification (the npeff forward contract): ``forward(input_ids [B, T]) -> logits [B, C]``,
the unembedded residual at ``readout_position`` divided by the output ``temperature`` (compiled
outputs are one-hot 0/1 values; the temperature sets how peaked the softmax the Fishers use is).

Dead units are left out (``compact=True``, the default; :func:`live_units`): an attention head
whose value weights, value bias and output-projection rows are all zero, and an MLP hidden unit
whose input weights are zero and bias ≤ 0. Such a unit adds exactly zero to the residual for every
input and every one of its parameters has exactly zero gradient for every input (the head's output
is 0 whatever its queries and keys; the hidden unit's pre-activation is a constant ≤ 0, and
torch's ReLU has derivative 0 there), so dropping them changes neither the forward nor any
per-example Fisher entry of the remaining parameters; it only shrinks the parameter vector (the
packaged toy NLI model: 1,453,616 -> 223,497 parameters, and the Fisher costs scale with it).
A block left with no unit keeps its output bias (which does get gradient). ``hidden_index`` /
``head_index`` buffers map the kept units to tracr's indices; ``compact=False`` builds every unit.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from npeff.artifacts.tracr_model import TracrExport, load_tracr_model
from npeff.errors import NpeffUserError

# The NLI model shipped with npeff; `npeff-tracr-compile program=toy_nli
# output=npeff/tracr/data/toy_nli.h5` regenerates it (tests check it against a fresh compile).
PACKAGED_TOY_NLI = Path(__file__).resolve().parents[1] / "tracr" / "data" / "toy_nli.h5"


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
        raise NpeffUserError(f"{param_name!r} is not a TracrTransformer parameter name")
    return int(parts[1]), parts[2], _TRACR_SUB[parts[3]], _TRACR_LEAF[parts[4]]


def _droppable(tracr_name: str, kept: list[tuple[np.ndarray, np.ndarray]]) -> bool:
    """The tracr weight has no counterpart in a compact model (its block kept no unit)."""
    layer, block, sub, kind = tracr_name.split("/")
    heads, hidden = kept[int(layer.split("_")[1])]
    if block == "attn":
        return not len(heads) and (sub != "linear" or kind == "w")
    return not len(hidden) and (sub == "linear_1" or kind == "w")


def _linear(n_in: int, n_out: int) -> nn.Linear:
    """A zero ``nn.Linear``; with ``n_in == 0`` its weight ``[n_out, 0]`` is a buffer (a block
    without units: only the bias is a parameter)."""
    lin = nn.Linear(max(n_in, 1), n_out)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
    if n_in == 0:
        del lin.weight
        lin.register_buffer("weight", torch.zeros(n_out, 0))
    return lin


def live_units(export: TracrExport) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per layer, (kept heads int [H'], kept MLP hidden units int [h']) in tracr's indices: every
    unit but the dead ones of the module docstring."""
    cfg, P = export.meta["config"], export.params
    H, K = int(cfg["num_heads"]), int(cfg["key_size"])
    out = []
    for layer in range(int(cfg["num_layers"])):
        a = f"layer_{layer}/attn/"
        wv = np.abs(np.asarray(P[a + "value/w"])).reshape(-1, H, K).max(axis=(0, 2))
        bv = np.abs(np.asarray(P[a + "value/b"])).reshape(H, K).max(axis=1)
        wo = np.abs(np.asarray(P[a + "linear/w"])).reshape(H, K, -1).max(axis=(1, 2))
        heads = np.flatnonzero((wv > 0) | (bv > 0) | (wo > 0))
        m = f"layer_{layer}/mlp/"
        w1 = np.abs(np.asarray(P[m + "linear_1/w"])).max(axis=0)
        hidden = np.flatnonzero((w1 > 0) | (np.asarray(P[m + "linear_1/b"]) > 0))
        out.append((heads, hidden))
    return out


def _tracr_value(export: TracrExport, name: str, heads: np.ndarray, hidden: np.ndarray, K: int):
    """Our parameter ``name``'s value: tracr's array restricted to the kept units, as an
    ``nn.Linear`` weight ``[out, in]`` / bias."""
    layer, block, sub, kind = parse_param(name)
    v = np.asarray(export.params[f"layer_{layer}/{block}/{sub}/{kind}"], dtype=np.float32)
    if sub in ("query", "key", "value"):  # w [D, H·K], b [H·K]: the kept heads' columns
        v = v.reshape(*v.shape[:-1], -1, K)[..., heads, :].reshape(*v.shape[:-1], -1)
    elif sub == "linear" and kind == "w":  # [H·K, D]: the kept heads' rows
        v = v.reshape(-1, K, v.shape[-1])[heads].reshape(-1, v.shape[-1])
    elif sub == "linear_1":  # w [D, hidden], b [hidden]
        v = v[..., hidden]
    elif sub == "linear_2" and kind == "w":  # [hidden, D]
        v = v[hidden]
    return torch.from_numpy(np.ascontiguousarray(v.T if kind == "w" else v))


class _Attention(nn.Module):
    """tracr's multi-head attention as ``q_proj/k_proj/v_proj/out_proj`` ``nn.Linear`` modules
    (the per-layer Fisher fast path and the COAR ``heads`` preset recognise them), over the kept
    heads ``head_index`` (tracr's indices)."""

    def __init__(self, d: int, heads: np.ndarray, key_size: int):
        super().__init__()
        self.register_buffer("head_index", torch.as_tensor(np.asarray(heads), dtype=torch.long))
        self.num_heads, self.key_size = len(heads), key_size
        hk = self.num_heads * key_size
        if hk:
            self.q_proj, self.k_proj, self.v_proj = _linear(d, hk), _linear(d, hk), _linear(d, hk)
        self.out_proj = _linear(hk, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, T, D] -> attention output [B, T, D]; mask bool [T, T] (True = may attend).

        Shapes are read from each projection's output (not from ``x``) so that forward hooks
        may change the batch size between them (COAR's activation masking)."""
        H, K = self.num_heads, self.key_size
        if H == 0:  # no live head: the output projection's bias alone
            return self.out_proj(x.new_zeros(*x.shape[:-1], 0))
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
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
    """``linear_2(relu(linear_1(x)))`` over the kept hidden units ``hidden_index``."""

    def __init__(self, d: int, hidden: np.ndarray):
        super().__init__()
        self.register_buffer("hidden_index", torch.as_tensor(np.asarray(hidden), dtype=torch.long))
        h = len(hidden)
        if h:
            self.linear_1 = _linear(d, h)
        self.linear_2 = _linear(h, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not len(self.hidden_index):
            return self.linear_2(x.new_zeros(*x.shape[:-1], 0))
        return self.linear_2(torch.relu(self.linear_1(x)))


class _Layer(nn.Module):
    def __init__(self, d: int, heads: np.ndarray, key_size: int, hidden: np.ndarray):
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

    def __init__(self, export: TracrExport, temperature: float | None = None, compact: bool = True):
        super().__init__()
        meta, cfg = export.meta, export.meta["config"]
        self.meta = meta
        self.uid = export.uid
        self.program = str(meta["program"])
        self.temperature = float(
            meta.get("temperature", 1.0) if temperature is None else temperature
        )
        if not self.temperature > 0:
            raise NpeffUserError(f"the output temperature must be > 0, got {self.temperature}")
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
        H, K = int(cfg["num_heads"]), int(cfg["key_size"])
        n_layers, hidden = int(cfg["num_layers"]), int(cfg["mlp_hidden_size"])
        for name in (
            f"layer_{i}/{b}/w" for i in range(n_layers) for b in ("attn/value", "mlp/linear_1")
        ):
            if name not in export.params:
                raise NpeffUserError(
                    f"the exported weights do not fit the architecture in its metadata "
                    f"(missing {name}); re-export the model"
                )
        self.compact = bool(compact)
        if self.compact:
            kept = live_units(export)
        else:
            kept = [(np.arange(H), np.arange(hidden))] * n_layers
        self.layers = nn.ModuleList(_Layer(d, heads, K, hid) for heads, hid in kept)
        own = dict(self.named_parameters())
        expected = {self._tracr_name(n) for n in own}
        if self.compact:  # blocks without units have no q/k/v or linear_1 / weights
            expected |= {n for n in export.params if _droppable(n, kept)}
        if set(export.params) != expected:
            missing, extra = (
                sorted(expected - set(export.params)),
                sorted(set(export.params) - expected),
            )
            raise NpeffUserError(
                f"the exported weights do not fit the architecture in its metadata "
                f"(missing {missing[:4]}, unexpected {extra[:4]}); re-export the model"
            )
        with torch.no_grad():
            for n, p in own.items():
                layer = parse_param(n)[0]
                value = _tracr_value(export, n, *kept[layer], K)
                if value.shape != p.shape:
                    raise NpeffUserError(
                        f"weight {n}: exported shape {tuple(value.shape)}, model {tuple(p.shape)}"
                    )
                p.copy_(value)

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

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
        every attention head; None for other presets (the generic rules apply). Unit ``r`` of a
        layer is tracr's ``hidden_index[r]`` / ``head_index[r]`` (all of them with
        ``compact=False``)."""
        if preset == "neurons":
            return [
                {"pattern": f"layers.{i}.mlp.linear_1.weight", "granularity": "neuron"}
                for i, layer in enumerate(self.layers)
                if len(layer.mlp.hidden_index)
            ]
        if preset == "heads":
            return [
                {"pattern": f"layers.{i}.attn", "granularity": "head"}
                for i, layer in enumerate(self.layers)
                if layer.attn.num_heads
            ]
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
            raise NpeffUserError(
                f"tracr program {self.program!r} has no readout position (numerical output): "
                "it can be checked for fidelity but not used as a classifier"
            )
        x = self.residuals(input_ids)[-1][:, int(self.readout_position)]
        return (x @ self.unembed) / self.temperature


def build_tracr(
    path: str | os.PathLike,
    temperature: float | None = None,
    tracr_uid: str | None = None,
    compact: bool = True,
) -> TracrTransformer:
    """Model builder for ``model=tracr model.path=<file>``.

    ``tracr_uid`` is the task's hint: ``task=tracr`` reads its examples from the same file, and
    a model used with another task (or another export) is refused.
    """
    if path in (None, ""):
        path = PACKAGED_TOY_NLI
    export = load_tracr_model(path)
    if tracr_uid is None:
        raise NpeffUserError(
            f"model=tracr ({path}) must be used with task=tracr reading the same file "
            "(task.path=<that file>); the current task does not provide the model's examples"
        )
    if str(tracr_uid) != export.uid:
        raise NpeffUserError(
            f"model.path={path} (program {export.program!r}, uid {export.uid}) is not the file the "
            f"task reads (uid {tracr_uid}): point task.path and model.path at the same export"
        )
    return TracrTransformer(export, temperature=temperature, compact=compact)
