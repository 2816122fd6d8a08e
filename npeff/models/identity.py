"""A model's identity as files record it, and the one check that a checkpoint is that model.

Files computed from a model (a PEF file, COAR attributions) record a ``model_identity``:
``checkpoint`` (its path), ``sha256`` (of the checkpoint file, :func:`~npeff.artifacts.digest.
file_sha256`) and, for attributions, ``weights_sha256`` (:func:`weights_digest` of the weights).
:func:`check_identity` compares a checkpoint (file, then weights) with such a record.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

import torch
from torch import nn

from npeff.artifacts.digest import file_sha256
from npeff.errors import NpeffUserError


def weights_digest(model: nn.Module) -> str:
    """sha256 of every parameter and buffer (names, shapes, float32 bytes) of ``model``."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(
            t.detach()
            .cpu()
            .contiguous()
            .to(torch.float32 if t.is_floating_point() else t.dtype)
            .numpy()
            .tobytes()
        )
    return h.hexdigest()


def check_identity(
    identity: Mapping | None,
    what: str,
    fix: str,
    checkpoint: str | os.PathLike | None = None,
    model: nn.Module | None = None,
) -> None:
    """Fail unless ``checkpoint`` (its file hash) and ``model`` (its weights) are the model that
    ``identity`` (a file's recorded ``model_identity``) names; what is not given or not recorded
    is not checked.

    ``what``: the file, as in "the model <what> were computed on" (e.g. ``"the attributions
    x.h5"``); ``fix``: how to fix a mismatch. One message, one line::

        inputs.checkpoint c.ckpt is not the model the attributions x.h5 were computed on
        (checkpoint a.ckpt; the file hash differs): <fix>
    """
    identity = identity or {}
    differs = None
    want = identity.get("sha256")
    if checkpoint is not None and want and want != file_sha256(checkpoint):
        differs = "the file hash differs"
    want = identity.get("weights_sha256")
    if differs is None and model is not None and want and weights_digest(model) != want:
        differs = "the weights differ"
    if differs is None:
        return
    subject = "the given model" if checkpoint is None else f"inputs.checkpoint {checkpoint}"
    raise NpeffUserError(
        f"{subject} is not the model {what} were computed on (checkpoint "
        f"{identity.get('checkpoint', '?')}; {differs}): {fix}"
    )
