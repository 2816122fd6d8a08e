"""Stage ``npeff``: the whole pipeline in one run directory.

train (cached by config) → PEFs on the ``fit`` split → NPEFF decomposition → PEFs on the ``eval``
split → coefficients on ``eval`` (G frozen) → perturbations → report. With ``flawed.enabled`` (the
``flawed_heuristics`` experiment, paper §3.5) the fit-split PEFs are filtered to incorrect
predictions and new components are learned on them with the first decomposition's frozen.

Each stage is the stage module's own ``run(cfg, output_dir)`` on its own primary config
(``conf/<stage>.yaml``), composed and overlaid with the pipeline's config groups (``model``,
``task``, ``trainer``, ``logger``, ``fisher``, ``decomp``, ``perturb``) and with the
pipeline's per-stage section ``stages.<stage>``; each writes into ``<run dir>/<step>/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from npeff.artifacts.atomic import atomic_path, write_json_atomic
from npeff.run import common
from npeff.run.common import CONFIG_PATH, write_metrics

log = logging.getLogger(__name__)

# Config groups (and settings) the pipeline shares with every stage config that has them.
SHARED_GROUPS = (
    "model",
    "task",
    "trainer",
    "logger",
    "fisher",
    "decomp",
    "perturb",
    "paths",
    "progress",
)
# Keys of the pipeline config that belong to the pipeline itself, never to the train stage.
PIPELINE_ONLY = (
    "stage",
    "stages",
    "cache_dir",
    "flawed",
    "recovery",
    "shortcut_fix",
    "hydra",
    "baselines",
    "group_analysis",
    "tracr_compile",
    "tracr_check",
    "coar_compare",
)


# --- composing stage configs ------------------------------------------------------------------
def compose_stage_config(name: str, overrides: list[str] | None = None) -> DictConfig:
    """``conf/<name>.yaml`` composed with ``overrides`` (inside or outside a Hydra app)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name=name, overrides=overrides or [])
    with initialize_config_dir(CONFIG_PATH, version_base="1.3"):
        return compose(config_name=name, overrides=overrides or [])


def stage_config(
    pipe: DictConfig, name: str, section: str | None = None, **settings: Any
) -> DictConfig:
    """The config of stage ``name``: its own primary config with the pipeline's shared groups in
    place of its own, then the pipeline section ``stages.<section or name>``, then ``settings``."""
    cfg = compose_stage_config(name, _same_choices(pipe) if name == "train" else None)
    OmegaConf.set_struct(cfg, False)
    for key in SHARED_GROUPS:
        if key in cfg and pipe.get(key) is not None:
            cfg[key] = pipe[key]
    if name == "train":  # the pipeline root holds the training recipe (task files set it)
        for key in pipe:
            if key not in PIPELINE_ONLY and key in cfg and key not in SHARED_GROUPS:
                top = pipe[key]
                cfg[key] = OmegaConf.merge(cfg[key], top) if OmegaConf.is_dict(top) else top
    extra = (pipe.get("stages") or {}).get(section or name)
    if extra:
        cfg = OmegaConf.merge(cfg, extra)
    if settings:
        cfg = OmegaConf.merge(cfg, OmegaConf.create(settings))
    return cfg


def _same_choices(pipe: DictConfig) -> list[str]:
    """Overrides that select the pipeline's task and model files, so the training recipe a task
    file sets globally (optimiser, batch size, epochs) is that task's and no other's."""
    out = []
    for group in ("model", "task"):
        name = (pipe.get(group) or {}).get("name")
        if name and (Path(CONFIG_PATH) / group / f"{name}.yaml").is_file():
            out.append(f"{group}={name}")
    return out


# --- the training cache -----------------------------------------------------------------------
CACHE_IGNORED = ("logger", "paths", "progress", "hydra", "stage", "enable_model_summary")


