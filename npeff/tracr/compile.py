"""``npeff-tracr-compile``: compile a RASP program with tracr, check it, export it for npeff.

    npeff-tracr-compile program=toy_nli                   # -> outputs/tracr/toy_nli.h5
    npeff-tracr-compile program=hist max_seq_len=4 vocab=[a,b,c]
    npeff-tracr-compile program=my.module:make_program vocab=[a,b] max_seq_len=4

Needs the ``tracr`` extra (``pip install -e ".[tracr]"``: tracr-pypi, jax, dm-haiku); nothing
else in npeff imports jax. Steps:

1. compile (tracr ``compile_rasp_to_model``; a program tracr cannot compile fails here);
2. port fidelity: the residual stream of :class:`~npeff.models.tracr.TracrTransformer` against
   tracr's own forward on ``fidelity.n_random`` random inputs; max |diff| must be <= ``fidelity.tol``;
3. RASP agreement: the port's decoded output against ``rasp.evaluate`` on every input of the
   program's domain (when at most ``fidelity.max_exhaustive``; else ``fidelity.n_sample`` random
   ones); any disagreement refuses the export and lists the first disagreeing inputs;
4. for classifier programs, ``n_dataset`` examples with RASP's label and every recorded boolean
   variable (from one memoised ``rasp.evaluate`` per example);
5. export (:func:`npeff.artifacts.tracr_model.save_tracr_model`), with the fidelity figures,
   the temperature and, per variable, the blocks (``layer_<l>/attn|mlp``) that write it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from npeff.artifacts.atomic import write_json_atomic
from npeff.artifacts.tracr_model import TracrExport, save_tracr_model
from npeff.errors import NpeffUserError
from npeff.models.tracr import TracrTransformer
from npeff.tracr.programs import ProgramSpec, get_program, sample_sequences

log = logging.getLogger(__name__)

BOS, PAD = "BOS", "compiler_pad"


class ProgramRefused(NpeffUserError):
    """The compiled model does not reproduce the program (port or RASP disagreement)."""


def require_tracr() -> None:
    try:
        import haiku  # noqa: F401
        import jax  # noqa: F401
        import tracr.compiler.compiling  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"npeff-tracr-compile needs the optional `tracr` extra ({e}): "
            'pip install -e ".[tracr]" (tracr-pypi, jax, dm-haiku)'
        ) from None


# --- programs ---------------------------------------------------------------------------------
def resolve_program(name: str, vocab: Any = None, max_seq_len: Any = None) -> ProgramSpec:
    """A built-in program by name, or ``module:function`` returning an SOp (or ``(sop,
    {name: boolean SOp})``) — then ``vocab`` and ``max_seq_len`` are required."""
    if ":" not in str(name):
        spec = get_program(str(name))
        updates = {}
        if vocab is not None:
            updates["vocab"] = tuple(vocab)
        if max_seq_len is not None:
            updates["max_seq_len"] = int(max_seq_len)
        if updates and spec.fixed_length:
            raise NpeffUserError(
                f"program {name!r} has a fixed vocabulary and length; drop vocab/max_seq_len"
            )
        return ProgramSpec(**{**spec.__dict__, **updates})
    module, fn = str(name).split(":", 1)
    if vocab is None or max_seq_len is None:
        raise NpeffUserError(
            f"program={name} (a custom RASP program) needs vocab=[...] and max_seq_len=<n>"
        )
    try:
        build = getattr(importlib.import_module(module), fn)
    except (ImportError, AttributeError) as e:
        raise NpeffUserError(f"cannot import RASP program {name!r}: {e}") from None

    def _build():
        out = build()
        return out if isinstance(out, tuple) else (out, {})

    from npeff.tracr.programs import all_sequences

    return ProgramSpec(
        name=str(name),
        description=f"custom RASP program {name}",
        build=_build,
        vocab=tuple(vocab),
        max_seq_len=int(max_seq_len),
        domain=all_sequences,
    )


@contextlib.contextmanager
def _wide_value_heads():
    """tracr 1.0.0 sizes attention heads by their QK matrices only and fails to assemble a head
    whose OV matrix is wider (google-deepmind/tracr PR #10, fix agreed upstream). This widens
    ``key_size`` to fit both while compiling; the fidelity check runs on the result."""
    from tracr.compiler import assemble
    from tracr.craft import transformers

    original = assemble._get_model_config_and_module_names

    def patched(craft_model):
        config, names = original(craft_model)
        heads = [
            h
            for block in craft_model.blocks
            if not isinstance(block, transformers.MLP)
            for h in block.as_multi().heads()
        ]
        if heads:
            config.key_size = max(config.key_size, max(h.w_ov.matrix.shape[1] for h in heads))
        return config, names

    assemble._get_model_config_and_module_names = patched
    try:
        yield
    finally:
        assemble._get_model_config_and_module_names = original


def compile_program(spec: ProgramSpec, mlp_exactness: int = 100):
    """``(assembled model, program SOp, variables)``; a program tracr cannot compile fails with
    one clear error."""
    require_tracr()
    from tracr.compiler import compiling

    program, variables = spec.build()
    try:
        with _wide_value_heads():
            assembled = compiling.compile_rasp_to_model(
                program,
                vocab=set(spec.vocab),
                max_seq_len=int(spec.max_seq_len),
                compiler_bos=BOS,
                compiler_pad=PAD,
                mlp_exactness=int(mlp_exactness),
            )
    except (NotImplementedError, ValueError, KeyError, TypeError, AssertionError) as e:
        raise NpeffUserError(
            f"RASP program {spec.name!r} does not compile with tracr "
            f"({type(e).__name__}: {str(e).strip()[:500]})"
        ) from None
    return assembled, program, variables


# --- export -----------------------------------------------------------------------------------
def to_export(assembled, spec: ProgramSpec, variables: dict, temperature: float) -> TracrExport:
    """The compiled model's weights, encodings and residual labels in npeff's format."""
    from tracr.rasp import rasp

    params = {k: {n: np.asarray(v) for n, v in d.items()} for k, d in assembled.params.items()}
    token_embed = params.pop("token_embed")["embeddings"]
    pos_embed = params.pop("pos_embed")["embeddings"]
    flat = {}
    for key, d in params.items():
        name = key.removeprefix("transformer/")
        for leaf, value in d.items():
            flat[f"{name}/{leaf}"] = value
    labels, strip = stable_labels(list(assembled.residual_labels))
    categorical = assembled.output_encoder is not None and hasattr(
        assembled.output_encoder, "encoding_map"
    )
    # tracr's unembedding projects the residual onto the output space: the output directions'
    # labels, in the output encoder's order (numerical: the single output direction).
    unembed = _unembed_matrix(assembled, labels)
    cfg = assembled.model_config
    input_encoding = sorted(
        assembled.input_encoder.encoding_map, key=assembled.input_encoder.encoding_map.get
    )
    output_encoding = (
        sorted(assembled.output_encoder.encoding_map, key=assembled.output_encoder.encoding_map.get)
        if categorical
        else None
    )
    export = TracrExport(
        token_embed=token_embed,
        pos_embed=pos_embed,
        unembed=unembed,
        params=flat,
        meta={
            "program": spec.name,
            "description": spec.description,
            "config": {
                "num_heads": int(cfg.num_heads),
                "num_layers": int(cfg.num_layers),
                "key_size": int(cfg.key_size),
                "mlp_hidden_size": int(cfg.mlp_hidden_size),
                "causal": bool(cfg.causal),
            },
            "residual_labels": labels,
            "input_encoding": [_plain(t) for t in input_encoding],
            "output_encoding": None
            if output_encoding is None
            else [_plain(v) for v in output_encoding],
            "categorical_output": bool(categorical),
            "bos": BOS,
            "pad": PAD,
            "vocab": [_plain(v) for v in spec.vocab],
            "max_seq_len": int(spec.max_seq_len),
            "readout_position": spec.readout_position if categorical else None,
            "pair_split": spec.pair_split,
            "temperature": float(temperature),
        },
    )
    export.meta["variables"] = [
        {
            "name": name,
            "label": strip(sop.label),
            "blocks": writing_blocks(export, strip(sop.label)),
        }
        for name, sop in variables.items()
        if isinstance(sop, rasp.SOp)
    ]
    return export


def stable_labels(labels: list[str]) -> tuple[list[str], Any]:
    """Residual labels without tracr's process-global expression ids (``adds_detail_22:True`` ->
    ``adds_detail:True``), so an export does not depend on what ran before it in the process;
    kept as they are when stripping would make two labels equal. Returns (labels, strip)."""
    import re

    def strip(label: str) -> str:
        return re.sub(r"_\d+$", "", label)

    def strip_residual(r: str) -> str:
        var, sep, value = r.partition(":")
        return strip(var) + sep + value

    out = [strip_residual(r) for r in labels]
    if len(set(out)) != len(out):
        return labels, lambda label: label
    return out, strip


def _unembed_matrix(assembled, labels: list[str]) -> np.ndarray:
    """[D, C]: tracr's ``project(residual_space, output_space)`` (0/1 matrix), read off the
    compiled unembedding by probing it with the residual basis."""
    import haiku as hk  # noqa: F401 - the compiled model is a haiku module
    import jax.numpy as jnp

    D = len(labels)
    out = None

    @hk.without_apply_rng
    @hk.transform
    def probe(x):
        compiled = assembled.get_compiled_model()
        return compiled.unembed(x, use_unembed_argmax=False)

    params = {k: v for k, v in assembled.params.items() if not k.startswith("transformer")}
    out = np.asarray(probe.apply(params, jnp.eye(D)))
    return out.reshape(D, -1)


def writing_blocks(export: TracrExport, label: str) -> list[str]:
    """The blocks (``layer_<l>/attn`` / ``layer_<l>/mlp``) whose output writes a residual
    direction of the variable ``label`` (directions are labelled ``<label>:<value>``)."""
    dims = [i for i, r in enumerate(export.meta["residual_labels"]) if r.split(":")[0] == label]
    blocks = []
    for layer in range(int(export.meta["config"]["num_layers"])):
        for block, w in (("attn", "linear/w"), ("mlp", "linear_2/w")):
            out = export.params[f"layer_{layer}/{block}/{w}"]
            if dims and np.abs(out[:, dims]).max() > 0:
                blocks.append(f"layer_{layer}/{block}")
    return blocks


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


# --- checks -----------------------------------------------------------------------------------
def encode(export: TracrExport, inputs: list[list]) -> torch.Tensor:
    """[n, T+1] token ids with BOS first (all inputs of one length)."""
    enc = {_key(t): i for i, t in enumerate(export.meta["input_encoding"])}
    bos = enc[_key(export.meta["bos"])]
    return torch.tensor([[bos] + [enc[_key(t)] for t in x] for x in inputs], dtype=torch.long)


def _key(t: Any) -> Any:
    return t


def _by_length(inputs: list[list]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, x in enumerate(inputs):
        groups.setdefault(len(x), []).append(i)
    return groups


def port_max_abs_err(
    assembled, model: TracrTransformer, export: TracrExport, inputs: list[list], batch: int = 256
) -> float:
    """Max |tracr residual − port residual| over every half-layer, position and input."""
    import jax.numpy as jnp

    worst = 0.0
    for _, idx in sorted(_by_length(inputs).items()):
        for start in range(0, len(idx), batch):
            ids = encode(export, [inputs[i] for i in idx[start : start + batch]])
            ref = assembled.forward(assembled.params, jnp.asarray(ids.numpy()))
            ref_res = [np.asarray(r) for r in ref.transformer_output.residuals]
            with torch.no_grad():
                ours = [r.numpy() for r in model.residuals(ids)]
            if len(ours) != len(ref_res):
                raise ProgramRefused(f"port has {len(ours)} residuals, tracr {len(ref_res)}")
            for a, b in zip(ours, ref_res):
                worst = max(worst, float(np.abs(a - b).max()))
    return worst


class RecordingEvaluator:
    """``rasp.evaluate`` with every sub-expression evaluated once per input (memoised by id)."""

    def __init__(self):
        from tracr.rasp import rasp

        class _Memo(rasp.DefaultRASPEvaluator):
            def __init__(self):
                super().__init__()
                self.cache: dict[int, Any] = {}

            def evaluate(self, expr, xs):
                key = id(expr)
                if key not in self.cache:
                    self.cache[key] = super().evaluate(expr, xs)
                return self.cache[key]

        self._memo = _Memo()

    def __call__(self, exprs: list, xs: list) -> list:
        self._memo.cache = {}
        return [self._memo.evaluate(e, xs) for e in exprs]


def decode_outputs(
    model: TracrTransformer, export: TracrExport, inputs: list[list], batch: int = 1024
) -> list[list]:
    """The port's decoded output per input (positions 1.., as RASP returns them)."""
    out: list[list | None] = [None] * len(inputs)
    values = export.meta["output_encoding"]
    for _, idx in sorted(_by_length(inputs).items()):
        for start in range(0, len(idx), batch):
            chunk = idx[start : start + batch]
            ids = encode(export, [inputs[i] for i in chunk])
            with torch.no_grad():
                un = model.unembedded(ids)[:, 1:]  # [b, T, C]
            if values is not None:
                dec = [[values[j] for j in row] for row in un.argmax(-1).tolist()]
            else:
                dec = un[..., 0].tolist()
            for i, d in zip(chunk, dec):
                out[i] = d
    return out  # type: ignore[return-value]


