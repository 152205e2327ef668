"""The paper's claims as the paper states them, measured on a folder of recorded runs.

:func:`measure_claims` groups the runs under a folder by residual kind and computes, per run,
with the project's own analyses (last 10 % of recorded steps): the growth exponent of the
per-layer output magnitude (``layer_output_rms``) and of the stream (``hidden_rms``) with
depth, Block AttnRes's periodic pattern, the early-layer gradient excess of
``layer_grad_norm`` and ``param_grad_norm``, the depth-attention entropy, the held-out loss,
the gradient spread and the depth-attention mass received (diagnostics, not the paper's
claims), and how many layers pruning can remove. :func:`claims_markdown` turns that into the
table the README carries: each claim with a verdict computed from the runs and every run's
value, whichever way it falls; :func:`replace_marked` puts it between the README's markers.

How each claim is decided (every run must pass for **holds**; every kind's mean for **holds on
average**; otherwise **does not hold**):

- output / stream magnitude (Fig. 5b): every baseline run's growth exponent is > 0, and every
  AttnRes run's is below the smallest baseline exponent;
- periodic pattern (Fig. 5b, Block AttnRes): within-block rise > 1 and boundary drop < 1
  (``analysis.dilution.periodicity``);
- early-layer gradient excess (Fig. 5c): each AttnRes run's excess is below that of the
  baseline run with the same seed (the baseline mean where there is none);
- depth weights far from uniform (Fig. 8): mean normalised per-token entropy ≤ ``ENTROPY_MAX``;
- Block ≈ Full: the held-out loss gap is within the seed-to-seed std (1 % of Full's loss
  without repeats), and each Block run's stream exponent and early excess lie nearer Full's
  than the baseline's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from attnres_probe.analysis import depth, dilution, gradients, pruning
from attnres_probe.analysis.seeds import run_seed
from attnres_probe.analysis.select import AnalysisError, snapshot
from attnres_probe.figures import site_labels
from attnres_probe.store import open_run, run_paths

KIND_ORDER = ("baseline", "full", "block")
ATTNRES_KINDS = ("full", "block")
MARK_START = "<!-- claims:start -->"
MARK_END = "<!-- claims:end -->"
ENTROPY_MAX = 0.9  # normalised entropy at or below which weights count as far from uniform
LOSS_TOLERANCE = 0.01  # Block ≈ Full in loss without repeats: within 1 % of Full's loss
TOLERANCE = pruning.DEFAULT_TOLERANCE


@dataclass(frozen=True)
class Measure:
    """One per-run number of the table: key, label, digits after the point, and its section
    (``paper``: a statistic the paper's claims use; ``diagnostic``: not the paper's claim;
    ``pruning``)."""

    key: str
    label: str
    decimals: int
    section: str = "paper"
    counts: bool = False  # whole numbers: list each run's value beside the mean


MEASURES = (
    Measure("output_exponent", "output magnitude: growth exponent of layer_output_rms", 2),
    Measure("stream_exponent", "stream magnitude: growth exponent of hidden_rms", 2),
    Measure("within_block_rise", "Block: output rise within a block (last / first layer)", 2),
    Measure("boundary_drop", "Block: output across a block boundary (next first / last)", 2),
    Measure("across_block_exponent", "Block: growth exponent of block-end output", 2),
    Measure("excess_layer_grad", "early-layer excess of layer_grad_norm (first 10 % / median)", 2),
    Measure("excess_param_grad", "early-layer excess of param_grad_norm (first 10 % / median)", 2),
    Measure("entropy_tokens", "depth attention: mean normalised entropy (per token)", 3),
    Measure("entropy_mean", "depth attention: normalised entropy of the mean weights", 3),
    Measure("held_out_loss", "held-out loss (nats/byte)", 4),
    Measure("grad_spread", "gradient spread: max/min of grad_norm over sublayers", 2, "diagnostic"),
    Measure("grad_cv", "gradient spread: CV of grad_norm over sublayers", 2, "diagnostic"),
    Measure(
        "param_grad_spread",
        "gradient spread: max/min of param_grad_norm over layers",
        2,
        "diagnostic",
    ),
    Measure(
        "mass_gradient_rho",
        "Spearman ρ, depth-attention mass received vs source gradient",
        2,
        "diagnostic",
    ),
    Measure(
        "removable_alone",
        "layers each removable alone for ≤ 1 % loss",
        1,
        "pruning",
        counts=True,
    ),
    Measure(
        "removable_together",
        "layers removable together for ≤ 1 % loss (greedy)",
        1,
        "pruning",
        counts=True,
    ),
    Measure("rho_block_influence", "Spearman ρ, 1 − cos_in_out vs loss increase", 2, "pruning"),
    Measure("rho_relative_update", "Spearman ρ, relative update vs loss increase", 2, "pruning"),
)
SECTIONS = {
    "paper": "Statistics of the paper's claims",
    "diagnostic": "Diagnostics (not the paper's claims)",
    "pruning": "Pruning",
}


@dataclass
class KindClaims:
    """Every measure of one residual kind: run names, seeds and one value per run (NaN: n/a)."""

    kind: str
    runs: list[str]
    seeds: list[int | None] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)
    removals: list[str] = field(default_factory=list)  # removal of each run's pruning numbers
    preferred: xr.DataArray | None = None  # mean depth weights [sublayer, source] over runs

    def mean(self, key: str) -> float:
        v = np.asarray(self.values.get(key, []), dtype=float)
        return float(np.mean(v)) if v.size and np.isfinite(v).all() else math.nan

    def std(self, key: str) -> float:
        """Sample standard deviation over runs (NaN for a single run)."""
        v = np.asarray(self.values.get(key, []), dtype=float)
        return float(np.std(v, ddof=1)) if v.size > 1 and np.isfinite(v).all() else math.nan

    def measured(self, key: str) -> bool:
        """Whether any run of the kind has a value for ``key``."""
        return any(math.isfinite(v) for v in self.values.get(key, []))


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
    nan = math.nan
    out = {
        "output_exponent": _try(
            lambda: dilution.growth(ds, variable="layer_output_rms")["exponent"]
        ),
        "stream_exponent": _try(lambda: dilution.growth(ds)["exponent"]),
        "within_block_rise": nan,
        "boundary_drop": nan,
        "across_block_exponent": nan,
        "excess_layer_grad": _try(
            lambda: gradients.gradient_excess(ds, variable="layer_grad_norm")["excess"]
        ),
        "excess_param_grad": _try(
            lambda: gradients.gradient_excess(ds, variable="param_grad_norm")["excess"]
        ),
        "entropy_tokens": nan,
        "entropy_mean": nan,
        "held_out_loss": _try(lambda: pruning.pruning_results(ds, "layer")["prune_base_loss"]),
        "grad_spread": _try(lambda: gradients.gradient_spread_summary(ds)["max_over_min"]),
        "grad_cv": _try(lambda: gradients.gradient_spread_summary(ds)["cv"]),
        "param_grad_spread": _try(
            lambda: gradients.gradient_spread_summary(ds, variable="param_grad_norm")[
                "max_over_min"
            ]
        ),
        "mass_gradient_rho": nan,
        "removable_alone": _try(lambda: pruning.removable_alone(ds, TOLERANCE)),
        "removable_together": _try(lambda: pruning.removable_together(ds, TOLERANCE)),
        "rho_block_influence": nan,
        "rho_relative_update": nan,
    }
    if ds.attrs.get("residual") == "block" and "layer_output_rms" in ds.data_vars:
        p = dilution.block_periodicity(ds)
        for key in ("within_block_rise", "boundary_drop", "across_block_exponent"):
            out[key] = _finite(p[key])
    if "depth_weights" in ds.data_vars:
        for key, of in (("entropy_tokens", "tokens"), ("entropy_mean", "mean")):
            if of == "tokens" and "depth_entropy" not in ds.data_vars:
                continue
            ent = depth.depth_entropy(ds, of=of)["normalised_entropy"]
            out[key] = _finite(np.nanmean(snapshot(ent).values))
        if "grad_norm" in ds.data_vars:
            out["mass_gradient_rho"] = _finite(depth.mass_and_gradient(ds).attrs["spearman"])
    try:
        cmp = pruning.compare_with_proxies(ds, "layer")
        out["rho_block_influence"] = _finite(cmp.attrs.get("spearman_block_influence", nan))
        out["rho_relative_update"] = _finite(cmp.attrs.get("spearman_relative_update", nan))
    except AnalysisError:
        pass
    return out


def measure_claims(runs: Mapping[str, xr.Dataset]) -> dict[str, KindClaims]:
    """Every measure for every run, grouped by the runs' residual kind (in KIND_ORDER)."""
    grouped: dict[str, KindClaims] = {}
    weights: dict[str, list[xr.DataArray]] = {}
    for name, ds in runs.items():
        kind = str(ds.attrs.get("residual"))
        entry = grouped.setdefault(kind, KindClaims(kind, []))
        entry.runs.append(name)
        entry.seeds.append(run_seed(ds))
        try:
            entry.removals.append(str(pruning.pruning_results(ds, "layer").attrs["removal"]))
        except AnalysisError:
            entry.removals.append("–")
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


