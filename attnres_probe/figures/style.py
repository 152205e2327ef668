"""What every figure shares: the runs it is given, their colours and seed groups, labels, axes
and layout.

Colours follow the run, not the page: each residual kind has its own hue (baseline vermilion,
Full AttnRes green, Block AttnRes blue, any other model purple) and a run's shade comes from
its training seed, so a run is drawn in the same colour wherever it appears. Runs that differ
only in their seed (same kind, model and training recipe) form a *seed group*, drawn by default
as the mean with a band over the seeds' range, min to max (``seeds="band"``); ``seeds="each"``
draws every run on its own.
"""

from __future__ import annotations

import html
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from attnres_probe.analysis.seeds import run_seed, seed_groups
from attnres_probe.analysis.select import AnalysisError, run_name

Runs = xr.Dataset | Mapping[str, xr.Dataset] | Sequence[xr.Dataset]

# Shades of one hue per residual kind, darkest first; built around the Okabe & Ito (2008)
# colour-blind-safe hues (vermilion, bluish green, blue, reddish purple).
KIND_SHADES = {  # base, dark, light, darkest, lightest: far apart in lightness
    "baseline": ("#D55E00", "#8F3F00", "#F0904D", "#5C2800", "#F9C49C"),
    "full": ("#009E73", "#00664A", "#3FC99E", "#003D2C", "#9BE3CB"),
    "block": ("#0072B2", "#004A75", "#56B4E9", "#002A44", "#A9DAF5"),
    "other": ("#CC79A7", "#8E4474", "#E0A6C6", "#5A2449", "#F2D3E4"),
}
KIND_ORDER = ("baseline", "full", "block")
DASHES = ("solid", "dash", "dot", "dashdot")
SEED_MODES = ("band", "each")
BAND_ALPHA = 0.18
FONT = {"family": "Helvetica, Arial, sans-serif", "size": 13, "color": "#1d2733"}


class Labelled(dict):
    """Runs already labelled by :func:`as_runs` (label -> Dataset): labelled once, never
    escaped twice when one figure function hands them to another."""


def as_runs(runs: Runs) -> Labelled:
    """``runs`` as an ordered dict label -> Dataset (duplicate names get a ``#2`` suffix).

    Run names are plain text wherever they come from (a mapping's keys or the runs' own
    ``run_name``); the labels are those names made safe for plotly text, which renders a subset
    of HTML and ``%{…}`` templates.
    """
    if isinstance(runs, Labelled):
        return runs
    if isinstance(runs, xr.Dataset):
        runs = [runs]
    if isinstance(runs, Mapping):
        named = [(str(k), v) for k, v in runs.items()]
    else:
        named = [(run_name(ds), ds) for ds in runs]
    out = Labelled()
    for name, ds in named:
        label, n = plot_text(name), 2
        while label in out:
            label, n = plot_text(f"{name} #{n}"), n + 1
        out[label] = ds
    if not out:
        raise AnalysisError("no runs given; pass at least one recorded run")
    return out


def plot_text(text: str) -> str:
    """``text`` shown literally by plotly (no HTML tags, entities or ``%{…}`` templates)."""
    return html.escape(text).replace("%", "&#37;")


# ----------------------------------------------------------------------------- kinds, seeds


def run_kind(ds: xr.Dataset) -> str:
    """'baseline', 'full', 'block' or 'other' (a model recorded through plain hooks)."""
    kind = str(ds.attrs.get("residual", ""))
    return kind if kind in KIND_ORDER else "other"


def _shade_index(label: str, ds: xr.Dataset) -> int:
    seed = run_seed(ds)
    raw = seed if seed is not None else zlib.crc32(label.encode())
    return raw % len(KIND_SHADES["other"])


def run_colours(runs: Runs) -> dict[str, str]:
    """A colour per run label: its kind's hue, the shade of its seed; the next free shade of
    that hue when two runs shown together would share one."""
    runs = as_runs(runs)
    used: set[str] = set()
    out = {}
    for label, ds in runs.items():
        shades = KIND_SHADES[run_kind(ds)]
        i = _shade_index(label, ds)
        for k in range(len(shades)):
            colour = shades[(i + k) % len(shades)]
            if colour not in used:
                break
        out[label] = colour
        used.add(colour)
    return out


