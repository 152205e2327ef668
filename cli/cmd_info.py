"""``attnres-probe info``: a run's headline numbers (a table, or JSON with --json)."""

from __future__ import annotations

import contextlib
import json
import shlex
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from attnres_probe.cli.common import (
    command_name,
    err_console,
    fail,
    library_errors,
    out_console,
)
from attnres_probe.cli.main import app


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def _rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """The summary dict as (label, value) rows, in reading order."""
    arch = f"{s['kind']}, {s['n_layers']} layers ({s['n_sublayers']} sublayers)"
    if s.get("d_model"):
        arch += f", d_model {s['d_model']}"
    if s.get("n_blocks"):
        arch += f", {s['n_blocks']} blocks"
    rows = [("run", s["run"]), ("model", arch), ("status", _fmt(s.get("status")))]
    steps = f"{s['steps_recorded']}"
    if s["steps_recorded"]:
        steps += f" (steps {s['first_step']}–{s['last_step']})"
    rows.append(("steps recorded", steps))
    if s.get("window"):
        rows.append(("window", s["window"]))
    rows.append(("train loss", _fmt(s.get("train_loss"))))
    rows.append(("held-out loss", _fmt(s.get("held_out_loss"))))
    if s.get("nonfinite"):
        rows.append(("non-finite values", str(s["nonfinite"])))
    if d := s.get("dilution"):
        rows.append(
            (
                "stream RMS growth",
                f"last/first {_fmt(d['last_first_ratio'], 3)}, exponent {_fmt(d['exponent'], 3)}"
                f", slope {_fmt(d['linear_slope'], 3)}/sublayer",
            )
        )
    if o := s.get("output_magnitude"):
        rows.append(
            (
                "output magnitude growth",
                f"exponent {_fmt(o['exponent'], 3)}, last/first {_fmt(o['last_first_ratio'], 3)}"
                " (layer_output_rms per layer)",
            )
        )
    if b := s.get("block_periodicity"):
        rows.append(
            (
                "block periodic pattern",
                f"rise within blocks ×{_fmt(b['within_block_rise'], 3)}, at boundaries "
                f"×{_fmt(b['boundary_drop'], 3)}, across blocks exponent "
                f"{_fmt(b['across_block_exponent'], 3)}",
            )
        )
    if e := s.get("early_gradient_excess"):
        parts = [f"{v} {_fmt(e[v], 3)}" for v in ("layer_grad_norm", "param_grad_norm") if v in e]
        rows.append(
            (
                "early gradient excess",
                ", ".join(parts) + f" (first {e['early_layers']} layers / median)",
            )
        )
    if r := s.get("relative_update"):
        rows.append(
            (
                "relative update",
                f"first {_fmt(r['first'], 3)}, last {_fmt(r['last'], 3)}, "
                f"mean {_fmt(r['mean'], 3)}",
            )
        )
    if g := s.get("gradient_spread"):
        rows.append(
            (
                "gradient spread (diagnostic)",
                f"CV {_fmt(g['cv'], 3)}, max/min {_fmt(g['max_over_min'], 3)}",
            )
        )
    if d := s.get("depth"):
        rows.append(
            (
                "depth attention",
                f"normalised entropy {_fmt(d['mean_normalised_entropy'], 3)}, "
                f"effective sources {_fmt(d['mean_effective_sources'], 3)}",
            )
        )
        top = ", ".join(f"{t['source']} {_fmt(t['share'], 2)}" for t in d["top_sources"])
        rows.append(("top depth sources", top))
    if s.get("mass_gradient_spearman") is not None:
        rows.append(
            ("mass received vs gradient", f"Spearman ρ {_fmt(s['mass_gradient_spearman'], 3)}")
        )
    for removal, p in (s.get("pruning") or {}).items():
        units = ", ".join(f"{u['unit']} ({_fmt(u['loss_increase'], 3)})" for u in p["layers"])
        rows.append((f"most prunable ({removal})", f"{units} (by {p['by']})"))
        if p.get("spearman"):
            rho = ", ".join(f"{k} {_fmt(v, 2)}" for k, v in p["spearman"].items())
            rows.append((f"proxy Spearman ρ ({removal})", rho))
    if not s.get("pruning") and (p := s.get("most_prunable")):
        units = ", ".join(f"{u['unit']} ({_fmt(u['block_influence'], 3)})" for u in p["layers"])
        rows.append(("most prunable layers", f"{units} (by {p['by']})"))
    return rows


