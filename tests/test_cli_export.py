"""Exporting figures to files, and the export / info commands."""

from __future__ import annotations

import json

import pytest
from synthetic_runs import baseline_run, full_run

from attnres_probe import figures
from attnres_probe.figures import FIGURES
from attnres_probe.tools.export import ExportError, find_browser, write_figures

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF-", "svg": b"<svg"}
no_browser = pytest.mark.skipif(
    find_browser() is None,
    reason="no Chrome/Chromium on this machine (apt-get install -y chromium); "
    "static export cannot be checked",
)


@no_browser
def test_static_export_writes_valid_png_svg_and_pdf_in_one_session(tmp_path):
    runs = [baseline_run(), full_run()]
    items = [
        (figures.dilution(runs), tmp_path / "dilution.png"),
        (figures.depth_heatmap(runs), tmp_path / "sub" / "heatmap.svg"),
        (figures.loss(runs), tmp_path / "loss.pdf"),
    ]
    seen = []
    written = write_figures(items, progress=lambda done, total, path: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    for path in written:
        raw = path.read_bytes()
        fmt = path.suffix[1:]
        assert raw.startswith(MAGIC[fmt]) or (fmt == "svg" and b"<svg" in raw[:200]), path
        assert len(raw) > 5_000, (path, len(raw))


def test_html_export_is_self_contained_and_json_round_trips(tmp_path):
    fig = figures.loss(baseline_run())
    html, js = write_figures([(fig, tmp_path / "a.html"), (fig, tmp_path / "a.json")])
    text = html.read_text()
    assert text.lower().startswith(("<!doctype html>", "<html")) and "Plotly.newPlot" in text
    assert len(text) > 1_000_000  # plotly.js inlined, no CDN needed
    assert json.loads(js.read_text())["layout"]["title"]["text"] == "Training loss"


def test_static_export_without_a_browser_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-chrome"))
    with pytest.raises(ExportError, match="apt-get install -y chromium"):
        write_figures([(figures.loss(baseline_run()), tmp_path / "a.png")])
    assert not (tmp_path / "a.png").exists()


def test_unknown_format_is_refused_with_the_choices(tmp_path):
    with pytest.raises(ExportError, match="use one of png, svg, pdf, html, json"):
        write_figures([(figures.loss(baseline_run()), tmp_path / "a.gif")])


# ----------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def runs():
    from synthetic_runs import trained_runs

    return trained_runs()


def invoke(*args):
    from typer.testing import CliRunner

    from attnres_probe.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args], prog_name="attnres-probe")


@no_browser
def test_export_all_figures_of_two_runs_writes_one_png_each(runs, tmp_path):
    out = tmp_path / "figs"
    r = invoke("export", runs["baseline"], runs["full"], "--format", "png", "--out", out)
    assert r.exit_code == 0, r.output
    assert "skipped pruning" in r.stderr  # no pruning results yet: said, not fatal
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{name}.png" for name in FIGURES if name != "pruning")
    for p in out.iterdir():
        assert p.read_bytes().startswith(MAGIC["png"]) and p.stat().st_size > 5_000
    assert sorted(r.stdout.split()) == sorted(str(out / n) for n in written)


def test_export_one_figure_to_a_file_takes_the_format_from_its_suffix(runs, tmp_path):
    target = tmp_path / "dil.html"
    r = invoke("export", runs["baseline"], "--figure", "dilution", "--out", target, "--step", 5)
    assert r.exit_code == 0, r.output
    assert "Plotly.newPlot" in target.read_text()
    target = tmp_path / "loss.json"
    assert invoke("export", runs["full"], "-f", "loss", "-o", target).exit_code == 0
    assert json.loads(target.read_text())["data"][0]["name"] == "full"


def test_export_errors_are_one_line_with_the_right_exit_code(runs, tmp_path):
    r = invoke("export", tmp_path / "missing", "--out", tmp_path / "x")
    assert r.exit_code == 1 and "does not exist" in r.stderr and "Traceback" not in r.output
    r = invoke("export", tmp_path, "--out", tmp_path / "x")
    assert r.exit_code == 1 and "not a run" in r.stderr
    r = invoke("export", runs["baseline"], "--figure", "depth-heatmap", "-o", tmp_path / "h.svg")
    assert r.exit_code == 1 and "needs a full or block AttnRes run" in r.stderr
    r = invoke("export", runs["baseline"], "--format", "gif")
    assert r.exit_code == 2
    r = invoke(
        "export", runs["baseline"], "-f", "loss", "--format", "svg", "-o", tmp_path / "a.png"
    )
    assert r.exit_code == 2 and "--format is svg" in r.stderr


def test_info_prints_the_headline_numbers_as_a_table_or_json(runs):
    r = invoke("info", runs["full"])
    assert r.exit_code == 0, r.output
    for label in (
        "steps recorded",
        "stream RMS growth",
        "gradient spread",
        "top depth sources",
        "held-out loss",
        "most prunable layers",
    ):
        assert label in r.stdout, label
    r = invoke("info", runs["baseline"], "--json")
    summary = json.loads(r.stdout)
    assert summary["kind"] == "baseline" and summary["steps_recorded"] == 30
    assert summary["held_out_loss"] > 0 and "depth" not in summary
    assert summary["dilution"]["exponent"] is not None


def test_info_repair_reports_and_bad_paths_fail_in_one_line(runs, tmp_path):
    r = invoke("info", runs["baseline"], "--repair", "--json")
    assert r.exit_code == 0, r.output
    assert "repaired" in r.stderr and json.loads(r.stdout)["steps_recorded"] == 30
    r = invoke("info", tmp_path / "nope")
    assert r.exit_code == 1 and r.stderr.startswith("error:") and "Traceback" not in r.output
