"""Tiny models and a dense float64 per-example Fisher reference (autograd loop), shared by the
fisher tests; plus a check of the reference itself against an explicit m×m Fisher."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class DictDataset(torch.utils.data.Dataset):
    """A list of per-example dicts; the default collate stacks them into dict batches."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors
        self.n = len(next(iter(tensors.values())))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.tensors.items()}


class MLP(nn.Module):
    def __init__(self, d_in=5, d_hidden=7, n_classes=4):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, d_hidden), nn.Tanh(), nn.Linear(d_hidden, n_classes)
        )

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    """Conv + BatchNorm (eval mode, non-trivial running stats) + linear head."""

    def __init__(self, n_classes=3):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3 * 4 * 4, n_classes)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, image):
        return self.head(torch.relu(self.bn(self.conv(image))).flatten(1))


class TiedEmbedding(nn.Module):
    """Embedding bag whose output layer shares the embedding matrix (tied weights)."""

    def __init__(self, vocab=6, dim=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tokens):
        return self.out(torch.tanh(self.mix(self.emb(tokens).mean(1))))


def tiny_bert(n_classes=3):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=30,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=12,
        max_position_embeddings=16,
        num_labels=n_classes,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    return BertForSequenceClassification(cfg).double().eval()


def problem(name: str, n: int = 6, seed: int = 0):
    """(model in eval mode, float64; dataset of dict examples with labels)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if name == "mlp":
        model = MLP()
        data = {
            "x": torch.randn(n, 5, generator=g),
            "labels": torch.randint(0, 4, (n,), generator=g),
        }
    elif name == "cnn":
        model = CNN()
        data = {
            "image": torch.randn(n, 1, 6, 6, generator=g),
            "labels": torch.randint(0, 3, (n,), generator=g),
        }
    elif name == "embedding":
        model = TiedEmbedding()
        data = {
            "tokens": torch.randint(0, 6, (n, 3), generator=g),
            "labels": torch.randint(0, 6, (n,), generator=g),
        }
    elif name == "bert":
        model = tiny_bert()
        mask = torch.ones(n, 7, dtype=torch.long)
        for i in range(n):
            mask[i, 3 + i % 4 :] = 0  # padding of varying length
        data = {
            "input_ids": torch.randint(1, 30, (n, 7), generator=g) * mask,
            "attention_mask": mask,
            "token_type_ids": torch.zeros(n, 7, dtype=torch.long),
            "labels": torch.randint(0, 3, (n,), generator=g),
        }
    else:
        raise KeyError(name)
    model = model.double().eval()
    data = {k: v.double() if v.is_floating_point() else v for k, v in data.items()}
    return model, DictDataset(data)


def dense_class_grads(model: nn.Module, example: dict, params=None):
    """Reference: per-class gradients of log p_c by an autograd loop, float64.

    Returns (log-probs [C], grads [C, m]) for one example (a dict without batch dim).
    """
    named = [(n, p) for n, p in model.named_parameters() if params is None or n in params]
    inputs = {k: v.unsqueeze(0) for k, v in example.items() if k != "labels"}
    out = model(**inputs)
    logits = out.logits if hasattr(out, "logits") else out
    logp = torch.log_softmax(logits[0].double(), -1)
    rows = []
    for c in range(logp.shape[0]):
        gs = torch.autograd.grad(
            logp[c], [p for _, p in named], retain_graph=True, allow_unused=True
        )
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).reshape(-1)
                    for g, (_, p) in zip(gs, named)
                ]
            )
        )
    return logp.detach(), torch.stack(rows).detach()


def test_reference_diag_equals_explicit_fisher():
    """Σ_c p_c g_c² equals the diagonal of the explicit m×m Fisher Σ_c p_c g_c g_cᵀ, and ‖AᵀA‖_F
    equals the Frobenius norm of that Fisher."""
    model, ds = problem("mlp", n=2)
    logp, g = dense_class_grads(model, ds[0])
    p = logp.exp()
    fisher = sum(p[c] * torch.outer(g[c], g[c]) for c in range(len(p)))
    a = p.sqrt()[:, None] * g
    np.testing.assert_allclose((a**2).sum(0), torch.diagonal(fisher), rtol=1e-10, atol=1e-14)
    gram = a @ a.T
    np.testing.assert_allclose(gram.norm(), fisher.norm(), rtol=1e-10)
    # log-probs of a classifier: Σ_c p_c ∇log p_c = 0
    np.testing.assert_allclose((p[:, None] * g).sum(0), 0, atol=1e-12)
