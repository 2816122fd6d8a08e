"""``check_identity``: the one checkpoint-identity check (COAR attributions, PEF files)."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from npeff.models.identity import check_identity, weights_digest


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _reference_digest(model: nn.Module) -> str:
    """By hand: name, shape and float32 bytes of every state-dict entry, in name order."""
    h = hashlib.sha256()
    for name in sorted(model.state_dict()):
        t = model.state_dict()[name]
        h.update(name.encode() + str(tuple(t.shape)).encode())
        arr = t.numpy().astype("float32") if t.is_floating_point() else t.numpy()
        h.update(arr.tobytes())
    return h.hexdigest()


def test_weights_digest_matches_a_hand_computed_hash_and_sees_one_changed_weight():
    m = _model()
    assert weights_digest(m) == _reference_digest(m)
    with torch.no_grad():
        m[0].weight[1, 2] += 1e-6
    assert weights_digest(m) == _reference_digest(m) != weights_digest(_model())


def test_a_matching_checkpoint_passes_and_a_mismatch_is_one_line(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"checkpoint bytes")
    m = _model()
    identity = {
        "checkpoint": "/runs/a/model.ckpt",
        "sha256": hashlib.sha256(b"checkpoint bytes").hexdigest(),
        "weights_sha256": _reference_digest(m),
    }
    check_identity(identity, "the attributions x.h5", "fix it", ckpt, m)
    check_identity({}, "the PEFs", "fix it", ckpt, _model(1))  # nothing recorded: no check
    check_identity(None, "the PEFs", "fix it", ckpt)

    other = tmp_path / "other.ckpt"
    other.write_bytes(b"another model")
    with pytest.raises(ValueError) as e:
        check_identity(identity, "the attributions x.h5", "fix it", other, m)
    assert str(e.value) == (
        f"inputs.checkpoint {other} is not the model the attributions x.h5 were computed on "
        "(checkpoint /runs/a/model.ckpt; the file hash differs): fix it"
    )
    with pytest.raises(ValueError, match=r"x.h5 were computed on .*the weights differ\): fix it"):
        check_identity(identity, "the attributions x.h5", "fix it", ckpt, _model(1))
    with pytest.raises(ValueError, match=r"^the given model is not the model .*weights differ"):
        check_identity(identity, "the attributions x.h5", "fix it", model=_model(1))
    # only the file hash is recorded (a PEF file): the weights are not compared
    check_identity({"sha256": identity["sha256"]}, "the PEFs", "fix it", ckpt, _model(1))
