"""npeff: Non-Negative Per-Example Fisher Factorization with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
