"""Model checkpoints of a run: ``RUN/checkpoint.safetensors`` (the weights, never pickle) and
``RUN/config.json``::

    {"format", "version", "model": ModelConfig.to_dict(), "extra": {...},
     "weights_sha256": SHA-256 of checkpoint.safetensors,
     "recording_id": the recording_id attribute of the recording it was trained with, or null}

A checkpoint is loaded only whole and only beside its own recording: the weights must match
their checksum, and a run whose ``recording.zarr`` carries another ``recording_id`` (recorded
again after this checkpoint was saved) is refused. :func:`load_model` is the one way to get a
run's model back.

torch is imported only inside the functions, so this module is cheap to import.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnres_probe.store import STORE_NAME, RunStoreWarning, open_run

if TYPE_CHECKING:
    import torch

CHECKPOINT_FILE = "checkpoint.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "attnres-probe checkpoint"
VERSION = 1
RECORDING_ID = "recording_id"  # root attribute of a recording, and the key in config.json
CHECKSUM = "weights_sha256"
RETRAIN = "train the run again (attnres-probe train --overwrite --out RUN)"


class CheckpointError(ValueError):
    """A checkpoint cannot be saved or loaded; the message names the file and the fix."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The run has no checkpoint."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint belongs to another recording than the one beside it."""


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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_directory(run: str | Path) -> Path:
    """The run directory of ``run`` (a run directory, its ``.zarr`` store or its weights file)."""
    path = Path(run)
    return path.parent if path.suffix in (".zarr", ".safetensors") else path


def save_checkpoint(
    run_dir: str | Path,
    model_state: dict[str, torch.Tensor],
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
    recording_id: str | None = None,
) -> Path:
    """Save ``model_state`` (a state_dict) and the model ``config`` (with ``extra`` facts such
    as the held-out loss) into ``run_dir``; returns the weights file. ``recording_id`` names the
    recording these weights were trained with (None: no recording). Tensors that share memory
    (tied weights) are stored as separate copies.

    Raises CheckpointError when the files cannot be written (a full disk, a read-only folder).
    """
    from safetensors import SafetensorError
    from safetensors.torch import save

    run_dir = Path(run_dir)
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
    data = save(tensors, metadata={"format": "pt"})
    document = {
        "format": FORMAT,
        "version": VERSION,
        "model": config,
        "extra": extra or {},
        CHECKSUM: _sha256(data),
        RECORDING_ID: recording_id,
    }
    try:
        text = json.dumps(document, indent=2, allow_nan=True)
    except TypeError as err:
        raise CheckpointError(
            f"config/extra are not JSON-serialisable ({err}); pass plain values"
        ) from None
    weights = run_dir / CHECKPOINT_FILE
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(weights, lambda tmp: Path(tmp).write_bytes(data))
        _atomic_write(run_dir / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
    except (OSError, SafetensorError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise CheckpointError(
            f"cannot save the checkpoint in {run_dir} ({reason}); free space or make the folder "
            "writable, then train again"
        ) from None
    return weights


def read_checkpoint_config(run: str | Path) -> dict[str, Any]:
    """The validated ``config.json`` document of a run's checkpoint (the weights are not read):
    ``["model"]`` for ``ModelConfig.from_dict``, ``["extra"]`` what training added."""
    path = run_directory(run)
    if path.is_file():
        raise CheckpointNotFoundError(
            f"run {run} is a file, not a run directory; pass the folder holding its "
            f"{CHECKPOINT_FILE}"
        )
    if not path.is_dir():
        raise CheckpointNotFoundError(f"run {run} does not exist; check the path")
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
    version = document.get("version", 1)
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{config_path} has version {version!r} from a newer attnres-probe "
            f"(this one reads up to {VERSION}); upgrade attnres-probe"
        )
    return document


def model_config(document: dict[str, Any], run: str | Path):
    """The ``ModelConfig`` a checkpoint document of ``run`` describes (CheckpointError naming
    its config.json when the configuration is not valid)."""
    from attnres_probe.models import ModelConfig

    try:
        return ModelConfig.from_dict(document["model"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"{run_directory(run) / CONFIG_FILE} holds no valid model configuration ({err}); "
            "save the checkpoint again"
        ) from None


def training_config(document: dict[str, Any]) -> dict[str, Any]:
    """The training configuration a checkpoint document records (``TrainConfig`` as a dict:
    corpus, batch size, sequence length, …); empty when it records none."""
    found = document.get("train_config") or document.get("extra", {}).get("train_config")
    return found if isinstance(found, dict) else {}


def recording_id(run: str | Path) -> str | None:
    """The ``recording_id`` attribute of the run's recording (None when it has none)."""
    with warnings.catch_warnings():  # damaged data is reported where the data is read
        warnings.simplefilter("ignore", RunStoreWarning)
        value = open_run(run_directory(run), lazy=True).attrs.get(RECORDING_ID)
    return value if isinstance(value, str) else None


