"""A reader confined to a folder (the dashboard's ROOT) reads no file that resolves outside it:
a run whose store holds a symlink leading out is refused whole, in one line, and a file swapped
for such a link after the run was opened is refused when it is read."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from attnres_probe.models.config import ModelConfig
from attnres_probe.store import (
    ConfinementError,
    RunStoreError,
    list_runs,
    open_run,
    run_info,
    store_version,
)
from attnres_probe.store.synthetic import write_run

pytestmark = pytest.mark.skipif(os.name != "posix", reason="symlinks are a POSIX test")

CFG = ModelConfig(residual="full", n_layers=2, d_model=16, n_heads=2)


@pytest.fixture
def place(tmp_path):
    """(root, outside run): ROOT holds one ordinary run 'inside'; 'outside' is a run of the
    same shape beside ROOT, with different values."""
    root = tmp_path / "root"
    write_run(root / "inside", CFG, 6, seed=0)
    outside = tmp_path / "outside"
    write_run(outside, CFG, 6, seed=1)
    return root, outside


def mirror(source, target) -> None:
    """A real folder tree at ``target`` whose every file is a symlink to ``source``'s file."""
    for dirpath, _, files in os.walk(source):
        here = target / os.path.relpath(dirpath, source)
        here.mkdir(parents=True, exist_ok=True)
        for name in files:
            (here / name).symlink_to(os.path.join(dirpath, name))


def refused_in_one_line(err: pytest.ExceptionInfo, part: str) -> None:
    message = str(err.value)
    assert "\n" not in message and part in message and "outside" in message


def test_a_recording_whose_files_all_link_outside_is_refused_not_served(place):
    root, outside = place
    run = root / "mirror"
    mirror(outside / "recording.zarr", run / "recording.zarr")
    assert float(open_run(run)["loss"][0]) == float(open_run(outside)["loss"][0])  # unconfined
    for lazy in (False, True):
        with pytest.raises(ConfinementError) as err:
            open_run(run, lazy=lazy, confine=root)
        refused_in_one_line(err, "recording.zarr/")
    with pytest.raises(ConfinementError):
        store_version(run, confine=root)
    info = run_info(run, "mirror", confine=root)
    assert info.status == "refused" and not info.readable and "outside" in info.error
    assert info.n_steps == 0 and info.residual is None  # nothing of the outside run shown


def test_only_the_root_metadata_linking_outside_is_enough_to_refuse(place):
    root, outside = place
    run = root / "inside" / "recording.zarr"
    (run / "zarr.json").unlink()
    (run / "zarr.json").symlink_to(outside / "recording.zarr" / "zarr.json")
    with pytest.raises(ConfinementError) as err:
        open_run(root / "inside", confine=root)
    refused_in_one_line(err, "recording.zarr/zarr.json")
    with pytest.raises(ConfinementError):
        store_version(root / "inside", confine=root)


def test_one_chunk_linking_to_any_outside_file_refuses_the_run(place, tmp_path):
    root, _ = place
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"not for the dashboard" * 3)
    chunk = root / "inside" / "recording.zarr" / "loss" / "c.0"
    chunk.unlink()
    chunk.symlink_to(secret)
    with pytest.raises(ConfinementError) as err:
        open_run(root / "inside", confine=root)
    refused_in_one_line(err, "recording.zarr/loss/c.0")
    assert [i.status for i in list_runs(root, confine=root)] == ["refused"]


def test_an_array_folder_linking_outside_refuses_the_run_and_one_inside_does_not(place):
    root, outside = place
    write_run(root / "other", CFG, 6, seed=2)
    store = root / "inside" / "recording.zarr"
    shutil.rmtree(store / "hidden_rms")
    (store / "hidden_rms").symlink_to(root / "other" / "recording.zarr" / "hidden_rms")
    assert open_run(root / "inside", confine=root).sizes["step"] == 6  # stays inside ROOT
    (store / "hidden_rms").unlink()
    (store / "hidden_rms").symlink_to(outside / "recording.zarr" / "hidden_rms")
    with pytest.raises(ConfinementError) as err:
        open_run(root / "inside", confine=root)
    refused_in_one_line(err, "recording.zarr/hidden_rms")


def test_a_link_inside_root_leading_to_a_link_outside_is_followed_and_refused(place, tmp_path):
    root, _ = place
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"x" * 64)
    write_run(root / "other", CFG, 6, seed=2)
    chunk = root / "other" / "recording.zarr" / "loss" / "c.0"
    chunk.unlink()
    chunk.symlink_to(secret)
    store = root / "inside" / "recording.zarr"
    shutil.rmtree(store / "loss")
    (store / "loss").symlink_to(root / "other" / "recording.zarr" / "loss")
    with pytest.raises(ConfinementError) as err:
        open_run(root / "inside", confine=root)
    refused_in_one_line(err, "loss/c.0")


def test_a_chunk_swapped_for_an_outside_link_after_a_lazy_open_is_not_read(place):
    root, outside = place
    ds = open_run(root / "inside", lazy=True, confine=root)
    chunk = root / "inside" / "recording.zarr" / "loss" / "c.0"
    chunk.unlink()
    chunk.symlink_to(outside / "recording.zarr" / "loss" / "c.0")  # valid bytes of another run
    with pytest.raises(ConfinementError) as err:
        np.asarray(ds["loss"])
    refused_in_one_line(err, "recording.zarr/loss/c.0")


def test_a_symlink_loop_inside_the_store_ends_the_check(place):
    root, _ = place
    (root / "inside" / "recording.zarr" / "loop").symlink_to(root / "inside")
    ds = open_run(root / "inside", confine=root)
    assert ds.sizes["step"] == 6


def test_confining_a_remote_run_is_refused_with_the_fix(place):
    root, _ = place
    with pytest.raises(RunStoreError, match="local disk") as err:
        open_run("memory://runs/x", confine=root)
    assert "leave it out" in str(err.value)
