"""A sparse autoencoder on activations (TopK and L1 variants); coefficients = feature activations.

Model (d inputs, F features; x is first standardized with the fit split's mean μ and one scalar
scale s, so that E‖x‖² = d):
  f(x) = act((x̃ − b_dec) W_enc + b_enc) ∈ R^F_{≥0},   x̂ = f W_dec + b_dec,
  act = ReLU followed by keeping the k largest (``kind="topk"``, Gao et al. 2024) or ReLU alone
  with an L1 penalty λ·Σ_j f_j (``kind="l1"``, Bricken et al. 2023).
Loss: mean over examples of ‖x̂ − x̃‖² / d (+ the L1 term). The rows of W_dec are kept at unit
norm (renormalized after every step), so the L1 penalty cannot be evaded by shrinking f, and
W_enc starts as W_decᵀ. Trained with Adam on minibatches of the fit split, seeded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from npeff.errors import NpeffUserError

SAE_KINDS = ("topk", "l1")


class SparseAutoencoder(nn.Module):
    def __init__(self, d: int, n_features: int, kind: str = "topk", k: int = 8):
        super().__init__()
        if kind not in SAE_KINDS:
            raise NpeffUserError(f"unknown SAE kind {kind!r}; choose one of {SAE_KINDS}")
        if kind == "topk" and not 1 <= int(k) <= int(n_features):
            raise NpeffUserError(f"sae.k={k} must be between 1 and the {n_features} features")
        self.kind, self.k = kind, int(k)
        dec = torch.randn(int(n_features), int(d))
        dec = dec / dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(dec)  # [F, d]
        self.W_enc = nn.Parameter(dec.T.clone())  # [d, F]
        self.b_enc = nn.Parameter(torch.zeros(int(n_features)))
        self.b_dec = nn.Parameter(torch.zeros(int(d)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations [B, F] (non-negative) of standardized inputs x [B, d]."""
        pre = torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)
        if self.kind == "l1":
            return pre
        top = torch.topk(pre, self.k, dim=1)
        return torch.zeros_like(pre).scatter(1, top.indices, top.values)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))


@dataclass
class SaeFit:
    """A trained SAE with its input standardization (mean μ [d], scale s) and loss history."""

    model: SparseAutoencoder
    mean: np.ndarray
    scale: float
    losses: list[float] = field(default_factory=list)  # training loss per epoch
    reconstruction: list[float] = field(default_factory=list)  # reconstruction part per epoch

    def _standardize(self, X: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((np.asarray(X, np.float64) - self.mean) / self.scale).float()

    @torch.no_grad()
    def transform(self, X: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Feature activations float32 [n, F] of raw features X [n, d]."""
        Xt = self._standardize(X)
        out = [self.model.encode(Xt[i : i + batch_size]) for i in range(0, len(Xt), batch_size)]
        return torch.cat(out).numpy().astype(np.float32)

    @property
    def decoder(self) -> np.ndarray:
        """Unit-norm dictionary directions [F, d] (in the standardized space)."""
        return self.model.W_dec.detach().numpy().copy()


def fit_sae(
    X: np.ndarray,
    n_features: int,
    kind: str = "topk",
    k: int = 8,
    l1: float = 1e-2,
    epochs: int = 50,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    center: bool = False,
    progress: bool = False,
) -> SaeFit:
    """Train a sparse autoencoder on features X [n, d]; see the module docstring."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 2:
        raise NpeffUserError(f"SAE inputs must be [n >= 2, d], got shape {X.shape}")
    if int(n_features) < 1:
        raise NpeffUserError(f"baseline.n_components must be >= 1, got {n_features}")
    n, d = X.shape
    mean = np.zeros(d) if not center else X.mean(axis=0)
    scale = float(np.sqrt(((X - mean) ** 2).sum(axis=1).mean() / d)) or 1.0
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    sae = SparseAutoencoder(d, int(n_features), kind, k)
    fit = SaeFit(model=sae, mean=mean, scale=scale)
    Xt = fit._standardize(X)
    opt = torch.optim.Adam(sae.parameters(), lr=float(lr))
    for _ in tqdm(range(int(epochs)), desc=f"SAE ({kind})", disable=not progress):
        perm = torch.randperm(n, generator=gen)
        tot = rec_tot = 0.0
        for lo in range(0, n, int(batch_size)):
            xb = Xt[perm[lo : lo + int(batch_size)]]
            f = sae.encode(xb)
            rec = (sae.decode(f) - xb).pow(2).sum(dim=1).mean() / d
            loss = rec + (float(l1) * f.sum(dim=1).mean() if kind == "l1" else 0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sae.normalize_decoder()
            tot += float(loss.detach()) * len(xb)
            rec_tot += float(rec.detach()) * len(xb)
        fit.losses.append(tot / n)
        fit.reconstruction.append(rec_tot / n)
    return fit
