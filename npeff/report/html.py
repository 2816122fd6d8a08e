"""Render a ``ReportContent`` as one self-contained HTML page.

Inline CSS, images as base64 ``data:`` URIs, no scripts and no external URL, so the file can be
mailed or opened offline. All text is HTML-escaped.
"""

from __future__ import annotations

import base64
import json
from html import escape
from typing import Any

from npeff.report.content import ComponentCard, ExampleView, ReportContent

CSS = """
:root { --fg:#1d1d1f; --muted:#6b6b70; --card:#ffffff; --bg:#f4f5f7; --ok:#1a7f37; --bad:#c62828; --acc:#3f51b5; }
* { box-sizing: border-box; }
body { margin:0; padding:24px; font:14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg); background:var(--bg); }
h1 { margin:0 0 4px; font-size:24px; } h2 { margin:28px 0 10px; font-size:18px; }
.muted { color:var(--muted); }
.tables { display:flex; flex-wrap:wrap; gap:14px; align-items:flex-start; }
table.summary { border-collapse:collapse; background:var(--card); border-radius:8px; overflow:hidden; }
table.summary caption { text-align:left; padding:4px 0; font-size:12px; }
table.summary td { padding:4px 12px; border-bottom:1px solid #e6e6ea; vertical-align:top; }
table.summary td:first-child { color:var(--muted); white-space:nowrap; }
table.summary th { padding:4px 12px; text-align:left; font-size:12px; border-bottom:1px solid #ccc; }
.figs { display:flex; flex-wrap:wrap; gap:14px; }
.figs figure { flex:1 1 480px; max-width:calc(50% - 7px); min-width:420px; margin:0; background:var(--card); padding:8px; border-radius:8px; box-shadow:0 1px 2px rgba(0,0,0,.08); }
.figs img { max-width:100%; height:auto; display:block; }
.figs figcaption { font-size:12px; color:var(--muted); margin-top:4px; }
.cards { display:grid; grid-template-columns:repeat(auto-fill, minmax(520px, 1fr)); gap:14px; }
.card { background:var(--card); border-radius:8px; padding:12px 14px; box-shadow:0 1px 2px rgba(0,0,0,.08); }
.card h3 { margin:0 0 6px; font-size:16px; }
.badges { display:flex; flex-wrap:wrap; gap:6px; margin-bottom:8px; }
.badge { font-size:12px; padding:1px 8px; border-radius:10px; background:#eceef8; color:var(--acc); }
.badge.good { background:#e7f4ea; color:var(--ok); } .badge.warn { background:#fdecea; color:var(--bad); }
.ex { border-top:1px solid #eee; padding:6px 0; display:flex; gap:10px; align-items:flex-start; }
.ex .meta { font-size:12px; color:var(--muted); min-width:150px; }
.ex .meta b { color:var(--fg); }
.ex .body { flex:1; overflow-wrap:anywhere; }
.ex .pair { color:#37474f; }
.ex img.thumb { image-rendering:pixelated; width:72px; height:auto; border:1px solid #ddd; }
.lab { font-weight:600; } .pred.ok { color:var(--ok); } .pred.bad { color:var(--bad); }
.tag { display:inline-block; font-size:11px; padding:0 6px; margin:2px 3px 0 0; border-radius:8px; background:#f1f0fb; color:#5e35b1; }
.tag.shared { background:#5e35b1; color:#fff; }
pre.json { background:var(--card); padding:10px; border-radius:8px; font-size:12px; overflow:auto; }
"""

_CAPTIONS = {
    "ratio_histograms": "Histograms of log2 KL ratio and log2 PEF-norm ratio (top examples vs random baseline; paper Fig. 3).",
    "losses": "Decomposition loss per logged step (G-only phase, then joint phase).",
    "convergence": "Per-component cosine similarity of each W column to the previous snapshot (paper Fig. 5 analogue).",
    "component_similarity": "Component similarity: |cos| between component vectors and between coefficient columns.",
    "concept_purity": "Concept purity of each component's top-k examples vs shuffled coefficients (paper §3.2).",
}


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return escape(json.dumps(v, default=str))
    if isinstance(v, (list, tuple)):
        return escape(", ".join(str(x) for x in v)) or "—"
    return escape(str(v))