def rasp_agreement(
    model: TracrTransformer, export: TracrExport, program, inputs: list[list], atol: float
) -> tuple[float, list[dict]]:
    """(share of inputs whose decoded output equals RASP's, first disagreements)."""
    evaluator = RecordingEvaluator()
    decoded = decode_outputs(model, export, inputs)
    numerical = export.meta["output_encoding"] is None
    n_ok, bad = 0, []
    for x, dec in zip(inputs, decoded):
        want = evaluator([program], x)[0]
        if numerical:
            ok = all(w is not None and abs(float(w) - float(d)) <= atol for w, d in zip(want, dec))
        else:
            ok = list(want) == list(dec)
        n_ok += ok
        if not ok and len(bad) < 5:
            bad.append({"input": x, "rasp": list(want), "compiled": list(dec)})
    return n_ok / max(len(inputs), 1), bad


def make_dataset(
    export: TracrExport, spec: ProgramSpec, program, variables: dict, n: int, seed: int
) -> dict:
    """``n`` examples for ``task=tracr``: encoded inputs, RASP's output id at the readout
    position and every recorded variable (True when it holds at some position)."""
    rng = np.random.default_rng(seed)
    inputs = spec.dataset(rng, n)
    evaluator = RecordingEvaluator()
    sops = list(variables.values())
    out_index = {v: i for i, v in enumerate(export.meta["output_encoding"])}
    outputs = np.zeros(len(inputs), dtype=np.int64)
    var = np.zeros((len(inputs), len(sops)), dtype=bool)
    pos = int(spec.readout_position) - 1  # RASP positions exclude BOS
    for i, x in enumerate(inputs):
        vals = evaluator([program, *sops], x)
        outputs[i] = out_index[vals[0][pos]]
        var[i] = [any(v is True for v in vs) for vs in vals[1:]]
    return {"inputs": encode(export, inputs).numpy(), "outputs": outputs, "variables": var}