def rgba(colour: str, alpha: float) -> str:
    """``#rrggbb`` as an ``rgba(…)`` string with opacity ``alpha``."""
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


@dataclass(frozen=True)
class Series:
    """One legend entry: a run, or a seed group drawn as mean ± band."""

    label: str  # legend text (plotly-safe)
    members: dict[str, xr.Dataset]  # run label -> Dataset; one for a single run
    colour: str
    kind: str
    dash: str = "solid"

    @property
    def is_group(self) -> bool:
        return len(self.members) > 1


def run_series(runs: Runs, seeds: str = "band") -> list[Series]:
    """The runs as legend entries in kind order (baseline, full, block, others): with
    ``seeds="band"`` the runs that differ only in seed (:func:`analysis.seeds.seed_groups`)
    become one entry, labelled with their number of seeds; with ``"each"`` every run is its
    own entry. Colours are :func:`run_colours`' (a group takes its first seed's)."""
    if seeds not in SEED_MODES:
        raise AnalysisError(f"seeds={seeds!r} is not one of {', '.join(SEED_MODES)}")
    runs = as_runs(runs)
    colours = run_colours(runs)
    if seeds == "each":
        groups = {label: [label] for label in runs}
    else:  # a lone run keeps its (plot-safe) name; a group's label is made from attrs
        groups = {
            (label if len(names) == 1 else f"{plot_text(label)} ({len(names)} seeds)"): names
            for label, names in seed_groups(runs).items()
        }
    order = {k: i for i, k in enumerate((*KIND_ORDER, "other"))}
    series = []
    for label, names in groups.items():
        names = sorted(names, key=lambda n: (run_seed(runs[n]) or 0, n))
        members = {n: runs[n] for n in names}
        kind = run_kind(members[names[0]])
        series.append(Series(label, members, colours[names[0]], kind))
    series.sort(key=lambda s: order[s.kind])
    # Colours already tell runs apart; a dash only when a hue ran out of shades.
    seen: dict[str, int] = {}
    out = []
    for s in series:
        n = seen.get(s.colour, 0)
        seen[s.colour] = n + 1
        out.append(Series(s.label, s.members, s.colour, s.kind, DASHES[n % len(DASHES)]))
    return out


# ----------------------------------------------------------------------------- labels


def site_labels(da: xr.DataArray) -> list[str]:
    """'L3.attn' style labels for the ``sublayer`` coordinate ('out' for the model output)."""
    kinds = da["kind"].values if "kind" in da.coords else ["attn", "mlp"] * da.sizes["sublayer"]
    layers = da["layer_of"].values if "layer_of" in da.coords else da["sublayer"].values // 2
    return [
        "out" if str(k) == "out" else f"L{int(layer)}.{plot_text(str(k))}"
        for k, layer in zip(kinds, layers, strict=False)
    ]


def number(x: float) -> str:
    """``x`` in full for an axis or a table: 0.002, 0.05, 1, 20, 3e-05 (no SI prefixes)."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    return (
        f"{x:.3g}" if 1e-4 <= abs(x) < 1e5 else f"{x:.1e}".replace("e-0", "e-").replace("e+0", "e")
    )


def log_ticks(values: np.ndarray) -> tuple[list[float], list[str]]:
    """Tick positions and labels of a log axis over ``values``: every decade over more than 3.2
    decades, 1-2-5 steps over more than 1.5, 1-2-3-5-7 over more than 0.7, else finer steps;
    each label the full value (0.002, not "2")."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return [], []
    lo, hi = float(v.min()), float(v.max())
    span = math.log10(hi / lo) if hi > lo else 0.0
    if span > 3.2:
        mantissas: tuple[float, ...] = (1,)
    elif span > 1.5:
        mantissas = (1, 2, 5)
    elif span > 0.7:
        mantissas = (1, 2, 3, 5, 7)
    else:  # under one decade: the top of a decade needs steps finer than 1 … 9
        mantissas = (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)
    ticks = [
        float(f"{m * 10.0**e:.6g}")
        for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
        for m in mantissas
    ]
    inside = [t for t in ticks if lo / 1.05 <= t <= hi * 1.05]
    if len(inside) < 2:  # a narrow range: the nearest tick on either side as well
        below = [t for t in ticks if t < lo]
        above = [t for t in ticks if t > hi]
        inside = below[-1:] + inside + above[:1]
    return inside, [number(t) for t in inside]


