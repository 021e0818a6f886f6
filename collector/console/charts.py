"""Charts drawn on the server as SVG: no chart library, nothing to download, readable
without JavaScript. Colours are Okabe and Ito's palette (distinct under the common colour
blindnesses); every bar also carries its number in a tooltip, and every chart has a legend
in words, so no reading depends on colour alone."""

from __future__ import annotations

from collections.abc import Sequence

from collector.console.html import Markup, esc

# Okabe & Ito (2008), "Color Universal Design": blue, orange, bluish green, vermillion,
# reddish purple, sky blue, yellow, black.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000")
OTHERS = "#999999"
# Severity 1..5 (info .. critical): a light-to-dark sequence that keeps its order in grey.
SEVERITY_COLOURS = {1: "#56B4E9", 2: "#0072B2", 3: "#E69F00", 4: "#D55E00", 5: "#7A1F5C"}


def stacked_bars(
    labels: Sequence[str],
    series: dict[str, Sequence[int]],
    *,
    title: str,
    max_series: int = 7,
    width: int = 720,
    height: int = 220,
) -> Markup:
    """Bars over `labels`, each stacked by series (the largest `max_series`, the rest as
    "other"). Returns an <figure> with the SVG and its legend."""
    ranked = sorted(series, key=lambda k: -sum(series[k]))
    shown = ranked[:max_series]
    stacks = {k: list(series[k]) for k in shown}
    rest = ranked[max_series:]
    if rest:
        stacks["other"] = [sum(series[k][i] for k in rest) for i in range(len(labels))]
    colours = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(shown)} | {"other": OTHERS}
    totals = [sum(v[i] for v in stacks.values()) for i in range(len(labels))]
    top = max(totals, default=0) or 1
    left, bottom, right, top_pad = 44, 22, 8, 8
    plot_w, plot_h = width - left - right, height - bottom - top_pad
    n = max(len(labels), 1)
    bar_w = plot_w / n
    parts = [
        f'<svg viewBox="0 0 {width} {height}" class="chart" role="img" aria-label="{esc(title)}">'
    ]
    for frac in (0, 0.5, 1):
        y = top_pad + plot_h * (1 - frac)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" class="axis" text-anchor="end">'
            f"{round(top * frac)}</text>"
        )
    every = max(1, n // 12)
    for i, label in enumerate(labels):
        x = left + i * bar_w
        y = top_pad + plot_h
        for k, values in stacks.items():
            v = values[i]
            if not v:
                continue
            h = plot_h * v / top
            y -= h
            parts.append(
                f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(bar_w - 2, 1):.1f}" '
                f'height="{h:.1f}" fill="{colours[k]}"><title>{esc(label)} · {esc(k)}: {v}'
                "</title></rect>"
            )
        if i % every == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{height - 6}" class="axis" '
                f'text-anchor="middle">{esc(label)}</text>'
            )
    parts.append("</svg>")
    legend = "".join(
        f'<li><svg class="swatch" viewBox="0 0 10 10" aria-hidden="true"><rect width="10" '
        f'height="10" fill="{colours[k]}"/></svg>{esc(k)} '
        f'<span class="num">{sum(v)}</span></li>'
        for k, v in stacks.items()
    )
    return Markup(
        f'<figure class="chart-box"><figcaption>{esc(title)}</figcaption>{"".join(parts)}'
        f'<ul class="legend">{legend}</ul></figure>'
    )