def train_cache_key(train_cfg: DictConfig) -> str:
    """A hash of everything that determines the trained model (not logging or paths)."""
    d = OmegaConf.to_container(train_cfg, resolve=True)
    for key in CACHE_IGNORED:
        d.pop(key, None)
    if isinstance(d.get("trainer"), dict):
        d["trainer"].pop("enable_model_summary", None)
    text = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_train(train_cfg: DictConfig, step_dir: Path, cache_root: Path) -> tuple[Path, dict]:
    """Train, or reuse the checkpoint of an identical earlier training run.

    Returns the checkpoint path and the training metrics (with ``cached`` set).
    """
    from npeff.run import train

    cache_dir = cache_root / "train" / train_cache_key(train_cfg)
    ckpt, metrics_path = cache_dir / "model.ckpt", cache_dir / "metrics.json"
    if ckpt.is_file() and metrics_path.is_file():
        log.info("reusing the trained model cached at %s", cache_dir)
        metrics = json.loads(metrics_path.read_text()) | {"cached": True, "checkpoint": str(ckpt)}
        common.on_rank_zero(write_metrics, step_dir, metrics)
        return ckpt, metrics
    metrics = dict(train.run(train_cfg, step_dir))  # every rank trains (DDP); rank 0 saved it
    common.on_rank_zero(_fill_cache, step_dir, cache_dir, metrics)
    return step_dir / "model.ckpt", metrics | {"cached": False}


def _fill_cache(step_dir: Path, cache_dir: Path, metrics: dict) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache_dir / "model.ckpt") as tmp:
        shutil.copyfile(step_dir / "model.ckpt", tmp)
    write_json_atomic(cache_dir / "metrics.json", metrics)