_PERTURBATION_KEYS = (
    "n_perturbed_components",
    "perturbation_magnitude",
    "median_kl_ratio",
    "median_pef_norm_ratio",
    "frac_kl_ratio_above_norm_ratio",
    "acc_all_before",
    "norm_ratio_source",
    "sign_policy",
    "skipped_components",
)


def _table(rows: list[tuple[str, str]], caption: str) -> str:
    if not rows:
        return ""
    body = "".join(f"<tr><td>{escape(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return (
        f'<table class="summary"><caption class="muted">{escape(caption)}</caption>{body}</table>'
    )


def _summary_tables(summary: dict[str, Any]) -> str:
    """Run, perturbation, concept and input tables side by side."""
    run = [
        (k, fmt(v))
        for k, v in summary.items()
        if k not in ("concepts", "sources", "tables") and k not in _PERTURBATION_KEYS
    ]
    pert = [(k, fmt(summary[k])) for k in _PERTURBATION_KEYS if k in summary]
    conc = [(k, fmt(v)) for k, v in (summary.get("concepts") or {}).items()]
    src = [(k, f"<code>{escape(str(v))}</code>") for k, v in (summary.get("sources") or {}).items()]
    return (
        '<div class="tables">'
        + _table(run, "run")
        + _table(pert, "perturbations")
        + _table(conc, "concepts (top-k vs shuffled coefficients)")
        + _table(src, "inputs")
        + "".join(  # extra tables of a stage (e.g. the tracr ground-truth checks)
            _table([(str(k), escape(str(v))) for k, v in rows], str(title))
            for title, rows in (summary.get("tables") or {}).items()
        )
        + "</div>"
    )


def _example_html(ex: ExampleView, shared: set[str]) -> str:
    where = f"#{ex.rank + 1} · ex {ex.index}"
    if ex.source_index is not None and ex.source_index != ex.index:
        where += f" (split #{ex.source_index})"
    meta = [where, f"[COEFF] <b>{ex.coefficient:.4f}</b>"]
    if ex.label is not None:
        meta.append(f'[LABEL] <span class="lab">{escape(ex.label)}</span>')
    if ex.prediction is not None:
        cls = "" if ex.correct is None else ("ok" if ex.correct else "bad")
        meta.append(f'[PRED] <span class="pred {cls}">{escape(ex.prediction)}</span>')
    body = []
    if ex.image_png is not None:
        body.append(f'<img class="thumb" alt="example {ex.index}" src="{data_uri(ex.image_png)}">')
    if ex.text is not None:
        body.append(f"<div>{escape(ex.text)}</div>")
    if ex.text_pair is not None:
        body.append(f'<div class="pair">{escape(ex.text_pair)}</div>')
    if ex.inputs is not None:
        body.append(f"<div><code>{escape(ex.inputs)}</code></div>")
    if ex.concepts:
        tags = "".join(
            f'<span class="tag{" shared" if c in shared else ""}">{escape(c)}</span>'
            for c in ex.concepts
        )
        body.append(f"<div>{tags}</div>")
    return f'<div class="ex"><div class="meta">{"<br>".join(meta)}</div><div class="body">{"".join(body)}</div></div>'


def _card_html(card: ComponentCard) -> str:
    s = card.stats
    badges = []
    if "kl_ratio" in s:
        sign = {1: "+", -1: "−"}.get(s.get("best_sign"), "")
        cls = "good" if s["kl_ratio"] > s.get("pef_norm_ratio", 0) else "warn"
        badges.append(f'<span class="badge {cls}">KL ratio {s["kl_ratio"]:.3g} ({sign})</span>')
    if "pef_norm_ratio" in s:
        badges.append(f'<span class="badge">PEF-norm ratio {s["pef_norm_ratio"]:.3g}</span>')
    if "perturbation_skipped" in s:
        why = escape(s["perturbation_skipped"])
        badges.append(f'<span class="badge warn">not perturbed: {why}</span>')
    if "acc_top_before" in s and "acc_top_after" in s:
        badges.append(
            f'<span class="badge">top acc {s["acc_top_before"]:.2f} → {s["acc_top_after"]:.2f}</span>'
        )
    if "acc_all_after" in s:
        badges.append(f'<span class="badge">all acc after {s["acc_all_after"]:.3f}</span>')
    if "best_concept" in s:
        cls = "good" if s.get("all_share") else ""
        badges.append(
            f'<span class="badge {cls}">concept {escape(s["best_concept"])}: {s["purity"]:.0%} of top '
            f"(base {s['base_rate']:.0%})</span>"
        )
    for key in s:
        if key.startswith("incorrect_in_top_"):
            badges.append(
                f'<span class="badge">{s[key]} incorrect in top {key.rsplit("_", 1)[-1]}</span>'
            )
    badges.append(f'<span class="badge">{s["n_nonzero"]} nonzero coeffs</span>')
    shared = set(s.get("shared_concepts", []))
    exs = "".join(_example_html(e, shared) for e in card.examples)
    return (
        f'<section class="card" id="component-{card.component}"><h3>Component {card.component}</h3>'
        f'<div class="badges">{"".join(badges)}</div>{exs}</section>'
    )