@dataclass(frozen=True)
class Claim:
    """One claim as the paper states it, the statistic that measures it, and its verdict."""

    key: str
    statement: str
    measured_by: str
    verdict: str
    values: str


def _values(c: KindClaims, key: str, decimals: int) -> str:
    """'block: block-s0 1.21, block-s1 0.98' — every run's value (– where not measured)."""
    parts = [
        f"{run} {v:.{decimals}f}" if math.isfinite(v) else f"{run} –"
        for run, v in zip(c.runs, c.values.get(key, []), strict=True)
    ]
    return f"{c.kind}: " + ", ".join(parts)


def _label(every_run: bool, every_mean: bool) -> str:
    if every_run:
        return "**holds**"
    if every_mean:
        return "**holds on average, not in every run**"
    return "**does not hold**"


def _threshold(
    checks: list[tuple[KindClaims, str, Callable[[float], bool], str]],
) -> str:
    """Verdict over (kind, measure key, test, 'test in words') for every kind: **holds** when
    every run passes, **holds on average** when every kind's mean passes, else **does not
    hold**; then per kind how many runs pass."""
    every_run, every_mean, parts = True, True, []
    for c, key, test, words in checks:
        values = c.values[key]
        passed = [math.isfinite(v) and test(v) for v in values]
        every_run &= all(passed)
        every_mean &= math.isfinite(c.mean(key)) and test(c.mean(key))
        parts.append(f"{c.kind} {words} in {sum(passed)}/{len(values)} runs")
    return f"{_label(every_run, every_mean)}: " + "; ".join(parts)


