"""``tracr``: the examples exported with a TRACR-compiled model, with its RASP variables as concepts.

``npeff-tracr-compile`` stores, for classifier programs, a pool of distinct inputs, RASP's output
at the readout position (the label) and every recorded boolean intermediate variable
(``rasp.evaluate``). This task splits the pool (seeded) into ``train``/``fit``/``eval``; the
concepts are the variables and, with ``concept_pairs``, the AND of every pair of them that some
example holds (named ``a&b``; a pair never changes whether a component's top examples share *a*
concept, but names finer tunings, as the paper's appendix H discusses).

The model hint ``tracr_uid`` ties ``model=tracr`` to the same file: a model used with another
task, or with another export, is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from npeff.artifacts.tracr_model import TracrExport, load_tracr_model
from npeff.errors import NpeffUserError
from npeff.models.tracr import PACKAGED_TOY_NLI
from npeff.tasks.base import NpeffTask, SplitData, TaskInfo, split_indices


def concept_table(
    variables: np.ndarray, names: list[str], pairs: bool
) -> tuple[np.ndarray, list[str]]:
    """bool [n, c'] and names: the variables, then ANDs of pairs held by some example."""
    cols, out_names = [variables[:, i] for i in range(len(names))], list(names)
    if pairs:
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                both = variables[:, i] & variables[:, j]
                if (
                    both.any()
                    and not (both == variables[:, i]).all()
                    and not (both == variables[:, j]).all()
                ):
                    cols.append(both)
                    out_names.append(f"{names[i]}&{names[j]}")
    return np.stack(cols, axis=1), out_names


class TracrTask(NpeffTask):
    """Examples of an exported tracr model (see the module docstring).

    Args:
        path: the ``tracr_model.h5`` (default: the packaged toy NLI model).
        n_train, n_fit, n_eval: split sizes drawn from the exported pool (``train`` is only used
          by the train stage, which does not change a compiled model: keep it small).
        concept_pairs: add the AND of variable pairs as concepts.
    """

    name = "tracr"

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        n_train: int = 64,
        n_fit: int = 1600,
        n_eval: int = 1600,
        concept_pairs: bool = True,
        seed: int = 0,
        batch_size: int | None = 64,
    ):
        super().__init__(seed=seed, batch_size=batch_size)
        self.path = Path(str(path)) if path not in (None, "") else PACKAGED_TOY_NLI
        self.sizes = {"train": int(n_train), "fit": int(n_fit), "eval": int(n_eval)}
        self.concept_pairs = bool(concept_pairs)
        self.export: TracrExport | None = None

    def _build(self) -> tuple[TaskInfo, dict[str, SplitData]]:
        export = load_tracr_model(self.path)
        if export.dataset is None or export.meta.get("readout_position") is None:
            raise NpeffUserError(
                f"{self.path} (program {export.program!r}) has no exported examples: task=tracr "
                "needs a classifier program such as toy_nli (npeff-tracr-compile program=toy_nli)"
            )
        self.export = export
        ds = export.dataset
        inputs, outputs = np.asarray(ds["inputs"]), np.asarray(ds["outputs"])
        var_names = export.variable_names
        concepts, names = concept_table(
            np.asarray(ds["variables"], dtype=bool), var_names, self.concept_pairs
        )
        parts = split_indices(len(outputs), self.sizes, self.seed)
        tokens = export.meta["input_encoding"]
        split_at = export.meta.get("pair_split")
        splits = {}
        for split, idx in parts.items():
            records = []
            for i in idx:
                words = [str(tokens[t]) for t in inputs[i, 1:]]
                rec = {"label": int(outputs[i])}
                if split_at:
                    rec["text"], rec["text_pair"] = (
                        " ".join(words[:split_at]),
                        " ".join(words[split_at:]),
                    )
                else:
                    rec["text"] = " ".join(words)
                records.append(rec)
            splits[split] = SplitData(
                tensors={
                    "input_ids": torch.as_tensor(inputs[idx], dtype=torch.long),
                    "labels": torch.as_tensor(outputs[idx], dtype=torch.long),
                },
                records=records,
                concepts=concepts[idx],
            )
        info = TaskInfo(
            num_classes=len(export.meta["output_encoding"]),
            label_names=[str(v) for v in export.meta["output_encoding"]],
            concept_names=names,
            hints={"tracr_uid": export.uid},
        )
        return info, splits

    def variable_blocks(self) -> dict[str, list[str]]:
        """Per recorded variable, the blocks (``layer_<l>/attn|mlp``) that write it."""
        self.setup()
        assert self.export is not None
        return {v["name"]: list(v["blocks"]) for v in self.export.meta["variables"]}
