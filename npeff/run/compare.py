"""Stage ``npeff-compare``: match components across runs by their coefficient vectors (paper §3.3).

    npeff-compare RUN_A RUN_B [RUN_C ...] [overrides]
    npeff-compare multirun/2026-01-01/12-00-00            # every job of a sweep
    npeff-compare runs=[a/decomposition.h5,b/coeffs.h5]   # the same, as a Hydra override

A run is a ``decomposition.h5`` / ``coeffs.h5`` file, a run directory holding one, or a sweep
(multirun) directory whose job subdirectories each hold one. All runs must cover the same examples
in the same order (e.g. decompositions of one PEF file, or coefficients fitted with npeff-fit on
one PEF file). For every pair: the average max cosine similarity of coefficient vectors in both
directions and, when the component counts differ, which components of the larger run split each
component of the smaller one. Writes ``compare.json``, one heatmap PNG per pair
(``heatmap_<a>_<b>.png``), ``avg_max_cosine.png`` for three or more runs, and ``metrics.json``.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from npeff.analysis.matching import match_runs, shuffled_average_max_cosine
from npeff.artifacts.atomic import atomic_path, write_json_atomic
from npeff.errors import NpeffFileNotFoundError, NpeffUserError
from npeff.report import figures
from npeff.run.common import stage_main, write_metrics

log = logging.getLogger(__name__)

FILE_NAMES = {"decomposition": "decomposition.h5", "coeffs": "coeffs.h5"}


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _job_label(job_dir: Path, fallback: str) -> str:
    """A sweep job's overrides (from ``.hydra/overrides.yaml``) as its label, else ``fallback``."""
    ov = job_dir / ".hydra" / "overrides.yaml"
    if ov.exists():
        try:
            items = OmegaConf.to_container(OmegaConf.load(ov))
            items = [str(x) for x in items if not str(x).startswith(("runs=", "hydra."))]
            if items:
                return " ".join(items)
        except Exception:  # noqa: BLE001 - a label is cosmetic; fall back to the directory name
            pass
    return fallback


# Where an `npeff` pipeline job keeps each file (its step subdirectories).
PIPELINE_STEP_DIRS = {"decomposition.h5": ("expand", "decompose"), "coeffs.h5": ("fit",)}


def _file_in(directory: Path, prefer: str) -> Path | None:
    order = [FILE_NAMES[prefer]] + [f for k, f in FILE_NAMES.items() if k != prefer]
    for name in order:
        if (directory / name).is_file():
            return directory / name
    for name in order:  # a pipeline job dir
        for step in PIPELINE_STEP_DIRS.get(name, ()):
            if (directory / step / name).is_file():
                return directory / step / name
    return None


def resolve_runs(entries: list[str], prefer: str = "decomposition") -> list[tuple[str, Path]]:
    """Expand run entries into (label, file) pairs; sweep directories give one pair per job."""
    if prefer not in FILE_NAMES:
        raise NpeffUserError(f"prefer must be one of {sorted(FILE_NAMES)}, got {prefer!r}")
    runs: list[tuple[str, Path]] = []
    for entry in entries:
        path = Path(str(entry)).expanduser().resolve()
        if path.is_file():
            runs.append((f"{path.parent.name}/{path.name}", path))
            continue
        if not path.is_dir():
            raise NpeffFileNotFoundError(f"run {entry!r} is neither a file nor a directory")
        found = _file_in(path, prefer)
        if found is not None:
            runs.append((_job_label(path, path.name), found))
            continue
        jobs = []
        for sub in sorted((p for p in path.iterdir() if p.is_dir()), key=_natural_key):
            f = _file_in(sub, prefer)
            if f is not None:
                jobs.append((_job_label(sub, f"{path.name}/{sub.name}"), f))
        if not jobs:
            raise NpeffFileNotFoundError(
                f"no decomposition.h5 or coeffs.h5 in {path} or its job subdirectories; "
                "pass a decompose/fit run directory, a sweep directory or the .h5 files themselves"
            )
        runs.extend(jobs)
    labels = [lab for lab, _ in runs]
    if len(set(labels)) != len(labels):  # make labels unique
        runs = [(f"{i}:{lab}", f) for i, (lab, f) in enumerate(runs)]
    return runs


def load_coefficients(path: Path) -> np.ndarray:
    """W [n, r] of a decomposition or coefficient file."""
    from npeff.artifacts.decomposition import load_decomposition

    return np.asarray(load_decomposition(path).W)


def compare_coefficients(
    named: list[tuple[str, np.ndarray]], null_shuffles: int = 5, seed: int = 0
) -> dict[str, Any]:
    """Pairwise matching of several runs' W matrices; the JSON-ready result.

    ``null_shuffles`` > 0 adds, per pair, the same metric with one run's examples permuted
    (``null_avg_max_cos_*``): the value unrelated runs of the same sparsity would get.
    """
    if len(named) < 2:
        raise NpeffUserError(f"npeff-compare needs at least two runs, got {len(named)}")
    n = {lab: W.shape[0] for lab, W in named}
    if len(set(n.values())) != 1:
        raise NpeffUserError(
            f"the runs cover different numbers of examples {n}; compare runs over the same examples "
            "(decompositions of one PEF file, or coefficient files from npeff-fit on one PEF file)"
        )
    k = len(named)
    matrix = np.eye(k)
    pairs = []
    for i, j in combinations(range(k), 2):
        res = match_runs(named[i][1], named[j][1])
        matrix[i, j], matrix[j, i] = res.a_to_b, res.b_to_a
        d = res.to_dict()
        d.update(a=named[i][0], b=named[j][0], index_a=i, index_b=j)
        if null_shuffles > 0:
            n_a2b, n_b2a = shuffled_average_max_cosine(
                named[i][1], named[j][1], null_shuffles, seed
            )
            d.update(null_avg_max_cos_a_to_b=n_a2b, null_avg_max_cos_b_to_a=n_b2a)
        d["_match"] = res  # removed before writing
        pairs.append(d)
    return {
        "runs": [
            {"label": lab, "n_examples": int(W.shape[0]), "n_components": int(W.shape[1])}
            for lab, W in named
        ],
        "avg_max_cosine_matrix": matrix.tolist(),
        "pairs": pairs,
    }


