"""The dashboard serves only runs under its ROOT, whatever a URL names; it lists runs with the
store's own listing and shows the store's own statuses."""

from __future__ import annotations

import os
import re

import pytest

from attnres_probe.app import confine
from attnres_probe.app.text import literal
from attnres_probe.store import run_info, run_paths


def make_run(path):
    (path / "recording.zarr").mkdir(parents=True)
    (path / "recording.zarr" / "zarr.json").write_text("{}")
    return path


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    make_run(root / "base")
    make_run(root / "exp" / "full")
    outside = make_run(tmp_path / "outside")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "alias").symlink_to(root / "base", target_is_directory=True)
    (root / "notes").mkdir()
    return root, outside


def test_the_store_lists_runs_below_root_in_order_symlinks_included(tree):
    root, _ = tree
    assert list(run_paths(root)) == ["alias", "base", "escape", "exp/full"]


def test_a_run_inside_root_resolves_to_its_directory(tree):
    root, _ = tree
    assert confine.resolve_run(root, "exp/full") == (root / "exp" / "full").resolve()
    assert confine.resolve_run(root, "alias") == (root / "base").resolve()


@pytest.mark.parametrize(
    "name,why",
    [
        ("../outside", "climbs out"),
        ("exp/../../outside", "climbs out"),
        ("..\\outside", "climbs out"),
        ("escape", "outside ROOT"),
        ("notes", "not a run directory"),
        ("file:///etc", "not a path under ROOT"),
        ("~/runs", "not a path under ROOT"),
        ("", "empty"),
    ],
)
def test_names_that_leave_root_or_are_not_runs_are_refused(tree, name, why):
    root, _ = tree
    with pytest.raises(confine.RunRefused, match=why):
        confine.resolve_run(root, name)


def test_an_absolute_path_is_refused_even_when_it_is_a_run(tree):
    root, outside = tree
    for name in (str(outside), str(root / "base"), "C:\\runs\\base", "\\\\host\\share"):
        with pytest.raises(confine.RunRefused, match="absolute"):
            confine.resolve_run(root, name)


def test_a_symlink_escaping_root_is_listed_as_refused_not_opened(tree, monkeypatch):
    root, _ = tree
    opened = []
    monkeypatch.setattr(confine, "run_info", lambda *args, **kwargs: opened.append(args))
    row = confine.served_info(root, "escape")
    assert row.status == "refused" and "outside ROOT" in row.error
    assert opened == []


@pytest.mark.parametrize(
    "name,why",
    [
        ("escape/", "outside ROOT"),  # the symlink named with a trailing slash
        ("./escape", "outside ROOT"),
        ("exp/./../../outside", "climbs out"),
        ("%2e%2e/outside", "not a run directory"),  # taken literally, never URL-decoded
        ("%2E%2E%2Foutside", "not a run directory"),
        ("..%2foutside", "not a run directory"),
    ],
)
def test_spelled_out_and_percent_encoded_escapes_are_refused(tree, name, why):
    root, _ = tree
    with pytest.raises(confine.RunRefused, match=why):
        confine.resolve_run(root, name)


def test_a_percent_encoded_name_is_a_literal_folder_name_inside_root(tree):
    """Names are never decoded: a folder really called '%2e%2e' is that folder, inside ROOT."""
    root, _ = tree
    literal_dots = make_run(root / "%2e%2e" / "outside")
    assert confine.resolve_run(root, "%2e%2e/outside") == literal_dots.resolve()


@pytest.mark.parametrize("part", ["recording.zarr", "checkpoint.safetensors", "config.json"])
def test_a_run_whose_files_are_symlinks_leaving_root_is_refused(tree, part, monkeypatch):
    root, outside = tree
    (outside / "checkpoint.safetensors").write_bytes(b"weights")
    (outside / "config.json").write_text("{}")
    sneaky = root / "sneaky"
    sneaky.mkdir()
    if part != "recording.zarr":
        make_run(sneaky)
    (sneaky / part).symlink_to(outside / part)
    assert "sneaky" in run_paths(root)
    with pytest.raises(confine.RunRefused, match=f"keeps {part} outside ROOT"):
        confine.resolve_run(root, "sneaky")
    opened = []
    monkeypatch.setattr(confine, "run_info", lambda *args, **kwargs: opened.append(args))
    row = confine.served_info(root, "sneaky")
    assert row.status == "refused" and opened == []


def test_a_run_that_fails_to_open_becomes_a_broken_row_with_the_reason(tree):
    root, _ = tree
    row = confine.served_info(root, "base")  # its zarr.json is "{}"
    assert row.status == "broken" and not row.readable
    assert "does not describe a Zarr v3 store" in row.error


def test_root_comes_from_the_environment_and_a_missing_one_says_so(tmp_path):
    assert confine.dashboard_root({confine.ROOT_ENV: str(tmp_path)}).path == tmp_path.resolve()
    missing = confine.dashboard_root({confine.ROOT_ENV: str(tmp_path / "nope")})
    assert missing.path is None and "not a directory" in missing.note


def test_without_root_the_bundled_samples_are_used_or_their_absence_explained(monkeypatch):
    monkeypatch.setattr(confine, "bundled_sample_runs", lambda: None)
    root = confine.dashboard_root({})
    assert root.path is None and "sample_runs" in root.note and "dashboard" in root.note


def test_a_single_run_as_root_is_listed_as_dot(tmp_path):
    run = make_run(tmp_path / "run")
    assert list(run_paths(run)) == ["."]
    assert confine.resolve_run(run, ".") == run.resolve()


@pytest.mark.parametrize(
    "text",
    [
        "<b>x</b> **y** [z](javascript:alert(1)) :red[w]",
        "<img src=x onerror=alert(1)>",
        "[link](javascript:alert(1))",
        "**bold** __b__ *i* `code` ~~s~~ $x$ # h",
        "line one\n# a heading on line two",
    ],
)
def test_literal_escapes_markdown_and_html(text):
    escaped = literal(text)
    bare = re.sub(r"\\.", "", escaped)  # what is left once every escaped character is gone
    assert not set(bare) & set("<>*_[]()`~$#"), bare
    assert "\n" not in escaped
    assert escaped.replace("\\", "") == text.replace("\n", " ")


def test_a_served_row_is_the_stores_own_run_info_read_confined_to_root(tmp_path):
    from attnres_probe.models.config import ModelConfig
    from attnres_probe.store.synthetic import write_run

    root = tmp_path / "root"
    cfg = ModelConfig(residual="full", n_layers=2, d_model=16, n_heads=2)
    write_run(root / "done", cfg, 6, 1, "finished", None, None, 64, 0)
    live = write_run(root / "live", cfg, 3, 1, None, None, None, 64, 1)
    try:
        rows = {name: confine.served_info(root, name) for name in run_paths(root)}
        for name, row in rows.items():
            assert row == run_info(root / name, name, confine=root)
        assert (rows["done"].status, rows["live"].status) == ("finished", "live")
    finally:
        live.close()


@pytest.mark.skipif(os.name != "posix", reason="symlinked parents are a POSIX test")
def test_a_symlinked_directory_is_not_descended_into(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    far = tmp_path / "far"
    make_run(far / "deep")
    (root / "link").symlink_to(far, target_is_directory=True)
    assert run_paths(root) == {}