def _not_measured(what: str) -> str:
    return f"**not measured**: {what}"


def _growth_claim(base: KindClaims, attn: list[KindClaims], key: str) -> str:
    if not base.measured(key) or not any(c.measured(key) for c in attn):
        return _not_measured("the runs did not record it (record them with this version)")
    lowest = min((v for v in base.values[key] if math.isfinite(v)), default=math.nan)
    checks = [(base, key, lambda v: v > 0, "grows (exponent > 0)")]
    checks += [
        (c, key, lambda v, m=lowest: v < m, f"below the lowest baseline exponent ({lowest:.2f})")
        for c in attn
        if c.measured(key)
    ]
    return _threshold(checks)


def _partner(base: KindClaims, seed: int | None, key: str) -> tuple[float, str]:
    """The baseline value an AttnRes run of ``seed`` is compared with, and what it is."""
    for run, s, v in zip(base.runs, base.seeds, base.values[key], strict=True):
        if seed is not None and s == seed and math.isfinite(v):
            return v, run
    return base.mean(key), "the baseline mean"


def _excess_claim(base: KindClaims, attn: list[KindClaims], key: str) -> str:
    if not base.measured(key) or not any(c.measured(key) for c in attn):
        return _not_measured("the runs did not record it (record them with this version)")
    every_run, every_mean, parts = True, True, []
    for c in attn:
        if not c.measured(key):
            continue
        lower, pairs = [], []
        for run, seed, v in zip(c.runs, c.seeds, c.values[key], strict=True):
            ref, ref_name = _partner(base, seed, key)
            lower.append(math.isfinite(v) and math.isfinite(ref) and v < ref)
            pairs.append(f"{run} {v:.2f} vs {ref_name} {ref:.2f}")
        every_run &= all(lower)
        every_mean &= c.mean(key) < base.mean(key)
        parts.append(f"{c.kind} lower in {sum(lower)}/{len(lower)} ({', '.join(pairs)})")
    return f"{_label(every_run, every_mean)}: " + "; ".join(parts)


