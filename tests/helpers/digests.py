"""Content digests of a run directory's artifacts, for "behaviour unchanged" pins.

A digest covers what a run computed, not where or when: every h5 dataset (name, dtype, shape,
bytes) and attribute, every JSON value, every checkpoint tensor, every PNG and HTML file, with the
run's own paths replaced by placeholders and timing fields (``seconds``, ``*_seconds``, ...)
dropped. Two runs of the same code and config on the same machine kind give the same digests.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

TIMING_KEY = re.compile(
    r"(^|_)(seconds|elapsed|time|runtime|timestamp|wall|examples_per_second|per_s|examples_per_s)($|_)"
)
SKIPPED_NAMES = {"pipeline.log", "wandb", "csv", "checkpoints", ".hydra"}
# A checkpoint file's own hash changes run to run (Lightning stores loop timing in it); what the
# weights are is pinned by the checkpoint digest and by ``weights_sha256``.
UNSTABLE_KEYS = {"sha256"}


def _scrub_text(text: str, roots: list[str]) -> str:
    for i, root in enumerate(roots):
        text = text.replace(root, f"<root{i}>")
    return text


def _scrub(value: Any, roots: list[str]) -> Any:
    """``value`` with paths replaced and timing keys dropped (JSON strings parsed)."""
    if isinstance(value, dict):
        return {
            k: _scrub(v, roots)
            for k, v in sorted(value.items())
            if not TIMING_KEY.search(str(k)) and k not in UNSTABLE_KEYS
        }
    if isinstance(value, list | tuple):
        return [_scrub(v, roots) for v in value]
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in "{[":
            try:
                return _scrub(json.loads(stripped), roots)
            except ValueError:
                pass
        return _scrub_text(value, roots)
    return value


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _h5_digest(path: Path, roots: list[str]) -> str:
    import h5py
    import numpy as np

    parts: list[str] = []

    def attrs(name: str, obj: Any) -> None:
        for key in sorted(obj.attrs):
            v = obj.attrs[key]
            if isinstance(v, bytes):
                v = v.decode()
            if isinstance(v, np.ndarray):
                v = v.tolist()
            elif isinstance(v, np.generic):
                v = v.item()
            if isinstance(v, str) and key == "config":
                v = _scrub_text(v, roots)
                v = "\n".join(
                    ln for ln in v.splitlines() if not TIMING_KEY.search(ln.split(":")[0])
                )
            parts.append(
                f"{name}@{key}={json.dumps(_scrub(v, roots), sort_keys=True, default=str)}"
            )

    def visit(name: str, obj: Any) -> None:
        attrs(name, obj)
        if isinstance(obj, h5py.Dataset):
            arr = obj[()]
            data = arr.tobytes() if isinstance(arr, np.ndarray) else repr(arr).encode()
            parts.append(f"{name}:{obj.dtype}:{obj.shape}:{_sha(data)}")

    with h5py.File(path, "r") as f:
        attrs("/", f)
        f.visititems(visit)
    return _sha("\n".join(parts).encode())


def _ckpt_digest(path: Path) -> str:
    import torch

    blob = torch.load(path, map_location="cpu", weights_only=False)
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else blob
    parts = [
        f"{k}:{tuple(v.shape)}:{_sha(v.detach().contiguous().numpy().tobytes())}"
        for k, v in sorted(state.items())
        if hasattr(v, "shape")
    ]
    return _sha("\n".join(parts).encode())


def file_digest(path: Path, roots: list[str]) -> str:
    """The content digest of one artifact (see the module docstring)."""
    suffix = path.suffix
    if suffix == ".h5":
        return _h5_digest(path, roots)
    if suffix == ".json":
        return _sha(
            json.dumps(_scrub(json.loads(path.read_text()), roots), sort_keys=True).encode()
        )
    if suffix in (".ckpt", ".pt"):
        return _ckpt_digest(path)
    if suffix in (".html", ".txt", ".csv"):
        return _sha(_scrub_text(path.read_text(), roots).encode())
    return _sha(path.read_bytes())


def run_digests(run_dir: Path, extra_roots: list[str] | None = None) -> dict[str, str]:
    """``{relative path: digest}`` for every artifact under ``run_dir``."""
    run_dir = Path(run_dir).resolve()
    roots = [str(run_dir)] + [str(Path(r).resolve()) for r in (extra_roots or [])]
    roots += [r for r in list(roots)]  # unresolved spellings are handled by callers passing both
    out = {}
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        if not path.is_file() or any(part in SKIPPED_NAMES for part in rel.parts):
            continue
        out[str(rel)] = file_digest(path, roots)
    return out
