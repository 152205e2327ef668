"""Exporting figures to files, and the export / info commands."""

from __future__ import annotations

import json

import pytest
from synthetic_runs import baseline_run, full_run

from attnres_probe import figures
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


def test_html_files_of_one_export_share_one_plotly_js_and_json_round_trips(tmp_path):
    fig = figures.loss(baseline_run())
    a, b, js, bundle = write_figures(
        [(fig, tmp_path / "a.html"), (fig, tmp_path / "b.html"), (fig, tmp_path / "a.json")]
    )
    assert bundle == tmp_path / "plotly.min.js" and bundle.stat().st_size > 1_000_000
    for page in (a, b):
        text = page.read_text()
        assert text.lower().startswith(("<!doctype html>", "<html")) and "Plotly.newPlot" in text
        assert 'src="plotly.min.js"' in text and len(text) < 200_000
    assert json.loads(js.read_text())["layout"]["title"]["text"] == "Training loss"


def test_self_contained_html_inlines_plotly_js_and_writes_nothing_beside(tmp_path):
    (page,) = write_figures(
        [(figures.loss(baseline_run()), tmp_path / "a.html")], self_contained=True
    )
    assert len(page.read_text()) > 1_000_000  # opens offline, no file beside it needed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.html"]


def test_a_given_size_wins_over_the_figures_own(tmp_path):
    fig = figures.loss(baseline_run()).update_layout(width=300, height=200)
    (path, _) = write_figures([(fig, tmp_path / "a.html")], size=(640, None))
    text = path.read_text()
    assert '"width":640' in text and '"height":200' in text
    assert fig.layout.width == 300  # the caller's figure is left as it was


def png_size(path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw.startswith(MAGIC["png"])
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


@no_browser
def test_static_export_takes_width_height_and_scale(tmp_path):
    fig = figures.loss(baseline_run())
    (png, jpg) = write_figures(
        [(fig, tmp_path / "a.png"), (fig, tmp_path / "a.jpg")], size=(500, 300), scale=2
    )
    assert png_size(png) == (1000, 600)
    assert jpg.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG bytes under a .jpg name


def test_static_export_without_a_browser_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-chrome"))
    with pytest.raises(ExportError, match="apt-get install -y chromium"):
        write_figures([(figures.loss(baseline_run()), tmp_path / "a.png")])
    assert not (tmp_path / "a.png").exists()


def test_unknown_format_is_refused_with_the_choices(tmp_path):
    with pytest.raises(ExportError, match="is not one of png, jpg, jpeg, webp, svg, pdf, html"):
        write_figures([(figures.loss(baseline_run()), tmp_path / "a.gif")])
    with pytest.raises(ExportError, match="cannot write TIFF; export png"):
        write_figures([(figures.loss(baseline_run()), tmp_path / "a.tiff")])
    assert not list(tmp_path.iterdir())


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
    assert "skipped prune-path" in r.stderr
    written = sorted(p.name for p in out.iterdir())
    skipped = {line.split()[1].rstrip(":") for line in r.stderr.splitlines() if "skipped" in line}
    assert written == sorted(f"{n}.png" for n in figures.FIGURES if n not in skipped)
    assert {"dilution", "grad-map", "layer-output"} <= {w[:-4] for w in written}
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
    r = invoke("export", runs["baseline"], "-f", "loss", "-o", tmp_path / "a.tiff")
    assert r.exit_code == 2 and "cannot write TIFF" in r.stderr
    r = invoke(
        "export", runs["baseline"], "-f", "loss", "--format", "jpg", "-o", tmp_path / "a.jpeg"
    )
    assert r.exit_code == 0, r.output  # jpg and jpeg are one format
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


def test_export_to_a_folder_named_with_a_slash_writes_into_it(runs, tmp_path):
    out = tmp_path / "figs"
    r = invoke("export", runs["baseline"], "-f", "loss", "-o", f"{out}/", "--format", "json")
    assert r.exit_code == 0, r.output
    assert [p.name for p in out.iterdir()] == ["loss.json"]
    assert r.stdout == f"{out / 'loss.json'}\n" and r.stderr == ""  # no stray lines


def test_several_figures_to_one_file_name_is_refused_before_anything_is_made(runs, tmp_path):
    target = tmp_path / "two.png"
    r = invoke("export", runs["baseline"], "-f", "loss", "-f", "dilution", "-o", target)
    assert r.exit_code == 2 and "names one file but 2 figures" in r.stderr
    assert "--out " in r.stderr and not target.exists() and not list(tmp_path.iterdir())


def test_html_export_of_several_figures_shares_one_plotly_js(runs, tmp_path):
    out = tmp_path / "html"
    r = invoke("export", runs["baseline"], runs["full"], "--format", "html", "-o", out)
    assert r.exit_code == 0, r.output
    pages = sorted(out.glob("*.html"))
    assert len(pages) >= 8 and (out / "plotly.min.js").is_file()
    assert max(p.stat().st_size for p in pages) < 1_000_000  # plotly.js is not in them
    r = invoke(
        "export", runs["baseline"], "-f", "loss", "-o", tmp_path / "one.html", "--self-contained"
    )
    assert r.exit_code == 0 and (tmp_path / "one.html").stat().st_size > 1_000_000


def test_the_figures_export_offers_are_the_figures_the_library_draws():
    from attnres_probe.cli.cmd_export import FIGURE_NAMES

    assert set(FIGURE_NAMES) == set(figures.FIGURES)
