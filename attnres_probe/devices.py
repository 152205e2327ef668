"""Which torch device a model can run on here: :func:`usable_device` checks a name before any
model is built, so a wrong ``--device`` is never reported as a damaged file later."""

from __future__ import annotations

import torch

from attnres_probe.resources import OptionError


class DeviceMissingError(ValueError):
    """The device is a real kind of device, but this machine does not have it."""


def usable_device(name: str | torch.device) -> torch.device:
    """``name`` as a ``torch.device`` a model can run on.

    OptionError for a name that is no device or a device that cannot hold a model's numbers
    (``meta``, ``cpu:7``); DeviceMissingError for a device this machine lacks (CUDA without a
    GPU, a GPU index past the last one, MPS off a Mac).
    """
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise OptionError(
            f"--device {name!r} is not a torch device; use e.g. cpu or cuda"
        ) from None
    shown = str(name)
    if device.type == "meta":
        raise OptionError(
            f"--device {shown}: the meta device holds shapes, not numbers, so a model cannot run "
            "on it; use --device cpu or cuda"
        )
    if device.type == "cpu" and device.index not in (None, 0):
        raise OptionError(
            f"--device {shown}: the CPU is a single device (index 0); use --device cpu"
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceMissingError(
                f"--device {shown}: this machine has no CUDA device; use --device cpu"
            )
        if (device.index or 0) >= torch.cuda.device_count():
            raise DeviceMissingError(
                f"--device {shown}: this machine has {torch.cuda.device_count()} CUDA "
                "device(s); use --device cuda:0"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceMissingError(
            f"--device {shown}: this machine has no MPS device; use --device cpu"
        )
    elif device.type != "cpu":
        try:
            torch.empty(1, device=device)
        except (RuntimeError, ValueError, AssertionError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DeviceMissingError(
                f"--device {shown} cannot be used here ({first}); use --device cpu"
            ) from None
    return device


def device_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device; None for the CPU (whose RAM the resources module reports)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return None
