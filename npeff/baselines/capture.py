"""Activations of any named module via a forward hook, reduced to one vector per example.

A module output of shape
  [B, d]          is used as is;
  [B, T, d]       (sequence models) is reduced by ``token``: an int position (0 = CLS; negative
                  counts from the end) or ``"mean"``, the mean over the tokens with
                  ``attention_mask`` 1 (all tokens when the batch has no mask);
  [B, C, *spatial] is averaged over the spatial axes with ``token="mean"``, else flattened.
The tap can also add a perturbation ``delta`` [B, d] to the reduced feature inside the forward
pass (so the gradient of any output with respect to ``delta`` at 0 is the gradient with respect to
the feature): TCAV's directional derivatives use this.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from npeff.artifacts.activations import ActivationsWriter
from npeff.errors import NpeffUserError
from npeff.models.core import LABELS_KEY, forward_logits

Token = int | str


def resolve_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` in ``model.named_modules()``; a clear error otherwise."""
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    close = difflib.get_close_matches(str(name), list(modules), n=5, cutoff=0.5)
    shown = ", ".join(n for n in list(modules)[1:40])
    raise NpeffUserError(
        f"unknown module name {name!r}"
        + (f"; did you mean one of {close}?" if close else "")
        + f" Modules of this model: {shown}{' ...' if len(modules) > 41 else ''}"
    )


def check_token(token: Token) -> Token:
    if isinstance(token, str) and token not in ("mean", "cls", "flatten"):
        try:
            return int(token)
        except ValueError:
            raise NpeffUserError(
                f"activations.token must be an int position, 'cls' (= 0), 'mean' or 'flatten'; "
                f"got {token!r}"
            ) from None
    return 0 if token == "cls" else token


