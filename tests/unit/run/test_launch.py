"""Launch checks and rank detection of npeff.run.common (no processes started)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from omegaconf import OmegaConf

from npeff.run import common

LAUNCH_VARS = ("TORCHELASTIC", "SLURM", "MASTER_", "NODE_RANK", "WORLD_SIZE", "RANK", "LOCAL_")


@pytest.fixture
def clean_env(monkeypatch):
    import os

    for k in list(os.environ):
        if k.startswith(LAUNCH_VARS):
            monkeypatch.delenv(k)
    return monkeypatch


def cfg(**trainer):
    return OmegaConf.create(
        {"stage": "decompose", "trainer": {"devices": 1, "num_nodes": 1, **trainer}}
    )


def test_plain_process_has_no_launcher(clean_env):
    assert common.launch_env() is None
    common.check_launch(cfg())  # one process, one node: fine


def test_torchrun_global_rank_not_local_rank(clean_env):
    # node 1 of 2, one process per node: LOCAL_RANK is 0 there, the global rank is 1
    for k, v in dict(
        TORCHELASTIC_RUN_ID="none", RANK="1", LOCAL_RANK="0", WORLD_SIZE="2", LOCAL_WORLD_SIZE="1"
    ).items():
        clean_env.setenv(k, v)
    env = common.launch_env()
    assert env == {"launcher": "torchrun", "rank": 1, "world_size": 2, "local_world_size": 1}
    assert common.global_rank() == 1 and not common.is_global_zero()
    common.check_launch(cfg(num_nodes=2))


def test_srun_global_rank_is_procid(clean_env):
    for k, v in dict(
        SLURM_NTASKS="4",
        SLURM_PROCID="2",
        SLURM_LOCALID="0",
        SLURM_NTASKS_PER_NODE="2",
        SLURM_JOB_NAME="job",
    ).items():
        clean_env.setenv(k, v)
    assert common.launch_env()["rank"] == 2 and common.global_rank() == 2
    common.check_launch(cfg(num_nodes=2, devices=2))
    clean_env.setenv("SLURM_JOB_NAME", "interactive")  # salloc shell: not an srun launch
    assert common.launch_env() is None


def test_num_nodes_without_launcher_says_what_to_run(clean_env):
    with pytest.raises(common.LaunchError) as e:
        common.check_launch(cfg(num_nodes=2, devices=4))
    msg = str(e.value)
    assert "torchrun --nnodes 2 --nproc-per-node 4" in msg and "srun --nodes 2" in msg
    assert "npeff-decompose" in msg


def test_launcher_process_count_must_match_trainer(clean_env):
    for k, v in dict(
        TORCHELASTIC_RUN_ID="none", RANK="0", WORLD_SIZE="4", LOCAL_WORLD_SIZE="2"
    ).items():
        clean_env.setenv(k, v)
    with pytest.raises(common.LaunchError, match="trainer.num_nodes=2 trainer.devices=2"):
        common.check_launch(cfg())


@pytest.mark.parametrize("namespace_missing", [False, True])
def test_missing_launcher_plugin_is_one_clear_error(monkeypatch, capsys, namespace_missing):
    """Without the plugin, hydra/launcher=submitit_slurm stops before Hydra with what to install,
    also where no `hydra_plugins` namespace exists at all (find_spec then raises)."""
    real = importlib.util.find_spec

    def find_spec(name, *a, **k):
        if not name.startswith("hydra_plugins.hydra_submitit"):
            return real(name, *a, **k)
        if namespace_missing:
            raise ModuleNotFoundError("No module named 'hydra_plugins'", name="hydra_plugins")
        return None

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(sys, "argv", ["npeff-decompose", "-m", "hydra/launcher=submitit_slurm"])
    ran = []
    with pytest.raises(SystemExit) as e:
        common.stage_main("decompose", lambda cfg, out: ran.append(cfg))()
    assert e.value.code == 2 and not ran
    err = capsys.readouterr().err
    assert 'pip install -e ".[cluster]"' in err and "hydra/launcher=submitit_slurm" in err


def test_lightning_multinode_node_rank_is_not_zero(clean_env):
    # Lightning's own launch on node 1: NODE_RANK=1, LOCAL_RANK=0 (before the process group)
    clean_env.setenv("NODE_RANK", "1")
    clean_env.setenv("LOCAL_RANK", "0")
    clean_env.setenv("MASTER_ADDR", "10.0.0.1")
    assert not common.is_global_zero()
    common.check_launch(cfg(num_nodes=2))  # a launch Lightning handles: accepted