def check_recording(run: str | Path, document: dict[str, Any]) -> None:
    """CheckpointMismatchError when the run's recording is not the one the checkpoint was
    trained with. A run without a recording has nothing to mismatch."""
    path = run_directory(run)
    if not (path / STORE_NAME).exists():
        return
    made_for = document.get(RECORDING_ID)
    recorded = recording_id(path)
    if made_for != recorded:
        raise CheckpointMismatchError(
            f"run {path}: {CHECKPOINT_FILE} belongs to another recording than {STORE_NAME} "
            f"(checkpoint of recording {made_for or 'unnamed'}, recording {recorded or 'unnamed'}),"
            f" so the model and the recording come from different trainings; {RETRAIN}"
        )


def load_checkpoint(
    run_dir: str | Path, device: str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, config document) of the run, verified: the weights match the checksum in
    ``config.json`` and the checkpoint belongs to the run's recording (CheckpointError naming
    the file otherwise). ``config["model"]`` is the model configuration for
    ``ModelConfig.from_dict``, ``config["extra"]`` what training added.

    ``run_dir`` may also be the run's ``.zarr`` store or the weights file itself.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    from attnres_probe.devices import usable_device

    target = usable_device(device)
    document = read_checkpoint_config(run_dir)
    path = run_directory(run_dir)
    weights = path / CHECKPOINT_FILE
    try:
        data = weights.read_bytes()
    except OSError as err:
        raise CheckpointError(
            f"{weights} cannot be read ({err.strerror}); check the file"
        ) from None
    expected = document.get(CHECKSUM)
    if expected is not None and _sha256(data) != expected:
        raise CheckpointError(
            f"{weights} does not match the SHA-256 recorded in {CONFIG_FILE}: the weights changed "
            f"or were damaged after they were saved; {RETRAIN}"
        )
    check_recording(path, document)
    try:
        state = load(data)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{weights} cannot be read ({err}); the file is damaged, save the checkpoint again"
        ) from None
    if target.type != "cpu":
        state = {k: v.to(target) for k, v in state.items()}
    return state, document


def load_model(run_dir: str | Path, device: str = "cpu") -> torch.nn.Module:
    """The run's trained model on ``device``, in eval mode (``model.cfg`` is its ModelConfig).

    The one loader of run checkpoints: the run directory, the device, the checksum and the
    recording are checked (:func:`load_checkpoint`), and weights that do not fit the model
    ``config.json`` describes are a CheckpointError, not a shape error from torch.
    """
    from attnres_probe.models import build_model

    state, document = load_checkpoint(run_dir, device=device)
    model = build_model(model_config(document, run_dir)).to(device)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = " ".join(str(err).split())[:300]
        raise CheckpointError(
            f"{run_directory(run_dir) / CHECKPOINT_FILE} does not fit the model {CONFIG_FILE} "
            f"describes ({first}): the two files come from different trainings; {RETRAIN}"
        ) from None
    return model.eval()


def checkpoint_facts(run_dir: str | Path) -> dict[str, Any]:
    """What a run's ``config.json`` records beside the model (held-out loss, timings, …);
    empty when the run has no checkpoint. CheckpointMismatchError when the checkpoint belongs
    to another recording than the run's (its facts would describe another training)."""
    path = run_directory(run_dir) / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(config, dict):
        return {}
    if "model" in config:
        check_recording(run_dir, config)
    extra = config.get("extra", config)
    return extra if isinstance(extra, dict) else {}
