"""Model registry: ``build_model(model_cfg, hints)`` by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from npeff.errors import NpeffUserError
from npeff.models.causal_lm import build_hf_causal_lm, build_tiny_gpt2
from npeff.models.core import set_trainable
from npeff.models.hf import build_hf_local, build_tiny_bert
from npeff.models.simple import MLP, GroupMLP, SmallCNN
from npeff.models.tracr import build_tracr
from npeff.models.vision import build_torchvision

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    "group_mlp": GroupMLP,
    "tiny_bert": build_tiny_bert,
    "hf_local": build_hf_local,
    "torchvision": build_torchvision,
    "tracr": build_tracr,
    "tiny_gpt2": build_tiny_gpt2,  # causal LMs (issue 18): next-token logits at a position
    "hf_causal_lm": build_hf_causal_lm,
}
# Keys of a model config that are not arguments of the builder.
RESERVED_KEYS = ("name", "trainable")


def _plain(cfg: Any) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise TypeError(f"a model config must be a mapping with a 'name', got {type(cfg).__name__}")


def build_model(model_cfg: Any, hints: Mapping[str, Any] | None = None) -> nn.Module:
    """Build the model named by ``model_cfg['name']`` in eval mode.

    Builder arguments come from the task's ``hints`` (``num_classes``, ``vocab_size``, ...) and
    are overridden by the config's keys. ``trainable`` (a list of name patterns) freezes every
    other parameter. Unknown names/options and missing arguments fail with what is available.
    """
    cfg = _plain(model_cfg)
    name = cfg.get("name")
    if name not in MODELS:
        raise NpeffUserError(f"unknown model {name!r}; available models: {sorted(MODELS)}")
    builder = MODELS[name]
    params = inspect.signature(builder).parameters
    options = {k: v for k, v in cfg.items() if k not in RESERVED_KEYS}
    unknown = sorted(k for k in options if k not in params)
    if unknown:
        raise NpeffUserError(
            f"model {name!r} got unknown option(s) {unknown}; its options: {sorted(k for k in params if k != 'self')}"
        )
    kwargs = {k: v for k, v in (hints or {}).items() if k in params}
    kwargs.update(options)
    missing = [
        k
        for k, p in params.items()
        if p.default is inspect.Parameter.empty and k not in kwargs and k != "self"
    ]
    if missing:
        raise NpeffUserError(
            f"model {name!r} needs {missing}, which neither the model config nor the task provides "
            f"(task hints: {sorted(hints or {})}); pick a model that fits the task or set model.<option>"
        )
    model = builder(**kwargs)
    set_trainable(model, cfg.get("trainable"))
    return model.eval()
