"""Layer check: does a component's pseudo-Fisher mass sit where its concept is computed?

For an LRM component ``g_j`` (``G[j]`` over the kept parameter columns) the pseudo-Fisher
``g_j g_jᵀ`` has diagonal mass ``g_j²``. A tracr model says which block writes each RASP
variable (its residual directions ``<label>:<value>``), and inside that block which units (the
MLP hidden units or attention heads whose outputs write them). For each component whose top-k
examples share a concept (its most specific one: lowest base rate), this module reports

* ``block_share``: the share of ``Σ g_j²`` on the parameters of the blocks writing the concept
  (both variables' blocks for an AND ``a&b``), and ``unit_share``: the same on the writing units;
* controls: the same shares for the blocks/units of every *other* recorded variable (mean), and
  the parameter fraction of the concept's blocks (the share of uniform mass).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npeff.artifacts.layout import ParameterLayout
from npeff.artifacts.tracr_model import TracrExport
from npeff.models.tracr import live_units, parse_param
from npeff.models.units import mass_on_units


@dataclass
class VariableMasks:
    """bool [m] masks over the flat parameter vector, per variable: ``block`` and ``unit``."""

    block: dict[str, np.ndarray]
    unit: dict[str, np.ndarray]


def variable_masks(export: TracrExport, layout: ParameterLayout) -> VariableMasks:
    """Which parameters of ``layout`` (``TracrTransformer`` names, e.g.
    ``layers.<l>.mlp.linear_1.weight``: ``nn.Linear`` weights ``[out, in]``; a compact model's
    (dead units left out, :func:`~npeff.models.tracr.live_units`) or a full one's) belong to the
    blocks / units writing each recorded variable."""
    labels = export.meta["residual_labels"]
    heads, key = int(export.meta["config"]["num_heads"]), int(export.meta["config"]["key_size"])
    parsed = [parse_param(name) for name in layout.names]
    kept = live_units(export)
    block_m, unit_m = {}, {}
    for var in export.meta["variables"]:
        dims = [i for i, r in enumerate(labels) if r.split(":")[0] == var["label"]]
        bmask = np.zeros(layout.n_parameters, dtype=bool)
        umask = np.zeros(layout.n_parameters, dtype=bool)
        for i, (layer, block, sub, kind) in enumerate(parsed):
            if f"layer_{layer}/{block}" not in var["blocks"]:
                continue
            start, shape = layout.offsets[i], layout.shapes[i]
            sl = slice(start, start + layout.numel(i))
            bmask[sl] = True
            params = export.params
            if block == "mlp":
                w2 = params[f"layer_{layer}/mlp/linear_2/w"]  # tracr [hidden, D]
                units = np.abs(w2[:, dims]).max(axis=1) > 0  # [hidden]
                width = shape[0] if sub == "linear_1" else shape[-1]
                if width != units.size:  # a compact model: its kept hidden units
                    units = units[kept[layer][1]]
            else:
                wo = params[f"layer_{layer}/attn/linear/w"]  # tracr [heads·key, D]
                per_head = np.abs(wo[:, dims]).reshape(heads, key, -1).max(axis=(1, 2)) > 0
                width = shape[0] if sub != "linear" else shape[-1]
                if width != heads * key:  # a compact model: its kept heads
                    per_head = per_head[kept[layer][0]]
                units = np.repeat(per_head, key)  # [heads·key]
            local = np.zeros(shape, dtype=bool)
            if sub in ("linear_1", "query", "key", "value"):
                local[units] = True  # rows of the weight [units, D] or entries of the bias
            elif kind == "w":  # linear_2 / linear: weight [D, units]
                local[:, units] = True
            else:  # their bias [D]: the variable's residual directions
                local[dims] = True
            umask[sl] = local.reshape(-1)
        block_m[var["name"]], unit_m[var["name"]] = bmask, umask
    return VariableMasks(block_m, unit_m)


def _concept_mask(masks: dict[str, np.ndarray], concept: str) -> np.ndarray:
    parts = concept.split("&")
    out = np.zeros_like(next(iter(masks.values())))
    for p in parts:
        out |= masks[p]
    return out


def layer_check(
    G: np.ndarray,
    new_to_old: np.ndarray,
    masks: VariableMasks,
    shared: list[list[str]],
    base_rates: dict[str, float],
) -> dict:
    """Per-component shares (see the module docstring).

    Args:
      G: [r, m'] LRM pseudo-Fisher vectors. new_to_old: int [m'] column -> parameter index.
      shared: per component, the concepts all its top-k examples hold (may be empty).
      base_rates: share of all examples holding each concept.
    """
    G = np.asarray(G, dtype=np.float64)
    cols = np.asarray(new_to_old)
    variables = list(masks.block)
    n_params = next(iter(masks.block.values())).size
    chosen = {  # per component with a shared concept: its most specific one
        j: min(concepts, key=lambda c: (base_rates.get(c, 1.0), c))
        for j, concepts in enumerate(shared)
        if concepts
    }
    names = sorted(set(chosen.values()))
    # the column sets ("units") whose share of Σ g_j² is read: every column, each variable's
    # blocks and units, each chosen concept's blocks and units (an AND: both variables')
    sets = [np.ones(n_params, dtype=bool)]
    sets += [masks.block[v] for v in variables] + [masks.unit[v] for v in variables]
    sets += [_concept_mask(masks.block, c) for c in names]
    sets += [_concept_mask(masks.unit, c) for c in names]
    shares = mass_on_units(G, np.stack(sets, axis=1)[cols], "lrm")  # [r, 1 + 2V + 2C]
    V, C = len(variables), len(names)
    block_of = {v: 1 + i for i, v in enumerate(variables)}
    unit_of = {v: 1 + V + i for i, v in enumerate(variables)}
    concept_block = {c: 1 + 2 * V + i for i, c in enumerate(names)}
    concept_unit = {c: 1 + 2 * V + C + i for i, c in enumerate(names)}
    rows = []
    for j, concept in chosen.items():
        if shares[j, 0] <= 0:  # no mass at all (the share of every column is 1 otherwise)
            continue
        others = [v for v in variables if v not in concept.split("&")]
        ctrl_b = [float(shares[j, block_of[v]]) for v in others]
        ctrl_u = [float(shares[j, unit_of[v]]) for v in others]
        rows.append(
            {
                "component": j,
                "concept": concept,
                "block_share": float(shares[j, concept_block[concept]]),
                "unit_share": float(shares[j, concept_unit[concept]]),
                "block_share_other_variables": float(np.mean(ctrl_b)) if ctrl_b else float("nan"),
                "unit_share_other_variables": float(np.mean(ctrl_u)) if ctrl_u else float("nan"),
                "block_param_fraction": float(_concept_mask(masks.block, concept).sum() / n_params),
            }
        )

    def mean(key: str) -> float | None:
        return float(np.mean([r[key] for r in rows])) if rows else None

    return {
        "n_components_checked": len(rows),
        "block_share_mean": mean("block_share"),
        "block_share_other_variables_mean": mean("block_share_other_variables"),
        "block_param_fraction_mean": mean("block_param_fraction"),
        "unit_share_mean": mean("unit_share"),
        "unit_share_other_variables_mean": mean("unit_share_other_variables"),
        "components": rows,
    }
