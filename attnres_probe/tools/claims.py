"""The paper's qualitative claims, measured on a folder of recorded runs (the sample runs).

:func:`measure_claims` groups the runs under a folder by residual kind and computes, per run,
with the project's own analyses (last 10 % of recorded steps): the stream-RMS growth from the
first to the last sublayer, the gradient spread across sublayers, the depth-attention entropy
and preferred sources, the held-out loss, and how many layers pruning can remove for ≤ 1 %
held-out loss together with how well each cheap proxy ranks the layers. :func:`claims_markdown`
turns that into the table the README carries, with a verdict for every claim, whichever way it
falls; :func:`replace_marked` puts it between the README's markers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from attnres_probe.analysis import depth, dilution, gradients, pruning
from attnres_probe.analysis.select import AnalysisError, snapshot
from attnres_probe.figures import site_labels
from attnres_probe.store import open_run, run_paths
from attnres_probe.tools import prune_path

KIND_ORDER = ("baseline", "full", "block")
ATTNRES_KINDS = ("full", "block")
MARK_START = "<!-- claims:start -->"
MARK_END = "<!-- claims:end -->"
# Thresholds the claims are held against (issue: "What the sample runs must show").
BASELINE_GROWTH_MIN = 3.0
ATTNRES_GROWTH_MAX = 1.5
ENTROPY_MAX = 0.9
TOLERANCE = prune_path.DEFAULT_TOLERANCE


@dataclass(frozen=True)
class Measure:
    """One per-run number of the table: key, label, and digits after the point."""

    key: str
    label: str
    decimals: int
    counts: bool = False  # whole numbers: list each run's value beside the mean


MEASURES = (
    Measure("growth", "stream RMS last/first sublayer", 2),
    Measure("grad_spread", "gradient norm max/min across sublayers", 2),
    Measure("param_grad_spread", "parameter-gradient norm max/min across layers", 2),
    Measure("entropy_tokens", "depth attention: mean normalised entropy (per token)", 3),
    Measure("entropy_mean", "depth attention: normalised entropy of the mean weights", 3),
    Measure("held_out_loss", "held-out loss (nats/byte)", 4),
    Measure("removable_alone", "layers each removable alone for ≤ 1 % loss", 1, counts=True),
    Measure(
        "removable_together", "layers removable together for ≤ 1 % loss (greedy)", 1, counts=True
    ),
    Measure("rho_block_influence", "Spearman ρ, 1 − cos_in_out vs loss increase", 2),
    Measure("rho_relative_update", "Spearman ρ, relative update vs loss increase", 2),
)


@dataclass
class KindClaims:
    """Every measure of one residual kind: run names and one value per run (NaN: n/a)."""

    kind: str
    runs: list[str]
    values: dict[str, list[float]] = field(default_factory=dict)
    preferred: xr.DataArray | None = None  # mean depth weights [sublayer, source] over runs

    def mean(self, key: str) -> float:
        v = np.asarray(self.values.get(key, []), dtype=float)
        return float(np.mean(v)) if v.size and np.isfinite(v).all() else math.nan

    def std(self, key: str) -> float:
        """Sample standard deviation over runs (NaN for a single run)."""
        v = np.asarray(self.values.get(key, []), dtype=float)
        return float(np.std(v, ddof=1)) if v.size > 1 and np.isfinite(v).all() else math.nan


def find_runs(root: str | Path) -> dict[str, Path]:
    """Runs under ``root`` (any depth) by their path relative to it, sorted: the store's
    listing (:func:`attnres_probe.store.run_paths`). FileNotFoundError when ``root`` is not a
    directory."""
    return {name: Path(path) for name, path in run_paths(root).items()}


def _finite(x) -> float:
    x = float(x)
    return x if math.isfinite(x) else math.nan


def _try(fn) -> float:
    try:
        return _finite(fn())
    except AnalysisError:
        return math.nan


def run_measures(ds: xr.Dataset) -> dict[str, float]:
    """The per-run numbers of :data:`MEASURES` (NaN where the run lacks what one needs)."""
    out = {
        "growth": _try(lambda: dilution.growth(ds)["last_first_ratio"]),
        "grad_spread": _try(lambda: gradients.gradient_spread_summary(ds)["max_over_min"]),
        "param_grad_spread": _try(
            lambda: gradients.gradient_spread_summary(ds, variable="param_grad_norm")[
                "max_over_min"
            ]
        ),
        "entropy_tokens": math.nan,
        "entropy_mean": math.nan,
        "held_out_loss": _try(lambda: pruning.pruning_results(ds, "layer")["prune_base_loss"]),
        "removable_alone": _try(lambda: prune_path.removable_alone(ds, TOLERANCE)),
        "removable_together": _try(lambda: prune_path.removable_together(ds, TOLERANCE)),
    }
    if "depth_weights" in ds.data_vars:
        for key, of in (("entropy_tokens", "tokens"), ("entropy_mean", "mean")):
            ent = depth.depth_entropy(ds, of=of)["normalised_entropy"]
            out[key] = _finite(np.nanmean(snapshot(ent).values))
    try:
        cmp = pruning.compare_with_proxies(ds, "layer")
        out["rho_block_influence"] = _finite(cmp.attrs.get("spearman_block_influence", math.nan))
        out["rho_relative_update"] = _finite(cmp.attrs.get("spearman_relative_update", math.nan))
    except AnalysisError:
        out["rho_block_influence"] = out["rho_relative_update"] = math.nan
    return out


def measure_claims(runs: Mapping[str, xr.Dataset]) -> dict[str, KindClaims]:
    """Every measure for every run, grouped by the runs' residual kind (in KIND_ORDER)."""
    grouped: dict[str, KindClaims] = {}
    weights: dict[str, list[xr.DataArray]] = {}
    for name, ds in runs.items():
        kind = str(ds.attrs.get("residual"))
        entry = grouped.setdefault(kind, KindClaims(kind, []))
        entry.runs.append(name)
        for key, value in run_measures(ds).items():
            entry.values.setdefault(key, []).append(value)
        if "depth_weights" in ds.data_vars:
            weights.setdefault(kind, []).append(depth.mean_depth_weights(ds, include_output=True))
    for kind, ws in weights.items():
        grouped[kind].preferred = xr.concat(ws, dim="run").mean("run", skipna=True)
    order = [k for k in KIND_ORDER if k in grouped] + sorted(set(grouped) - set(KIND_ORDER))
    return {k: grouped[k] for k in order}