# --- running ------------------------------------------------------------------------------------
class StageTimer:
    """Runs the stages in order, timing each and keeping its metrics. Started as several
    processes (torchrun, srun, ``strategy=ddp``) every rank runs the Lightning stages together;
    ``single`` steps run on global rank 0 only while the others wait."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.seconds: dict[str, float] = {}
        self.metrics: dict[str, dict] = {}

    def __call__(self, step: str, fn, *args, single: bool = False) -> dict:
        log.info("── npeff: %s ──", step)
        t0 = time.perf_counter()
        out = common.on_rank_zero(fn, *args) if single else fn(*args)
        self.seconds[step] = round(time.perf_counter() - t0, 3)
        self.metrics[step] = out if isinstance(out, dict) else {}
        return out

    def dir(self, step: str) -> Path:
        d = self.run_dir / step
        d.mkdir(parents=True, exist_ok=True)
        return d


def run(cfg: DictConfig, output_dir: Path) -> dict:
    """Run the whole pipeline into ``output_dir``; returns the headline metrics (also written to
    ``output_dir/metrics.json``)."""
    from npeff.run import decompose, fit, pefs, perturb, report

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    kind = str(cfg.decomp.kind)
    if (kind == "diag") != (str(cfg.fisher.kind) == "diag"):
        raise ValueError(
            f"fisher={cfg.fisher.kind} PEFs do not match decomp={kind}: use fisher=diag with "
            "decomp=d_npeff and fisher=lrm (or lvrm) with decomp=lrm_npeff"
        )
    baselines = _baseline_names(cfg)
    shortcut_fix = bool((cfg.get("shortcut_fix") or {}).get("enabled", False))
    if shortcut_fix and not (cfg.flawed.enabled and kind == "lrm"):
        raise ValueError(
            "shortcut_fix.enabled needs the flawed-heuristic expansion on an LRM decomposition: "
            "set flawed.enabled=true with fisher=lrm decomp=lrm_npeff (experiment=shortcut_fix)"
        )
    if _projected(cfg) and cfg.flawed.enabled:
        raise ValueError(
            "flawed.enabled expands a decomposition with more components of the same PEFs; it "
            "does not work on projected PEFs: use fisher.compression=topk"
        )
    stages = StageTimer(output_dir)
    tracr = str(cfg.model.get("name")) == "tracr"
    if tracr:  # a compiled model: export it first when model.path does not exist yet
        from npeff.tracr import check as tracr_check

        stages("tracr_compile", tracr_check.ensure_model, cfg, single=True)

    # one W&B run per job: stages attach to it, their finish_tracking waits for the job's end
    with common.pipeline_tracking(cfg, output_dir):
        train_cfg = stage_config(cfg, "train")
        ckpt, train_metrics = stages(
            "train", cached_train, train_cfg, stages.dir("train"), Path(str(cfg.cache_dir))
        )

        fit_pefs_cfg = stage_config(
            cfg,
            "pefs",
            "pefs_fit",
            split="fit",
            inputs={"checkpoint": str(ckpt)},
            **({"fisher": {"dataset_fisher": True}} if kind == "diag" else {}),
        )
        stages("pefs_fit", pefs.run, fit_pefs_cfg, stages.dir("pefs_fit"))
        fit_pefs = stages.dir("pefs_fit") / "pefs.h5"

        dec_cfg = stage_config(cfg, "decompose", inputs={"pefs": str(fit_pefs)})
        stages("decompose", decompose.run, dec_cfg, stages.dir("decompose"))
        decomposition = stages.dir("decompose") / "decomposition.h5"

        projected = _projected(cfg)
        if projected:  # the components come back to parameter space for every later stage
            decomposition = _recover_parameter_space(cfg, stages, ckpt, fit_pefs, decomposition)

        if cfg.flawed.enabled:
            decomposition = _flawed_expansion(cfg, stages, fit_pefs, decomposition)

        eval_pefs_cfg = stage_config(
            cfg,
            "pefs",
            "pefs_eval",
            split="eval",
            inputs={"checkpoint": str(ckpt)},
            **({"fisher": {"compression": "topk"}} if projected else {}),
        )
        stages("pefs_eval", pefs.run, eval_pefs_cfg, stages.dir("pefs_eval"))
        eval_pefs = stages.dir("pefs_eval") / "pefs.h5"

        fit_cfg = stage_config(
            cfg, "fit", inputs={"pefs": str(eval_pefs), "decomposition": str(decomposition)}
        )
        stages("fit", fit.run, fit_cfg, stages.dir("fit"), single=True)
        coeffs = stages.dir("fit") / "coeffs.h5"

        perturb_inputs = {"checkpoint": str(ckpt), "coeffs": str(coeffs), "pefs": str(eval_pefs)}
        if kind == "diag":
            perturb_inputs["dataset_fisher"] = str(stages.dir("pefs_fit") / "dsf.h5")
        perturb_cfg = stage_config(cfg, "perturb", inputs=perturb_inputs, split="eval")
        if cfg.flawed.enabled:
            perturb_cfg = OmegaConf.merge(perturb_cfg, _flawed_perturb_settings(cfg))
        stages("perturb", perturb.run, perturb_cfg, stages.dir("perturb"), single=True)
        perturbation = stages.dir("perturb") / "perturbation.h5"

        comparison = _run_baselines(cfg, stages, baselines, ckpt, coeffs) if baselines else None

        sections = []
        if (cfg.get("group_analysis") or {}).get("enabled"):  # npeff-groups on the trained model
            from npeff.run import groups

            groups_inputs = {"zoo": str(ckpt), "decomposition": str(decomposition)}
            groups_inputs |= {"coeffs": str(coeffs), "pefs": str(eval_pefs)}
            groups_cfg = stage_config(cfg, "groups", inputs=groups_inputs, split="eval")
            stages("groups", groups.run, groups_cfg, stages.dir("groups"), single=True)
            sections.append(str(stages.dir("groups") / "group_section.html"))
        if (cfg.get("coar_compare") or {}).get("enabled"):  # COAR on the same model vs NPEFF
            sections.append(
                str(
                    _coar_compare(cfg, stages, ckpt, eval_pefs_cfg, coeffs, eval_pefs, perturbation)
                )
            )
        if shortcut_fix:  # paper §3.5 on a planted shortcut, NPEFF next to Coar-Edit
            from npeff.run import shortcut

            sc_cfg = stage_config(
                cfg,
                "shortcut",
                inputs={
                    "checkpoint": str(ckpt),
                    "decomposition": str(decomposition),
                    "coeffs": str(coeffs),
                    "pefs": str(eval_pefs),
                },
                shortcut_fix=OmegaConf.to_container(cfg.shortcut_fix, resolve=True)
                | {"expansion_components": list(range(int(cfg.flawed.n_new_components)))},
            )
            stages("shortcut", shortcut.run, sc_cfg, stages.dir("shortcut"), single=True)
            sections.append(str(stages.dir("shortcut") / "section.html"))

        report_inputs = {
            "checkpoint": str(ckpt),
            "decomposition": str(decomposition),
            "coeffs": str(coeffs),
            "pefs": str(eval_pefs),
            "perturbation": str(perturbation),
            **({"comparison": str(comparison)} if comparison else {}),
            "sections": sections,
        }
        if tracr:  # ground-truth checks; their tables go into the report
            extra = _tracr_extra_decompositions(cfg, stages, fit_pefs, eval_pefs)
            check_dir = stages.dir("tracr_check")
            stages(
                "tracr_check",
                tracr_check.run,
                cfg,
                check_dir,
                ckpt,
                decomposition,
                coeffs,
                "eval",
                extra,
                single=True,
            )
            report_inputs["tables"] = str(check_dir / "tracr_check.json")
        report_cfg = stage_config(cfg, "report", split="eval", inputs=report_inputs)
        stages("report", report.run, report_cfg, stages.dir("report"), single=True)

    if not common.is_global_zero():
        return {}  # rank 0 writes the job's metrics.json and summary
    metrics = headline_metrics(stages, train_metrics)
    metrics["seconds"]["total"] = round(time.perf_counter() - t_start, 3)
    metrics["report"] = str(stages.dir("report") / "report.html")
    write_metrics(output_dir, metrics)
    print_summary(metrics, output_dir)
    return metrics


def _projected(cfg: DictConfig) -> bool:
    return str((cfg.get("fisher") or {}).get("compression") or "topk") == "projection"


def _recover_parameter_space(
    cfg: DictConfig, stages: StageTimer, ckpt: Path, fit_pefs: Path, projected_dec: Path
) -> Path:
    """``fisher.compression=projection``: the decomposition of the projected fit PEFs, brought
    back to parameter space (``npeff.fisher.projection.components_to_parameter_space``, method
    ``recovery.method``: a G-only fit with W fixed on top-K PEFs of the same fit examples, which
    this step computes, or sparse recovery) as an ordinary decomposition file that the fit,
    perturbation and report stages read. Returns that file's path."""
    from npeff.run import pefs

    rec = cfg.get("recovery") or {}
    # top-K PEFs of the same fit examples: the values the fit needs, the layout both methods need
    topk_cfg = stage_config(
        cfg,
        "pefs",
        "pefs_fit",
        split="fit",
        inputs={"checkpoint": str(ckpt)},
        fisher={"compression": "topk"},
    )
    stages("pefs_fit_topk", pefs.run, topk_cfg, stages.dir("pefs_fit_topk"))
    topk_pefs = stages.dir("pefs_fit_topk") / "pefs.h5"
    out = stages.dir("recover") / "decomposition.h5"

    def recover() -> dict:
        from npeff.artifacts.decomposition import load_decomposition, save_decomposition
        from npeff.artifacts.pefs import load_pefs, read_pefs_header
        from npeff.fisher.projection import SparseProjection, components_to_parameter_space

        proj = SparseProjection.from_settings(read_pefs_header(fit_pefs)["meta"]["compression"])
        back = components_to_parameter_space(
            load_decomposition(projected_dec),
            load_pefs(topk_pefs),
            proj,
            method=str(rec.get("method", "fit")),
            sparsity=rec.get("sparsity"),
            n_iters=int(rec.get("n_iters", 300)),
        )
        save_decomposition(back, out)
        return {"recovery": dict(back.metadata["recovery"])}

    stages("recover", recover, single=True)
    return out