_COMPARISON_COLUMNS = (
    ("n_components", "components"),
    ("concept_components", "concept components"),
    ("concept_components_shuffled", "shuffled control"),
    ("concept_components_within_label_shuffled", "within-label shuffled"),
    ("concept_p_value", "p (shuffled)"),
    ("tcav_significant_share", "TCAV-significant share"),
    ("avg_max_cos_vs_npeff", "avg max cos → NPEFF"),
    ("avg_max_cos_npeff_vs", "avg max cos NPEFF →"),
    ("avg_max_cos_vs_npeff_shuffled", "(null →NPEFF)"),
    ("selectivity_kl_ratio_median", "perturbation: median KL ratio"),
)


def _comparison_html(comparison: dict[str, dict] | None) -> str:
    """NPEFF and the baselines side by side (one row per method)."""
    if not comparison:
        return ""
    head = "".join(f"<th>{escape(label)}</th>" for _, label in _COMPARISON_COLUMNS)
    rows = []
    order = sorted(comparison, key=lambda m: (m != "npeff", m))  # NPEFF first
    for method in order:
        row = comparison[method]
        cells = []
        for key, _ in _COMPARISON_COLUMNS:
            if key == "selectivity_kl_ratio_median" and "selectivity" in row:
                cells.append(f'<td class="muted">{escape(str(row["selectivity"]))}</td>')
            elif key.startswith("avg_max_cos") and key not in row:
                cells.append('<td class="muted">—</td>')
            else:
                v = row.get(key)
                cells.append(f"<td>{'—' if v is None else fmt(v)}</td>")
        rows.append(f"<tr><td><b>{escape(method)}</b></td>{''.join(cells)}</tr>")
    return (
        "<h2>Comparison with baselines</h2>"
        '<p class="muted">Concept components: components whose top-k eval examples all share a '
        "known concept, next to the same count with coefficients shuffled (rows permuted; within "
        "each label). TCAV: share of components whose top examples' direction in the layer's "
        "activations changes a class prediction significantly (two-sided t-test against random "
        "directions, Bonferroni over classes). Avg max cos: each baseline component's best cosine "
        "to an NPEFF coefficient column and back (clusters as 0/1 membership, paper §3.4).</p>"
        f'<table class="summary"><tr><th>method</th>{head}</tr>{"".join(rows)}</table>'
    )


def render(content: ReportContent) -> str:
    """The complete HTML document as a string."""
    figs = "".join(
        f'<figure><img alt="{escape(name)}" src="{data_uri(png)}"><figcaption>{escape(_CAPTIONS.get(name, name))}'
        f"</figcaption></figure>"
        for name, png in content.figures.items()
    )
    cards = "\n".join(_card_html(c) for c in content.cards)
    n_more = content.summary["n_components"] - len(content.cards)
    more = (
        f'<p class="muted">{n_more} further components not shown (raise <code>max_cards</code>).</p>'
        if n_more > 0
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(content.title)}</title>
<style>{CSS}</style>
</head>
<body>
<h1>{escape(content.title)}</h1>
<p class="muted">NPEFF components, their top examples and perturbation checks.</p>
<h2>Run summary</h2>
{_summary_tables(content.summary)}
{_comparison_html(content.comparison)}
<h2>Figures</h2>
<div class="figs">{figs}</div>
{"".join(content.sections)}
<h2>Components</h2>
<div class="cards">
{cards}
</div>
{more}
</body>
</html>
"""
