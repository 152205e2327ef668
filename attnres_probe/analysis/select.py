"""Selecting from a run: required variables, one recorded step, or a window of late steps.

Every analysis takes either one step (``step=S``: the recorded step nearest to S) or, by
default, the mean over the last ``fraction`` of recorded steps — a single recorded step is
one batch and noisy; the tail mean is the run's settled state.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import xarray as xr

DEFAULT_FRACTION = 0.1


class AnalysisError(ValueError):
    """A run lacks what an analysis needs; the message names the variable and the fix."""


def require(ds: xr.Dataset, *names: str) -> None:
    """Raise AnalysisError unless ``ds`` holds every variable in ``names``."""
    missing = [n for n in names if n not in ds.data_vars]
    if missing:
        kind = ds.attrs.get("residual", "?")
        hint = (
            "baseline runs have no depth weights; pick a full or block run"
            if kind == "baseline" and any(n.startswith("depth_") for n in missing)
            else "record the run with the probe (attnres_probe.hooks.probe) to get it"
        )
        raise AnalysisError(
            f"run {run_name(ds)!r} has no variable {', '.join(map(repr, missing))}; {hint}"
        )
    if "step" in ds.dims and ds.sizes["step"] == 0:
        raise AnalysisError(f"run {run_name(ds)!r} has no recorded steps yet")


def run_name(ds: xr.Dataset) -> str:
    """The run's name from its attrs (``run_name``), or 'run' when it has none."""
    return str(ds.attrs.get("run_name") or "run")


def json_attr(ds: xr.Dataset, name: str) -> dict:
    """A run attribute holding a configuration (JSON text or a dict); empty when the run does
    not have it or it is not a mapping."""
    raw = ds.attrs.get(name)
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            return {}
    return dict(raw) if isinstance(raw, dict) else {}


def model_config(ds: xr.Dataset) -> dict:
    """The run's model configuration (``model_config``); empty when the run does not say."""
    return json_attr(ds, "model_config")


def train_config(ds: xr.Dataset) -> dict:
    """The run's training recipe (``train_config``); empty when not recorded."""
    return json_attr(ds, "train_config")


def first_count(n: int, fraction: float) -> int:
    """How many of ``n`` positions are the first ``fraction`` of them: ceil(n · fraction), at
    least one (the same rounding as :func:`tail`)."""
    if not 0 < fraction <= 1:
        raise AnalysisError(f"fraction={fraction} must be in (0, 1]; 0.1 means the first 10 %")
    return max(1, min(n, math.ceil(n * fraction - 1e-9)))


def windows(da: xr.DataArray, window: int | None) -> xr.DataArray:
    """``da`` per recorded step (``window`` None or 1), or the mean of each run of ``window``
    consecutive recorded steps, labelled by its last step. Windows are counted back from the
    last recorded step, so the last one is always whole (the first may hold fewer steps)."""
    if window is None or window == 1 or "step" not in da.dims:
        return da
    if window < 1:
        raise AnalysisError(f"window={window} must be at least 1 recorded step")
    n = da.sizes["step"]
    group = (n - 1 - np.arange(n)) // window  # 0 for the last window
    last_steps = [
        int(da["step"].values[np.flatnonzero(group == g)[-1]])
        for g in range(group.max(initial=-1), -1, -1)
    ]
    labelled = da.assign_coords(window=("step", group))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = labelled.groupby("window").mean("step", skipna=True)
    out = out.isel(window=slice(None, None, -1)).rename(window="step")
    out = out.assign_coords(step=np.asarray(last_steps, dtype=np.int64))
    out.attrs = {**da.attrs, "window": f"mean of {window} recorded steps"}
    return out


def tail(obj: xr.DataArray | xr.Dataset, fraction: float = DEFAULT_FRACTION):
    """The last ``fraction`` of recorded steps (at least one)."""
    if not 0 < fraction <= 1:
        raise AnalysisError(f"fraction={fraction} must be in (0, 1]; 0.1 means the last 10 %")
    n = obj.sizes["step"]
    keep = max(1, math.ceil(n * fraction))
    return obj.isel(step=slice(n - keep, n))


def nearest_step(steps, step: int) -> int:
    """The recorded step in ``steps`` (increasing) nearest ``step``; the later one on a tie."""
    steps = np.asarray(steps)
    i = int(np.searchsorted(steps, step))
    if i == steps.size or (i > 0 and step - steps[i - 1] < steps[i] - step):
        i -= 1
    return int(steps[i])


def snapshot(
    da: xr.DataArray, step: int | None = None, fraction: float = DEFAULT_FRACTION
) -> xr.DataArray:
    """``da`` without its step dim: at the recorded step nearest ``step``, or the tail mean.

    The tail mean skips NaN (steps where the variable was not recorded), so a source that does
    not exist stays NaN. The result's attrs say which steps it covers (``steps``), and that the
    step asked for was not recorded when it was not.
    """
    if "step" not in da.dims:
        return da
    if da.sizes["step"] == 0:
        raise AnalysisError(f"{da.name!r} has no recorded steps yet")
    if step is not None:
        shown = nearest_step(da["step"].values, step)
        out = da.sel(step=shown)
        label = f"step {shown}"
        if shown != step:
            label += f" (step {step} was not recorded; the nearest recorded one)"
        out = out.drop_vars("step")
    else:
        window = tail(da, fraction)
        with warnings.catch_warnings():  # all-NaN columns (absent sources) stay NaN quietly
            warnings.simplefilter("ignore", RuntimeWarning)
            out = window.mean("step", skipna=True)
        first, last = int(window["step"][0]), int(window["step"][-1])
        n = window.sizes["step"]
        label = f"step {last}" if n == 1 else f"mean of steps {first}–{last} ({n} recorded)"
    out.attrs = {**da.attrs, "steps": label}
    return out