def _tracr_extra_decompositions(
    cfg: DictConfig, stages: StageTimer, fit_pefs: Path, eval_pefs: Path
) -> dict[int, tuple[Path, Path]]:
    """``tracr_check.extra_n_components``: more decompositions of the same fit PEFs (e.g. the
    paper's 128 next to 32), each with eval coefficients, for the tracr check's concept statistic
    and layer check. Returns ``{n_components: (decomposition.h5, coeffs.h5)}``."""
    from npeff.run import decompose, fit

    out = {}
    for r in (cfg.get("tracr_check") or {}).get("extra_n_components") or []:
        r = int(r)
        if r == int(cfg.decomp.n_components):
            continue
        dec_cfg = stage_config(
            cfg, "decompose", inputs={"pefs": str(fit_pefs)}, decomp={"n_components": r}
        )
        stages(f"decompose_{r}", decompose.run, dec_cfg, stages.dir(f"decompose_{r}"))
        dec = stages.dir(f"decompose_{r}") / "decomposition.h5"
        fit_cfg = stage_config(
            cfg, "fit", inputs={"pefs": str(eval_pefs), "decomposition": str(dec)}
        )
        stages(f"fit_{r}", fit.run, fit_cfg, stages.dir(f"fit_{r}"), single=True)
        out[r] = (dec, stages.dir(f"fit_{r}") / "coeffs.h5")
    return out


