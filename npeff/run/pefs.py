"""``npeff-pefs``: per-example Fishers of a trained model on a task split → ``pefs.h5``.

    npeff-pefs inputs.checkpoint=<run dir>/model.ckpt                     # LRM, eval split
    npeff-pefs inputs.checkpoint=... fisher=diag fisher.dataset_fisher=true   # D-PEFs + dsf.h5
    npeff-pefs inputs.checkpoint=... split=fit fisher.n_values=5000 trainer.devices=2

Writes ``pefs.h5`` (and ``dsf.h5``) and ``metrics.json`` (examples/s, mean fraction of ‖F‖_F²
captured by the kept entries, accuracy) in the run directory. An interrupted run resumes after
its last committed chunk: rerun the same command (with ``resume=true``, the default, the newest
unfinished ``pefs.h5`` of an earlier single-process run of this stage with the same settings is
moved into the new run directory and continued), or pass ``hydra.run.dir=<old run dir>`` (this is
how a multi-process run, whose ranks write shard files in the run dir, is resumed).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from npeff.artifacts.digest import file_sha256
from npeff.errors import NpeffUserError
from npeff.run.common import (
    is_global_zero,
    launch_env,
    log_stage_metrics,
    stage_main,
    write_metrics,
)

PEFS_NAME = "pefs.h5"
DSF_NAME = "dsf.h5"
# The settings that decide a PEF file's content: an unfinished file is resumed only if they match.
RESUME_KEYS = ("inputs", "split", "n_examples", "batch_size", "fisher", "params", "seed")


def _resume_key(cfg: DictConfig | dict) -> str:
    c = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
    return json.dumps({k: c.get(k) for k in RESUME_KEYS}, sort_keys=True, default=str)


def _find_unfinished(output_dir: Path, cfg: DictConfig) -> Path | None:
    """Newest unfinished pefs.h5 of an earlier run (outputs/pefs/<date>/<time>/) with our settings."""
    from npeff.artifacts.pefs import PefsFileError, read_pefs_progress

    stage_root = output_dir.parent.parent
    want = _resume_key(cfg)
    candidates = sorted(stage_root.glob(f"*/*/{PEFS_NAME}"), key=lambda p: p.stat().st_mtime)
    for path in reversed(candidates):
        if path.parent == output_dir:
            continue
        try:
            _, complete = read_pefs_progress(path)
            if complete:
                continue
            conf = json.loads(_stored_config(path))
        except (PefsFileError, OSError, ValueError, KeyError):  # foreign or unreadable: not ours
            continue
        if _resume_key(conf) == want:
            return path
    return None


def _stored_config(path: Path) -> str:
    import h5py

    from npeff.artifacts import keys

    with h5py.File(path, "r") as f:
        return f[keys.NPEFF_GROUP].attrs.get(keys.ATTR_CONFIG, "{}")


def build_loader(task, split: str, batch_size: int, n_examples: int | None):
    """The task's deterministic loader for ``split``, cut to the first ``n_examples``."""
    from torch.utils.data import DataLoader, Subset

    loader = task.dataloader(split, batch_size=batch_size, shuffle=False)
    if n_examples is not None:
        n = len(loader.dataset)
        if n_examples > n:
            raise NpeffUserError(
                f"n_examples={n_examples} but split {split!r} has only {n} examples"
            )
        loader = DataLoader(
            Subset(loader.dataset, range(n_examples)),
            batch_size=batch_size,
            collate_fn=loader.collate_fn,
        )
    return loader


def fisher_kwargs(fc: DictConfig, params: DictConfig | None, seed: int, task=None) -> dict:
    """compute_pefs keyword arguments from the ``fisher`` and ``params`` config groups.

    ``fisher.classes`` (language models, conf/fisher/lm.yaml) and ``fisher.compression`` add
    ``classes`` / ``compression``; ``task`` encodes text label words (``word_token_ids``).
    """
    mode = fc.get("dataset_fisher_mode", "expectation") if fc.get("dataset_fisher") else None

    inc = params.get("include") if params is not None else None
    exc = params.get("exclude") if params is not None else None
    return dict(
        kind=str(fc.kind),
        n_values=int(fc.n_values),
        top_k_classes=fc.get("top_k_classes"),
        min_prob_class=fc.get("min_prob_class"),
        max_classes=fc.get("max_classes"),
        params=None if inc is None else list(inc),
        exclude_params=None if exc is None else list(exc),
        chunk_size=int(fc.get("chunk_size", 16)),
        dataset_fisher=mode,
        seed=int(seed),
        engine=str(fc.get("engine", "auto")),
        **lm_fisher_kwargs(fc, seed, task),
    )


def lm_fisher_kwargs(fc: DictConfig, seed: int, task=None) -> dict:
    """``classes`` and ``compression`` from ``fisher.classes`` / ``fisher.compression`` (issue
    18); {} when neither is set, so classifier runs call compute_pefs exactly as before."""
    out: dict = {}
    mode = fc.get("classes")
    if mode is not None:
        from npeff.fisher.lm_classes import LMClasses, label_word_ids

        words = fc.get("label_words")
        ids = None
        if str(mode) == "label_words":
            if not words:
                raise NpeffUserError(
                    "fisher.classes=label_words needs fisher.label_words=[w1, w2, ...]"
                )
            ids = label_word_ids(list(words), getattr(task, "word_token_ids", None))
        out["classes"] = LMClasses(
            str(mode),
            q=float(fc.get("q", 0.9)),
            k=int(fc.get("k", 16)),
            n_samples=int(fc.get("n_samples", 8)),
            label_token_ids=ids,
            seed=int(seed),
            max_all=int(fc.get("max_all", 1024)),
        )
    comp = fc.get("compression")
    if comp is not None and str(comp) != "topk":
        if str(comp) != "projection":
            raise NpeffUserError(f"fisher.compression={comp!r}; choose topk or projection")
        pr = fc.get("projection") or {}
        out["compression"] = {
            "kind": "projection",
            "projection": str(pr.get("kind", "sparse_jl")),
            "d": int(pr.get("d", 4096)),
            "s": int(pr.get("s", 4)),
            "seed": int(pr.get("seed", 0)),
        }
    return out


