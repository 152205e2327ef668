"""Model checkpoints of a run: ``RUN/checkpoint.safetensors`` (the weights, never pickle) and
``RUN/config.json`` (``{"format", "version", "model": ModelConfig.to_dict(), "extra": {...}}``).

torch is imported only inside the functions, so this module is cheap to import.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

CHECKPOINT_FILE = "checkpoint.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "attnres-probe checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be saved or loaded; the message names the file and the fix."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The run has no checkpoint."""


def _atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` then rename over ``path``: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    run_dir: str | Path,
    model_state: dict[str, torch.Tensor],
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save ``model_state`` (a state_dict) and the model ``config`` (with ``extra`` facts such
    as the held-out loss) into ``run_dir``; returns the weights file. Tensors that share
    memory (tied weights) are stored as separate copies."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seen: set[tuple[int, int]] = set()
    tensors = {}
    for name, tensor in model_state.items():
        if not hasattr(tensor, "detach"):
            raise CheckpointError(
                f"model_state[{name!r}] is a {type(tensor).__name__}, not a tensor; pass "
                "model.state_dict()"
            )
        t = tensor.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if t.numel() and key in seen:
            t = t.clone()
        seen.add(key)
        tensors[name] = t
    document = {"format": FORMAT, "version": VERSION, "model": config, "extra": extra or {}}
    try:
        text = json.dumps(document, indent=2, allow_nan=True)
    except TypeError as err:
        raise CheckpointError(
            f"config/extra are not JSON-serialisable ({err}); pass plain values"
        ) from None
    weights = run_dir / CHECKPOINT_FILE
    _atomic_write(weights, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    _atomic_write(run_dir / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
    return weights


def load_checkpoint(
    run_dir: str | Path, device: str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, config document) of the run: ``config["model"]`` is the model
    configuration for ``ModelConfig.from_dict``, ``config["extra"]`` what training added.

    ``run_dir`` may also be the run's ``.zarr`` store or the weights file itself.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(run_dir)
    if path.suffix in (".zarr", ".safetensors"):
        path = path.parent
    weights, config_path = path / CHECKPOINT_FILE, path / CONFIG_FILE
    if not weights.is_file():
        raise CheckpointNotFoundError(
            f"run {path} has no {CHECKPOINT_FILE}; train it to the end (the checkpoint is "
            "saved when training finishes) or pass the right run directory"
        )
    if not config_path.is_file():
        raise CheckpointNotFoundError(
            f"run {path} has {CHECKPOINT_FILE} but no {CONFIG_FILE}; save both with save_checkpoint"
        )
    try:
        document = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{config_path} is not valid JSON ({err}); save the checkpoint again"
        ) from None
    if not isinstance(document, dict) or not isinstance(document.get("model"), dict):
        raise CheckpointError(
            f"{config_path} has no 'model' configuration; save it with save_checkpoint"
        )
    if int(document.get("version", 1)) > VERSION:
        raise CheckpointError(
            f"{config_path} has version {document['version']} from a newer attnres-probe "
            f"(this one reads up to {VERSION}); upgrade attnres-probe"
        )
    try:
        state = load_file(weights, device=device)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{weights} cannot be read ({err}); the file is damaged, save the checkpoint again"
        ) from None
    return state, document


def checkpoint_facts(run_dir: str | Path) -> dict[str, Any]:
    """What a run's ``config.json`` records beside the model (held-out loss, timings, …);
    empty when the run has no checkpoint."""
    run_dir = Path(run_dir)
    path = (run_dir.parent if run_dir.suffix == ".zarr" else run_dir) / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    extra = config.get("extra", config)
    return extra if isinstance(extra, dict) else {}
