"""Every dashboard page and widget path through Streamlit's AppTest (no browser).

Plotly charts are UnknownElements whose ``proto.spec`` is the figure JSON, so the tests assert
on figure data and titles, not pixels (the browser test covers rendering).
"""

from __future__ import annotations

import functools
import html
import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest
from synthetic_runs import decode
from test_app_runs import (
    BASELINE,
    BROKEN,
    ESCAPE,
    FULL,
    HTML_ATTR,
    HTML_NAME,
    INTERRUPTED,
    LIVE,
    OPENABLE,
    TRAINED,
    _live_writers,
    build_root,
    small,
    trained_run,
)

from attnres_probe.app.confine import ROOT_ENV
from attnres_probe.store.synthetic import step_values

DASHBOARD = Path(__file__).resolve().parents[1] / "app" / "dashboard.py"
PAGES = ("dilution", "depth_attention", "gradients", "training", "pruning", "compare")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = build_root(tmp_path_factory.mktemp("app"))
    shutil.copytree(trained_run(tmp_path_factory.getbasetemp()), root / TRAINED)
    return root


@functools.cache
def _installed_components():
    from streamlit.components.v2 import manifest_scanner

    return manifest_scanner.scan_component_manifests()


@pytest.fixture
def dashboard(root, monkeypatch):
    """Open the dashboard on ``page`` with a query string, as a browser would; checks no page
    raised."""
    from streamlit.components.v2 import manifest_scanner

    # Every AppTest rescans all installed packages for components (~1 s); scan once.
    monkeypatch.setattr(manifest_scanner, "scan_component_manifests", _installed_components)
    monkeypatch.setenv(ROOT_ENV, str(root))

    def open_page(page: str = "runs", **query) -> AppTest:
        at = AppTest.from_file(str(DASHBOARD), default_timeout=60)
        for key, value in query.items():
            at.query_params[key] = value
        at.run()
        if page != "runs":
            at.switch_page(f"views/{page}.py").run()
        assert not at.exception, [e.message for e in at.exception]
        return at

    return open_page


