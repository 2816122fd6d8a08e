"""Run a decomposition with a Lightning Trainer: checks, callbacks, checkpoints, resume, result.

``decompose(...)`` is what the ``npeff-decompose`` stage and the tests call. Bad inputs are
refused before any work (wrong PEF kind, too many components, a base decomposition that does not
match the PEFs).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from npeff.artifacts.decomposition import Decomposition, load_decomposition
from npeff.artifacts.pefs import Pefs
from npeff.decomp.callbacks import ConvergenceTracker, Progress, StepTimer
from npeff.decomp.matrix import check_pef_kind
from npeff.decomp.module import DecompositionModule, DecompSettings
from npeff.errors import NpeffFileNotFoundError, NpeffUserError

CHECKPOINT_DIR = "checkpoints"
TRAINER_KEYS = ("accelerator", "devices", "strategy", "num_nodes")


def _header(pefs: str | Path | Pefs) -> dict:
    if isinstance(pefs, Pefs):
        return {"kind": pefs.kind, "n": pefs.n_examples, "m": pefs.n_parameters}
    from npeff.artifacts.pefs import read_pefs_header

    if not Path(pefs).is_file():
        raise NpeffFileNotFoundError(f"no PEF file at {pefs}; set inputs.pefs=<path to pefs.h5>")
    return read_pefs_header(pefs)


def validate_inputs(pefs, s: DecompSettings, frozen: Decomposition | None) -> dict:
    """Refuse bad input before any work; returns the PEF header."""
    h = _header(pefs)
    check_pef_kind(Pefs(h["kind"], None, None, None, None, None, h["m"]), s.kind)
    n = h["n"] if s.n_examples in (None, -1) else min(int(s.n_examples), h["n"])
    if s.n_components > n:
        raise NpeffUserError(
            f"decomp.n_components={s.n_components} is larger than the number of examples ({n}); "
            "lower decomp.n_components or use more PEFs."
        )
    if s.kind == "diag" and (s.n_iters_g_only or 0) > 0:
        raise NpeffUserError("D-NPEFF has no G-only phase; set decomp.n_iters_g_only=0")
    if frozen is not None:
        if s.kind != "lrm" or frozen.kind != "lrm" or frozen.G is None:
            raise NpeffUserError(
                "decomp.expand_from needs an LRM decomposition with G, and decomp=lrm_npeff"
            )
        if s.ortho_strength and s.ortho_strength > 0:
            raise NpeffUserError("decomp.ortho_strength is not supported with decomp.expand_from")
        if frozen.n_parameters != h["m"]:
            raise NpeffUserError(
                f"the base decomposition has {frozen.n_parameters} parameters but the PEFs have "
                f"{h['m']}: they come from different models or parameter selections"
            )
    return h


def build_trainer(
    output_dir: Path,
    total_steps: int,
    *,
    trainer_cfg: dict | None = None,
    logger=None,
    checkpoint_every: int = 0,
    convergence_every: int = 0,
    keep_snapshots: bool = True,
    log_every: int = 10,
    progress: bool = True,
    extra_callbacks: list | None = None,
) -> L.Trainer:
    kw = {k: v for k, v in (trainer_cfg or {}).items() if k in TRAINER_KEYS and v is not None}
    if kw.get("accelerator", "cpu") not in ("cpu", "auto"):
        warnings.warn(
            f"trainer.accelerator={kw['accelerator']!r}: the decomposition kernels run on CPU "
            "(scipy/torch sparse); using accelerator=cpu",
            stacklevel=2,
        )
    kw["accelerator"] = "cpu"
    kw.setdefault("devices", 1)
    callbacks = [StepTimer(log_every), Progress(total_steps, progress)]
    if convergence_every and convergence_every > 0:
        callbacks.append(ConvergenceTracker(convergence_every, keep_snapshots))
    if checkpoint_every and checkpoint_every > 0:
        callbacks.append(
            ModelCheckpoint(
                dirpath=output_dir / CHECKPOINT_DIR,
                filename="step-{epoch}",
                every_n_epochs=int(checkpoint_every),
                save_top_k=1,
                save_last=True,
                save_on_train_epoch_end=True,
            )
        )
    callbacks += list(extra_callbacks or [])
    return L.Trainer(
        max_epochs=total_steps,
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        enable_checkpointing=bool(checkpoint_every and checkpoint_every > 0),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        use_distributed_sampler=False,
        default_root_dir=str(output_dir),
        **kw,
    )


def decompose(
    pefs: str | Path | Pefs,
    settings: DecompSettings,
    output_dir: str | Path,
    *,
    output_name: str = "decomposition.h5",
    trainer_cfg: dict | None = None,
    logger=None,
    checkpoint_every: int = 0,
    resume: str | Path | bool | None = "auto",
    convergence_every: int = 0,
    keep_snapshots: bool = True,
    progress: bool = True,
    metadata: dict | None = None,
    extra_callbacks: list | None = None,
) -> Decomposition:
    """Decompose ``pefs`` into ``output_dir/output_name`` and return the result.

    resume: "auto" resumes from ``output_dir/checkpoints/last.ckpt`` when it exists (so the same
    command continues a killed run), a path resumes from that checkpoint, False/None never resumes.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    frozen = load_decomposition(settings.expand_from) if settings.expand_from else None
    validate_inputs(pefs, settings, frozen)
    ckpt_path = None
    last = output_dir / CHECKPOINT_DIR / "last.ckpt"
    if resume == "auto" or resume is True:
        ckpt_path = str(last) if last.is_file() else None
    elif resume:
        ckpt_path = str(resume)
        if not Path(ckpt_path).is_file():
            raise NpeffFileNotFoundError(f"no checkpoint at {ckpt_path}")
    meta = dict(metadata or {})
    src = meta.setdefault("source", {})
    if not isinstance(pefs, Pefs):
        src.setdefault("pefs", str(Path(pefs).resolve()))
    if settings.expand_from:
        src.setdefault("expand_from", str(Path(settings.expand_from).resolve()))
    meta.setdefault("seed", settings.seed)
    out_path = output_dir / output_name
    module = DecompositionModule(pefs, settings, out_path, frozen=frozen, metadata=meta)
    trainer = build_trainer(
        output_dir,
        module.total_steps,
        trainer_cfg=trainer_cfg,
        logger=logger,
        checkpoint_every=checkpoint_every,
        convergence_every=convergence_every,
        keep_snapshots=keep_snapshots,
        log_every=settings.log_every,
        progress=progress,
        extra_callbacks=extra_callbacks,
    )
    trainer.fit(module, ckpt_path=ckpt_path)
    if not out_path.is_file():
        raise RuntimeError(f"the decomposition run ended without writing {out_path}")
    return load_decomposition(out_path)
