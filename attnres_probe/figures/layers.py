"""Per-layer profiles as the paper draws them (its Fig. 5b/c), and their measures over training.

``layer_output``: what each transformer layer hands on (``layer_output_rms``); ``layer_grad``:
the gradient it receives (``layer_grad_norm``, or ``param_grad_norm`` for the layer's own
weights). Runs that differ only in their seed are drawn as one line — the mean over seeds —
with a band spanning the seeds (min to max); ``seeds="each"`` draws every run. The legend
gives each line's growth exponent or early-layer excess. ``growth_over_training`` and
``excess_over_training`` follow those measures step by step (or per window of steps).
"""

from __future__ import annotations

import plotly.graph_objects as go
import xarray as xr

from attnres_probe.analysis import dilution as dilution_analysis
from attnres_probe.analysis import gradients as gradient_analysis
from attnres_probe.analysis.select import DEFAULT_FRACTION, AnalysisError
from attnres_probe.figures.profiles import depth_lines, titled
from attnres_probe.figures.style import Labelled, Runs, as_runs, finish
from attnres_probe.figures.training import over_training

OUTPUT_MEANING = (
    "baseline: the stream after the layer · Block AttnRes: the block's partial sum after it · "
    "Full AttnRes: the layer's last update"
)


def _with(runs: Runs, variable: str, what: str) -> Labelled:
    """The runs that recorded ``variable`` (an AnalysisError naming it when none did)."""
    runs = as_runs(runs)
    kept = Labelled(
        (n, ds) for n, ds in runs.items() if variable in ds.data_vars and ds.sizes["step"]
    )
    if not kept:
        raise AnalysisError(
            f"{what} needs {variable!r}; {', '.join(runs)} did not record it (record the runs "
            "with this version's probe)"
        )
    return kept


def layer_output(
    runs: Runs,
    step: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    seeds: str = "band",
) -> go.Figure:
    """Each transformer layer's output magnitude (``layer_output_rms``) vs layer, runs on
    shared axes (the paper's Fig. 5b); the legend gives the growth exponent with depth."""

    def describe(profile: xr.DataArray) -> str:
        fit = dilution_analysis.fit_growth(profile, "layer")
        return f"exponent {float(fit['exponent']):.2f}"

    kept = _with(runs, "layer_output_rms", "the output-magnitude figure")
    fig, note = depth_lines(
        kept,
        lambda ds: ds["layer_output_rms"],
        "output RMS",
        step,
        None,
        fraction,
        seeds,
        describe,
    )
    return finish(
        fig,
        titled("Output magnitude per layer", f"{note} · {OUTPUT_MEANING}"),
        "transformer layer",
        "RMS of what the layer hands on",
    )


def layer_grad(
    runs: Runs,
    step: int | None = None,
    fraction: float = DEFAULT_FRACTION,
    seeds: str = "band",
    variable: str = "layer_grad_norm",
) -> go.Figure:
    """Each transformer layer's gradient magnitude vs layer (log scale), runs on shared axes
    (the paper's Fig. 5c); the legend gives the early-layer excess (mean of the first 10 % of
    layers / median). variable: ``layer_grad_norm`` (‖∂loss/∂ the layer's output‖) or
    ``param_grad_norm`` (the layer's own weights)."""
    if gradient_analysis.GRADIENT_VARIABLES.get(variable) != "layer":
        raise AnalysisError(
            f"variable={variable!r} is not a per-layer gradient; use layer_grad_norm or "
            "param_grad_norm"
        )

    def describe(profile: xr.DataArray) -> str:
        excess = gradient_analysis.early_excess(profile, "layer")
        return f"early excess {float(excess):.2f}"

    kept = _with(runs, variable, "the gradient-magnitude figure")
    fig, note = depth_lines(
        kept, lambda ds: ds[variable], "grad norm", step, None, fraction, seeds, describe
    )
    what = (
        "‖∂loss/∂ layer output‖₂" if variable == "layer_grad_norm" else "‖∂loss/∂ layer weights‖₂"
    )
    return finish(
        fig,
        titled(
            "Gradient magnitude per layer",
            f"{note} · early excess: mean over the first 10 % of layers / median over layers",
        ),
        "transformer layer",
        what,
        log_y=True,
    )


def growth_over_training(
    runs: Runs, step: int | None = None, seeds: str = "band", window: int | None = None
) -> go.Figure:
    """The growth exponent with depth of ``layer_output_rms`` (solid) and ``hidden_rms``
    (dashed) at every recorded step, or per ``window`` of recorded steps. ``step`` is unused."""
    fig = over_training(runs, ["layer-growth-exponent", "growth-exponent"], seeds, window)
    fig.add_hline(y=0, line={"color": "#999999", "width": 1})
    fig.update_layout(
        title_text="Growth exponent with depth over training<br><sup>slope of log magnitude vs "
        "log depth, 0 = flat; solid: per layer output, dashed: per sublayer input</sup>"
    )
    fig.update_yaxes(title_text="growth exponent")
    return fig


def excess_over_training(
    runs: Runs, step: int | None = None, seeds: str = "band", window: int | None = None
) -> go.Figure:
    """The early-layer gradient excess of ``layer_grad_norm`` (solid) and ``param_grad_norm``
    (dashed) at every recorded step, or per ``window`` of recorded steps. ``step`` is
    unused."""
    fig = over_training(runs, ["early-excess", "param-early-excess"], seeds, window)
    fig.add_hline(y=1, line={"color": "#999999", "width": 1})
    fig.update_layout(
        title_text="Early-layer gradient excess over training<br><sup>mean over the first 10 % "
        "of layers / median, 1 = a typical gradient; solid: layer output, dashed: its weights"
        "</sup>"
    )
    fig.update_yaxes(title_text="early excess (ratio)")
    return fig