def charts(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def texts(at: AppTest, *kinds: str) -> list[str]:
    return [el.value for kind in kinds for el in getattr(at, kind)]


def plain(markdown: str) -> str:
    """What a reader sees of an escaped markdown string."""
    return markdown.replace("\\", "")


# ----------------------------------------------------------------------------- Runs


def test_runs_page_lists_every_run_with_kind_depth_steps_loss_and_state(dashboard):
    at = dashboard()
    assert at.title[0].value == "Runs"
    table = at.dataframe[0].value.set_index("run")
    assert sorted(table.index) == sorted([*OPENABLE, TRAINED, BROKEN, ESCAPE])
    assert table.loc[BASELINE, ["state", "kind", "layers", "sublayers"]].tolist() == [
        "finished",
        "baseline",
        3,
        6,
    ]
    assert table.loc[BASELINE, "recorded steps"] == 30 and table.loc[BASELINE, "last step"] == 290
    assert table.loc[LIVE, "state"] == "live"
    assert table.loc[INTERRUPTED, "state"] == "interrupted"
    assert table.loc[TRAINED, "checkpoint"] and not table.loc[FULL, "checkpoint"]
    (loss,) = charts(at)
    assert {t["name"] for t in loss["data"]} >= {html.escape(BASELINE), html.escape(FULL)}


def test_a_broken_run_shows_its_reason_on_its_row_and_the_others_stay_usable(dashboard):
    at = dashboard()
    table = at.dataframe[0].value.set_index("run")
    assert table.loc[BROKEN, "state"] == "broken"
    assert "zarr.json" in table.loc[BROKEN, "message"]
    warnings = [plain(w) for w in texts(at, "warning")]
    assert any(w.startswith(f"{BROKEN}: cannot be read") for w in warnings)
    assert any(w.startswith(f"{ESCAPE}: outside ROOT") for w in warnings)
    assert BROKEN not in at.sidebar.selectbox(key="run").options
    assert set(at.sidebar.selectbox(key="run").options) == {*OPENABLE, TRAINED}


def test_a_run_named_with_html_is_shown_literally_everywhere(dashboard):
    at = dashboard("dilution", run=HTML_NAME)
    assert at.sidebar.selectbox(key="run").value == HTML_NAME
    spec = charts(at)[0]
    assert spec["data"][0]["name"].startswith(html.escape(HTML_NAME))
    at = dashboard("depth_attention", run=HTML_NAME)
    (info,) = texts(at, "info")
    assert "<" not in info.replace("\\<", "") and "**" not in info.replace("\\*", "")
    assert plain(info).startswith(HTML_NAME)


def test_run_attributes_with_html_are_shown_as_literal_json(dashboard):
    at = dashboard(run=HTML_NAME)
    (attrs,) = at.json
    shown = json.loads(attrs.value)
    assert shown["run_name"] == HTML_NAME and shown["corpus"] == HTML_ATTR
    assert shown["model_config"]["residual"] == "baseline"  # JSON strings are decoded
    assert "Attributes of" in plain(at.expander[0].label)


MARKDOWN_ELEMENTS = (
    "title",
    "header",
    "subheader",
    "markdown",
    "caption",
    "info",
    "warning",
    "error",
    "success",
)


def markdown_sources(at: AppTest) -> list[str]:
    """The markdown source of every element Streamlit renders as markdown, expander labels too."""
    return texts(at, *MARKDOWN_ELEMENTS) + [e.label for e in at.expander]


@pytest.mark.parametrize("page", ["runs", *PAGES])
def test_a_run_name_with_markdown_and_html_is_escaped_in_every_markdown_element(dashboard, page):
    """Wherever the name reaches markdown it is escaped: no image, link, emphasis or HTML."""
    multi = page in ("compare", "training")
    query = {"compare": [HTML_NAME, FULL]} if multi else {"run": HTML_NAME}
    at = dashboard(page, **query)
    showing = [m for m in markdown_sources(at) if "onerror" in m]
    if page not in ("compare", "training"):  # these name runs only in charts and picker
        assert showing, markdown_sources(at)
    for source in showing:
        bare = re.sub(r"\\.", "", source)  # drop every escaped character
        assert not set(bare) & set("<>*[]"), source
        assert HTML_NAME in plain(source)


def test_with_no_runs_the_page_says_how_to_make_one(dashboard, tmp_path, monkeypatch):
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    at = dashboard()
    assert "No runs" in texts(at, "info")[0]
    assert "attnres-probe train" in at.code[0].value
    at = dashboard("dilution")
    assert "attnres-probe train" in texts(at, "info")[0]


def test_without_sample_runs_every_page_says_they_are_not_installed(dashboard, monkeypatch):
    from attnres_probe.app import confine

    monkeypatch.delenv(ROOT_ENV)
    monkeypatch.setattr(confine, "bundled_sample_runs", lambda: None)
    for page in ("runs", *PAGES):
        at = dashboard(page)
        (warning,) = texts(at, "warning")
        assert "sample_runs" in plain(warning) and "not installed" in plain(warning)
        assert not charts(at)


# ----------------------------------------------------------------------------- URL


@pytest.mark.parametrize(
    "requested,why",
    [
        ("../outside", "climbs out of ROOT"),
        ("exp/../../outside", "climbs out of ROOT"),
        ("ABSOLUTE", "absolute path"),
        (ESCAPE, "outside ROOT"),
        (BROKEN, "cannot be opened"),
        ("no-such-run", "not a run directory"),
    ],
)
def test_a_query_string_naming_a_run_outside_root_is_refused(dashboard, root, requested, why):
    if requested == "ABSOLUTE":
        requested = str(root.parent / "outside")
    at = dashboard("dilution", run=requested)
    (warning,) = texts(at, "warning")
    assert why in plain(warning)
    assert at.sidebar.selectbox(key="run").value == OPENABLE[0]  # first run, not the request


@pytest.mark.parametrize(
    "raw,why",
    [
        ("run=%2e%2e%2foutside", "climbs out of ROOT"),
        ("run=%2E%2E/outside", "climbs out of ROOT"),
        ("run=exp%2F..%2F..%2Foutside", "climbs out of ROOT"),
        ("run=%2e%2e%5coutside", "climbs out of ROOT"),  # a backslash
        ("run=%2Ftmp%2Foutside", "absolute path"),
        ("run=escape%2F", "outside ROOT"),  # the symlink, with a trailing slash
        ("run=%252e%252e%252foutside", "not a run directory"),  # decoded once, never twice
    ],
)
def test_a_url_encoded_escape_in_the_query_string_is_refused(dashboard, raw, why):
    """The browser sends the query string as typed and Streamlit decodes it once with
    parse_qs; the page gets the decoded name and refuses it like its plain spelling."""
    (requested,) = parse_qs(raw)["run"]
    at = dashboard("dilution", run=requested)
    (warning,) = texts(at, "warning")
    assert why in plain(warning)
    assert at.sidebar.selectbox(key="run").value == OPENABLE[0]
    assert not any("outside" in t.get("name", "") for c in charts(at) for t in c["data"])


def test_a_run_whose_recording_is_a_symlink_out_of_root_is_not_served(
    dashboard, monkeypatch, tmp_path
):
    from test_app_runs import record, small

    root = tmp_path / "root"
    record(root / "inside", small("baseline"), 4)
    record(tmp_path / "elsewhere", small("full"), 4)
    (root / "sneaky").mkdir()
    (root / "sneaky" / "recording.zarr").symlink_to(tmp_path / "elsewhere" / "recording.zarr")
    monkeypatch.setenv(ROOT_ENV, str(root))
    at = dashboard("depth_attention", run="sneaky")
    (warning,) = texts(at, "warning")
    assert "keeps recording.zarr outside ROOT" in plain(warning)
    assert at.sidebar.selectbox(key="run").options == ["inside"]
    assert not charts(at)  # "inside" is a baseline: nothing of the full run outside is drawn
    table = dashboard().dataframe[0].value.set_index("run")
    assert table.loc["sneaky", "state"] == "refused"


def test_a_real_recording_whose_files_link_out_of_root_is_refused_and_nothing_of_it_shown(
    dashboard, monkeypatch, tmp_path
):
    from test_app_runs import record, small

    root = tmp_path / "root"
    record(root / "inside", small("baseline"), 4)
    outside = tmp_path / "elsewhere"
    record(outside, small("full"), 4, run_name="the-outside-run")
    for dirpath, _, files in os.walk(outside / "recording.zarr"):  # real folders, linked files
        here = (
            root
            / "mirror"
            / "recording.zarr"
            / os.path.relpath(dirpath, outside / "recording.zarr")
        )
        here.mkdir(parents=True, exist_ok=True)
        for name in files:
            (here / name).symlink_to(os.path.join(dirpath, name))
    monkeypatch.setenv(ROOT_ENV, str(root))
    at = dashboard("runs", run="mirror")
    table = at.dataframe[0].value.set_index("run")
    assert table.loc["mirror", "state"] == "refused"
    assert "resolves outside" in table.loc["mirror", "message"]
    assert at.sidebar.selectbox(key="run").options == ["inside"]
    shown = " ".join(
        texts(at, "markdown", "caption", "warning", "info") + [str(j.value) for j in at.json]
    )
    assert "the-outside-run" not in shown and "full" not in table["kind"].tolist()


def test_compare_ignores_runs_outside_root_named_in_the_query_string(dashboard, root):
    outside = [ESCAPE, "../outside", str(root.parent / "outside"), "%2e%2e/outside"]
    at = dashboard("compare", compare=[*outside, BASELINE, FULL])
    chosen = at.multiselect(key="compare").value
    assert set(chosen) <= set(OPENABLE) and not set(chosen) & set(outside)
    names = {t["name"] for c in charts(at) for t in c["data"] if "name" in t}
    assert not any("outside" in n or ESCAPE in n for n in names)


def test_run_and_step_come_from_the_query_string(dashboard):
    at = dashboard("depth_attention", run=FULL, step="100")
    assert at.sidebar.selectbox(key="run").value == FULL
    assert at.segmented_control(key="window").value == "one step"  # a step in the URL: one step
    assert at.slider(key="step").value == 100
    heatmap = charts(at)[0]
    assert "step 100" in heatmap["layout"]["title"]["text"]


def test_a_step_outside_the_run_falls_back_to_the_latest(dashboard):
    at = dashboard("gradients", run=FULL, step="99999")
    assert at.slider(key="step").value == 290


def test_a_step_that_was_not_recorded_says_which_one_is_shown(dashboard):
    at = dashboard("gradients", run=BASELINE, step="104")  # recorded: 0, 10, …, 290
    shown = [plain(c) for c in texts(at, "caption")]
    assert "Step 104 was not recorded; showing step 100, the nearest one." in shown
    assert "step 100 (step 104 was not recorded" in charts(at)[0]["layout"]["title"]["text"]


def test_compare_takes_a_comma_separated_list_as_well_as_repeated_keys(dashboard):
    at = dashboard("compare", compare=f"{BASELINE},{FULL}")
    assert at.multiselect(key="compare").value == [BASELINE, FULL]
    assert len(charts(at)) == 8


# ----------------------------------------------------------------------------- pages


@pytest.mark.parametrize("run", [BASELINE, FULL])
@pytest.mark.parametrize("page", PAGES)
def test_every_page_opens_on_baseline_and_attnres_runs(dashboard, page, run):
    at = dashboard(page, run=run)
    assert at.title[0].value.lower().replace(" ", "_") == page
    drawn = charts(at)
    expected = {
        "dilution": 4,  # stream, relative update, output per layer, growth over training
        "gradients": 4 if run == BASELINE else 5,  # AttnRes: mass received beside gradients
        "depth_attention": 0 if run == BASELINE else 2,
        "training": 3,
        "pruning": 0,
        "compare": 8,
    }[page]
    assert len(drawn) == expected


def test_profile_pages_default_to_the_mean_of_the_last_10_percent_as_report_and_export(
    dashboard, root
):
    from attnres_probe import figures
    from attnres_probe.store import open_run

    at = dashboard("dilution", run=BASELINE)
    assert at.segmented_control(key="window").value == "mean of the last 10 %" and not at.slider
    dilution = charts(at)[0]
    assert "mean of steps 270–290 (3 recorded)" in dilution["layout"]["title"]["text"]
    exported = figures.dilution({BASELINE: open_run(root / BASELINE)})
    np.testing.assert_allclose(decode(dilution["data"][0]["y"]), exported.data[0].y, rtol=1e-6)


def test_each_profile_has_its_numbers_as_a_table_with_a_csv_download(dashboard):
    at = dashboard("dilution", run=BASELINE)
    table = at.dataframe[0].value
    assert list(table.index)[:2] == ["L0.attn", "L0.mlp"] and list(table.columns) == [BASELINE]
    grad = charts(at)[0]["data"][0]
    np.testing.assert_allclose(table[BASELINE].values, decode(grad["y"]), rtol=1e-6)
    assert at.get("download_button")


def test_dilution_overlays_steps_across_training_and_switches_to_log_scale(dashboard):
    at = dashboard("dilution", run=BASELINE)
    assert len(charts(at)[0]["data"]) == 1
    at.toggle(key="over_training").set_value(True).run()
    at.toggle(key="log_y").set_value(True).run()
    dilution = charts(at)[0]
    assert len(dilution["data"]) == 5
    assert len({t["line"]["color"] for t in dilution["data"]}) == 5  # one colour per step
    assert dilution["layout"]["yaxis"]["type"] == "log"


def test_the_step_slider_redraws_and_the_tail_mean_is_one_click_away(dashboard):
    at = dashboard("gradients", run=BASELINE, window="one step")  # a shared URL's choice
    assert at.slider(key="step").value == 290  # the latest step to begin with
    at = dashboard("gradients", run=BASELINE)
    at.segmented_control(key="window").set_value("one step").run()
    at.slider(key="step").set_value(50).run()
    assert "step 50" in charts(at)[0]["data"][0]["hovertemplate"]
    at.segmented_control(key="window").set_value("mean of the last 10 %").run()
    assert not at.slider
    assert "mean of steps" in charts(at)[0]["layout"]["title"]["text"]


def test_training_page_draws_any_measure_and_the_step_by_sublayer_maps(dashboard):
    at = dashboard("training", compare=[BASELINE, FULL])
    measure, grad_map, update_map = charts(at)
    assert measure["layout"]["title"]["text"].startswith("Stream RMS growth exponent")
    at.selectbox(key="measure").select("grad-cv").run()
    measure = charts(at)[0]
    assert measure["layout"]["title"]["text"].startswith("Gradient spread")
    assert {t["name"] for t in measure["data"]} == {BASELINE, FULL}
    assert grad_map["data"][0]["y"][0] == "L0.attn" and len(grad_map["data"]) == 2
    assert "relative update" in update_map["layout"]["title"]["text"].lower()


def test_seed_groups_are_a_band_until_each_seed_is_asked_for(dashboard, tmp_path, monkeypatch):
    from test_app_runs import record

    for seed in range(3):
        record(
            tmp_path / f"base-s{seed}",
            small("baseline"),
            6,
            seed=seed,
            extra_attrs={"train_config": json.dumps({"seed": seed, "steps": 6})},
        )
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))

    def dilution_lines(at):
        (fig,) = [c for c in charts(at) if c["layout"]["title"]["text"].startswith("PreNorm")]
        return [t.get("name") for t in fig["data"] if t.get("name")]

    at = dashboard("compare", compare=["base-s0", "base-s1", "base-s2"])
    assert dilution_lines(at) == ["baseline · 2 layers (3 seeds)"]
    at.toggle(key="each_seed").set_value(True).run()
    names = dilution_lines(at)
    assert names == ["base-s0", "base-s1", "base-s2"]