def _heatmap(match, label_a: str, label_b: str) -> bytes:
    cos = match.cosine
    rows = cols = None
    if match.smaller == "a":  # columns (larger run b) grouped by the a component they split
        cols = np.argsort(match.best_a_for_b, kind="stable")
    elif match.smaller == "b":
        rows = np.argsort(match.best_b_for_a, kind="stable")
    else:
        cols = np.argsort(match.best_a_for_b, kind="stable")
    return figures.cross_run_heatmap(cos, label_a, label_b, row_order=rows, col_order=cols)


def run(cfg: DictConfig, output_dir: Path) -> dict:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    entries = list(cfg.runs) if cfg.get("runs") is not None else []
    if not entries:
        raise NpeffUserError("no runs given: npeff-compare RUN_A RUN_B ... (or runs=[a,b])")
    runs = resolve_runs([str(e) for e in entries], prefer=str(cfg.get("prefer", "decomposition")))
    log.info("comparing %d runs: %s", len(runs), [lab for lab, _ in runs])
    named = [(lab, load_coefficients(path)) for lab, path in runs]
    result = compare_coefficients(named, int(cfg.get("null_shuffles", 5)), int(cfg.get("seed", 0)))
    for r, (_, path) in zip(result["runs"], runs):
        r["path"] = str(path)
    for d in result["pairs"]:
        match = d.pop("_match")
        name = f"heatmap_{d['index_a']}_{d['index_b']}.png"
        with atomic_path(output_dir / name) as tmp:
            tmp.write_bytes(_heatmap(match, d["a"], d["b"]))
        d["heatmap"] = name
    if len(runs) > 2:
        labels = [r["label"] for r in result["runs"]]
        png = figures.similarity_heatmaps(
            [("avg max cosine (row run → column run)", np.asarray(result["avg_max_cosine_matrix"]))]
        )
        with atomic_path(output_dir / "avg_max_cosine.png") as tmp:
            tmp.write_bytes(png)
        result["labels_in_matrix_order"] = labels
    write_json_atomic(output_dir / "compare.json", result)
    metrics = {
        "n_runs": len(runs),
        "pairs": [
            {
                "a": d["a"],
                "b": d["b"],
                "avg_max_cos_a_to_b": d["avg_max_cos_a_to_b"],
                "avg_max_cos_b_to_a": d["avg_max_cos_b_to_a"],
                **{
                    k: d[k]
                    for k in ("null_avg_max_cos_a_to_b", "null_avg_max_cos_b_to_a")
                    if k in d
                },
                **({"n_smaller_with_split": d["n_smaller_with_split"]} if "splits" in d else {}),
            }
            for d in result["pairs"]
        ],
    }
    write_metrics(output_dir, metrics)
    for p in metrics["pairs"]:
        log.info(
            "%s vs %s: avg max cos %.3f / %.3f",
            p["a"],
            p["b"],
            p["avg_max_cos_a_to_b"],
            p["avg_max_cos_b_to_a"],
        )
    return metrics


# Hydra flags that take a value (the value must not be mistaken for a run path).
_FLAGS_WITH_VALUE = {
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--experimental-rerun",
}
_INFO_VALUES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def _quote(path: str) -> str:
    return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"


def translate_argv(argv: list[str]) -> list[str]:
    """Turn positional run paths into one ``runs=[...]`` override; keep everything else for Hydra.

    A token is a run path when it is not a flag (or a flag's value) and either has no ``=`` or
    names an existing file or directory (sweep job directories may contain ``=``).
    """
    out, paths, i = [], [], 0
    while i < len(argv):
        tok = argv[i]
        if tok in _FLAGS_WITH_VALUE and i + 1 < len(argv):
            out += [tok, argv[i + 1]]
            i += 2
            continue
        if tok == "--info" and i + 1 < len(argv) and argv[i + 1] in _INFO_VALUES:
            out += [tok, argv[i + 1]]
            i += 2
            continue
        if not tok.startswith("-") and ("=" not in tok or os.path.exists(tok)):
            paths.append(os.path.abspath(tok))
        else:
            out.append(tok)
        i += 1
    if paths:
        if any(t.startswith("runs=") or t.startswith("+runs=") for t in out):
            raise SystemExit(
                "npeff-compare: give runs either as positional paths or as runs=[...], not both"
            )
        out.append("runs=[" + ",".join(_quote(p) for p in paths) + "]")
    return out


_hydra_main = stage_main("compare", run, single_process=True)


def main() -> None:
    sys.argv = [sys.argv[0]] + translate_argv(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