def open_runs(root: str | Path) -> dict[str, xr.Dataset]:
    """Every run under ``root`` opened with ``open_run``, by relative path."""
    runs = find_runs(root)
    if not runs:
        raise FileNotFoundError(f"no runs (recording.zarr) under {root}")
    return {name: open_run(path) for name, path in runs.items()}


# ----------------------------------------------------------------------------- verdicts


def _threshold(
    checks: list[tuple[KindClaims, str, Callable[[float], bool], str]], decimals: int
) -> str:
    """Verdict over (kind, measure key, test, 'test in words') for every kind: **holds** when
    every run passes, **holds on average** when every kind's mean passes, else **does not
    hold**; then per kind how many runs pass, with the values where some fail."""
    every_run, every_mean, parts = True, True, []
    for c, key, test, words in checks:
        values = c.values[key]
        passed = [math.isfinite(v) and test(v) for v in values]
        every_run &= all(passed)
        every_mean &= math.isfinite(c.mean(key)) and test(c.mean(key))
        text = f"{c.kind} {words} in {sum(passed)}/{len(values)} runs"
        if not all(passed):
            text += " (" + ", ".join(f"{v:.{decimals}f}" for v in values) + ")"
        parts.append(text)
    if every_run:
        label = "**holds**"
    elif every_mean:
        label = "**holds on average, not in every run**"
    else:
        label = "**does not hold**"
    return f"{label}: " + "; ".join(parts)


def verdicts(claims: Mapping[str, KindClaims]) -> dict[str, str]:
    """One sentence per claim saying whether the measured runs support it, with the numbers."""
    out: dict[str, str] = {}
    base = claims.get("baseline")
    attn = [claims[k] for k in ATTNRES_KINDS if k in claims]

    if base and attn:
        checks = [
            (base, "growth", lambda v: v >= BASELINE_GROWTH_MIN, f"≥ {BASELINE_GROWTH_MIN:g}")
        ]
        checks += [
            (c, "growth", lambda v: v <= ATTNRES_GROWTH_MAX, f"≤ {ATTNRES_GROWTH_MAX:g}")
            for c in attn
        ]
        out["growth"] = _threshold(checks, 2)
        for key in ("grad_spread", "param_grad_spread"):
            base_mean = base.mean(key)
            if not math.isfinite(base_mean):
                continue
            checks = [
                (c, key, lambda v, m=base_mean: v < m, "below the baseline mean") for c in attn
            ]
            out[key] = _threshold(checks, 2)

    if attn:
        checks = [
            (c, "entropy_tokens", lambda v: v <= ENTROPY_MAX, f"≤ {ENTROPY_MAX:g}") for c in attn
        ]
        out["entropy_tokens"] = _threshold(checks, 3)

    losses = {k: c.mean("held_out_loss") for k, c in claims.items()}
    if all(math.isfinite(v) for v in losses.values()) and len(losses) > 1:
        ranked = sorted(losses, key=losses.get)
        text = "lowest first: " + " < ".join(ranked)
        stds = [c.std("held_out_loss") for c in claims.values() if len(c.runs) > 1]
        spread = max((v for v in stds if math.isfinite(v)), default=math.nan)
        if math.isfinite(spread) and max(losses.values()) - min(losses.values()) < spread:
            text += (
                f"; every gap between kinds ({max(losses.values()) - min(losses.values()):.4f}"
                f" at most) is smaller than the seed-to-seed std ({spread:.4f})"
            )
        out["held_out_loss"] = text
    return out