def stage_device(accelerator: str):
    """The device of a single-process stage from ``trainer.accelerator`` (``trainer=gpu`` sets
    "auto": CUDA when present)."""
    import torch

    acc = accelerator.lower()
    if acc in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise NpeffUserError(
                f"trainer.accelerator={accelerator} but no CUDA device is visible; use trainer=default"
            )
        return torch.device("cuda")
    if acc == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cpu")


def run(cfg: DictConfig, output_dir: Path) -> dict:
    """Compute the PEFs of ``cfg.inputs.checkpoint`` on ``cfg.split`` into ``output_dir``."""
    from npeff.artifacts.pefs import load_pefs, read_pefs_progress
    from npeff.fisher import compute_pefs
    from npeff.fisher.distributed import compute_pefs_multiprocess
    from npeff.fisher.quality import captured_fraction
    from npeff.tasks.checkpoint import load_checkpoint

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    split = str(cfg.split)
    if split not in ("train", "fit", "eval"):
        raise NpeffUserError(f"split must be one of train, fit, eval; got {split!r}")
    loaded = load_checkpoint(cfg.inputs.checkpoint)
    kwargs = fisher_kwargs(cfg.fisher, cfg.get("params"), cfg.get("seed", 0), loaded.task)
    loader = build_loader(loaded.task, split, int(cfg.batch_size), cfg.get("n_examples"))

    trainer = cfg.get("trainer") or {}
    devices = trainer.get("devices", 1)
    devices = int(devices) if isinstance(devices, int) or str(devices).isdigit() else 1
    num_nodes = int(trainer.get("num_nodes", 1) or 1)
    launched = launch_env()  # torchrun / srun started this as one of several processes
    world = devices * num_nodes
    pefs_path = output_dir / PEFS_NAME
    # Single-process runs continue an unfinished file of an earlier run dir; a multi-process run
    # resumes its shards in its own run dir (rerun with hydra.run.dir=<that dir>).
    if world == 1 and cfg.get("resume", True) and not pefs_path.exists():
        old = _find_unfinished(output_dir, cfg)
        if old is not None:
            old.replace(pefs_path)
            print(f"npeff-pefs: resuming the unfinished {old} in {pefs_path}")
    config = OmegaConf.to_container(cfg, resolve=True)
    metadata = {
        "config": config,
        "split": split,
        "model_identity": {
            "checkpoint": str(loaded.path),
            "sha256": file_sha256(loaded.path),
            "model_class": type(loaded.model).__name__,
            "model": OmegaConf.to_container(loaded.cfg.model, resolve=True),
            "task": OmegaConf.to_container(loaded.cfg.task, resolve=True),
        },
    }
    n_before, _ = read_pefs_progress(pefs_path)
    t0 = time.perf_counter()
    common = dict(
        dataset_fisher_path=output_dir / DSF_NAME,
        metadata=metadata,
        progress=bool(cfg.get("progress", True)),
        **kwargs,
    )
    if world > 1:
        strategy = str(trainer.get("strategy", "ddp_spawn"))
        if launched is not None:
            strategy = "ddp"  # the launcher made the processes; Fabric only joins them
        elif strategy not in ("ddp", "ddp_spawn"):
            strategy = "ddp_spawn"
        compute_pefs_multiprocess(
            loaded.model,
            loader,
            pefs_path,
            devices=devices,
            num_nodes=num_nodes,
            strategy=strategy,
            accelerator=str(trainer.get("accelerator", "cpu")),
            **common,
        )
    else:
        device = stage_device(str(trainer.get("accelerator", "cpu")))
        compute_pefs(loaded.model.to(device), loader, pefs_path, **common)
    seconds = time.perf_counter() - t0
    if not is_global_zero():
        return {}  # every rank runs this stage under ddp / torchrun / srun; global rank 0 reports

    pefs = load_pefs(pefs_path)
    frac = captured_fraction(pefs)
    n_new = pefs.n_examples - n_before
    metrics = {
        "pefs": str(pefs_path),
        "dataset_fisher": str(output_dir / DSF_NAME) if kwargs["dataset_fisher"] else None,
        "kind": pefs.kind,
        "split": split,
        "n_examples": pefs.n_examples,
        "n_examples_computed": n_new,
        "n_parameters": pefs.n_parameters,
        "n_values": pefs.n_values_per_example,
        "n_classes": pefs.n_classes,
        "devices": devices,
        "num_nodes": num_nodes,
        "world_size": world,
        "seconds": seconds,
        "examples_per_s": n_new / seconds if seconds > 0 else None,
        "mean_captured_fraction": float(frac.mean()) if frac.size else None,
        "accuracy": float((pefs.predictions == pefs.labels).mean()) if pefs.n_examples else None,
    }
    write_metrics(output_dir, metrics)
    log_stage_metrics(cfg, output_dir, metrics, "pefs")
    return metrics


main = stage_main("pefs", run)


if __name__ == "__main__":
    main()
