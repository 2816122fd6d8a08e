"""Tiny problems shared by the tests: models, datasets and config overrides small enough to run in
seconds on a CPU.

- ``problem(name)``: a float64 model in eval mode (``mlp``, ``cnn``, ``embedding``, ``bert``) and
  a :class:`DictDataset` of labelled examples, for the fisher / PEF-file tests.
- ``bert2()`` and :func:`layout_and_cache`: a two-layer tiny BERT for the perturbation tests.
- ``two_class_problem()``: a model whose margin is exactly linear in the keep-mask of one layer's
  neurons, for the COAR tests.
- ``TINY_PIPELINE``, ``PEFS_TASK`` / ``PEFS_MODEL``, ``DDP_DECOMP_OVERRIDES``: config pieces of the
  stage, pipeline and multi-process tests.
"""

from __future__ import annotations

import torch
from torch import nn


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


def tiny_bert(n_classes=3, num_layers=1):
    """A float64 BERT classifier in eval mode (hidden size 8, vocabulary 30), seeded with 0."""
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=30,
        hidden_size=8,
        num_hidden_layers=num_layers,
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


# --- a two-layer tiny BERT for the perturbation tests ------------------------------------------
def bert2(n=11):
    """(two-layer tiny BERT, float64, eval mode; :class:`DictDataset` of ``n`` padded examples of
    length 7 with 3 classes)."""
    model = tiny_bert(n_classes=3, num_layers=2)
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(n, 7, dtype=torch.long)
    for i in range(n):
        mask[i, 2 + i % 5 :] = 0  # padded sequences of varying length
    ds = DictDataset(
        {
            "input_ids": torch.randint(1, 30, (n, 7), generator=g) * mask,
            "attention_mask": mask,
            "token_type_ids": torch.zeros(n, 7, dtype=torch.long),
            "labels": torch.randint(0, 3, (n,), generator=g),
        }
    )
    return model, ds


# bert2's top layers: the embeddings and layer 0 stay frozen (a prefix that can be cached)
TOP = ["bert.encoder.layer.1.*", "bert.pooler.*", "classifier.*"]


def layout_and_cache(patterns, model, ds, batch_size=4):
    """(ParameterLayout of the parameters ``patterns`` select, ExampleCache of ``ds``)."""
    from npeff.artifacts.layout import ParameterLayout
    from npeff.fisher.grads import select_named_parameters
    from npeff.perturb.examples import ExampleCache

    layout = ParameterLayout.from_named_tensors(select_named_parameters(model, patterns))
    cache = ExampleCache(torch.utils.data.DataLoader(ds, batch_size=batch_size))
    return layout, cache


# --- a model whose margin is exactly linear in a keep-mask (COAR) ------------------------------
class TwoClass(nn.Module):
    """x → ReLU(l1) → ReLU(l2, no bias) → out (2 classes): zeroing a row of l2 zeroes that
    neuron, so the margin is exactly linear in the keep-mask of l2's neurons."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(5, 12)
        self.l2 = nn.Linear(12, 10, bias=False)
        self.out = nn.Linear(10, 2)

    def forward(self, x):
        return self.out(torch.relu(self.l2(torch.relu(self.l1(x)))))


def two_class_problem(n=40):
    """(TwoClass in eval mode, x [n, 5], y [n], loader: list of dict batches of 16)."""
    torch.manual_seed(0)
    m = TwoClass().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 5, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    loader = [{"x": x[i : i + 16], "labels": y[i : i + 16]} for i in range(0, n, 16)]
    return m, x, y, loader


# --- config pieces -----------------------------------------------------------------------------
# A toy NLI problem small enough for the whole pipeline to run in seconds.
TINY_PIPELINE = [
    "logger=none",
    "task.n_train=400",
    "task.n_fit=96",
    "task.n_eval=96",
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.intermediate_size=64",
    "trainer.max_epochs=4",
    "trainer.enable_model_summary=false",
    "progress=false",
    "fisher.n_values=500",
    "decomp.n_components=4",
    "decomp.n_iters_g_only=5",
    "decomp.n_iters_joint=30",
    "perturb.n_top=16",
    "+stages.fit.n_iters=50",
    "+stages.report.n_shuffles=5",
]

# The task and model of the pefs-stage tests (one process and several).
PEFS_TASK = {"name": "toy_nli", "n_train": 40, "n_fit": 12, "n_eval": 10, "max_length": 16}
PEFS_MODEL = {
    "name": "tiny_bert",
    "hidden_size": 16,
    "num_layers": 1,
    "num_heads": 2,
    "intermediate_size": 24,
    "max_length": 16,
}

# A short float64 LRM decomposition for the multi-process decompose tests.
DDP_DECOMP_OVERRIDES = [
    "decomp.n_components=3",
    "decomp.n_iters_g_only=4",
    "decomp.n_iters_joint=12",
    "decomp.lr_g=3e-3",
    "decomp.log_every=4",
    "decomp.dtype=float64",
    "decomp.num_threads=1",
    "logger=none",
    "progress=false",
    "checkpoint_every=0",
]