def _loss_gap(claims: Mapping[str, KindClaims]) -> str:
    full, block = claims["full"], claims["block"]
    gap = abs(block.mean("held_out_loss") - full.mean("held_out_loss"))
    if not math.isfinite(gap):
        return _not_measured("no held-out loss (prune the runs to measure it)")
    stds = [c.std("held_out_loss") for c in claims.values()]
    spread = max((v for v in stds if math.isfinite(v)), default=math.nan)
    if math.isfinite(spread):
        bound, words = spread, f"the largest seed-to-seed std ({spread:.4f})"
    else:
        bound = LOSS_TOLERANCE * full.mean("held_out_loss")
        words = f"{LOSS_TOLERANCE:.0%} of Full's loss ({bound:.4f})"
    ok = gap <= bound
    label = "**holds**" if ok else "**does not hold**"
    return (
        f"{label}: |block − full| = {gap:.4f} {'≤' if ok else '>'} {words}; "
        f"block {block.mean('held_out_loss'):.4f}, full {full.mean('held_out_loss'):.4f}"
    )


def _nearer_full(claims: Mapping[str, KindClaims], key: str) -> str:
    full, block, base = claims["full"], claims["block"], claims.get("baseline")
    if base is None or not all(c.measured(key) for c in (full, block, base)):
        return _not_measured("needs baseline, full and block runs that recorded it")
    f, b = full.mean(key), base.mean(key)
    return _threshold(
        [
            (
                block,
                key,
                lambda v: abs(v - f) < abs(v - b),
                f"nearer Full ({f:.2f}) than the baseline ({b:.2f})",
            )
        ]
    )


def claims(claims_by_kind: Mapping[str, KindClaims]) -> list[Claim]:
    """Each claim the runs can speak to, as the paper states it, with its verdict and every
    run's value (a claim that fails is reported failing, with the numbers)."""
    out: list[Claim] = []
    base = claims_by_kind.get("baseline")
    attn = [claims_by_kind[k] for k in ATTNRES_KINDS if k in claims_by_kind]
    every = list(claims_by_kind.values())

    def values(key: str, decimals: int, kinds=None) -> str:
        kinds = every if kinds is None else kinds
        return "; ".join(_values(c, key, decimals) for c in kinds if c.measured(key))

    if base and attn:
        out.append(
            Claim(
                "output_growth",
                "Output magnitude grows with depth in the baseline and stays bounded with "
                "AttnRes (Fig. 5b)",
                "growth exponent of layer_output_rms with layer depth (log-log slope)",
                _growth_claim(base, attn, "output_exponent"),
                values("output_exponent", 2),
            )
        )
        out.append(
            Claim(
                "stream_growth",
                "The residual stream grows with depth in the baseline (PreNorm dilution), "
                "not with AttnRes",
                "growth exponent of hidden_rms with sublayer depth",
                _growth_claim(base, attn, "stream_exponent"),
                values("stream_exponent", 2),
            )
        )
    block = claims_by_kind.get("block")
    if block:
        if block.measured("within_block_rise"):
            verdict = _threshold(
                [
                    (block, "within_block_rise", lambda v: v > 1, "rises within blocks (> 1)"),
                    (block, "boundary_drop", lambda v: v < 1, "drops at boundaries (< 1)"),
                ]
            )
        else:
            verdict = _not_measured("needs layer_output_rms and ≥ 2 layers per block")
        out.append(
            Claim(
                "block_periodic",
                "Block AttnRes's output magnitude is periodic with the block boundaries (Fig. 5b)",
                "within-block rise (last/first layer of a block) and boundary drop (first "
                "layer of the next block / last layer), geometric means over blocks",
                verdict,
                (
                    values("within_block_rise", 2, [block])
                    + " (rise); "
                    + values("boundary_drop", 2, [block]).removeprefix("block: ")
                    + " (drop)"
                )
                if block.measured("within_block_rise")
                else "",
            )
        )
    if base and attn:
        for key, variable in (
            ("excess_layer_grad", "layer_grad_norm"),
            ("excess_param_grad", "param_grad_norm"),
        ):
            out.append(
                Claim(
                    key,
                    "The baseline has disproportionately large gradients in its earliest "
                    "layers; AttnRes a more uniform distribution (Fig. 5c)",
                    f"early-layer excess of {variable}: mean over the first 10 % of layers "
                    "(at least one) / median over layers, lower for AttnRes, seed by seed",
                    _excess_claim(base, attn, key),
                    values(key, 2),
                )
            )
    if attn:
        measured = [c for c in attn if c.measured("entropy_tokens")]
        verdict = (
            _threshold(
                [
                    (c, "entropy_tokens", lambda v: v <= ENTROPY_MAX, f"≤ {ENTROPY_MAX:g}")
                    for c in measured
                ]
            )
            if measured
            else _not_measured("no depth entropy recorded")
        )
        out.append(
            Claim(
                "entropy",
                "Learned depth weights are far from uniform (Fig. 8)",
                f"mean normalised per-token entropy (1 = uniform) ≤ {ENTROPY_MAX:g}",
                verdict,
                values("entropy_tokens", 3, attn),
            )
        )
    if "full" in claims_by_kind and "block" in claims_by_kind:
        out.append(
            Claim(
                "block_full_loss",
                "Block AttnRes matches Full AttnRes (held-out loss)",
                "gap of the mean held-out loss against the seed-to-seed std",
                _loss_gap(claims_by_kind),
                values("held_out_loss", 4),
            )
        )
        for key, what in (
            ("stream_exponent", "stream growth exponent"),
            ("excess_layer_grad", "early-layer excess of layer_grad_norm"),
        ):
            out.append(
                Claim(
                    f"block_full_{key}",
                    "Block AttnRes matches Full AttnRes (profiles)",
                    f"each Block run's {what} nearer Full's mean than the baseline's",
                    _nearer_full(claims_by_kind, key),
                    values(key, 2, [claims_by_kind["block"], claims_by_kind["full"]]),
                )
            )
    if base and attn and base.measured("grad_spread"):
        rho = values("mass_gradient_rho", 2, attn)
        out.append(
            Claim(
                "gradient_spread",
                "Gradient spread, max/min of grad_norm over sublayers — a diagnostic, not the "
                "paper's claim",
                "max/min is set by its minimum: in AttnRes a source's gradient follows the "
                "depth-attention mass later sublayers give it (Spearman ρ of mass received "
                f"vs source gradient: {rho or 'not recorded'})",
                "reported, no verdict",
                values("grad_spread", 2),
            )
        )
    return out


