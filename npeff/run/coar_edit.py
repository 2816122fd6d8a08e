"""``npeff-coar-edit``: Coar-Edit sweep → ``edit.json``, ``edit_sweep.png``, ``metrics.json``.

    npeff-coar-edit experiment=coar_backdoor
    npeff-coar-edit inputs.attributions=<coar run>/attributions.h5 edit.targets=[3] edit.k_max=20

The attributions come from ``inputs.attributions`` (checked against the model: a checkpoint of
another model is an error) or are computed here first with the ``coar`` settings (in
``<run dir>/coar``). ``metrics.json`` holds, per data set, the accuracy before (k = 0) and at
the chosen k, and the number and share of units ablated.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from npeff.artifacts.atomic import atomic_path, write_json_atomic
from npeff.artifacts.coar_summary import coar_summary_path
from npeff.errors import NpeffUserError
from npeff.run.common import log_stage_metrics, stage_main, write_metrics

log = logging.getLogger(__name__)
EDIT_JSON = "edit.json"
EDIT_PLOT = "edit_sweep.png"


def select_examples(
    spec: Any, records: list[dict], exclude=(), what: str = "examples", base_margins=None
) -> list[int]:
    """Indices from a list, ``{indices}``, ``{record, value, n}``, ``{incorrect: true, n}``
    (misclassified: margin <= 0) or ``{not_targets: true, n}`` (see conf/coar_edit.yaml)."""
    spec = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else spec
    n_all = len(records)
    if isinstance(spec, int):
        spec = [spec]
    if isinstance(spec, list | tuple):
        idx = [int(i) for i in spec]
        bad = [i for i in idx if not 0 <= i < n_all]
        if bad:
            raise NpeffUserError(
                f"{what} indices {bad} are outside the {n_all} attributed examples"
            )
        return idx
    if not isinstance(spec, Mapping):
        raise NpeffUserError(
            f"{what}: expected a list of indices or a selection mapping, got {spec!r}"
        )
    n = spec.get("n")
    excluded = set(int(i) for i in exclude)
    if "indices" in spec:
        return select_examples(list(spec["indices"]), records, what=what)
    if spec.get("incorrect"):
        if base_margins is None:
            raise NpeffUserError(f"{what}: 'incorrect' needs the attributions' base margins")
        idx = [i for i in range(n_all) if base_margins[i] <= 0 and i not in excluded]
    elif spec.get("not_targets"):
        idx = [i for i in range(n_all) if i not in excluded]
    elif "record" in spec:
        key, value = spec["record"], spec.get("value", True)
        if records and key not in records[0]:
            raise NpeffUserError(
                f"{what}: the examples have no record field {key!r}; fields: {sorted(records[0])}"
            )
        idx = [i for i, r in enumerate(records) if _same(r.get(key), value) and i not in excluded]
    else:
        raise NpeffUserError(
            f"{what}: a selection needs 'indices', 'record', 'incorrect' or 'not_targets'; got {spec}"
        )
    if n is not None:
        idx = idx[: int(n)]
    if not idx:
        raise NpeffUserError(f"{what}: the selection {spec} matches no example")
    return idx


def _same(a, b) -> bool:
    try:
        return bool(a == b) if not hasattr(a, "shape") else False
    except Exception:  # noqa: BLE001
        return False


def _data_loader(task, spec: Mapping, batch_size: int):
    """A loader over a split, optionally restricted to records with ``record == value``."""
    from torch.utils.data import DataLoader, Subset

    spec = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else dict(spec)
    split = str(spec.get("split", "eval"))
    loader = task.dataloader(split, batch_size=batch_size)
    if "record" not in spec:
        return loader
    idx = select_examples(
        {"record": spec["record"], "value": spec.get("value", True)},
        task.examples(split),
        what=f"data {spec}",
    )
    return DataLoader(
        Subset(loader.dataset, idx), batch_size=batch_size, collate_fn=loader.collate_fn
    )


def _check_identity(att, loaded) -> None:
    """A checkpoint of another model than the attributions' is an error (before any work)."""
    from npeff.models.identity import check_identity

    fix = "pass that checkpoint or leave inputs.checkpoint unset"
    check_identity(
        att.model_identity, f"the attributions {att.path}", fix, loaded.path, loaded.model
    )
    att.units.check_model(loaded.model)


