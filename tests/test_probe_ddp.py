"""Under torch.distributed (2 gloo processes) the probe records what one process records on
the same global batch: with DDP (replicated gradients) and FSDP (sharded gradients)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from probe_checks import batch, read_run, tiny_model, train_steps

from attnres_probe.footprint import torch_threads
from attnres_probe.hooks import probe

WORLD = 2
GLOBAL_BATCH = 4
STEPS = 3
RUNS = {"ddp-baseline": "baseline", "ddp-full": "full", "fsdp-full": "full"}


def _batches(rank: int | None) -> list[torch.Tensor]:
    """The global batches, or rank ``rank``'s contiguous share of each."""
    full = [batch(i, size=GLOBAL_BATCH) for i in range(STEPS)]
    if rank is None:
        return full
    share = GLOBAL_BATCH // WORLD
    return [b[rank * share : (rank + 1) * share] for b in full]


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.nn.parallel import DistributedDataParallel

        for name, residual in RUNS.items():
            model = tiny_model(residual)
            if name.startswith("ddp"):
                model = DistributedDataParallel(model)
            else:  # the whole model is one FSDP unit: parameters and gradients are sharded
                fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
            with probe(model, Path(out_dir) / name, flush_every=2) as p:
                train_steps(model, p, _batches(rank))
    finally:
        dist.destroy_process_group()


def test_two_ranks_record_what_one_process_records_on_the_global_batch(tmp_path):
    mp.spawn(_worker, args=(WORLD, str(tmp_path / "pg_init"), str(tmp_path)), nprocs=WORLD)
    for name, residual in RUNS.items():
        model = tiny_model(residual)
        # One thread, as each rank: the same reduction order in every op, so that what is left
        # between the runs is the ranks' gradient sum against the global batch's.
        with torch_threads(1), probe(model, tmp_path / f"single-{name}", flush_every=2) as p:
            train_steps(model, p, _batches(None))
        single = read_run(tmp_path / f"single-{name}")
        ranks = read_run(tmp_path / name)
        assert ranks.attrs["world_size"] == WORLD
        assert ranks["step"].values.tolist() == list(range(STEPS))
        assert set(ranks.data_vars) == set(single.data_vars)
        for var in single.data_vars:
            np.testing.assert_allclose(
                ranks[var].values, single[var].values, rtol=1e-5, atol=1e-7, err_msg=f"{name} {var}"
            )


def test_asking_for_distributed_without_a_process_group_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="init_process_group"):
        with probe(tiny_model("baseline"), tmp_path / "run", distributed=True):
            pass