def _runs_below(path: Path) -> list:
    """The runs in folder ``path`` when it is a folder of runs rather than a run, else []."""
    from attnres_probe.store import list_runs

    if not path.is_dir() or path.name.endswith(".zarr") or (path / "recording.zarr").exists():
        return []
    return [r for r in list_runs(path) if r.name != "."]


def _print_runs(root: Path, runs: list, as_json: bool) -> None:
    from dataclasses import asdict

    from rich.table import Table

    if as_json:
        typer.echo(json.dumps([asdict(r) for r in runs], indent=2, ensure_ascii=False))
        return
    table = Table(title=f"{len(runs)} runs under {root}", title_justify="left", box=None)
    table.add_column("run", min_width=min(40, max(len(r.name) for r in runs)), overflow="fold")
    for name in ("state", "kind", "layers", "recorded steps", "last step", "last loss"):
        table.add_column(name, justify="left" if name in ("state", "kind") else "right")
    for r in runs:
        cells = (r.name, r.status, r.residual, r.n_layers, r.n_steps, r.last_step, r.last_loss)
        table.add_row(*(Text(_fmt(c)) for c in cells))
    out_console.print(table)
    example = shlex.quote(str(root / runs[0].name))
    out_console.print(
        f"one in detail: {command_name()} info {example}", highlight=False, soft_wrap=True
    )


@contextlib.contextmanager
def warnings_as_lines(run: Path) -> Iterator[None]:
    """Print the warnings raised inside, once each, as one ``warning: …`` line on stderr when
    the block succeeds: a partial read gives one line per thing it lost. numpy's notes on
    statistics of all-NaN data are left out: those statistics show as –."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
    lines: dict[str, None] = {}
    for w in caught:
        notes = getattr(w.message, "notes", None)  # RunStoreWarning: what a partial read lost
        if notes:
            lines.update({f"run {run} was read in part: {note}": None for note in notes})
        else:
            lines[" ".join(str(w.message).split())] = None
    for line in lines:
        err_console.print(Text.assemble(("warning:", "yellow"), " ", line), soft_wrap=True)


@app.command()
def info(
    run: Annotated[Path, typer.Argument(help="Run directory (or its .zarr store).")],
    repair: Annotated[
        bool,
        typer.Option("--repair", help="First truncate a store left half-written by a crash."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Summarise a run: model, steps recorded and its headline depth-dynamics numbers; given a
    folder of runs, list them."""
    from rich.table import Table

    listed = _runs_below(run)
    if listed:
        if repair:
            raise fail(f"{run} is a folder of {len(listed)} runs; --repair mends one: name it")
        _print_runs(run, listed, as_json)
        return
    with library_errors(), warnings_as_lines(run):
        from attnres_probe.analysis.summary import run_summary
        from attnres_probe.checkpoint import checkpoint_facts
        from attnres_probe.store import open_run
        from attnres_probe.store import repair as repair_store

        if repair:
            report = repair_store(run)
            err_console.print(f"repaired {run}: {report}", highlight=False, soft_wrap=True)
        ds = open_run(run)
        summary = run_summary(ds, extra=checkpoint_facts(run))
    if as_json:
        typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for label, value in _rows(summary):
        table.add_row(Text(label), Text(value))  # Text: names like [by …] are not markup
    out_console.print(table)
