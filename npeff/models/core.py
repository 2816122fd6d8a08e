"""The forward contract, parameter selection and plain evaluation helpers.

Forward contract (design.md §3): a batch is a dict; ``labels`` holds the labels ``[B]``; every
other key is passed to the model as a keyword argument; the model returns logits ``[B, C]`` or an
object with ``.logits``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from npeff.artifacts.layout import ParameterLayout
from npeff.errors import NpeffUserError

LABELS_KEY = "labels"


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keyword arguments of the model: every batch entry except ``labels``."""
    return {k: v for k, v in batch.items() if k != LABELS_KEY}


def forward_logits(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Logits ``[B, C]`` of ``model`` on a dict ``batch`` (``labels`` is not passed)."""
    out = model(**model_inputs(batch))
    logits = getattr(out, "logits", out)
    if isinstance(out, (tuple, list)):
        logits = out[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"model returned {type(out).__name__}; expected logits or an object with .logits"
        )
    return logits


def _as_patterns(patterns: str | Sequence[str] | None) -> list[str] | None:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        return [patterns]
    return [str(p) for p in patterns]


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select_parameters(
    model: nn.Module,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> list[tuple[str, nn.Parameter]]:
    """The selected ``(name, parameter)`` pairs in ``named_parameters()`` order.

    ``include``: fnmatch-style name patterns (e.g. ``"hf.classifier.*"``); None = every parameter
    with ``requires_grad``. ``exclude``: patterns removed afterwards. An include pattern that
    matches nothing, or an empty selection, is an error that lists the parameter names.
    """
    inc, exc = _as_patterns(include), _as_patterns(exclude) or []
    named = list(model.named_parameters())
    names = [n for n, _ in named]
    if inc is None:
        chosen = [(n, p) for n, p in named if p.requires_grad]
    else:
        unmatched = [p for p in inc if not any(fnmatch.fnmatchcase(n, p) for n in names)]
        if unmatched:
            raise NpeffUserError(
                f"parameter pattern(s) {unmatched} match nothing; parameters: {_preview(names)}"
            )
        chosen = [(n, p) for n, p in named if _matches(n, inc)]
    chosen = [(n, p) for n, p in chosen if not _matches(n, exc)]
    if not chosen:
        raise NpeffUserError(
            f"no parameters selected (include={inc}, exclude={exc}); parameters: {_preview(names)}"
        )
    return chosen


def parameter_layout(
    model: nn.Module,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> ParameterLayout:
    """The :class:`ParameterLayout` (names, shapes, offsets) of :func:`select_parameters`."""
    return ParameterLayout.from_named_tensors(select_parameters(model, include, exclude))


def set_trainable(model: nn.Module, patterns: str | Sequence[str] | None) -> None:
    """Freeze every parameter whose name matches none of ``patterns`` (None: leave all trainable)."""
    pats = _as_patterns(patterns)
    if pats is None:
        return
    names = [n for n, _ in model.named_parameters()]
    unmatched = [p for p in pats if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise NpeffUserError(
            f"trainable pattern(s) {unmatched} match nothing; parameters: {_preview(names)}"
        )
    for n, p in model.named_parameters():
        p.requires_grad_(_matches(n, pats))


def _preview(names: list[str], k: int = 30) -> str:
    shown = ", ".join(names[:k])
    return shown + (f", ... ({len(names)} in all)" if len(names) > k else "")


@torch.no_grad()
def predict_logits(
    model: nn.Module, loader: Iterable[Mapping[str, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[n, C]`` and labels ``[n]`` over a loader, with the model in eval mode."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        for batch in loader:
            logits.append(forward_logits(model, batch).float())
            labels.append(batch[LABELS_KEY])
    finally:
        model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def accuracy(model: nn.Module, loader: Iterable[Mapping[str, torch.Tensor]]) -> float:
    """Share of examples whose argmax logit is the label."""
    logits, labels = predict_logits(model, loader)
    return float((logits.argmax(-1) == labels).float().mean())
