"""Shared test setup: offline environment and a tiny trained toy_nli checkpoint.

Other test files use the ``toy_checkpoint`` fixture (a path to a ``model.ckpt``) or call
:func:`make_toy_checkpoint` directly.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests run many tiny models on a shared 2-core machine: one intra-op thread per process avoids
# oversubscription, which made a tiny-BERT step ~50x slower here (set before torch is imported;
# subprocesses inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

# Small enough to train in a couple of seconds, big enough to learn something.
TOY_TASK = {
    "name": "toy_nli",
    "n_train": 800,
    "n_fit": 64,
    "n_eval": 64,
    "max_length": 24,
    "seed": 0,
}
TOY_MODEL = {
    "name": "tiny_bert",
    "hidden_size": 32,
    "num_layers": 1,
    "num_heads": 2,
    "intermediate_size": 64,
}


def make_toy_checkpoint(directory: str | os.PathLike, epochs: int = 12, seed: int = 0) -> Path:
    """Train a tiny BERT on a small toy_nli for a few epochs (plain loop) and save ``model.ckpt``.

    Returns the checkpoint path. The saved config has ``model``, ``task``, ``seed`` and ``optim``
    sections like the ones ``npeff-train`` writes.
    """
    import torch

    from npeff.models import build_model, forward_logits, save_checkpoint
    from npeff.tasks import build_task

    torch.manual_seed(seed)
    task = build_task(TOY_TASK)
    model = build_model(TOY_MODEL, task.model_hints()).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(epochs):
        for batch in task.dataloader("train", 32, shuffle=True):
            loss = torch.nn.functional.cross_entropy(forward_logits(model, batch), batch["labels"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    cfg = {
        "model": dict(TOY_MODEL),
        "task": dict(TOY_TASK),
        "seed": seed,
        "optim": {"name": "adamw", "lr": 5e-3},
    }
    return save_checkpoint(Path(directory) / "model.ckpt", model, cfg)


@pytest.fixture(scope="session")
def toy_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny trained toy_nli ``model.ckpt`` (made once per test session)."""
    return make_toy_checkpoint(tmp_path_factory.mktemp("toy_ckpt"))


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(1)
