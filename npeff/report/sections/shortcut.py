"""The shortcut-fix report section, rendered from ``shortcut.json``'s data (npeff-shortcut)."""

from __future__ import annotations

from html import escape
from typing import Any

import numpy as np


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "—"
    if isinstance(v, float):
        return f"{100 * v:.1f}"
    return escape(str(v))


def shortcut_section(summary: dict) -> str:
    """The report section: methods × accuracies on eval, the paper's figures beside it, and the
    per-edit table."""
    m = summary["shortcut"]
    b = summary["before"]["eval"]
    on = m["select_on"]
    rows = [("unedited model", "—", b, None)]
    for name, label in (("paper", "NPEFF ±0.3 (paper)"), ("gradient", "NPEFF gradient step")):
        r = summary["best"].get(name)
        if r is not None:
            rows.append(
                (
                    label,
                    f"component {r['component']}, {r['kind']} (scale {r['scale']:.3g})",
                    r["after"]["eval"],
                    r["after"][on],
                )
            )
    cb = (summary.get("coar") or {}).get("best")
    if cb is not None:
        rows.append(
            ("Coar-Edit", f"top {cb['k']} units ablated", cb["after"]["eval"], cb["after"][on])
        )
    elif summary.get("coar") is None:
        rows.append(("Coar-Edit", "not run (npeff.coar not installed)", None, None))
    head = (
        "<tr><th>model</th><th>edit</th><th>cue-conflicting</th><th>rest</th><th>cue-free</th>"
        f"<th>all</th><th>conflicting / rest on {escape(on)} (selection)</th></tr>"
    )
    body = ""
    for name, what, acc, sel in rows:
        cells = "".join(
            f"<td>{_fmt(None if acc is None else acc[g])}</td>"
            for g in ("conflict", "other", "cue_free", "all")
        )
        s = "—" if sel is None else f"{_fmt(sel['conflict'])} / {_fmt(sel['other'])}"
        body += f"<tr><td>{escape(name)}</td><td>{escape(what)}</td>{cells}<td>{s}</td></tr>"
    paper = (
        "<tr><th>figure</th><th>here</th><th>paper §3.5</th></tr>"
        f"<tr><td>expanded components with ≥ 50% incorrect top-16</td>"
        f"<td>{_fmt(m['frac_flawed_expanded'])}%</td><td>41%</td></tr>"
        f"<tr><td>original components with ≥ 50% incorrect top-16</td>"
        f"<td>{_fmt(m['frac_flawed_original'])}%</td><td>4.3%</td></tr>"
        f"<tr><td>flawed expanded components whose top-16 carry the cue (≥ 50%)</td>"
        f"<td>{_fmt(m['frac_cue_flawed_expanded'])}% (shuffled "
        f"{_fmt(m['frac_cue_flawed_expanded_shuffled'])}%, within correctness "
        f"{_fmt(m['frac_cue_flawed_expanded_within_correctness_shuffled'])}%)</td><td>—</td></tr>"
        f"<tr><td>components perturbed (≥ 8 of 16 incorrect)</td><td>{m['n_selected']}</td>"
        "<td>48</td></tr>"
        "<tr><td>perturbation magnitude</td><td>0.3 (and a gradient-chosen scale)</td>"
        "<td>0.3</td></tr>"
    )
    edits = "".join(
        f"<tr><td>{r['component']}</td><td>{escape(r['kind'])}</td><td>{r['scale']:.3g}</td>"
        + "".join(f"<td>{_fmt(r['after']['eval'][g])}</td>" for g in ("conflict", "other", "all"))
        + f"<td>{_fmt(r['after'][on]['conflict'])} / {_fmt(r['after'][on]['other'])}</td></tr>"
        for r in summary["edits"]
    )
    coar_rows = ""
    for r in (summary.get("coar") or {}).get("sweep", []):
        coar_rows += (
            f"<tr><td>{r['k']}</td>"
            + "".join(
                f"<td>{_fmt(r['after']['eval'][g])}</td>" for g in ("conflict", "other", "all")
            )
            + f"<td>{_fmt(r['after'][on]['conflict'])} / {_fmt(r['after'][on]['other'])}</td></tr>"
        )
    coar_table = (
        '<table class="summary"><caption class="muted">Coar-Edit: accuracy (%) against k</caption>'
        "<tr><th>k</th><th>conflicting</th><th>rest</th><th>all</th><th>selection</th></tr>"
        f"{coar_rows}</table>"
        if coar_rows
        else ""
    )
    return (
        "<h2>Planted shortcut: NPEFF (§3.5) and Coar-Edit</h2>"
        '<p class="muted">Accuracy (%) on the eval split; the best edit of each method is chosen '
        f"on the {escape(on)} split with the rest dropping at most "
        f"{100 * m['max_other_drop']:.0f} points there.</p>"
        '<div class="tables">'
        f'<table class="summary"><caption class="muted">methods</caption>{head}{body}</table>'
        f'<table class="summary"><caption class="muted">beside the paper</caption>{paper}</table>'
        "</div>"
        '<div class="tables">'
        '<table class="summary"><caption class="muted">NPEFF edits (eval %)</caption>'
        "<tr><th>component</th><th>edit</th><th>scale</th><th>conflicting</th><th>rest</th>"
        f"<th>all</th><th>selection</th></tr>{edits}</table>{coar_table}</div>"
    )
