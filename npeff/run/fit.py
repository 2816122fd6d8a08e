"""Stage ``npeff-fit``: coefficients for a PEF set with a decomposition's G/H frozen → coeffs.h5."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from npeff.errors import NpeffFileNotFoundError, NpeffUserError
from npeff.run import common


def run(cfg: DictConfig, output_dir: Path) -> dict:
    from npeff.artifacts.decomposition import load_decomposition, save_decomposition
    from npeff.artifacts.pefs import load_pefs, read_pefs_header
    from npeff.decomp.fitting import check_compatible, fit_coefficients
    from npeff.decomp.module import DTYPES

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    f = cfg.fit
    if f.dtype not in DTYPES:
        raise NpeffUserError(f"fit.dtype must be one of {sorted(DTYPES)}, got {f.dtype!r}")
    pefs_path, dec_path = Path(cfg.inputs.pefs), Path(cfg.inputs.decomposition)
    if not pefs_path.is_file():
        raise NpeffFileNotFoundError(
            f"no PEF file at {pefs_path}; set inputs.pefs=<path to pefs.h5>"
        )
    header = read_pefs_header(pefs_path)  # cheap checks before reading the arrays
    dec = load_decomposition(dec_path)
    if header["m"] != dec.n_parameters:
        raise NpeffUserError(
            f"the PEFs have {header['m']} parameters but the decomposition has "
            f"{dec.n_parameters}: they come from different models or parameter selections"
        )
    pefs = load_pefs(pefs_path)
    if f.get("n_examples"):
        from npeff.decomp.fitting import slice_pefs as _slice_pefs

        pefs = _slice_pefs(pefs, 0, min(int(f.n_examples), pefs.n_examples))
    check_compatible(pefs, dec)
    t0 = time.perf_counter()
    out, info = fit_coefficients(
        pefs,
        dec,
        n_iters=int(f.n_iters),
        mu_eps=f.get("mu_eps"),
        seed=int(f.seed),
        chunk_size=f.get("chunk_size"),
        dtype=DTYPES[f.dtype],
        block_cols=int(f.get("block_cols", 262144)),
        progress=bool(cfg.get("progress", True)),
    )
    seconds = time.perf_counter() - t0
    if not f.get("write_components", True):
        out = dataclasses.replace(out, G=None, H=None)
    out.metadata.update(
        {
            "source": {"pefs": str(pefs_path.resolve()), "decomposition": str(dec_path.resolve())},
            "config": OmegaConf.to_yaml(cfg, resolve=True),
            "stage": "fit",
        }
    )
    coeffs = save_decomposition(out, output_dir / "coeffs.h5")
    metrics = {
        "kind": out.kind,
        "final_loss": float(info["final_loss"]),
        "seconds": seconds,
        "n_examples": out.n_examples,
        "n_components": out.n_components,
        "n_iters": int(f.n_iters),
        "n_chunks": info["n_chunks"],
        "coeffs": str(coeffs),
    }
    common.write_metrics(output_dir, metrics)
    return metrics


main = common.stage_main("fit", run, single_process=True)


if __name__ == "__main__":
    main()
