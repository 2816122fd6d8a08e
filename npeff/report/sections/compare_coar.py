"""The NPEFF-vs-COAR report section, rendered from ``compare_coar.json``'s data."""

from __future__ import annotations

import numpy as np

from npeff.coar.npeff_compare import STATS

# The comparison table's columns after the component (per component, then their means): the
# averaged statistics but the random-set KL correlation, the top-unit share first.
TABLE_COLUMNS = ("share_top_units", *(k for k in STATS[:-2] if k != "spearman_random_kl"))


def compare_coar_section(result: dict, coar_html: str = "") -> str:
    """The report section: COAR's own section (if given) and the NPEFF-vs-COAR table."""
    from html import escape

    from npeff.report.html import fmt as _fmt

    def f(v):
        return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else _fmt(v)

    jk = f"J{result['top_examples']}"
    head = (
        "<tr><th>component</th><th>share S_j</th><th>ρ coef~|COAR pred|</th>"
        f"<th>ρ coef~|true|</th><th>ρ coef~|random|</th><th>{jk} COAR</th><th>{jk} true</th>"
        f"<th>{jk} random</th><th>r COAR vs true</th><th>ρ KL~|true|</th><th>ρ KL~|random|</th>"
        "<th>ρ coef~KL(ablate)</th><th>ρ KL~KL(ablate)</th><th>ρ KL~KL(random)</th>"
        "<th>S_j</th></tr>"
    )
    body = ""
    for r in result["components"]:
        cells = [r["component"], *(r.get(k) for k in TABLE_COLUMNS)]
        body += (
            "<tr>"
            + "".join(f"<td>{f(c)}</td>" for c in cells)
            + f"<td>{escape(', '.join(r['top_units'][:4]))}"
            + (" …" if len(r["top_units"]) > 4 else "")
            + "</td></tr>"
        )
    mean = "".join(f"<td>{f(result.get(k + '_mean'))}</td>" for k in TABLE_COLUMNS)
    return (
        coar_html
        + "\n<h2>NPEFF vs COAR on one model</h2>"
        + f"<p class='muted'>{result['n_components']} {escape(str(result['kind']))}-NPEFF "
        f"components, {result['n_examples']} examples, {result['n_units']} units; S_j = the "
        f"{result['top_units']} units with the largest share of the component's mass. ρ: Spearman "
        "across examples between the component's coefficient (or the NPEFF perturbation's "
        "per-example KL) and the size of the margin change when S_j is ablated, as COAR predicts "
        f"it and as measured; random: {result['n_random']} random unit sets of the same size. "
        "KL(ablate): the per-example KL between the model's and the ablated model's predictions. "
        f"{jk}: Jaccard overlap of the top-{result['top_examples']} example sets (top-128, at "
        "most a quarter of the examples). Fraction of "
        f"components with ρ(true) > ρ(random): {f(result.get('frac_spearman_true_above_random'))}"
        ".</p>" + f'<table class="summary">{head}{body}<tr><td><b>mean</b></td>{mean}<td></td></tr>'
        "</table>"
    )
