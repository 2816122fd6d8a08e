"""The decomposition as a LightningModule with manual optimization (one kind-agnostic shell).

One Lightning "epoch" is one factorization step (a single dummy batch), so Lightning's own
checkpointing (``ModelCheckpoint(every_n_epochs=…)``) and ``ckpt_path=`` resume work unchanged.
Under DDP each rank holds a column block of A and of G/H (``column_range``); W is replicated;
``Factorization`` sums only A·Gᵀ and G·Gᵀ over ranks. Checkpoints hold the *full* G/H (gathered
from all ranks), W, the step records and the losses, so a run resumes on any number of ranks.
At the end rank 0 writes the decomposition file.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from npeff import config_dir
from npeff.artifacts.decomposition import Decomposition, save_decomposition
from npeff.artifacts.pefs import Pefs
from npeff.decomp.callbacks import log_metrics
from npeff.decomp.collectives import gather_columns
from npeff.decomp.kinds import Hyper, build_factorization, schedule
from npeff.decomp.matrix import build_matrix
from npeff.decomp.postprocess import normalize_components, sparsify_h
from npeff.errors import NpeffUserError

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# The config file of each decomposition kind: the one source of that kind's defaults, for Hydra
# (``decomp=<file>``) and for ``DecompSettings(kind=...)`` alike.
KIND_CONFIGS = {"lrm": "lrm_npeff", "diag": "d_npeff"}
# Settings a kind's file does not mention (they do not apply to it), kind-independent.
NOT_IN_KIND_FILE = {
    "n_iters_joint_expansion_only": 0,
    "lr_g_only": None,
    "ortho_strength": 0.0,
    "expand_from": None,
    "use_W_from_decomposition": False,
    "h_threshold": None,
    "h_keep_fraction": None,
}


class _KindDefault:
    """Marks a ``DecompSettings`` field not given explicitly: filled from the kind's file."""

    def __repr__(self) -> str:
        return "<default of the kind>"


KIND_DEFAULT = _KindDefault()


@functools.cache
def kind_defaults(kind: str) -> dict:
    """The defaults of decomposition ``kind``: ``conf/decomp/<KIND_CONFIGS[kind]>.yaml``."""
    from omegaconf import OmegaConf

    if kind not in KIND_CONFIGS:
        raise NpeffUserError(
            f"decomp.kind must be one of {sorted(KIND_CONFIGS)} (LVRM PEFs use 'lrm'), got {kind!r}"
        )
    path = config_dir() / "decomp" / f"{KIND_CONFIGS[kind]}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


@dataclass
class DecompSettings:
    """Everything ``conf/decomp/*.yaml`` sets (see there for meanings).

    Fields left out take the defaults of ``kind`` from its config file (``kind_defaults``), so
    ``DecompSettings(kind="diag")`` equals what ``decomp=d_npeff`` gives; settings that file does
    not mention take ``NOT_IN_KIND_FILE``.
    """

    kind: str = "lrm"
    n_components: int = KIND_DEFAULT
    n_examples: int | None = KIND_DEFAULT
    n_iters_g_only: int = KIND_DEFAULT
    n_iters_joint: int = KIND_DEFAULT
    n_iters_joint_expansion_only: int = KIND_DEFAULT
    lr_g: float = KIND_DEFAULT
    lr_g_only: float | None = KIND_DEFAULT
    mu_eps: float = KIND_DEFAULT
    ortho_strength: float = KIND_DEFAULT
    min_nonzero_per_col: int = KIND_DEFAULT
    seed: int = KIND_DEFAULT
    log_every: int = KIND_DEFAULT
    tol: float | None = KIND_DEFAULT
    dtype: str = KIND_DEFAULT
    block_cols: int = KIND_DEFAULT
    expand_from: str | None = KIND_DEFAULT
    use_W_from_decomposition: bool = KIND_DEFAULT
    h_threshold: float | None = KIND_DEFAULT
    h_keep_fraction: float | None = KIND_DEFAULT
    normalize_components: bool = KIND_DEFAULT
    num_threads: int | None = KIND_DEFAULT
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        defaults = kind_defaults(self.kind)
        for f in fields(self):
            if getattr(self, f.name) is KIND_DEFAULT:
                if f.name in defaults:
                    setattr(self, f.name, defaults[f.name])
                elif f.name in NOT_IN_KIND_FILE:
                    setattr(self, f.name, NOT_IN_KIND_FILE[f.name])
                else:
                    raise NpeffUserError(
                        f"conf/decomp/{KIND_CONFIGS[self.kind]}.yaml sets no default for "
                        f"decomp.{f.name}; add it there"
                    )

    @classmethod
    def from_dict(cls, d: dict) -> DecompSettings:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        kw = {k: v for k, v in d.items() if k in known}
        return cls(**kw, extra={k: v for k, v in d.items() if k not in known})

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype not in DTYPES:
            raise NpeffUserError(
                f"decomp.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}"
            )
        return DTYPES[self.dtype]

    def hyper(self) -> Hyper:
        return Hyper(
            lr_g=float(self.lr_g),
            lr_g_only=None if self.lr_g_only is None else float(self.lr_g_only),
            mu_eps=float(self.mu_eps),
            ortho_strength=float(self.ortho_strength),
        )

    def plan(self) -> list[tuple[str, int]]:
        n_exp = self.n_iters_joint_expansion_only if self.expand_from else 0
        return schedule(self.kind, self.n_iters_g_only, self.n_iters_joint, n_exp)


class DecompositionModule(L.LightningModule):
    """LRM-NPEFF or D-NPEFF (``settings.kind``) on a PEF file (path) or an in-memory ``Pefs``.

    ``frozen``: an expansion's base ``Decomposition`` (its G is frozen, new components first).
    ``output_path``: where rank 0 writes the result at the end of training.
    """

    def __init__(
        self,
        pefs: str | Path | Pefs,
        settings: DecompSettings,
        output_path: str | Path,
        *,
        frozen: Decomposition | None = None,
        metadata: dict | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        # DDP refuses a module without trainable parameters; this one is never used.
        self._ddp_anchor = torch.nn.Parameter(torch.zeros(1))
        self.pefs_source = pefs
        self.settings = settings
        self.output_path = Path(output_path)
        self.frozen = frozen
        self.metadata = dict(metadata or {})
        self.fac = None
        self.mat_info: dict = {}
        self.records: dict = {"losses": {}, "convergence": {}}
        self.plan = settings.plan()
        self.total_steps = sum(k for _, k in self.plan)

    # --- setup -------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.fac is not None:
            return
        from npeff.artifacts.pefs import load_pefs

        s = self.settings
        pefs = (
            self.pefs_source if isinstance(self.pefs_source, Pefs) else load_pefs(self.pefs_source)
        )
        col_map = None if self.frozen is None else self.frozen.new_to_old_col_indices
        mat = build_matrix(
            pefs,
            s.kind,
            n_examples=s.n_examples,
            min_nonzero_per_col=s.min_nonzero_per_col,
            col_map=col_map,
        )
        rank, world = self.global_rank, self.trainer.world_size if self._trainer else 1
        W_f = None
        if self.frozen is not None and s.use_W_from_decomposition:
            if self.frozen.W.shape[0] != mat.n_examples:
                raise NpeffUserError(
                    "decomp.use_W_from_decomposition needs a decomposition over the same examples: "
                    f"it has {self.frozen.W.shape[0]} rows, the PEFs {mat.n_examples}"
                )
            W_f = self.frozen.W
        self.fac = build_factorization(
            mat,
            n_components=s.n_components,
            seed=s.seed,
            hyper=s.hyper(),
            dtype=s.torch_dtype,
            block_cols=s.block_cols,
            rank=rank,
            world=world,
            frozen=None if self.frozen is None else self.frozen.G,
            W_frozen=W_f,
        )
        self.mat_info = {
            "n_examples": mat.n_examples,
            "n_classes": mat.n_classes,
            "n_cols": mat.n_cols,
            "n_parameters": mat.n_parameters,
            "nnz": int(mat.A.nnz),
            "new_to_old_col_indices": mat.new_to_old_col_indices,
            "layout": pefs.layout,
        }

    def train_dataloader(self):
        return DataLoader([0], batch_size=1)

    def configure_optimizers(self):
        # The updates are not gradient steps of an optimizer; this no-op optimizer (lr 0, the
        # anchor never gets a gradient) only advances ``global_step`` once per factorization
        # step, which Lightning's checkpointing and loggers count in.
        return torch.optim.SGD([self._ddp_anchor], lr=0.0)

    # --- one step per epoch --------------------------------------------------------------------
    def phase_at(self, step: int) -> tuple[str, int]:
        """(phase, step within the phase) of global step ``step``."""
        for phase, n in self.plan:
            if step < n:
                return phase, step
            step -= n
        raise IndexError("step past the end of the schedule")

    def training_step(self, batch, batch_idx):
        step = self.current_epoch
        phase, k = self.phase_at(step)
        self.fac.step(phase)
        self.optimizers().step()
        s = self.settings
        if s.log_every and (k + 1) % s.log_every == 0:
            loss = self.fac.loss()
            self._check_finite(loss, phase, k + 1)
            losses = self.records["losses"].setdefault(phase, [])
            prev = losses[-1] if losses else None
            losses.append(loss)
            self.records["last_loss"] = loss
            log_metrics(self, {f"loss/{phase}": loss}, step + 1)
            if (
                s.tol is not None
                and phase == self.plan[-1][0]
                and prev is not None
                and abs(prev - loss) <= float(s.tol) * max(abs(prev), 1e-30)
            ):
                self.records["stopped_at"] = step + 1
                self.trainer.should_stop = True
        return None

    def _check_finite(self, loss: float, phase: str, step: int) -> None:
        """A diverged factorization (NaN/inf loss) stops here with the fix, instead of writing
        NaN components that every later stage would read as a result."""
        if math.isfinite(loss):
            return
        s = self.settings
        own_rate = phase == "G_only" and s.lr_g_only is not None
        knob, lr = ("decomp.lr_g_only", s.lr_g_only) if own_rate else ("decomp.lr_g", s.lr_g)
        raise NpeffUserError(
            f"the decomposition diverged: loss {loss} at step {step} of phase {phase}; lower "
            f"{knob} (now {lr:g}; e.g. {lr / 3:.2g})"
        )

    # --- checkpoints: full G/H, W and records ---------------------------------------------------
    def _full_components_t(self) -> torch.Tensor:
        b = self.fac.blocks
        return gather_columns(self.fac.Ft, b.lo, b.hi, self.mat_info["n_cols"])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["npeff"] = {
            "W": self.fac.W.clone(),
            "Ft": self._full_components_t(),
            "records": _numpy_to_torch(copy.deepcopy(self.records)),
            "kind": self.settings.kind,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        st = checkpoint.get("npeff")
        if st is None or st.get("kind") != self.settings.kind:
            raise NpeffUserError(
                "the checkpoint is not an npeff decomposition checkpoint of this kind"
            )
        b = self.fac.blocks
        if st["Ft"].shape != (self.mat_info["n_cols"], self.fac.r):
            raise NpeffUserError(
                f"checkpoint components have shape {tuple(st['Ft'].shape)}, this run expects "
                f"{(self.mat_info['n_cols'], self.fac.r)}: it belongs to another configuration"
            )
        self.fac.W = st["W"].to(self.settings.torch_dtype).clone()
        self.fac.Ft = st["Ft"][b.lo : b.hi].to(self.settings.torch_dtype).clone()
        self.records = _torch_to_numpy(copy.deepcopy(st["records"]))

    # --- result ---------------------------------------------------------------------------------
    def on_train_end(self) -> None:
        full_t = self._full_components_t()  # collectives: every rank takes part
        self.records["final_loss"] = self.fac.loss()
        self._check_finite(self.records["final_loss"], self.plan[-1][0], self.current_epoch)
        if self.global_rank == 0:
            save_decomposition(self.result(full_t), self.output_path)
        self.trainer.strategy.barrier("npeff-decomposition-written")

    def _losses(self) -> dict[str, np.ndarray]:
        """Logged losses per phase; LRM files always carry the reference's G_only and joint."""
        rec = self.records["losses"]
        names = [p for p, _ in self.plan]
        if self.settings.kind == "lrm":
            names = ["G_only", *[p for p in names if p not in ("G_only", "joint")], "joint"]
        return {p: np.asarray(rec.get(p, []), dtype=np.float32) for p in names}

    def result(self, full_t: torch.Tensor | None = None) -> Decomposition:
        if full_t is None:
            full_t = self._full_components_t()
        s, info = self.settings, self.mat_info
        W = self.fac.W.double().numpy()
        comps = full_t.T.double().numpy()
        if s.normalize_components or s.h_threshold is not None or s.h_keep_fraction is not None:
            W, comps = normalize_components(W, comps, kind=s.kind)
        H = G = None
        if s.kind == "lrm":
            G = comps.astype(np.float32)
        elif s.h_threshold is not None or s.h_keep_fraction is not None:
            H = sparsify_h(comps, threshold=s.h_threshold, keep_fraction=s.h_keep_fraction)
        else:
            H = comps.astype(np.float32)
        conv = self.records.get("convergence", {})
        convergence = {}
        if conv.get("steps"):
            convergence["steps"] = np.asarray(conv["steps"], dtype=np.int64)
            convergence["cosine"] = np.stack(conv["cosine"]).astype(np.float32)
        if conv.get("snapshots"):
            convergence["snapshot_steps"] = np.asarray(conv["snapshot_steps"], dtype=np.int64)
            convergence["snapshots"] = np.stack(conv["snapshots"]).astype(np.float32)
        meta = dict(self.metadata)
        meta.setdefault("seed", s.seed)
        meta["n_frozen_components"] = self.fac.n_frozen
        meta["seconds"] = self.records.get("seconds", 0.0)
        meta["n_steps"] = self.records.get("stopped_at", self.total_steps)
        meta["final_loss"] = self.records.get("final_loss")
        meta["T_constant" if s.kind == "lrm" else "A_sq_norm"] = float(self.fac.const)
        return Decomposition(
            kind=s.kind,
            W=W.astype(np.float32),
            new_to_old_col_indices=info["new_to_old_col_indices"],
            n_parameters=info["n_parameters"],
            n_classes=info["n_classes"],
            G=G,
            H=H,
            losses=self._losses(),
            log_loss_frequency=int(s.log_every),
            convergence=convergence,
            layout=info["layout"],
            metadata=meta,
        )


def _numpy_to_torch(obj):
    """Checkpoints load with ``weights_only=True``: store arrays as tensors (tagged)."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj))}
    if isinstance(obj, dict):
        return {k: _numpy_to_torch(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_numpy_to_torch(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _torch_to_numpy(obj):
    if isinstance(obj, dict):
        if set(obj) == {"__ndarray__"}:
            return obj["__ndarray__"].numpy()
        return {k: _torch_to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_torch_to_numpy(v) for v in obj]
    return obj
