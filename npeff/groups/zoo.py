"""A zoo of group-operation networks: many seeds trained at once on stacked parameters.

The S models share the data split and differ in their initialisation (model s is initialised as
``GroupMLP`` under ``torch.manual_seed(seed + s)``). Parameters are the ``GroupMLP`` state-dict
tensors with a leading seed axis ``[S, ...]``; one forward computes every model on the full batch:

    pre[s, b] = (E_l[s] W_l[s]ᵀ)[x_b] + (E_r[s] W_r[s]ᵀ)[y_b] + c[s]        # [S, B, H]
    logits[s, b] = ReLU(pre[s, b]) U[s]ᵀ + u[s]                            # [S, B, |G|]

which is ``GroupMLP.forward`` (``W [E_l x ; E_r y]`` split into its left and right halves). The
loss is the sum over seeds of each model's mean cross-entropy, so the gradients, and Adam's
element-wise updates (coupled L2 decay on the weights, none on biases), are exactly those of S
separate runs (seed-systems.md §2.2: the Wu et al. recipe trains 100 instances this way).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from npeff.errors import NpeffUserError
from npeff.groups.zoo_grad import LEFT, RIGHT, join_hidden, split_hidden, zoo_loss_and_grads
from npeff.models.simple import (
    GROUP_HIDDEN_BIAS,
    GROUP_HIDDEN_WEIGHT,
    GROUP_MLP_PARAMETERS,
    GROUP_UNEMBED_BIAS,
    GROUP_UNEMBED_WEIGHT,
)

log = logging.getLogger(__name__)

PARAM_KEYS = GROUP_MLP_PARAMETERS
STATE_NAME = "zoo_state.pt"

# The two recipes of seed-systems.md §2.2 (an ``optim`` mapping as in npeff.models.lightning).
RECIPES = {
    "wu": {"name": "adam", "lr": 1e-2, "betas": [0.9, 0.98], "weight_decay": 2e-4},
    "chughtai": {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.98], "weight_decay": 1.0},
}


def init_params(
    n_seeds: int,
    group_order: int,
    embed_dim: int,
    hidden: int,
    unembed_bias: bool = True,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Stacked ``GroupMLP`` parameters ``{key: [S, ...]}``; model s as ``GroupMLP`` initialised
    under ``torch.manual_seed(seed + s)``."""
    from npeff.models.simple import GroupMLP

    states = []
    for s in range(int(n_seeds)):
        torch.manual_seed(int(seed) + s)
        m = GroupMLP(group_order, group_order, embed_dim, hidden, unembed_bias)
        states.append({k: v.detach() for k, v in m.state_dict().items()})
    return {k: torch.stack([st[k] for st in states]) for k in states[0]}