def _flawed_expansion(cfg: DictConfig, stages: StageTimer, fit_pefs: Path, base: Path) -> Path:
    """Paper §3.5: learn new components on the incorrectly predicted fit-split examples, the base
    decomposition's components frozen. Returns the expanded decomposition's path."""
    from npeff.artifacts.pefs import load_pefs
    from npeff.run import decompose, filter_pefs

    filt_cfg = stage_config(
        cfg, "filter_pefs", inputs={"pefs": str(fit_pefs)}, filter={"incorrect_only": True}
    )
    stages(
        "filter_incorrect", filter_pefs.run, filt_cfg, stages.dir("filter_incorrect"), single=True
    )
    incorrect = stages.dir("filter_incorrect") / "pefs.h5"
    n_incorrect = load_pefs(incorrect).n_examples
    if n_incorrect < int(cfg.flawed.n_new_components):
        raise ValueError(
            f"the model predicts only {n_incorrect} fit-split examples incorrectly, fewer than "
            f"flawed.n_new_components={cfg.flawed.n_new_components}: use a harder task (e.g. "
            "task.drop_with_conflict=0.3), more fit examples (task.n_fit) or fewer new components"
        )
    exp_cfg = stage_config(
        cfg,
        "decompose",
        "expand",
        inputs={"pefs": str(incorrect)},
        decomp={"expand_from": str(base), "n_components": int(cfg.flawed.n_new_components)},
    )
    stages("expand", decompose.run, exp_cfg, stages.dir("expand"))
    return stages.dir("expand") / "decomposition.h5"


def _flawed_perturb_settings(cfg: DictConfig) -> DictConfig:
    return OmegaConf.create(
        {
            "perturb": {
                "select": "flawed",
                "magnitude": float(cfg.flawed.magnitude),
                "flawed": {"expansion_components": list(range(int(cfg.flawed.n_new_components)))},
            }
        }
    )


# --- NPEFF vs COAR ------------------------------------------------------------------------------
def _coar_compare(
    cfg: DictConfig,
    stages: StageTimer,
    ckpt: Path,
    eval_pefs_cfg: DictConfig,
    coeffs: Path,
    eval_pefs: Path,
    perturbation: Path,
) -> Path:
    """``npeff-coar`` on the trained model's eval examples (step ``coar``, settings from
    ``stages.coar``), then ``npeff-compare-coar`` (step ``compare_coar``). Returns the section."""
    from npeff.run import coar, compare_coar

    coar_settings = {"split": "eval"}
    if ((cfg.stages.get("coar") or {}).get("coar") or {}).get("n_examples") is None:
        coar_settings["n_examples"] = eval_pefs_cfg.get("n_examples")
    coar_cfg = stage_config(cfg, "coar", inputs={"checkpoint": str(ckpt)}, coar=coar_settings)
    stages("coar", coar.run, coar_cfg, stages.dir("coar"))
    cmp_inputs = {
        "checkpoint": str(ckpt),
        "coeffs": str(coeffs),
        "pefs": str(eval_pefs),
        "perturbation": str(perturbation),
        "attributions": str(stages.dir("coar") / coar.ATTRIBUTIONS_NAME),
    }
    if str(cfg.decomp.kind) == "diag":
        cmp_inputs["dataset_fisher"] = str(stages.dir("pefs_fit") / "dsf.h5")
    cmp_cfg = stage_config(cfg, "compare_coar", inputs=cmp_inputs, split="eval")
    step = stages.dir("compare_coar")
    stages("compare_coar", compare_coar.run, cmp_cfg, step, single=True)
    return step / compare_coar.SECTION_NAME


# --- baselines ----------------------------------------------------------------------------------
def _baseline_names(cfg: DictConfig) -> list[str]:
    """The configured ``baselines=[...]``, checked before any work."""
    from npeff.baselines import BASELINES

    names = [str(b) for b in (cfg.get("baselines") or [])]
    unknown = [b for b in names if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {list(BASELINES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"baselines={names} lists a baseline twice")
    return names


def _baseline_config(cfg: DictConfig, ckpt: Path, **settings: Any) -> DictConfig:
    """conf/baseline.yaml for this pipeline: the NPEFF run's checkpoint, example counts, component
    count, parameters and K; then ``stages.baseline`` and ``stages.baseline_<name>``."""
    pefs_fit, pefs_eval = (
        stage_config(cfg, "pefs", "pefs_fit"),
        stage_config(cfg, "pefs", "pefs_eval"),
    )
    params = pefs_fit.get("params") or {}
    base = {
        "inputs": {"checkpoint": str(ckpt)},
        "seed": int(cfg.get("seed", 0)),
        "n_components": int(cfg.decomp.n_components),
        "n_examples": {"fit": pefs_fit.get("n_examples"), "eval": pefs_eval.get("n_examples")},
        "params": OmegaConf.to_container(params, resolve=True)
        if OmegaConf.is_config(params)
        else {},
        "gradient": {"n_values": int(cfg.fisher.n_values)},
    }
    out = OmegaConf.merge(stage_config(cfg, "baseline", "-"), OmegaConf.create(base))
    name = settings.get("baseline")
    for section in ("baseline", f"baseline_{name}" if name else None):
        extra = (cfg.get("stages") or {}).get(section) if section else None
        if extra:
            out = OmegaConf.merge(out, extra)
    return OmegaConf.merge(out, OmegaConf.create(settings)) if settings else out


def _run_baselines(
    cfg: DictConfig, stages: StageTimer, names: list[str], ckpt: Path, coeffs: Path
) -> Path:
    """Each baseline in its own step dir (activations captured once), then the comparison step.
    Returns the path of ``comparison.json``."""
    from npeff.run import baseline

    acts: dict[str, str] = {}
    base_cfg = _baseline_config(cfg, ckpt)
    if any(n != "gradient_kmeans" for n in names):
        step = stages.dir("baseline_activations")

        def capture() -> dict:
            return {
                f"activations_{s}": str(p)
                for s, p in baseline.capture_splits(base_cfg, step).items()
            }

        acts = stages("baseline_activations", capture)
    files = {}
    for name in names:
        bcfg = _baseline_config(cfg, ckpt, baseline=name, inputs=acts)
        stages(f"baseline_{name}", baseline.run, bcfg, stages.dir(f"baseline_{name}"))
        files[name] = stages.dir(f"baseline_{name}") / "baseline.h5"
    pert = stages.metrics.get("perturb", {})
    step = stages.dir("comparison")
    stages(
        "comparison",
        lambda: baseline.run_comparison(
            base_cfg, step, npeff_coeffs=coeffs, baselines=files, selectivity=pert
        ),
    )
    return step / "comparison.json"


# --- summary ----------------------------------------------------------------------------------
def headline_metrics(stages: StageTimer, train_metrics: dict) -> dict:
    m = stages.metrics
    dec, rep, pert = m.get("decompose", {}), m.get("report", {}), m.get("perturb", {})
    out = {
        "model_accuracy": train_metrics.get("eval_accuracy"),
        "n_components": _first((rep, "n_components"), (dec, "n_components")),
        "final_loss": _first((m.get("expand", {}), "final_loss"), (dec, "final_loss")),
        "kl_ratio_median": _first((pert, "kl_ratio_median"), (rep, "median_kl_ratio")),
        "pef_norm_ratio_median": _first(
            (pert, "pef_norm_ratio_median"), (rep, "median_pef_norm_ratio")
        ),
        "frac_kl_ratio_above_norm_ratio": _first(
            (pert, "frac_kl_ratio_above_norm_ratio"), (rep, "frac_kl_ratio_above_norm_ratio")
        ),
        "concept_top_k": rep.get("concept_top_k"),
        "concept_components": rep.get("concept_n_all_share"),
        "concept_components_shuffled": rep.get("concept_shuffled_n_all_share_mean"),
        "concept_components_within_label_shuffled": rep.get(
            "concept_within_label_shuffled_n_all_share_mean"
        ),
        "concept_small_top_k": rep.get("concept_small_top_k"),
        "concept_components_small_k": rep.get("concept_small_n_all_share"),
        "concept_components_small_k_shuffled": rep.get("concept_small_shuffled_n_all_share_mean"),
        "train_cached": bool(train_metrics.get("cached", False)),
        "seconds": dict(stages.seconds),
    }
    for key in ("n_flawed_selected", "n_components_raising_accuracy"):
        if key in pert:
            out[key] = pert[key]
    if "methods" in m.get("comparison", {}):
        out["methods"] = m["comparison"]["methods"]
    if "groups" in m:  # the group section (npeff-groups), when group_analysis.enabled
        out["groups"] = {k: v for k, v in m["groups"].items() if k != "section"}
    if m.get("shortcut", {}).get("shortcut") is not None:
        out["shortcut"] = m["shortcut"]["shortcut"]
    cc = m.get("compare_coar", {})
    if cc:  # NPEFF vs COAR (coar_compare.enabled)
        out["coar_compare"] = {
            k: cc.get(k)
            for k in (
                "spearman_coar_mean",
                "spearman_true_mean",
                "spearman_random_mean",
                "jaccard_true_mean",
                "jaccard_random_mean",
                "kl_spearman_true_mean",
                "kl_spearman_random_mean",
                "frac_spearman_true_above_random",
            )
        } | {"corr_heldout_mean": m.get("coar", {}).get("corr_heldout_mean")}
    tracr = m.get("tracr_check", {})
    for key in ("tracr_port_max_abs_err", "tracr_rasp_agreement", "mean_p_label", "temperature"):
        if key in tracr:
            out[key if key.startswith("tracr") else f"tracr_{key}"] = tracr[key]
    if tracr.get("by_n_components"):
        out["tracr_by_n_components"] = tracr["by_n_components"]
    for key in (
        "layer_unit_share_mean",
        "layer_unit_share_other_variables_mean",
        "layer_block_share_mean",
        "layer_block_share_other_variables_mean",
        "layer_block_param_fraction_mean",
        "layer_n_components_checked",
    ):
        if key in tracr:
            out[f"tracr_{key}"] = tracr[key]
    return out


def _first(*sources: tuple[dict, str]) -> Any:
    """The first value that is not None among ``(metrics, key)`` pairs (0 counts as a value)."""
    for d, key in sources:
        if d.get(key) is not None:
            return d[key]
    return None


def print_summary(metrics: dict, output_dir: Path) -> None:
    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = [
        "",
        "npeff: done",
        f"  report:            {output_dir / 'report' / 'report.html'}",
        f"  metrics:           {output_dir / 'metrics.json'}",
        f"  model accuracy:    {fmt(metrics['model_accuracy'])}",
        f"  components:        {fmt(metrics['n_components'])}   final loss {fmt(metrics['final_loss'])}",
        f"  KL ratio (median): {fmt(metrics['kl_ratio_median'])}   "
        f"PEF-norm ratio (median): {fmt(metrics['pef_norm_ratio_median'])}",
        f"  KL ratio > norm ratio for {fmt(metrics['frac_kl_ratio_above_norm_ratio'])} of components",
    ]
    if metrics.get("concept_components") is not None:
        lines.append(
            f"  components whose top examples share a concept: {fmt(metrics['concept_components'])}"
            f" (top {fmt(metrics.get('concept_top_k'))}; shuffled control "
            f"{fmt(metrics['concept_components_shuffled'])})"
        )
    if metrics.get("concept_components_small_k") is not None:
        lines.append(
            f"  ... with the top {fmt(metrics['concept_small_top_k'])}:"
            f" {fmt(metrics['concept_components_small_k'])}"
            f" (shuffled control {fmt(metrics['concept_components_small_k_shuffled'])})"
        )
    for name, row in (metrics.get("methods") or {}).items():
        lines.append(
            f"  {name:>16}: concept components {fmt(row.get('concept_components'))} "
            f"(shuffled {fmt(row.get('concept_components_shuffled'))}), TCAV-significant "
            f"{fmt(row.get('tcav_significant_share'))}"
            + (
                f", avg max cos vs NPEFF {fmt(row['avg_max_cos_vs_npeff'])} / "
                f"{fmt(row['avg_max_cos_npeff_vs'])}"
                if "avg_max_cos_vs_npeff" in row
                else ""
            )
        )
    if metrics.get("groups"):
        gm = metrics["groups"]
        lines.append(
            f"  group: bound {fmt(gm.get('mean_bound'))} vs accuracy "
            f"{fmt(gm.get('mean_brute_force_accuracy'))}; component irrep purity "
            f"{fmt(gm.get('component_irrep_purity'))} (shuffled "
            f"{fmt(gm.get('component_irrep_purity_shuffled'))}), coset purity "
            f"{fmt(gm.get('component_coset_purity'))} (shuffled "
            f"{fmt(gm.get('component_coset_purity_shuffled'))})"
        )
    sc = metrics.get("shortcut")
    if sc is not None:
        lines.append(
            f"  shortcut: cue-conflicting eval acc {fmt(sc['conflict_acc_before'])} (rest "
            f"{fmt(sc['other_acc_before'])}); NPEFF edit {fmt(sc['npeff']['conflict_acc_after'])} "
            f"(rest {fmt(sc['npeff']['other_acc_after'])}); Coar-Edit "
            f"{fmt(sc['coar']['conflict_acc_after'])} (rest {fmt(sc['coar']['other_acc_after'])})"
        )
    cc = metrics.get("coar_compare")
    if cc:
        lines.append(
            f"  NPEFF vs COAR: Spearman coef~|ablating S_j| {fmt(cc['spearman_true_mean'])} "
            f"(COAR-predicted {fmt(cc['spearman_coar_mean'])}, random sets "
            f"{fmt(cc['spearman_random_mean'])}); KL~|effect| {fmt(cc['kl_spearman_true_mean'])}"
        )
    for r, d in (metrics.get("tracr_by_n_components") or {}).items():
        lines.append(
            f"  tracr, {r} components: {d['concept_components']}/{r} share a concept in their top"
            f" {d['concept_top_k']} (shuffled {fmt(d['concept_components_shuffled'])}, within-label"
            f" {fmt(d['concept_components_within_label_shuffled'])}; paper {d.get('paper') or '-'});"
            f" with False values {d['concept_components_true_or_false']}/{r} (shuffled"
            f" {fmt(d['concept_components_true_or_false_shuffled'])});"
            f" layer unit share {fmt(d.get('layer_unit_share_mean'))} (other variables"
            f" {fmt(d.get('layer_unit_share_other_variables_mean'))})"
        )
    lines.append(f"  seconds:           {fmt(metrics['seconds'].get('total'))}")
    print("\n".join(lines), flush=True)


main = common.stage_main("pipeline", run)


if __name__ == "__main__":
    main()
