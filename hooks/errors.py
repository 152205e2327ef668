"""What the probe raises and warns with."""

from __future__ import annotations

__all__ = ["ProbeError", "ProbeStoreError", "ProbeWarning"]


class ProbeError(RuntimeError):
    """The probe cannot be used this way; the message says why and what to do instead."""


class ProbeStoreError(ProbeError):
    """The run store failed and ``strict=True`` asked the probe to raise."""


class ProbeWarning(RuntimeWarning):
    """Something went wrong in recording; training goes on."""