def reduce_output(out: torch.Tensor, mask: torch.Tensor | None, token: Token) -> torch.Tensor:
    """One vector per example [B, d] from a module output (rules in the module docstring)."""
    if out.ndim == 2:
        return out
    if out.ndim == 3 and token != "flatten":
        if token == "mean":
            if mask is None or mask.shape != out.shape[:2]:
                return out.mean(dim=1)
            w = mask.to(out.dtype)[..., None]  # [B, T, 1]
            return (out * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
        return out[:, int(token)]
    if token == "mean" and out.ndim > 3:
        return out.flatten(2).mean(dim=2)
    return out.flatten(1)


def expand_delta(
    out: torch.Tensor, delta: torch.Tensor, mask: torch.Tensor | None, token: Token
) -> torch.Tensor:
    """``out`` with ``delta`` [B, d] added so that ``reduce_output`` moves by exactly ``delta``."""
    if out.ndim == 2:
        return out + delta
    if out.ndim == 3 and token != "flatten":
        if token == "mean":
            if mask is None or mask.shape != out.shape[:2]:
                return out + delta[:, None, :]
            return out + mask.to(out.dtype)[..., None] * delta[:, None, :]
        onehot = torch.zeros(out.shape[1], dtype=out.dtype, device=out.device)
        onehot[int(token)] = 1.0
        return out + onehot[None, :, None] * delta[:, None, :]
    if token == "mean" and out.ndim > 3:
        return out + delta.view(*delta.shape, *([1] * (out.ndim - 2)))
    return out + delta.view(out.shape)


class ModuleTap:
    """A forward hook on ``model.<module_name>`` that records the reduced feature [B, d].

    Set ``mask`` (the batch's attention mask or None) before each forward; set ``delta`` to add a
    perturbation to the feature. ``value`` holds the last feature (with the graph).
    """

    def __init__(self, model: nn.Module, module_name: str, token: Token = 0):
        self.name = str(module_name)
        self.module = resolve_module(model, self.name)
        self.token = check_token(token)
        self.mask: torch.Tensor | None = None
        self.delta: torch.Tensor | None = None
        self.value: torch.Tensor | None = None

    def _hook(self, module, args, out):
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"module {self.name!r} ({type(module).__name__}) returns a "
                f"{type(out).__name__}, not a tensor; pick a module whose output is a tensor "
                "(e.g. for BERT the last layer's '...encoder.layer.<i>.output', or "
                "'hf.bert.pooler')"
            )
        if out.ndim < 2:
            raise TypeError(
                f"module {self.name!r} returns a tensor of shape {tuple(out.shape)}; activations "
                "need a batch axis and at least one feature axis"
            )
        if (
            out.ndim == 3
            and isinstance(self.token, int)
            and not -out.shape[1] <= self.token < out.shape[1]
        ):
            raise NpeffUserError(
                f"activations.token={self.token} is outside the {out.shape[1]} positions of "
                f"module {self.name!r}"
            )
        self.value = reduce_output(out, self.mask, self.token)
        if self.delta is not None:
            return expand_delta(out, self.delta, self.mask, self.token)
        return None

    @contextlib.contextmanager
    def attached(self) -> Iterator[ModuleTap]:
        handle = self.module.register_forward_hook(self._hook)
        try:
            yield self
        finally:
            handle.remove()

    def forward(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [B, d], logits [B, C]) of one batch; the tap must be attached."""
        self.mask = batch.get("attention_mask")
        self.value = None
        logits = forward_logits(model, batch)
        if self.value is None:
            raise NpeffUserError(
                f"module {self.name!r} was not called in the model's forward pass; pick a module "
                "that the forward uses"
            )
        return self.value, logits


def probe(model: nn.Module, loader, module_name: str, token: Token = 0) -> int:
    """Check module and token on the first example (one tiny forward); returns d.

    Raises the tap's clear errors (unknown module, non-tensor output, bad position) before any
    real work starts.
    """
    tap = ModuleTap(model, module_name, token)
    batch = next(iter(loader))
    one = {k: v[:1] for k, v in batch.items()}
    with torch.no_grad(), tap.attached():
        feats, _ = tap.forward(model, one)
    return int(feats.shape[1])


@torch.no_grad()
def capture_activations(
    model: nn.Module,
    loader,
    path: str | os.PathLike,
    module_name: str,
    token: Token = 0,
    metadata: dict | None = None,
    progress: bool = True,
) -> Path:
    """Stream the features of ``model.<module_name>`` over ``loader`` into ``path``.

    Writes one chunk per loader batch (features float32 [n, d], labels, logits, example
    indices 0..n-1 in loader order). Rerunning after an interruption resumes after the last
    committed batch; a complete file is left as it is. Returns ``path``.
    """
    from npeff.fisher.compute import batches_from, loader_len

    if model.training:
        raise NpeffUserError("the model is in training mode; call model.eval() first")
    path = Path(path)
    n_total = loader_len(loader)
    d = probe(model, loader, module_name, token)
    fingerprint = {
        "module": str(module_name),
        "token": check_token(token),
        "n_examples": n_total,
        "model_class": type(model).__qualname__,
        "n_features": d,
    }
    writer = ActivationsWriter(path, fingerprint=fingerprint) if path.exists() else None
    if writer is not None and writer.done:
        writer.close()
        return path
    start = writer.n_written if writer is not None else 0
    tap = ModuleTap(model, module_name, token)
    bar = tqdm(total=n_total, initial=start, unit="ex", desc="activations", disable=not progress)
    n = start
    try:
        with tap.attached():
            for batch in batches_from(loader, start):
                feats, logits = tap.forward(model, batch)
                if writer is None:
                    writer = ActivationsWriter(
                        path,
                        fingerprint=fingerprint,
                        n_features=d,
                        n_logits=int(logits.shape[-1]),
                        metadata={"module": str(module_name), "token": tap.token}
                        | dict(metadata or {}),
                    )
                b = int(feats.shape[0])
                writer.append(
                    {
                        "features": feats.float().cpu().numpy(),
                        "labels": batch[LABELS_KEY].cpu().numpy(),
                        "logits": logits.float().cpu().numpy(),
                        "example_indices": np.arange(n, n + b, dtype=np.int64),
                    }
                )
                n += b
                bar.update(b)
        if writer is None:
            raise NpeffUserError("the loader yielded no examples")
        writer.finalize()
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return path


def default_module(model: nn.Module) -> str:
    """A layer near the output, as in paper §3.4: for a transformer encoder its last layer's
    output (use it with ``token=0``, the CLS position); otherwise the last leaf module before the
    final ``nn.Linear`` (e.g. the ReLU feeding an MLP's or CNN's classifier)."""
    import re

    names = [n for n, _ in model.named_modules()]
    layers = [
        (int(m.group(1)), n)
        for n in names
        if (m := re.search(r"encoder\.layer\.(\d+)\.output$", n))
    ]
    if layers:
        return max(layers)[1]
    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    last_linear = max(
        (i for i, (_, m) in enumerate(leaves) if isinstance(m, nn.Linear)), default=-1
    )
    if last_linear <= 0:
        raise NpeffUserError(
            "cannot pick a default layer for this model; set activations.module to one of: "
            + ", ".join(n for n, _ in leaves[:40])
        )
    return leaves[last_linear - 1][0]
