"""Stage ``npeff-groups``: a group-network zoo read against its known mechanism.

    npeff-groups inputs.zoo=<npeff-train task=group task.n_seeds=S run dir>
    npeff-groups inputs.zoo=<model.ckpt> inputs.decomposition=<decomposition.h5> \
                 inputs.coeffs=<coeffs.h5> inputs.pefs=<pefs.h5>     # + NPEFF components

Per seed: the irrep spectrum and coset concentration of every neuron, the ρ-set circuits, the
compact accuracy bound and the brute-force accuracy over all |G|² inputs with both times
(:mod:`npeff.groups.bound`). With a decomposition: each component's irrep purity and the coset
purity of its top examples, next to shuffled controls (:mod:`npeff.groups.components`).

Writes ``seeds/seed_<s>.json`` as each seed finishes (a rerun in the same dir skips finished
seeds), ``groups_summary.json``, ``group_section.html`` (the report's group section),
``neurons.npz`` (the first seed's shares) and ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from npeff.artifacts.atomic import atomic_path, write_json_atomic
from npeff.artifacts.neurons import KEYS as NEURON_KEYS
from npeff.artifacts.neurons import NEURONS_NAME, save_neurons
from npeff.errors import NpeffUserError
from npeff.run.common import stage_main, write_metrics

log = logging.getLogger(__name__)


def _component_analysis(cfg, group, na, circuits, zoo) -> dict | None:
    """Irrep and coset purity of the NPEFF components (needs inputs.decomposition)."""
    inputs = cfg.inputs
    if not inputs.get("decomposition"):
        return None
    from npeff.artifacts.decomposition import load_decomposition
    from npeff.groups.components import component_neuron_mass, coset_purity, irrep_purity
    from npeff.tasks.checkpoint import load_checkpoint

    dec = load_decomposition(inputs.decomposition)
    n_neurons = int(zoo.params["hidden.bias"].shape[-1])
    mass = component_neuron_mass(dec, n_neurons)
    g = cfg.groups
    ip = irrep_purity(mass, na.irrep, len(na.irrep_names), na.live, int(g.n_shuffles), int(g.seed))
    out = {"irrep_purity": ip}
    coeffs = load_decomposition(inputs.coeffs) if inputs.get("coeffs") else dec
    if inputs.get("pefs"):
        from npeff.artifacts.pefs import load_pefs, pefs_split

        pefs = load_pefs(inputs.pefs)
        split = pefs_split(pefs, cfg.get("split"), default="eval")
        task = load_checkpoint(zoo.path).task
        t = task.tensors(split)
        src = pefs.source_indices
        x, y = t["x"].numpy()[src], t["y"].numpy()[src]
        stabs = [(c.left_stab, c.right_stab) for c in circuits if c.orbit_size > 1][
            : int(g.max_circuits)
        ]
        if len(coeffs.W) != len(x):
            raise NpeffUserError(
                f"inputs.coeffs has {len(coeffs.W)} examples but inputs.pefs {len(x)}: pass the "
                "coefficients fitted on those PEFs"
            )
        out["coset_purity"] = coset_purity(
            group, x, y, coeffs.W, stabs, int(g.top_k), int(g.n_shuffles), int(g.seed)
        )
    else:
        out["coset_purity"] = {
            "top_k": 0,
            "per_component": [float("nan")] * dec.n_components,
            "mean_purity": float("nan"),
            "shuffled_mean_purity": float("nan"),
        }
    return out


def _coar_analysis(cfg, na, zoo) -> dict | None:
    """Irrep purity of COAR's top units per example (needs inputs.coar)."""
    if not cfg.inputs.get("coar"):
        return None
    import npeff.coar
    from npeff.artifacts.zoo import ZOO_NAME
    from npeff.groups.coar_units import coar_irrep_purity
    from npeff.models.checkpoint import CHECKPOINT_NAME
    from npeff.tasks.checkpoint import load_checkpoint

    attr = npeff.coar.load_attributions(cfg.inputs.coar)
    # the neuron analysis read here is the first seed's: the attributions must be that model's
    first = zoo.path if zoo.path.name != ZOO_NAME else zoo.path.parent / CHECKPOINT_NAME
    attr.check_model(load_checkpoint(first).model)
    g = cfg.groups
    return coar_irrep_purity(
        attr,
        na.irrep,
        len(na.irrep_names),
        na.live,
        int(g.get("coar_top_k", 5)),
        int(g.n_shuffles),
        int(g.seed),
    )