def zoo_logits(
    params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Logits ``[S, B, |G|]`` of every model for inputs x, y (int64 ``[B]``); ``params`` with
    ``GroupMLP`` keys or split as in :func:`npeff.groups.zoo_grad.split_hidden`."""
    if GROUP_HIDDEN_WEIGHT in params:  # [S, H, 2D]
        d = params["embed_left"].shape[-1]
        wl, wr = params[GROUP_HIDDEN_WEIGHT][..., :d], params[GROUP_HIDDEN_WEIGHT][..., d:]
    else:  # the trainer's split form (npeff.groups.zoo_grad.split_hidden)
        wl, wr = params[LEFT], params[RIGHT]
    left = torch.einsum("snd,shd->snh", params["embed_left"], wl)  # [S, N, H]
    right = torch.einsum("snd,shd->snh", params["embed_right"], wr)
    pre = left[:, x] + right[:, y] + params[GROUP_HIDDEN_BIAS][:, None, :]
    out = torch.relu(pre) @ params[GROUP_UNEMBED_WEIGHT].transpose(1, 2)  # [S, B, |G|]
    if GROUP_UNEMBED_BIAS in params:
        out = out + params[GROUP_UNEMBED_BIAS][:, None, :]
    return out


def build_zoo_optimizer(params: Mapping[str, torch.Tensor], optim: Mapping[str, Any]):
    """Adam (coupled L2) / AdamW / SGD over the stacked tensors (fused Adam kernels where torch
    has them); decay on weights only, as
    ``npeff.models.lightning.build_optimizer`` does for one model (a stacked bias has 2 dims, so
    the weight/bias split is by name here)."""
    name = str(optim.get("name", "adam")).lower()
    lr = float(optim.get("lr", 1e-2))
    wd = float(optim.get("weight_decay", 0.0))
    decay_biases = bool(optim.get("decay_biases", False))
    weights = [p for k, p in params.items() if decay_biases or not k.endswith("bias")]
    biases = [p for k, p in params.items() if not decay_biases and k.endswith("bias")]
    groups = [{"params": weights, "weight_decay": wd}]
    if biases:
        groups.append({"params": biases, "weight_decay": 0.0})
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(optim.get("momentum", 0.0)))
    if name not in ("adam", "adamw"):
        raise NpeffUserError(f"unknown optimizer {name!r} for the zoo; available: adam, adamw, sgd")
    betas = tuple(float(b) for b in optim.get("betas", (0.9, 0.999)))
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    try:  # one fused kernel over the stacked tensors (the same update, fewer passes)
        return cls(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError):  # pragma: no cover - older torch / unsupported device
        return cls(groups, lr=lr, betas=betas)


@torch.no_grad()
def zoo_accuracy(
    params: Mapping[str, torch.Tensor], x, y, labels, chunk: int = 4096
) -> torch.Tensor:
    """float ``[S]``: each model's accuracy on (x, y, labels), in chunks of ``chunk`` inputs."""
    correct = torch.zeros(params[GROUP_HIDDEN_BIAS].shape[0])
    for a in range(0, len(labels), chunk):
        pred = zoo_logits(params, x[a : a + chunk], y[a : a + chunk]).argmax(-1)
        correct += (pred == labels[a : a + chunk]).sum(-1)
    return correct / max(len(labels), 1)


@dataclass
class ZooResult:
    params: dict[str, torch.Tensor]
    history: list[dict]  # per check: epoch, train/eval accuracy per seed
    epochs: int
    seconds: float
    start_epoch: int = 0  # > 0 when resumed from a state file


def train_zoo(
    params: dict[str, torch.Tensor],
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    evals: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    optim: Mapping[str, Any],
    epochs: int,
    check_every: int = 100,
    state_path: Path | None = None,
    progress: bool = False,
) -> ZooResult:
    """Full-batch training of every stacked model for ``epochs`` epochs.

    ``train``/``evals``: (x, y, labels) int64 ``[B]``. With ``state_path``, the parameters,
    optimiser state and history are written there atomically at every check, and a run whose
    state file exists resumes from it.
    """
    from npeff.artifacts.atomic import atomic_path

    # optimised as the two halves of hidden.weight: the same element-wise Adam updates, and
    # no [S, H, 2D] gradient concatenated per step
    params = {k: nn.Parameter(v.clone()) for k, v in split_hidden(params).items()}
    opt = build_zoo_optimizer(params, optim)
    history: list[dict] = []
    start = 0
    if state_path is not None and Path(state_path).is_file():
        st = torch.load(state_path, weights_only=False)
        with torch.no_grad():
            for k, p in split_hidden(st["params"]).items():
                params[k].copy_(p)
        opt.load_state_dict(st["optimizer"])
        history, start = list(st["history"]), int(st["epoch"])
        log.info("resuming the zoo from epoch %d (%s)", start, state_path)
    x, y, labels = train
    n_seeds = int(params[GROUP_HIDDEN_BIAS].shape[0])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, initial=start, desc="zoo", unit="epoch")
    t0 = time.perf_counter()
    for epoch in range(start, epochs):
        loss, grads = zoo_loss_and_grads(params, x, y, labels)
        for k, p in params.items():
            p.grad = grads[k]
        opt.step()
        if bar is not None:
            bar.update(1)
        done = epoch + 1
        if done % check_every == 0 or done == epochs:
            row = {
                "epoch": done,
                "loss": float(loss) / n_seeds,
                "train_accuracy": zoo_accuracy(params, x, y, labels).tolist(),
            }
            if evals is not None:
                row["eval_accuracy"] = zoo_accuracy(params, *evals).tolist()
            history.append(row)
            if bar is not None:
                ev = row.get("eval_accuracy", row["train_accuracy"])
                bar.set_postfix(loss=f"{row['loss']:.3g}", min_eval=f"{min(ev):.3f}")
            if state_path is not None:
                with atomic_path(Path(state_path)) as tmp:
                    torch.save(
                        {
                            "params": join_hidden({k: p.detach() for k, p in params.items()}),
                            "optimizer": opt.state_dict(),
                            "history": history,
                            "epoch": done,
                        },
                        tmp,
                    )
    if bar is not None:
        bar.close()
    out = join_hidden({k: p.detach() for k, p in params.items()})
    return ZooResult(out, history, epochs, time.perf_counter() - t0, start)


def epochs_to_reach(history: list[dict], key: str, threshold: float, n_seeds: int) -> list:
    """Per seed, the first checked epoch whose ``key`` accuracy is >= threshold (None if never)."""
    out: list = [None] * n_seeds
    for row in history:
        for s, a in enumerate(row.get(key, [])):
            if out[s] is None and a >= threshold:
                out[s] = row["epoch"]
    return out


def unstack(params: Mapping[str, torch.Tensor], s: int) -> dict[str, torch.Tensor]:
    """Model s's ``GroupMLP`` state dict."""
    return {k: v[s].clone() for k, v in params.items()}


def mean_or_nan(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan
