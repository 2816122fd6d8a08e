"""``npeff-filter``: write a subset of a PEF file (incorrect predictions, a label, index list).

    npeff-filter inputs.pefs=<pefs.h5> filter.incorrect_only=true

Writes ``pefs.h5`` (same kind, every field kept, ``example_indices`` still pointing at the
examples of the original split) and ``metrics.json`` (counts, fraction correct).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from npeff.run.common import stage_main, write_metrics

PEFS_NAME = "pefs.h5"


def run(cfg: DictConfig, output_dir: Path) -> dict:
    from npeff.artifacts.pefs import load_pefs, save_pefs
    from npeff.fisher.filter import filter_pefs, relabel_nli

    output_dir = Path(output_dir)
    src = Path(cfg.inputs.pefs)
    pefs = load_pefs(src)
    fc = cfg.filter
    indices = fc.get("indices")
    sub, order = filter_pefs(
        pefs,
        incorrect_only=bool(fc.get("incorrect_only", False)),
        correct_only=bool(fc.get("correct_only", False)),
        label=fc.get("label"),
        indices=None if indices is None else list(indices),
        relabel=bool(fc.get("relabel_nli", False)),
    )
    labels = relabel_nli(pefs.labels) if fc.get("relabel_nli") else pefs.labels
    sub.metadata["filter"] = {
        "source": str(src),
        **OmegaConf.to_container(fc, resolve=True),
    }
    out = save_pefs(sub, output_dir / PEFS_NAME)
    metrics = {
        "pefs": str(out),
        "source": str(src),
        "n_examples_in": pefs.n_examples,
        "n_examples_out": sub.n_examples,
        "fraction_correct": float((pefs.predictions == labels).mean()) if pefs.n_examples else None,
    }
    print(
        f"npeff-filter: kept {sub.n_examples} of {pefs.n_examples} examples; fraction correct "
        f"{metrics['fraction_correct']}"
    )
    write_metrics(output_dir, metrics)
    return metrics


main = stage_main("filter_pefs", run, single_process=True)


if __name__ == "__main__":
    main()
