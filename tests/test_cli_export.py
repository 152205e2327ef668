"""Exporting figures to files, and the export / info commands."""

from __future__ import annotations

import json

import pytest
from synthetic_runs import baseline_run, full_run

from attnres_probe import figures
from attnres_probe.export import ExportError, find_browser, write_figures

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
