"""One self-contained HTML page over a set of runs: the paper's claims with verdicts, every
figure, interactive, and a table of headline numbers for every run side by side.

The page holds plotly.js once (inlined, so it opens offline) and each figure of
:data:`attnres_probe.figures.FIGURES` as a plain div; no plotting happens here. Every sentence
that judges a figure is computed from the runs (``tools.findings``; the claims' verdicts from
``tools.claims``), never a fixed caption. A figure a set of runs cannot make (no AttnRes run
for the depth heatmap, no pruning results) is replaced by a line saying why. Headline numbers
come from :func:`attnres_probe.analysis.summary.run_summary`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import xarray as xr
from plotly.offline import get_plotlyjs

from attnres_probe import figures
from attnres_probe.analysis import pruning
from attnres_probe.analysis.select import AnalysisError
from attnres_probe.analysis.summary import run_summary
from attnres_probe.checkpoint import checkpoint_facts
from attnres_probe.store import open_run
from attnres_probe.tools import claims
from attnres_probe.tools.findings import DESCRIPTIONS, finding

PAGE_CSS = """
:root { --ink:#1d2733; --muted:#5b6775; --line:#e3e7ec; --bg:#f6f8fa; --accent:#0072B2; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color:var(--ink); background:var(--bg); }
header { background:#fff; border-bottom:1px solid var(--line); padding:24px 32px 16px; }
header h1 { margin:0 0 4px; font-size:24px; }
header p { margin:0; color:var(--muted); }
nav { margin-top:12px; display:flex; flex-wrap:wrap; gap:6px 14px; font-size:14px; }
nav a { color:var(--accent); text-decoration:none; }
main { max-width:1200px; margin:0 auto; padding:8px 24px 48px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px;
          padding:16px 20px; margin:20px 0; }
section h2 { margin:0 0 4px; font-size:18px; }
.caption { margin:0 0 8px; color:var(--muted); font-size:14px; }
.missing { color:var(--muted); font-style:italic; padding:12px 0; }
.finding { margin:0 0 8px; font-size:14px; }
table { border-collapse:collapse; width:100%; font-size:14px; }
th, td { padding:6px 10px; border-bottom:1px solid var(--line); text-align:right;
         vertical-align:top; }
th:first-child, td:first-child { text-align:left; color:var(--muted); font-weight:normal; }
thead th { color:var(--ink); font-weight:600; border-bottom:2px solid var(--line); }
td.text { text-align:left; }
tbody tr:hover { background:#fafbfc; }
footer { color:var(--muted); font-size:13px; text-align:center; padding:0 0 24px; }
"""


@dataclass(frozen=True)
class Headline:
    """One headline number: a stable key, a label for people, how to read it from a summary."""

    key: str
    label: str
    value: Callable[[dict[str, Any]], float | None]
    digits: int = 4


def _get(*path: str) -> Callable[[dict[str, Any]], float | None]:
    def read(summary: dict[str, Any]) -> float | None:
        node: Any = summary
        for part in path:
            if not isinstance(node, dict) or node.get(part) is None:
                return None
            node = node[part]
        return float(node)

    return read


HEADLINES: tuple[Headline, ...] = (
    Headline("held_out_loss", "held-out loss (nats/byte)", _get("held_out_loss")),
    Headline("train_loss", "training loss, last 10 % (nats/byte)", _get("train_loss")),
    Headline(
        "dilution_last_first",
        "stream RMS last/first sublayer",
        _get("dilution", "last_first_ratio"),
        3,
    ),
    Headline("dilution_exponent", "stream RMS growth exponent", _get("dilution", "exponent"), 3),
    Headline(
        "output_exponent",
        "output magnitude growth exponent (per layer)",
        _get("output_magnitude", "exponent"),
        3,
    ),
    Headline(
        "within_block_rise",
        "Block: output rise within a block",
        _get("block_periodicity", "within_block_rise"),
        3,
    ),
    Headline(
        "boundary_drop",
        "Block: output change at a block boundary",
        _get("block_periodicity", "boundary_drop"),
        3,
    ),
    Headline(
        "excess_layer_grad",
        "early-layer excess of layer_grad_norm",
        _get("early_gradient_excess", "layer_grad_norm"),
        3,
    ),
    Headline(
        "excess_param_grad",
        "early-layer excess of param_grad_norm",
        _get("early_gradient_excess", "param_grad_norm"),
        3,
    ),
    Headline("relative_update_mean", "mean relative update", _get("relative_update", "mean"), 3),
    Headline(
        "grad_max_over_min",
        "gradient spread max/min across sublayers (diagnostic)",
        _get("gradient_spread", "max_over_min"),
        3,
    ),
    Headline(
        "grad_cv",
        "gradient spread CV across sublayers (diagnostic)",
        _get("gradient_spread", "cv"),
        3,
    ),
    Headline(
        "mass_gradient_spearman",
        "Spearman ρ, mass received vs source gradient",
        _get("mass_gradient_spearman"),
        3,
    ),
    Headline(
        "depth_entropy",
        "depth attention: mean normalised entropy",
        _get("depth", "mean_normalised_entropy"),
        3,
    ),
    Headline(
        "depth_effective_sources",
        "depth attention: mean effective sources",
        _get("depth", "mean_effective_sources"),
        3,
    ),
    Headline(
        "removable_alone",
        "layers each removable alone for ≤ 1 % loss",
        _get("layers_removable", "alone"),
    ),
    Headline(
        "removable_together",
        "layers removable together for ≤ 1 % loss",
        _get("layers_removable", "together"),
    ),
    *(
        Headline(
            f"spearman_{proxy}_{removal}",
            f"pruning ({removal}): Spearman ρ of {label}",
            _get("pruning", removal, "spearman", proxy),
            3,
        )
        for removal in ("mask", "zero")
        for proxy, label in (
            ("block_influence", "1 − cos_in_out"),
            ("relative_update", "relative update"),
        )
    ),
)


def headline_numbers(summary: dict[str, Any]) -> dict[str, float | None]:
    """The numeric headlines of one run summary by key (None where they do not apply, e.g.
    depth attention of a baseline run)."""
    return {h.key: h.value(summary) for h in HEADLINES}


def _fmt(x: float | None, digits: int) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.{digits}g}"


def _architecture(s: dict[str, Any]) -> str:
    text = f"{s.get('kind')}, {s.get('n_layers')} layers"
    if s.get("d_model"):
        text += f", d {s['d_model']}"
    if s.get("n_blocks"):
        text += f", {s['n_blocks']} blocks"
    return text


def _text_rows(s: dict[str, Any]) -> dict[str, str]:
    steps = "–"
    if s.get("steps_recorded"):
        trained = s.get("steps_trained") or s["last_step"] + 1
        steps = f"{trained} ({s['steps_recorded']} recorded)"
    top = "–"
    if s.get("depth"):
        top = ", ".join(f"{t['source']} {_fmt(t['share'], 2)}" for t in s["depth"]["top_sources"])
    prunable = "–"
    if p := s.get("most_prunable"):
        key = "loss_increase" if "loss_increase" in p["layers"][0] else "block_influence"
        prunable = ", ".join(f"{u['unit']} ({_fmt(u[key], 2)})" for u in p["layers"])
        prunable += f" — by {p['by']}"
        if p.get("removal"):
            prunable += f", {p['removal']} removal"
    return {"model": _architecture(s), "steps": steps, "top sources": top, "cheapest": prunable}


def headline_table(summaries: Mapping[str, dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """The headline numbers of every run side by side as (label, one cell per run) rows, in
    reading order: the model, steps, each :data:`HEADLINES` number, top depth sources and the
    layers cheapest to remove."""
    texts = {name: _text_rows(s) for name, s in summaries.items()}
    rows = [
        ("model", [t["model"] for t in texts.values()]),
        ("steps trained", [t["steps"] for t in texts.values()]),
    ]
    for h in HEADLINES:
        values = [h.value(s) for s in summaries.values()]
        if all(v is None for v in values):
            continue
        rows.append((h.label, [_fmt(v, h.digits) for v in values]))
    rows.append(("top depth sources (share)", [t["top sources"] for t in texts.values()]))
    rows.append(("cheapest layers to remove", [t["cheapest"] for t in texts.values()]))
    return rows


def _table_html(summaries: Mapping[str, dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(n)}</th>" for n in summaries)
    body = []
    for label, cells in headline_table(summaries):
        numeric = label not in ("top depth sources (share)", "cheapest layers to remove")
        cls = "" if numeric else ' class="text"'
        tds = "".join(f"<td{cls}>{html.escape(c)}</td>" for c in cells)
        body.append(f"<tr><th>{html.escape(label)}</th>{tds}</tr>")
    return f"<table><thead><tr><th></th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _claims_html(datasets: Mapping[str, xr.Dataset]) -> str:
    """The paper's claims the runs can speak to, each with its verdict and every run's value
    (empty when the runs hold only one residual kind and no Block runs)."""
    found = claims.claims(claims.measure_claims(datasets))
    if not found:
        return ""
    rows = "".join(
        f'<tr><td class="text">{html.escape(c.statement)}<br><small>{html.escape(c.measured_by)}'
        f'</small></td><td class="text">{_verdict_html(c.verdict)}</td>'
        f'<td class="text">{html.escape(c.values)}</td></tr>'
        for c in found
    )
    return (
        '<section id="claims"><h2>The paper\'s claims, measured on these runs</h2>'
        '<p class="caption">Each verdict is computed from the runs below (last 10 % of recorded '
        "steps); a claim that fails is reported failing, with the numbers.</p>"
        "<table><thead><tr><th>claim (as the paper states it)</th><th>verdict</th>"
        f"<th>every run</th></tr></thead><tbody>{rows}</tbody></table></section>"
    )


def _verdict_html(verdict: str) -> str:
    """The verdict with its **bold** label as <strong>."""
    text = html.escape(verdict)
    if text.startswith("**") and "**" in text[2:]:
        end = text.index("**", 2)
        text = f"<strong>{text[2:end]}</strong>{text[end + 2 :]}"
    return text


def _figure_html(name: str, datasets: Mapping[str, xr.Dataset]) -> str:
    """The figure ``name`` as a div (plotly.js not included), or a line saying why it is
    missing."""
    try:
        fig = figures.make_figure(name, datasets)
    except AnalysisError as err:
        return f'<p class="missing">Not available for these runs: {html.escape(str(err))}</p>'
    return fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=f"figure-{name}",
        default_height="540px",
        config={"displaylogo": False, "responsive": True},
    )


def render_report(
    datasets: Mapping[str, xr.Dataset],
    summaries: Mapping[str, dict[str, Any]] | None = None,
    title: str = "attnres-probe report",
    subtitle: str = "",
) -> str:
    """The report page as one HTML string: headline table, then every figure of
    :data:`figures.FIGURES` over ``datasets`` (name -> recorded run)."""
    if not datasets:
        raise AnalysisError("no runs given; the report needs at least one recorded run")
    summaries = summaries or {n: run_summary(ds) for n, ds in datasets.items()}
    claims_section = _claims_html(datasets)
    nav = ['<a href="#claims">claims</a>'] if claims_section else []
    nav += ['<a href="#headlines">headline numbers</a>'] + [
        f'<a href="#{n}">{html.escape(n)}</a>' for n in figures.FIGURES
    ]
    sections = [claims_section] if claims_section else []
    sections.append(
        '<section id="headlines"><h2>Headline numbers</h2><p class="caption">Means over the '
        "last 10 % of recorded steps unless stated; held-out loss on the run's held-out bytes."
        f"</p>{_table_html(summaries)}</section>"
    )
    for name in figures.FIGURES:
        caption = html.escape(DESCRIPTIONS.get(name, ""))
        found = finding(name, datasets)
        found_html = f'<p class="finding">{html.escape(found)}</p>' if found else ""
        sections.append(
            f'<section id="{name}"><h2>{html.escape(name)}</h2><p class="caption">{caption}</p>'
            f"{found_html}{_figure_html(name, datasets)}</section>"
        )
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{PAGE_CSS}</style>
<script type="text/javascript">{get_plotlyjs()}</script>
</head>
<body>
<header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>
<nav>{" ".join(nav)}</nav></header>
<main>
{"".join(sections)}
</main>
<footer>made by attnres-probe on {made}; runs: {html.escape(", ".join(datasets))}</footer>
</body>
</html>
"""


def layers_removable(ds: xr.Dataset) -> dict[str, int] | None:
    """How many layers the run can lose for ≤ 1 % held-out loss: ``alone`` (each on its own)
    and ``together`` (greedy path); None without pruning results."""
    try:
        out = {"alone": pruning.removable_alone(ds)}
    except AnalysisError:
        return None
    try:
        out["together"] = pruning.removable_together(ds)
    except AnalysisError:
        pass
    return out


def summarise_runs(runs: Mapping[str, str | Path]) -> tuple[dict[str, xr.Dataset], dict]:
    """Open every run (name -> run directory) and compute its headline summary
    (:func:`run_summary` plus ``layers_removable``)."""
    datasets = {name: open_run(path) for name, path in runs.items()}
    summaries = {}
    for name, ds in datasets.items():
        facts = checkpoint_facts(runs[name])
        summary = run_summary(ds, extra=facts)
        summary["steps_trained"] = (facts.get("train_config") or {}).get("steps")
        summary["layers_removable"] = layers_removable(ds)
        summaries[name] = summary
    return datasets, summaries