def verdicts(claims_by_kind: Mapping[str, KindClaims]) -> dict[str, str]:
    """Claim key -> its verdict sentence with the numbers (see :func:`claims`)."""
    return {c.key: c.verdict for c in claims(claims_by_kind)}


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


def _preferred_rows(claims_by_kind: Mapping[str, KindClaims], k: int) -> list[str]:
    kinds = [c for c in claims_by_kind.values() if c.preferred is not None]
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


def describe_runs(claims_by_kind: Mapping[str, KindClaims]) -> str:
    """'baseline: 3 runs (a, b, c); …' for the table's preamble."""
    return "; ".join(
        f"{c.kind}: {len(c.runs)} run{'s' if len(c.runs) > 1 else ''} ({', '.join(c.runs)})"
        for c in claims_by_kind.values()
    )


def _removals(kinds: list[KindClaims]) -> str:
    """'baseline zero; block mask' — the removal each kind's pruning numbers were measured
    with (each run's default where stored, mask for AttnRes and zero for a baseline)."""
    return "; ".join(f"{c.kind} {', '.join(sorted(set(c.removals)))}" for c in kinds if c.removals)


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def claims_markdown(claims_by_kind: Mapping[str, KindClaims], top_k: int = 3) -> str:
    """The claims (each as the paper states it, how it is measured, the verdict and every
    run's value), then the measures table (one column per kind: mean ± sample std over its
    runs), then each AttnRes kind's preferred sources per sublayer in a collapsed block."""
    kinds = list(claims_by_kind.values())
    lines = [
        f"Runs: {describe_runs(claims_by_kind)}. Every number is taken over the last 10 % of "
        "recorded steps; held-out loss and pruning use the same held-out batches for every "
        "run. Output magnitude and gradients are per transformer layer, as the paper plots "
        "them.",
        "",
        "| claim (as the paper states it) | measured by | verdict | every run |",
        "|---|---|---|---|",
    ]
    for c in claims(claims_by_kind):
        cells = (c.statement, c.measured_by, c.verdict, c.values or "–")
        lines.append("| " + " | ".join(_escape(x) for x in cells) + " |")
    head = "| measure | " + " | ".join(f"{c.kind} (n={len(c.runs)})" for c in kinds) + " |"
    rule = "|---|" + "---:|" * len(kinds)
    for section, title in SECTIONS.items():
        rows = [
            f"| {m.label} | " + " | ".join(_cell(c, m) for c in kinds) + " |"
            for m in MEASURES
            if m.section == section and any(c.measured(m.key) for c in kinds)
        ]
        if section == "pruning":
            title += " (removal: " + _removals(kinds) + ")"
        if rows:
            lines += ["", f"**{title}** (mean ± sample std over runs)", "", head, rule, *rows]
    pref = _preferred_rows(claims_by_kind, top_k)
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