def run(cfg: DictConfig, output_dir: Path) -> dict:
    """Coar-Edit on ``cfg`` into ``output_dir``; returns the metrics."""
    from npeff.coar import load_attributions
    from npeff.coar.editing import edit
    from npeff.report.coar import sweep_plot
    from npeff.run import coar as coar_stage
    from npeff.run.pefs import build_loader
    from npeff.tasks.checkpoint import load_checkpoint

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    e = cfg.edit
    att_path = (cfg.get("inputs") or {}).get("attributions")
    if att_path:
        att = load_attributions(att_path)
        ckpt = cfg.inputs.get("checkpoint") or att.model_identity.get("checkpoint")
        loaded = load_checkpoint(ckpt)
        _check_identity(att, loaded)
        stored = load_stored_coar(att)
        c = OmegaConf.create(stored) if stored else cfg.coar
    else:
        coar_metrics = coar_stage.run(cfg, output_dir / "coar")
        att = load_attributions(coar_metrics["attributions"])
        loaded = load_checkpoint(coar_metrics["checkpoint"])
        c = cfg.coar
    records = loaded.task.examples(str(c.split))
    if c.get("n_examples") is not None:
        records = records[: int(c.n_examples)]
    bm = att.base_margins
    t_spec = e.targets if e.get("targets") is not None else {"indices": [0]}
    r_spec = e.references if e.get("references") is not None else {"not_targets": True, "n": 50}
    targets = select_examples(t_spec, records, what="edit.targets", base_margins=bm)
    references = select_examples(
        r_spec, records, exclude=targets, what="edit.references", base_margins=bm
    )
    loader = build_loader(loaded.task, str(c.split), int(c.batch_size), c.get("n_examples"))
    data = {
        name: _data_loader(loaded.task, spec, int(c.batch_size))
        for name, spec in (e.data or {}).items()
    }
    res = edit(
        loaded.model,
        att,
        loader,
        targets=targets,
        references=references,
        direction=str(e.direction),
        k_values=None if e.get("k_values") is None else list(e.k_values),
        k_max=e.get("k_max"),
        data=data,
        select_on=e.get("select_on"),
        max_drop=float(e.max_drop),
    )
    out = res.to_json() | {
        "targets": targets,
        "references": references,
        "attributions": str(att.path),
    }
    write_json_atomic(output_dir / EDIT_JSON, out)
    with atomic_path(output_dir / EDIT_PLOT) as tmp:
        tmp.write_bytes(sweep_plot(res))
    before, after = res.table[0], next(r for r in res.table if r["k"] == res.best_k)
    metrics: dict[str, Any] = {
        "edit": str(output_dir / EDIT_JSON),
        "plot": str(output_dir / EDIT_PLOT),
        "attributions": str(att.path),
        "best_k": res.best_k,
        "n_units": att.n_units,
        "share_units_ablated": res.best_k / att.n_units,
        "k_max": res.k_values[-1],
    }
    for key in before:
        if key.startswith("acc_"):
            metrics[f"{key}_before"] = before[key]
            metrics[f"{key}_after"] = after[key]
    coar_dir = Path(att.path).parent
    if coar_summary_path(coar_dir).is_file():
        from npeff.report.coar import coar_report

        metrics["report"] = str(coar_report(coar_dir, output_dir))
    write_metrics(output_dir, metrics)
    log_stage_metrics(cfg, output_dir, metrics, "coar_edit")
    log.info(
        "Coar-Edit: k=%s of %d units; %s",
        res.best_k,
        att.n_units,
        {k: round(v, 3) for k, v in metrics.items() if k.startswith("acc_")},
    )
    return metrics


def load_stored_coar(att) -> dict | None:
    """The ``coar`` settings stored with the attributions (split, n_examples, batch_size)."""
    from npeff.artifacts.coar import read_header

    cfg = read_header(att.path).get("config") or {}
    return cfg.get("coar")


main = stage_main("coar_edit", run, single_process=True)


if __name__ == "__main__":
    main()
