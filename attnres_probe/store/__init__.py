"""The run store: one Zarr v3 recording per run, appended while training, read as xarray.

A run is a directory (local, or any fsspec URL)::

    RUN/recording.zarr/      Zarr v3 group, never consolidated
        zarr.json            root attrs: model_config, residual, n_layers, versions,
                             schema_version, run_name, status, and the commit marker n_steps
        step/ loss/ hidden_rms/ depth_weights/ ...   one array per variable or coordinate
    RUN/checkpoint.safetensors, RUN/config.json      (attnres_probe.checkpoint)

Write with :class:`RunWriter` (buffered, whole chunks, commit marker after the data), read
with :func:`open_run` (a consistent prefix of complete steps, also while a run is written),
list with :func:`list_runs` (or only find them with :func:`run_paths`), mend a crashed
writer's leftovers with :func:`repair`. Exactly one process writes a run: under DDP, rank 0;
:func:`live_writer` says who writes it now, and a second writer is refused. Replacing a
recording (``RunWriter`` mode 'w') is atomic for readers on a local disk; :func:`move_run_aside`
clears a run's folder for a new run. A reader given ``confine=FOLDER`` reads no file that
resolves outside that folder (a dashboard's ROOT).
"""

from attnres_probe.store.catalog import RunInfo, list_runs, run_info, run_paths
from attnres_probe.store.header import live_writer
from attnres_probe.store.reader import open_run, run_config, store_version
from attnres_probe.store.repair import RepairReport, repair
from attnres_probe.store.replace import move_run_aside
from attnres_probe.store.schema import (
    SCHEMA_VARIABLES,
    SCHEMA_VERSION,
    STORE_NAME,
    ConfinementError,
    RunNotFoundError,
    RunStoreError,
    RunStoreWarning,
    schema_coords,
)
from attnres_probe.store.writer import RunWriter, chunk_length, write_static_variables

__all__ = [
    "SCHEMA_VARIABLES",
    "SCHEMA_VERSION",
    "STORE_NAME",
    "ConfinementError",
    "RepairReport",
    "RunInfo",
    "RunNotFoundError",
    "RunStoreError",
    "RunStoreWarning",
    "RunWriter",
    "chunk_length",
    "list_runs",
    "live_writer",
    "move_run_aside",
    "open_run",
    "repair",
    "run_config",
    "run_info",
    "run_paths",
    "schema_coords",
    "store_version",
    "write_static_variables",
]
