"""``zoo.pt`` (artifacts.zoo): round trip, and a one-line error naming a file that is not a zoo."""

from __future__ import annotations

import pytest
import torch

from npeff.artifacts.zoo import ZOO_FORMAT, load_zoo_file, save_zoo, zoo_path


def _zoo(tmp_path):
    params = {"hidden.weight": torch.randn(3, 4, 6), "hidden.bias": torch.randn(3, 4)}
    config = {"task": {"name": "group", "group": "S3"}, "seed": 5}
    history = [{"epoch": 1, "loss": 0.5, "train_accuracy": [0.1, 0.2, 0.3]}]
    path = save_zoo(zoo_path(tmp_path), params, config, [5, 6, 7], {"n_seeds": 3}, history)
    return path, params, config, history


def test_a_zoo_round_trips(tmp_path):
    path, params, config, history = _zoo(tmp_path)
    assert path == tmp_path / "zoo.pt"
    zoo = load_zoo_file(path)
    assert zoo.path == path and zoo.seeds == [5, 6, 7] and zoo.n_seeds == 3
    assert zoo.config == config and zoo.group_name == "S3" and zoo.history == history
    assert zoo.metrics == {"n_seeds": 3}
    assert zoo.params.keys() == params.keys()
    for k, v in params.items():
        assert torch.equal(zoo.params[k], v)
    raw = torch.load(path, weights_only=True)  # the format, read without npeff
    assert raw["format"] == ZOO_FORMAT and raw["version"] == 1


@pytest.mark.parametrize(
    "content",
    [
        lambda p: p.write_bytes(b"not a torch file at all"),
        lambda p: torch.save({"format": "npeff-model", "state_dict": {}}, p),
        lambda p: torch.save([1, 2, 3], p),
    ],
)
def test_a_file_that_is_not_a_zoo_is_one_line_naming_it(tmp_path, content):
    path = tmp_path / "zoo.pt"
    content(path)
    with pytest.raises(ValueError, match="is not an? (readable )?npeff group zoo") as e:
        load_zoo_file(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_newer_zoo_and_a_missing_one_fail_clearly(tmp_path):
    path, *_ = _zoo(tmp_path)
    raw = torch.load(path, weights_only=True)
    torch.save({**raw, "version": 99}, path)
    with pytest.raises(ValueError, match="version 99"):
        load_zoo_file(path)
    with pytest.raises(FileNotFoundError, match="npeff-train task=group"):
        load_zoo_file(tmp_path / "none" / "zoo.pt")