# ----------------------------------------------------------------------------- layout


def finish(
    fig: go.Figure,
    title: str,
    x_title: str | None = None,
    y_title: str | None = None,
    log_y: bool = False,
    height: int | None = None,
    legend: bool = True,
) -> go.Figure:
    """The house layout: title, axis titles, a horizontal legend below the plot (it never
    takes width from the plot), log axes labelled with full values."""
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 16}},
        template="plotly_white",
        font=FONT,
        hovermode="closest",
        showlegend=legend,
        legend={
            "orientation": "h",
            "yref": "container",
            "y": 0,
            "yanchor": "bottom",
            "x": 0,
            "xanchor": "left",
            "title": {"text": ""},
            "font": {"size": 12},
        },
        margin={"l": 70, "r": 24, "t": 70 if "<br>" not in title else 95, "b": 40},
        hoverlabel={"namelength": -1},
    )
    if height is not None:
        fig.update_layout(height=height)
    if x_title is not None:
        fig.update_xaxes(title_text=x_title)
    if y_title is not None:
        fig.update_yaxes(title_text=y_title)
    if log_y:
        fig.update_yaxes(type="log")
    label_log_axes(fig)
    return fig


def label_log_axes(fig: go.Figure) -> None:
    """Give every log axis explicit ticks with full-value labels from the data it shows."""
    for axis in [k for k in fig.layout if k.startswith(("xaxis", "yaxis"))]:
        if fig.layout[axis].type != "log":
            continue
        letter = axis[0]
        ref = letter + axis.removeprefix(f"{letter}axis")
        values = [
            np.asarray(getattr(t, letter), dtype=float)
            for t in fig.data
            if getattr(t, letter, None) is not None
            and (getattr(t, f"{letter}axis") or letter) == ref
        ]
        if values:
            vals, text = log_ticks(np.concatenate([v.ravel() for v in values]))
            fig.layout[axis].update(tickmode="array", tickvals=vals, ticktext=text)


def integer_ticks(
    fig: go.Figure,
    n: int,
    labels: Sequence[str] | None = None,
    row: int | None = None,
    col: int | None = None,
) -> None:
    """Depth axes count ``n`` positions 0 … n−1: at most about 8 ticks (legible at half
    width), named by ``labels`` (e.g. 'L4.attn') when given, and no tick before the first."""
    every = max(1, -(-n // 8))
    if every > 1 and every % 2:  # keep ticks on one kind of sublayer (all attn, say)
        every += 1
    ticks = {"tick0": 0, "dtick": every}
    if labels is not None:
        vals = list(range(0, n, every))
        ticks = {"tickmode": "array", "tickvals": vals, "ticktext": [labels[i] for i in vals]}
    fig.update_xaxes(range=[-0.5, n - 0.5], row=row, col=col, **ticks)


# ----------------------------------------------------------------------------- small multiples

ROW_PX = 13  # height per heatmap row: a 10 px label above every row, none overlapping
PANEL_GAP_PX = 70  # a panel row's title and the gap to the next


def grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    """(rows, cols) of ``n`` small multiples, at most ``max_cols`` side by side."""
    cols = max(1, min(n, max_cols))
    return -(-n // cols), cols


def heatmap_height(rows_each: int, panel_rows: int, extra: int = 200) -> int:
    """Figure height in px that gives each of ``rows_each`` heatmap rows :data:`ROW_PX`."""
    return panel_rows * (rows_each * ROW_PX + PANEL_GAP_PX) + extra


def colourbar_ticks(log10_values: np.ndarray) -> dict:
    """Colour-bar ticks of a heatmap drawn in log10 units, labelled with full values."""
    vals, text = log_ticks(10.0 ** np.asarray(log10_values, dtype=float))
    return {"tickmode": "array", "tickvals": list(np.log10(vals)), "ticktext": text}