def test_switching_run_in_the_sidebar_redraws_the_page(dashboard):
    at = dashboard("depth_attention", run=BASELINE)
    assert not charts(at)
    at.sidebar.selectbox(key="run").select(FULL).run()
    assert not at.exception and len(charts(at)) == 2


def test_per_token_view_runs_the_checkpoint_on_typed_text(dashboard):
    at = dashboard("depth_attention", run=TRAINED)
    at.text_area(key="token_text").input("abc").run()
    assert not at.exception
    table = at.dataframe[-1].value  # the token's table, after the entropy numbers
    assert list(table.index) == ["L0.attn", "L0.mlp", "L1.attn", "L1.mlp", "out"]
    assert table.loc["out"].sum() == pytest.approx(1.0, abs=1e-4)
    token_map = charts(at)[-1]
    assert list(token_map["data"][0]["y"]) == list(table.index)  # every reader row, drawn
    np.testing.assert_allclose(
        decode(token_map["data"][0]["z"]).astype(float), table.values, rtol=1e-5
    )
    at.slider(key="token").set_value(0).run()
    first = at.dataframe[-1].value
    assert first.loc["L0.attn", "emb"] == pytest.approx(1.0)
    assert any("byte 'a'" in plain(c) for c in texts(at, "caption"))


def test_per_token_view_says_so_without_a_checkpoint(dashboard):
    at = dashboard("depth_attention", run=FULL)
    assert any("no checkpoint" in t for t in texts(at, "info"))