# ----------------------------------------------------------------------------- markdown


def _cell(c: KindClaims, m: Measure) -> str:
    mean, std = c.mean(m.key), c.std(m.key)
    if not math.isfinite(mean):
        values = c.values.get(m.key, [])
        if values and any(math.isfinite(v) for v in values):  # some runs lack it
            return ", ".join("–" if not math.isfinite(v) else f"{v:.{m.decimals}f}" for v in values)
        return "–"
    if len(c.runs) == 1 or not math.isfinite(std):
        return f"{mean:.{m.decimals}f}"
    text = f"{mean:.{m.decimals}f} ± {std:.{m.decimals}f}"
    if m.counts:
        text += " (" + ", ".join(f"{v:.0f}" for v in c.values[m.key]) + ")"
    return text


def _preferred_rows(claims: Mapping[str, KindClaims], k: int) -> list[str]:
    kinds = [c for c in claims.values() if c.preferred is not None]
    if not kinds:
        return []
    first = kinds[0].preferred
    labels = site_labels(first)
    header = "| sublayer | " + " | ".join(f"{c.kind}: top {k} sources" for c in kinds) + " |"
    rows = [header, "|---|" + "---|" * len(kinds)]
    for i, label in enumerate(labels):
        cells = []
        for c in kinds:
            w = c.preferred.transpose("sublayer", "source")
            if i >= w.sizes["sublayer"]:
                cells.append("–")
                continue
            row = np.asarray(w.values[i], dtype=float)
            names = [str(s) for s in w["source"].values]
            order = np.argsort(np.where(np.isfinite(row), -row, np.inf), kind="stable")[:k]
            cells.append(
                ", ".join(f"{names[j]} {row[j]:.2f}" for j in order if math.isfinite(row[j]))
            )
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows


def describe_runs(claims: Mapping[str, KindClaims]) -> str:
    """'baseline: 3 runs (a, b, c); …' for the table's preamble."""
    return "; ".join(
        f"{c.kind}: {len(c.runs)} run{'s' if len(c.runs) > 1 else ''} ({', '.join(c.runs)})"
        for c in claims.values()
    )


def claims_markdown(claims: Mapping[str, KindClaims], top_k: int = 3) -> str:
    """The claims table (one column per kind: mean ± sample std over its runs) with a verdict
    column, then each AttnRes kind's preferred sources per sublayer in a collapsed block."""
    verdict = verdicts(claims)
    kinds = list(claims.values())
    head = "| measure | " + " | ".join(f"{c.kind} (n={len(c.runs)})" for c in kinds)
    lines = [
        f"Runs: {describe_runs(claims)}. Values are mean ± sample std over runs, each taken "
        "over the last 10 % of recorded steps; held-out loss and pruning use the same "
        "held-out batches for every run.",
        "",
        head + " | claim and verdict |",
        "|---|" + "---:|" * len(kinds) + "---|",
    ]
    claims_text = {
        "growth": f"baseline ≥ {BASELINE_GROWTH_MIN:g}, AttnRes ≤ {ATTNRES_GROWTH_MAX:g}",
        "grad_spread": "lower for AttnRes than for the baseline",
        "param_grad_spread": "(a second view of the same claim, per layer)",
        "entropy_tokens": f"≤ {ENTROPY_MAX:g} (far from uniform)",
        "held_out_loss": "reported as measured",
    }
    for m in MEASURES:
        text = claims_text.get(m.key, "")
        if m.key in verdict:
            text = f"{text} — {verdict[m.key]}" if text else verdict[m.key]
        cells = " | ".join(_cell(c, m) for c in kinds)
        lines.append(f"| {m.label} | {cells} | {text} |")
    pref = _preferred_rows(claims, top_k)
    if pref:
        lines += [
            "",
            "<details><summary>Preferred depth sources of each sublayer (mean weight over "
            "the runs of each kind; <code>out</code> is the model output)</summary>",
            "",
            *pref,
            "",
            "</details>",
        ]
    return "\n".join(lines) + "\n"


def replace_marked(text: str, block: str) -> str:
    """``text`` with everything between :data:`MARK_START` and :data:`MARK_END` replaced by
    ``block`` (the markers stay)."""
    start, end = text.find(MARK_START), text.find(MARK_END)
    if start < 0 or end < start:
        raise ValueError(
            f"the text has no {MARK_START} … {MARK_END} section; add both markers where the "
            "table belongs"
        )
    return text[: start + len(MARK_START)] + "\n" + block + text[end:]


def marked_block(text: str) -> str:
    """What stands between the markers of ``text`` (without the surrounding newline)."""
    start, end = text.find(MARK_START), text.find(MARK_END)
    if start < 0 or end < start:
        raise ValueError(f"the text has no {MARK_START} … {MARK_END} section")
    return text[start + len(MARK_START) : end].removeprefix("\n")


def claims_for_folder(root: str | Path) -> str:
    """The claims markdown for every run under ``root``."""
    return claims_markdown(measure_claims(open_runs(root)))
