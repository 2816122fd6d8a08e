"""The COAR report section: held-out correlation by ablation rate next to the LOO and GP
baselines, the top units of a few examples, and the Coar-Edit sweep (when present).

``coar_report(run_dir)`` reads ``coar.json`` and ``attributions.h5`` (and ``edit.json`` /
``edit_sweep.png`` from the same or a given directory) and writes ``coar_report.html`` there,
with the page style of the NPEFF report. It never recomputes anything.
"""

from __future__ import annotations

import json
import os
from html import escape
from pathlib import Path

from matplotlib.figure import Figure

from npeff.artifacts.atomic import atomic_path
from npeff.artifacts.coar_summary import load_coar_summary
from npeff.coar.editing import EditResult
from npeff.report.figures import png_bytes
from npeff.report.html import CSS, data_uri, fmt

PAPER_FIG1 = "paper Fig. 1 (α_train): CIFAR ResNet-18 0.75 (LOO .52, GP .24); ImageNet ResNet-50 0.65 (.34, .17); ViT-B/16 0.76 (.65, .54)"


def correlation_plot(corr_by_alpha: dict, alpha_train: float) -> bytes | None:
    """PNG: mean per-example correlation against α for each method (COAR, LOO, GP)."""
    if not corr_by_alpha:
        return None
    alphas = [float(a) for a in corr_by_alpha]
    fig = Figure(figsize=(6.0, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    methods = list(next(iter(corr_by_alpha.values())))
    for m in methods:
        ys = [corr_by_alpha[a][m]["mean"] for a in corr_by_alpha]
        ax.plot(alphas, ys, marker="o", label=m.upper())
    ax.axvline(alpha_train, color="grey", linestyle="--", linewidth=1, label="α_train")
    ax.set_xscale("log")
    ax.set_xlabel("ablation rate α of the held-out masks")
    ax.set_ylabel("mean per-example Pearson r")
    ax.set_title("COAR held-out correlation")
    ax.legend(fontsize=8)
    return png_bytes(fig)


def _table(rows: list[tuple[str, str]], caption: str) -> str:
    body = "".join(f"<tr><td>{escape(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="summary"><caption>{escape(caption)}</caption>{body}</table>'


def coar_section(
    metrics: dict, att, edit: dict | None = None, edit_png: bytes | None = None, n_examples: int = 5
) -> str:
    """HTML of the COAR section."""
    keys = (
        "n_masks",
        "n_units",
        "n_examples",
        "alpha",
        "solver",
        "corr_heldout_mean",
        "corr_heldout_median",
        "corr_loo_mean",
        "corr_gp_mean",
        "best_alpha",
        "seconds",
    )
    parts = ["<h2>COAR: component attribution</h2>", '<div class="tables">']
    parts.append(_table([(k, fmt(metrics.get(k))) for k in keys], "summary"))
    rows = []
    for a, r in (metrics.get("corr_by_alpha") or {}).items():
        rows.append((f"α = {a}", ", ".join(f"{m} {fmt(v['mean'])}" for m, v in r.items())))
    parts.append(_table(rows, "mean held-out correlation by α"))
    parts.append("</div>")
    parts.append(
        f'<p class="muted">{escape(PAPER_FIG1)}. Different models: not expected to match; '
        "correlation grows with m in the paper.</p>"
    )
    fig = correlation_plot(metrics.get("corr_by_alpha") or {}, float(metrics.get("alpha", 0.1)))
    figs = []
    if fig:
        figs.append(
            (fig, "Held-out correlation by α (COAR vs leave-one-out and gradient×parameter).")
        )
    if edit_png:
        figs.append((edit_png, "Coar-Edit sweep: accuracy against the number of ablated units k."))
    if figs:
        parts.append('<div class="figs">')
        for png, cap in figs:
            parts.append(
                f'<figure><img src="{data_uri(png)}"><figcaption>{escape(cap)}</figcaption></figure>'
            )
        parts.append("</div>")
    if att is not None:
        rows = []
        for i in range(min(n_examples, att.n_examples)):
            top = ", ".join(f"{n} ({w:+.3g})" for n, w in att.top_units(i, 5))
            rows.append(
                (
                    f"example {int(att.example_indices[i])} (margin {att.base_margins[i]:+.3g})",
                    escape(top),
                )
            )
        parts.append(
            _table(rows, "top units per example (attribution = margin gained by keeping the unit)")
        )
    if edit:
        t = edit.get("table") or []
        cols = [k for k in (t[0] if t else {}) if k.startswith("acc_")]
        head = "".join(f"<th>{escape(c[4:])}</th>" for c in cols)
        body = "".join(
            "<tr><td>"
            + str(r["k"])
            + "</td>"
            + "".join(f"<td>{fmt(r[c])}</td>" for c in cols)
            + "</tr>"
            for r in t
        )
        parts.append(
            f"<h2>Coar-Edit</h2><p>chosen k = {fmt(edit.get('best_k'))}: "
            f"{escape(', '.join(edit.get('best_units') or []))}</p>"
            f'<table class="summary"><tr><th>k</th>{head}</tr>{body}</table>'
        )
    return "\n".join(parts)


def coar_report(run_dir: str | os.PathLike, edit_dir: str | os.PathLike | None = None) -> Path:
    """Write ``coar_report.html`` into ``edit_dir or run_dir`` from the stage outputs."""
    from npeff.coar import load_attributions

    run_dir = Path(run_dir)
    out_dir = Path(edit_dir) if edit_dir else run_dir
    metrics = load_coar_summary(run_dir)
    att = load_attributions(metrics["attributions"])
    edit = png = None
    if (out_dir / "edit.json").is_file():
        edit = json.loads((out_dir / "edit.json").read_text())
        if (out_dir / "edit_sweep.png").is_file():
            png = (out_dir / "edit_sweep.png").read_bytes()
    html = (
        "<!doctype html><html><head><meta charset='utf-8'><title>npeff COAR report</title>"
        f"<style>{CSS}</style></head><body><h1>npeff COAR report</h1>"
        f"<p class='muted'>{escape(str(metrics.get('checkpoint')))}</p>"
        + coar_section(metrics, att, edit, png)
        + "</body></html>"
    )
    path = out_dir / "coar_report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(html)
    return path


def sweep_plot(result: EditResult) -> bytes:
    """PNG: accuracy on each data set against k (the edit sweep)."""
    fig = Figure(figsize=(6.0, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    keys = [k for k in result.table[0] if k.startswith("acc_")]
    for key in keys:
        ax.plot(result.k_values, [r[key] for r in result.table], marker="o", ms=3, label=key[4:])
    if result.best_k is not None:
        ax.axvline(
            result.best_k,
            color="grey",
            linestyle="--",
            linewidth=1,
            label=f"chosen k={result.best_k}",
        )
    ax.set_xlabel("k (units ablated)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Coar-Edit sweep")
    ax.legend(fontsize=8)
    return png_bytes(fig)