def test_pruning_runs_with_progress_when_none_is_stored_then_shows_it(dashboard, root):
    at = dashboard("pruning", run=TRAINED)
    assert not charts(at)
    assert any("no pruning results" in plain(t) for t in texts(at, "info"))
    at.button(key="run_pruning").click().run(timeout=120)
    assert not at.exception and not texts(at, "error"), texts(at, "error")
    (fig,) = charts(at)
    assert [str(u) for u in fig["data"][0]["x"]] == ["L0", "L1"]
    assert "mask removal" in fig["layout"]["title"]["text"]  # the default for AttnRes
    assert at.dataframe[0].value["removal"].tolist() == ["mask"]
    at.segmented_control(key="removal").set_value("zero").run()
    at.button(key="run_pruning").click().run(timeout=120)  # zero is measured beside mask
    assert not at.exception and not texts(at, "error"), texts(at, "error")
    table = at.dataframe[0].value
    assert table["removal"].tolist() == ["mask", "zero"]
    assert all(table["ρ 1 − cos_in_out"] != "")
    assert "zero removal" in charts(at)[0]["layout"]["title"]["text"]
    at.segmented_control(key="granularity").set_value("sublayer").run()
    assert at.button(key="run_pruning")  # sublayer results are not stored yet


def test_pruning_without_a_checkpoint_explains_why_not(dashboard):
    at = dashboard("pruning", run=BASELINE)
    assert not at.button
    assert any("no checkpoint" in t for t in texts(at, "info"))