def run(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    from npeff.groups import get_group
    from npeff.groups.analysis import aggregate, analyze_seed
    from npeff.groups.network import seed_state
    from npeff.groups.section import bound_figure, render_section, spectrum_figure
    from npeff.groups.zoo_run import load_zoo

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    zoo = load_zoo(cfg.inputs.zoo)
    group = get_group(zoo.group_name)
    g = cfg.groups
    idx = list(range(zoo.n_seeds))
    if g.get("max_seeds"):
        idx = idx[: int(g.max_seeds)]
    held = zoo.metrics.get("heldout_accuracy_per_seed")
    seeds_dir = output_dir / "seeds"
    seeds_dir.mkdir(exist_ok=True)
    results: list[dict] = []
    first = None
    from tqdm.auto import tqdm

    for s in tqdm(idx, desc="groups", disable=not cfg.get("progress", True)):
        path = seeds_dir / f"seed_{s:03d}.json"
        if path.is_file() and s != idx[0]:
            results.append(json.loads(path.read_text()))
            continue
        res, na, circuits = analyze_seed(group, seed_state(zoo.params, s), g)
        res["seed"] = int(zoo.seeds[s])
        res["heldout_accuracy"] = (
            float(held[s])
            if held
            else zoo.metrics.get("heldout_accuracy", zoo.metrics.get("eval_accuracy"))
        )
        write_json_atomic(path, res)
        results.append(res)
        if first is None:
            first = (na, circuits)
        log.info(
            "seed %s: accuracy %.4f, bound %.4f (sound %s), %.2fs vs brute force %.2fs",
            res["seed"],
            res["bound"]["brute_force_accuracy"],
            res["bound"]["bound"],
            res["bound"]["sound"],
            res["bound"]["seconds"],
            res["bound"]["brute_force_seconds"],
        )
    na, circuits = first
    summary: dict[str, Any] = {
        "group": group.name,
        "order": group.order,
        "irreps": [{"name": ir.name, "dim": ir.dim, "kind": ir.kind} for ir in group.irrep_info()],
        "aggregate": aggregate(results),
        "seeds": results,
    }
    comp = _component_analysis(cfg, group, na, circuits, zoo)
    if comp is not None:
        summary["components"] = comp
        summary["aggregate"].update(
            component_irrep_purity=comp["irrep_purity"]["mean_purity"],
            component_irrep_purity_shuffled=comp["irrep_purity"]["shuffled_mean_purity"],
            component_coset_purity=comp["coset_purity"]["mean_purity"],
            component_coset_purity_shuffled=comp["coset_purity"]["shuffled_mean_purity"],
        )
    coar = _coar_analysis(cfg, na, zoo)
    if coar is not None:
        summary["coar"] = coar
        summary["aggregate"].update(
            coar_top_unit_irrep_purity=coar["mean_purity"],
            coar_top_unit_irrep_purity_shuffled=coar["shuffled_mean_purity"],
        )
    order = np.lexsort((-na.purity, na.irrep))
    figures = {
        "irrep spectrum per neuron (first seed)": spectrum_figure(
            na.shares_combined, na.irrep_names, order
        ),
        "bound vs accuracy per seed": bound_figure(
            [r["bound"]["brute_force_accuracy"] for r in results],
            [r["bound"]["bound"] for r in results],
        ),
    }
    write_json_atomic(output_dir / "groups_summary.json", summary)
    with atomic_path(output_dir / "group_section.html") as tmp:
        tmp.write_text(render_section(summary, figures), encoding="utf-8")
    save_neurons(output_dir / NEURONS_NAME, {k: getattr(na, k) for k in NEURON_KEYS})
    metrics = {
        "group": group.name,
        **summary["aggregate"],
        "section": str(output_dir / "group_section.html"),
    }
    write_metrics(output_dir, metrics)
    return metrics


main = stage_main("groups", run, single_process=True)


if __name__ == "__main__":
    main()
