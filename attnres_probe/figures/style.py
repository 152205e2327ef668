"""What every figure shares: the runs it is given, a colour per run, labels and layout."""

from __future__ import annotations

import html
import zlib
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
import xarray as xr

from attnres_probe.analysis.select import AnalysisError, run_name

# Okabe & Ito (2008), colour-blind safe; yellow last (weak on white).
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
Runs = xr.Dataset | Mapping[str, xr.Dataset] | Sequence[xr.Dataset]


def as_runs(runs: Runs) -> dict[str, xr.Dataset]:
    """``runs`` as an ordered dict label -> Dataset (duplicate names get a ``#2`` suffix).

    Run names are plain text wherever they come from (a mapping's keys or the runs' own
    ``run_name``); the labels are those names made safe for plotly text, which renders a subset
    of HTML and ``%{…}`` templates.
    """
    if isinstance(runs, xr.Dataset):
        runs = [runs]
    if isinstance(runs, Mapping):
        named = [(str(k), v) for k, v in runs.items()]
    else:
        named = [(run_name(ds), ds) for ds in runs]
    out: dict[str, xr.Dataset] = {}
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


def run_colours(names: Sequence[str]) -> dict[str, str]:
    """A stable palette colour per run name (hash of the name; the next free one on clashes)."""
    used: set[str] = set()
    out = {}
    for name in names:
        i = zlib.crc32(name.encode()) % (len(OKABE_ITO) - 1)  # yellow only when all else is taken
        while OKABE_ITO[i] in used and len(used) < len(OKABE_ITO):
            i = (i + 1) % len(OKABE_ITO)
        out[name] = OKABE_ITO[i]
        used.add(OKABE_ITO[i])
    return out


def site_labels(da: xr.DataArray) -> list[str]:
    """'L3.attn' style labels for the ``sublayer`` coordinate ('out' for the model output)."""
    kinds = da["kind"].values if "kind" in da.coords else ["attn", "mlp"] * da.sizes["sublayer"]
    layers = da["layer_of"].values if "layer_of" in da.coords else da["sublayer"].values // 2
    return [
        "out" if str(k) == "out" else f"L{int(layer)}.{plot_text(str(k))}"
        for k, layer in zip(kinds, layers, strict=False)
    ]


def apply_style(fig: go.Figure, title: str, x_title: str, y_title: str, log_y: bool = False):
    fig.update_layout(
        title={"text": title, "x": 0.01},
        template="plotly_white",
        hovermode="closest",
        legend={"title": {"text": "run"}},
        showlegend=True,
        margin={"l": 70, "r": 20, "t": 90, "b": 60},
    )
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title, type="log" if log_y else "linear")
    return fig


def integer_ticks(fig: go.Figure, n: int) -> None:
    """Depth axes count ``n`` positions 0 … n−1: whole-number ticks, at most about 10 of them
    (legible at half width, as figures are side by side), and no tick before the first."""
    fig.update_xaxes(tick0=0, dtick=max(1, -(-n // 10)), range=[-0.5, n - 0.5])
