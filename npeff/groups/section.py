"""The group section of the NPEFF report: an HTML fragment (figures as data URIs)."""

from __future__ import annotations

from html import escape

import numpy as np

from npeff.report.figures import png_bytes


def _png(fig) -> bytes:
    """PNG bytes of a pyplot figure at this section's 90 dpi; closes the figure."""
    import matplotlib.pyplot as plt

    out = png_bytes(fig, dpi=90)
    plt.close(fig)
    return out


def spectrum_figure(shares: np.ndarray, irrep_names: list[str], order: np.ndarray) -> bytes:
    """Heatmap of the irrep variance shares ``[H, r]`` (neurons sorted by irrep)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 2.8))
    ax.imshow(shares[order].T, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(range(len(irrep_names)), irrep_names)
    ax.set_xlabel("neuron (sorted by irrep)")
    ax.set_title("irrep variance share per neuron (left + right + unembedding)")
    return _png(fig)


def bound_figure(acc: list[float], bound: list[float]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3.4))
    ax.scatter(acc, bound, s=18)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("brute-force accuracy")
    ax.set_ylabel("compact accuracy bound")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("bound vs accuracy per seed")
    return _png(fig)


def _img(png: bytes, alt: str) -> str:
    import base64

    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3f}"
        return escape(str(v))

    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_section(summary: dict, figures: dict[str, bytes]) -> str:
    """The fragment: summary, figures, circuits of the first seed, per-seed bounds, components."""
    parts = [f"<h2>Group network: {escape(str(summary['group']))}</h2>"]
    agg = summary["aggregate"]
    parts.append(
        _table(
            ["quantity", "value"],
            [[k, v] for k, v in agg.items() if not isinstance(v, (list, dict))],
        )
    )
    parts.append('<div class="figs">')
    for name, png in figures.items():
        parts.append(f"<figure>{_img(png, name)}<figcaption>{escape(name)}</figcaption></figure>")
    parts.append("</div>")
    seeds = summary["seeds"]
    parts.append("<h3>Bound vs accuracy per seed</h3>")
    parts.append(
        _table(
            [
                "seed",
                "held-out acc",
                "brute-force acc",
                "bound",
                "sound",
                "ideal margin",
                "circuits used",
                "explained/live",
                "bound s",
                "verifier s",
                "brute s",
            ],
            [
                [
                    s["seed"],
                    s.get("heldout_accuracy", ""),
                    s["bound"]["brute_force_accuracy"],
                    s["bound"]["bound"],
                    s["bound"]["sound"],
                    s["bound"]["ideal_margin"],
                    s["bound"]["n_circuits_used"],
                    f"{s['bound']['n_neurons_explained']}/{s['bound']['n_neurons_live']}",
                    s["bound"]["seconds"],
                    s["bound"].get("seconds_verifier", float("nan")),
                    s["bound"]["brute_force_seconds"],
                ]
                for s in seeds
            ],
        )
    )
    first = seeds[0]
    parts.append(f"<h3>Circuits of seed {first['seed']}</h3>")
    parts.append(
        _table(
            ["irrep", "neurons", "orbit", "coverage", "|S_L|", "|S_R|", "median residual"],
            [
                [
                    first["irrep_names"][c["irrep"]],
                    c["n_neurons"],
                    c["orbit_size"],
                    c["coverage"],
                    c["left_stabiliser_order"],
                    c["right_stabiliser_order"],
                    c["median_residual"],
                ]
                for c in first["circuits"][:20]
            ],
        )
    )
    comp = summary.get("components")
    if comp:
        parts.append("<h3>NPEFF components against the mechanism</h3>")
        ip, cp = comp["irrep_purity"], comp["coset_purity"]
        parts.append(
            _table(
                ["statistic", "components", "shuffled control"],
                [
                    [
                        "mean irrep purity of pseudo-Fisher mass",
                        ip["mean_purity"],
                        ip["shuffled_mean_purity"],
                    ],
                    [
                        f"mean coset purity of top-{cp['top_k']} examples",
                        cp["mean_purity"],
                        cp["shuffled_mean_purity"],
                    ],
                ],
            )
        )
        names = first["irrep_names"]
        parts.append(
            _table(
                ["component", "dominant irrep", "irrep purity", "coset purity"],
                [
                    [
                        j,
                        names[ip["per_row_irrep"][j]],
                        ip["per_row_purity"][j],
                        cp["per_component"][j],
                    ]
                    for j in range(len(ip["per_row_purity"]))
                ],
            )
        )
    coar = summary.get("coar")
    if coar:
        parts.append("<h3>COAR's top units per example against the irreps</h3>")
        parts.append(
            _table(
                ["statistic", "examples", "shuffled control"],
                [
                    [
                        f"mean irrep purity of the top-{coar['top_k']} units' |attribution|",
                        coar["mean_purity"],
                        coar["shuffled_mean_purity"],
                    ]
                ],
            )
        )
    return "\n".join(parts)