# --- the stage --------------------------------------------------------------------------------
def compile_and_export(cfg: DictConfig | dict, output: str | Path) -> dict:
    """Compile, check, export; returns the figures (also stored in the file's ``fidelity``)."""
    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    t0 = time.perf_counter()
    spec = resolve_program(str(cfg.program), cfg.get("vocab"), cfg.get("max_seq_len"))
    require_tracr()
    assembled, program, variables = compile_program(spec, int(cfg.get("mlp_exactness", 100)))
    t_compile = time.perf_counter() - t0
    export = to_export(assembled, spec, variables, float(cfg.temperature))
    model = TracrTransformer(export)
    fc = cfg.fidelity
    rng = np.random.default_rng(int(cfg.get("seed", 0)))
    if spec.fixed_length:
        random_inputs = [
            [spec.vocab[j] for j in rng.integers(len(spec.vocab), size=spec.max_seq_len)]
            for _ in range(int(fc.n_random))
        ]
    else:
        random_inputs = sample_sequences(rng, int(fc.n_random), spec.vocab, spec.max_seq_len)
    err = port_max_abs_err(assembled, model, export, random_inputs)
    log.info("port fidelity: max |residual diff| %.3g on %d random inputs", err, len(random_inputs))
    if not err <= float(fc.tol):
        raise ProgramRefused(
            f"program {spec.name!r} refused: the torch port's residual stream differs from tracr's "
            f"by {err:.3g} > fidelity.tol={fc.tol}"
        )
    domain = spec.domain(spec.vocab, spec.max_seq_len) if spec.domain is not None else None
    exhaustive = domain is not None and len(domain) <= int(fc.max_exhaustive)
    if exhaustive:
        checked = domain
    else:
        pool = domain
        if pool is not None:
            pick = rng.choice(len(pool), size=min(int(fc.n_sample), len(pool)), replace=False)
            checked = [pool[i] for i in pick]
        else:
            checked = sample_sequences(rng, int(fc.n_sample), spec.vocab, spec.max_seq_len)
    agreement, bad = rasp_agreement(model, export, program, checked, float(fc.atol_numerical))
    log.info(
        "RASP agreement %.6f on %d inputs (%s)",
        agreement,
        len(checked),
        "exhaustive" if exhaustive else "sample",
    )
    fidelity = {
        "port_max_abs_err": err,
        "port_n_inputs": len(random_inputs),
        "rasp_agreement": agreement,
        "rasp_n_inputs": len(checked),
        "rasp_exhaustive": bool(exhaustive),
        "compile_seconds": round(t_compile, 3),
    }
    if agreement < 1.0:
        raise ProgramRefused(
            f"program {spec.name!r} refused: the compiled model's output differs from "
            f"rasp.evaluate on {round((1 - agreement) * len(checked))} of {len(checked)} inputs; "
            f"first disagreements: {bad[:3]}"
        )
    if spec.dataset is not None and export.meta["readout_position"] is not None:
        export.dataset = make_dataset(
            export, spec, program, variables, int(cfg.n_dataset), int(cfg.get("seed", 0))
        )
        with torch.no_grad():
            pred = model(torch.as_tensor(export.dataset["inputs"]))
        p = torch.softmax(pred, -1)
        y = torch.as_tensor(export.dataset["outputs"])
        fidelity["dataset_accuracy"] = float((pred.argmax(-1) == y).float().mean())
        fidelity["dataset_mean_p_label"] = float(p[torch.arange(len(y)), y].mean())
        fidelity["n_dataset"] = int(len(y))
        if fidelity["dataset_accuracy"] < 1.0:
            raise ProgramRefused(
                f"program {spec.name!r} refused: the compiled model's label differs from "
                f"rasp.evaluate on {int((pred.argmax(-1) != y).sum())} exported examples"
            )
    export.meta["fidelity"] = fidelity
    export.meta["compile"] = {
        "mlp_exactness": int(cfg.get("mlp_exactness", 100)),
        "seed": int(cfg.get("seed", 0)),
        "n_dataset": int(cfg.n_dataset),
        "tracr": "tracr-pypi 1.0.0",
    }
    path = save_tracr_model(export, output)
    fidelity["seconds"] = round(time.perf_counter() - t0, 3)
    fidelity["output"] = str(path)
    fidelity["uid"] = export.uid
    return fidelity


def run(cfg: DictConfig, output_dir: Path) -> dict:
    output = cfg.get("output") or (Path(output_dir) / f"{cfg.program}.h5")
    metrics = compile_and_export(cfg, output)
    write_json_atomic(Path(output_dir) / "metrics.json", metrics)
    print(f"npeff-tracr-compile: {cfg.program} -> {metrics['output']}\n  {metrics}", flush=True)
    return metrics
