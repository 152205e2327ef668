"""The demo end to end (quick size), the report page and the claims table's rules."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from synthetic_runs import baseline_run, full_run
from test_figures import with_pruning
from typer.testing import CliRunner

from attnres_probe.cli import app
from attnres_probe.figures import FIGURES
from attnres_probe.tools import claims as claims_mod
from attnres_probe.tools.report import headline_numbers, render_report, summarise_runs

runner = CliRunner()
PLOTLY_BANNER = "plotly.js v"  # the licence banner at the top of the inlined library


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "runs"
    result = runner.invoke(app, ["demo", "--quick", "--out", str(out)], prog_name="attnres-probe")
    return out, result


def test_quick_demo_writes_a_report_with_every_figure(quick_demo):
    out, result = quick_demo
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text(encoding="utf-8")
    for name in FIGURES:
        assert f'id="figure-{name}"' in page, f"figure {name} missing from the report"
    assert "Not available" not in page
    assert page.count(PLOTLY_BANNER) == 1, "plotly.js must be inlined exactly once"
    assert "<script src=" not in page, "the report must not load anything from the network"


def test_quick_demo_headline_numbers_are_finite(quick_demo):
    out, result = quick_demo
    assert result.exit_code == 0, result.output
    _, summaries = summarise_runs({k: out / k for k in ("baseline", "block")})
    # What a kind has no number for: a baseline has no depth attention, no block pattern and
    # only zero removal; the demo prunes the block run with its default (mask) removal, and
    # its quick blocks hold one layer each, so no block has a rise within it.
    absent = {
        "baseline": {
            "depth_entropy",
            "depth_effective_sources",
            "mass_gradient_spearman",
            "within_block_rise",
            "boundary_drop",
            "spearman_block_influence_mask",
            "spearman_relative_update_mask",
        },
        "block": {
            "within_block_rise",
            "spearman_block_influence_zero",
            "spearman_relative_update_zero",
        },
    }
    for kind, summary in summaries.items():
        for key, value in headline_numbers(summary).items():
            if key in absent[kind]:
                assert value is None, (kind, key, value)
            else:
                assert value is not None and math.isfinite(value), (kind, key, value)


def test_quick_demo_prints_headlines_and_the_dashboard_command(quick_demo):
    out, result = quick_demo
    assert "held-out loss" in result.stdout
    assert f"attnres-probe dashboard {out}" in result.stdout
    assert (out / "baseline" / "checkpoint.safetensors").is_file()
    assert (out / "block" / "recording.zarr").is_dir()


def test_quick_demo_names_its_threads_and_reports_progress_in_lines(quick_demo):
    """Not a terminal: the thread count first, then plain progress lines for every stage."""
    _, result = quick_demo
    lines = result.stderr.splitlines()
    assert any(line.startswith("demo with 1 torch thread (a small model") for line in lines)
    for stage in ("train baseline", "train block", "prune baseline", "prune block"):
        shown = [line for line in lines if line.startswith(f"{stage}:")]
        assert len(shown) >= 2 and "(100 %)" in shown[-1], (stage, lines)


def test_demo_refuses_an_unknown_kind_in_one_line(tmp_path):
    result = runner.invoke(
        app, ["demo", "--quick", "--kinds", "baseline,dense", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2  # a bad option value: a usage error
    assert "kind 'dense' is not a residual kind" in result.stderr
    assert "Traceback" not in result.output


def test_report_says_why_a_figure_cannot_be_drawn():
    page = render_report({"base": baseline_run()})
    missing = re.findall(r'<section id="([\w-]+)">(?:(?!</section>).)*Not available', page, re.S)
    assert set(missing) == {
        "depth-heatmap",
        "depth-heatmap-by-kind",
        "depth-entropy",
        "mass-received",
        "pruning",
        "prune-path",
    }
    assert 'id="figure-dilution"' in page


def test_report_table_has_one_column_per_run():
    page = render_report({"base": with_pruning(baseline_run(), [0.5, 0.1]), "full": full_run()})
    headlines = re.search(r'<section id="headlines">.*?</section>', page, re.S).group(0)
    header = re.search(r"<thead><tr>(.*?)</tr></thead>", headlines).group(1)
    assert re.findall(r"<th>([^<]*)</th>", header) == ["", "base", "full"]


def test_claims_measures_count_layers_removable_alone():
    ds = with_pruning(baseline_run(), [0.01, 0.03], base=2.0)  # +0.5 % and +1.5 %
    assert claims_mod.run_measures(ds)["removable_alone"] == 1
    assert np.isnan(claims_mod.run_measures(ds)["removable_together"])  # no greedy path stored


def test_readme_markers_are_replaced_and_read_back():
    text = f"# t\n\nintro\n{claims_mod.MARK_START}\nold\n{claims_mod.MARK_END}\nafter\n"
    new = claims_mod.replace_marked(text, "| a | b |\n")
    assert claims_mod.marked_block(new) == "| a | b |\n"
    assert new.startswith("# t\n\nintro\n") and new.endswith(f"{claims_mod.MARK_END}\nafter\n")
    with pytest.raises(ValueError, match="claims:start"):
        claims_mod.replace_marked("no markers", "x")
