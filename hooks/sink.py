"""The probe's side of the run store: what a run is told about the model, and a writer whose
failures never stop training unless asked to.

A failing store action warns once (``ProbeWarning``) and training goes on; the store keeps its
last committed flush, and the writer keeps the steps of a failed flush in its chunk buffer, so a
later flush writes them when the filesystem recovers. With ``strict=True`` the first failure
raises ``ProbeStoreError`` instead.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from attnres_probe.hooks.errors import ProbeStoreError, ProbeWarning
from attnres_probe.hooks.layout import ProbeShape
from attnres_probe.store.schema import schema_coords
from attnres_probe.store.writer import versions

__all__ = ["RunSink", "run_coords", "run_attrs"]


class RunSink:
    """Opens a :class:`attnres_probe.store.RunWriter`, appends flushed steps, closes it."""

    def __init__(self, run_path: str | os.PathLike, strict: bool = False):
        self.run_path = run_path
        self.strict = strict
        self.writer = None
        self.failures = 0  # failed store actions (the first one warns)

    def open(
        self,
        variables: dict[str, tuple[str, ...]],
        coords: dict[str, Any],
        attrs: dict[str, Any],
        flush_every: int,
    ) -> bool:
        """Create the run; False when it could not be created (after the warning)."""
        from attnres_probe.store import RunWriter

        def open_() -> None:
            self.writer = RunWriter(self.run_path, variables, coords, attrs, flush_every)

        self._guard(open_)
        return self.writer is not None

    def write(
        self, steps: list[int], values: dict[str, np.ndarray], during_exception: bool = False
    ) -> None:
        """Append each step ([k, ...] arrays, one row per step), then flush."""
        writer = self.writer
        if writer is None:
            return
        for i, step in enumerate(steps):
            row = {name: value[i] for name, value in values.items()}
            self._guard(lambda: writer.append(step, row), during_exception)  # noqa: B023
        self._guard(writer.flush, during_exception)

    def close(self, failed: bool = False) -> None:
        """Close the run with status 'finished' (or 'interrupted' when ``failed``)."""
        writer, self.writer = self.writer, None
        if writer is not None:
            status = "interrupted" if failed else "finished"
            self._guard(lambda: writer.close(status=status), during_exception=failed)

    def _guard(self, action: Callable[[], None], during_exception: bool = False) -> None:
        try:
            action()
        except Exception as err:
            self.failures += 1
            if self.strict and not during_exception:  # never hide the error ending the run
                raise ProbeStoreError(
                    f"writing the run at {str(self.run_path)!r} failed: {err}"
                ) from err
            if self.failures == 1:
                warnings.warn(
                    f"probe: writing the run at {str(self.run_path)!r} failed ({err}); the "
                    "store keeps its last completed flush, training goes on and later flushes "
                    "try again (pass strict=True to raise instead)",
                    ProbeWarning,
                    stacklevel=5,
                )


def run_coords(shape: ProbeShape) -> dict[str, Any]:
    """The run's coordinates for a probed model (the store's ``schema_coords``)."""
    return schema_coords(shape.n_layers, shape.source_names, shape.kinds, shape.layer_of)


def run_attrs(module: nn.Module, shape: ProbeShape, native: bool) -> dict[str, Any]:
    """model_config (JSON), model_class, residual, n_layers and versions of a probed model."""
    if native:  # this project's model: its ModelConfig
        model_config = module.cfg.to_dict()
        residual = module.cfg.residual
    else:  # e.g. a Hugging Face config, when the model has one
        to_dict = getattr(getattr(module, "config", None), "to_dict", None)
        model_config = to_dict() if callable(to_dict) else {}
        residual = "baseline"  # a PreNorm decoder with an additive residual stream
    return {
        "model_config": json.dumps(model_config, default=str),
        "model_class": f"{type(module).__module__}.{type(module).__qualname__}",
        "residual": residual,
        "n_layers": shape.n_layers,
        "versions": json.dumps(versions()),
    }