def test_a_baseline_is_offered_zero_removal_only(dashboard):
    at = dashboard("pruning", run=BASELINE, removal="mask")
    assert at.segmented_control(key="removal").options == ["zero"]
    assert any("only zero" in c for c in texts(at, "caption"))


def test_compare_takes_its_runs_from_the_query_string_on_shared_axes(dashboard):
    at = dashboard("compare", compare=[BASELINE, FULL])
    assert at.multiselect(key="compare").value == [BASELINE, FULL]
    loss, output, layer_grad, dilution, relative, grad, entropy, heatmap = charts(at)
    assert loss["layout"]["showlegend"] and not dilution["layout"]["showlegend"]
    assert {t["name"].split(" · ")[0] for t in output["data"]} == {
        html.escape(BASELINE),
        html.escape(FULL),
    }
    assert layer_grad["layout"]["yaxis"]["type"] == "log"
    names = {t["name"] for t in dilution["data"]}
    assert names == {html.escape(BASELINE), html.escape(FULL)}
    assert "no depth weights" in heatmap["layout"]["title"]["text"]
    at.multiselect(key="compare").unselect(FULL).run()
    assert "at least two" in texts(at, "info")[0]


def test_compare_defaults_to_a_baseline_against_an_attnres_run(dashboard):
    at = dashboard("compare")
    kinds = {
        ("baseline" if "baseline" in n or n in (INTERRUPTED, HTML_NAME) else "attnres")
        for n in at.multiselect(key="compare").value
    }
    assert kinds == {"baseline", "attnres"}


def test_a_live_run_shows_new_flushes_and_its_end_on_the_next_refresh(dashboard, root):
    at = dashboard("dilution", run=LIVE)
    assert at.sidebar.selectbox(key="refresh").value == "5 s"
    assert any("live, refreshing every 5 s" in plain(c) for c in texts(at, "caption"))
    at.sidebar.selectbox(key="refresh").select("off").run()
    assert any("live, refresh off" in plain(c) for c in texts(at, "caption"))
    at.sidebar.selectbox(key="refresh").select("2 s").run()
    at.segmented_control(key="window").set_value("one step").run()
    assert at.slider(key="step").max == 7
    assert any("8 recorded steps" in plain(c) for c in texts(at, "caption"))
    writer = next(w for w in _live_writers if Path(w.path) == root / LIVE)
    rng = np.random.default_rng(0)
    for i in range(8, 12):
        writer.append(i, step_values(small("full"), i, 12, rng))
    writer.flush()
    at.run()
    assert at.slider(key="step").max == 11
    assert at.slider(key="step").value == 11  # an untouched slider follows the run
    assert any("12 recorded steps" in plain(c) for c in texts(at, "caption"))  # and its caption
    writer.close()
    at.switch_page("views/runs.py").run()
    table = at.dataframe[0].value.set_index("run")
    assert table.loc[LIVE, "state"] == "finished" and table.loc[LIVE, "recorded steps"] == 12
