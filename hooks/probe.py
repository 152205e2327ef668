"""``probe``: record the depth dynamics of a model while it trains, into a run store.

    with probe(model, "runs/exp1", every=10) as p:
        for batch in loader:
            loss = loss_fn(model(batch)); loss.backward()
            p.step(loss=loss)            # after backward, before clipping and the optimizer
            opt.step(); opt.zero_grad()

Step semantics: the probe counts steps from 0; ``p.step()`` closes step k. Hooks are active
during step k's forward and backward passes only if ``k % every == 0`` (the decision for the
next step is taken when the previous one closes), so unrecorded steps run no statistics at
all. Every forward of the model inside a recorded step adds to it (gradient accumulation
works); parameter gradients are read when ``p.step`` is called, i.e. before clipping.

Nothing on the hot path reads a device value: hooks add into views of a preallocated device
row; each flush (``flush_every`` recorded steps, and on exit) copies the rows to the host once
(asynchronously into pinned memory on CUDA), turns sums into RMS values and means there, and
appends them to the store. Under torch.distributed the rows are summed across ranks with one
``all_reduce`` per flush and rank 0 writes (see ``ranks``).

Faults never stop training unless ``strict=True``: a store that fails to open or write warns
once (the store keeps its last completed flush) and recording stops; non-finite statistics are
recorded as such, counted in ``nonfinite`` and reported to ``on_nonfinite(step, count)`` when
their flush reaches the host. Interrupted training ends in order: Ctrl-C and SIGTERM (raised as
``SystemExit(143)`` while a probe is attached) leave the ``with`` after the buffered steps are
flushed, and never in the middle of a flush (see ``interrupts``).
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from attnres_probe import ops
from attnres_probe.hooks import interrupts
from attnres_probe.hooks.discovery import LayersArg, discover_layers
from attnres_probe.hooks.errors import ProbeError, ProbeStoreError, ProbeWarning
from attnres_probe.hooks.layout import RowLayout, StepRow
from attnres_probe.hooks.ranks import Ranks, has_sharded_params, unwrap
from attnres_probe.hooks.sink import RunSink, run_attrs, run_coords
from attnres_probe.hooks.taps import ModuleTaps, NativeTaps, first_tensor, is_native

__all__ = ["probe", "Probe", "ProbeError", "ProbeStoreError", "ProbeWarning"]

# Unwrapped model -> the probe attached to it (a model is probed by one probe at a time).
_ATTACHED: weakref.WeakKeyDictionary[nn.Module, Probe] = weakref.WeakKeyDictionary()


@dataclass
class _Flush:
    """Recorded rows on their way to the host: ``host`` [k, n_sums (+ n_counts)]."""

    steps: list[int]
    host: torch.Tensor
    counts: np.ndarray | None  # None: the counts were reduced across ranks inside ``host``
    event: Any  # a CUDA event marking the copy, or None when the copy already happened


class Probe:
    """Forward/backward hooks on one model that record every ``every``-th step into a run.

    Use as a context manager (see :func:`probe`); the hooks exist only inside the ``with``.
    """

    def __init__(
        self,
        model: nn.Module,
        run_path: str | os.PathLike,
        every: int = 1,
        layers: LayersArg | None = None,
        attrs: dict[str, Any] | None = None,
        strict: bool = False,
        flush_every: int = 64,
        on_nonfinite: Callable[[int, int], None] | None = None,
        distributed: bool | None = None,
        sharded_grads: bool | None = None,
    ):
        for name, value in (("every", every), ("flush_every", flush_every)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        self.model = model
        self.module = unwrap(model)
        self.run_path = run_path
        self.every = every
        self.flush_every = flush_every
        self.strict = strict
        self.on_nonfinite = on_nonfinite
        self.step_index = 0  # the step that the next p.step() closes
        self.recorded_steps: list[int] = []  # steps closed and recorded (handed to the store)
        self.row: StepRow | None = None  # set only while a recorded forward runs
        self._layers = layers
        self._attrs = dict(attrs or {})
        self._distributed = distributed
        self._sharded_grads = sharded_grads
        self._handles: list[RemovableHandle] = []  # the model's own two hooks, while attached
        self._forward_handles: list[RemovableHandle] = []  # taps' hooks, in a recorded forward
        self._entered = False
        self._held_signals = False  # SIGTERM / SIGINT handled by ``interrupts`` while attached
        self._disabled = False  # no store to write to: nothing is recorded
        self._pending: _Flush | None = None
        self._open_row: StepRow | None = None
        self._depth = 0  # nesting of model forwards (only the outermost one records)

    # ------------------------------------------------------------------ attach / detach

    def __enter__(self) -> Probe:
        if self._entered:
            raise ProbeError("this probe is already attached; use one `with probe(...)` block")
        other = _ATTACHED.get(self.module)
        if other is not None:
            raise ProbeError(
                f"{type(self.module).__name__} is already probed (run {str(other.run_path)!r}); "
                "a model takes one probe at a time: exit the first `with probe(...)` block "
                "before attaching another"
            )
        module = self.module
        if self._layers is None and is_native(module):
            self.taps = NativeTaps(module)
        else:
            self.taps = ModuleTaps(discover_layers(module, self._layers))
        self.layout = layout = RowLayout(self.taps.shape)
        device = _device_of(module)
        self._buf = torch.zeros(self.flush_every, layout.n_sums, device=device)
        self._counts = np.zeros((self.flush_every, layout.n_counts), dtype=np.int64)
        # Views into every row, made once: opening a step's row costs no tensor op.
        self._sum_views = [layout.sum_views(row) for row in self._buf]
        self._count_views = [layout.count_views(row) for row in self._counts]
        self._row_steps: list[int] = []
        self._params = [
            (p, index) for index, params in enumerate(self.taps.layer_params) for p in params
        ]
        # Device index tensors, cached: hooks fire in the same order each step.
        self._index_tensor = ops.IndexCache(device)
        self.ranks = Ranks(self._distributed)
        sharded = self._sharded_grads
        self._sharded = has_sharded_params(self.model) if sharded is None else sharded
        self._sink = RunSink(self.run_path, self.strict)
        if self.ranks.is_writer:
            attrs = run_attrs(self.module, self.taps.shape, isinstance(self.taps, NativeTaps))
            attrs |= {"probe_every": self.every, "world_size": self.ranks.world, **self._attrs}
            opened = self._sink.open(
                layout.dims(), run_coords(self.taps.shape), attrs, self.flush_every
            )
            if not opened and not self.ranks.active:
                self._disabled = True  # nowhere to write: record nothing
        self._entered = True
        _ATTACHED[module] = self
        try:
            before, after = _model_hooks(self)
            self._handles.append(module.register_forward_pre_hook(before))
            self._handles.append(module.register_forward_hook(after, always_call=True))
            # From here on SIGTERM unwinds through __exit__ (which flushes) instead of ending
            # the process on the spot; see ``interrupts``.
            self._held_signals = interrupts.hold()
        except BaseException:
            self._detach()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            with interrupts.deferred:  # a signal arriving now waits until the run is closed
                try:
                    self._close_run(failed=exc_type is not None)
                finally:
                    self._detach()
        finally:
            if self._held_signals:
                self._held_signals = False
                interrupts.release()

    def _close_run(self, failed: bool) -> None:
        """Flush the buffered steps and close the run ('interrupted' when ``failed``)."""
        if failed and self.ranks.active:
            # Other ranks may not reach the collective: keep no rank waiting.
            if self._row_steps:
                warnings.warn(
                    f"probe: {len(self._row_steps)} buffered steps dropped: an exception "
                    "under torch.distributed leaves no safe point to reduce across ranks",
                    ProbeWarning,
                    stacklevel=3,
                )
        else:
            self._flush(during_exception=failed)
        self._drain(block=True, during_exception=failed)
        self._sink.close(failed=failed)

    def close(self) -> None:
        """Flush, close the store and remove every hook (what leaving the ``with`` does)."""
        if self._entered:
            self.__exit__(None, None, None)

    def _detach(self) -> None:
        if self.row is not None:  # left in the middle of a forward
            self.taps.end_forward(self.row)
            self.row = None
        self._depth = 0
        self._remove_forward_hooks()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if _ATTACHED.get(self.module) is self:
            del _ATTACHED[self.module]
        self._entered = False

    # ------------------------------------------------------------------ the training step

    def records(self, step: int) -> bool:
        """Whether step ``step`` is (or would be) recorded."""
        return not self._disabled and step % self.every == 0

    def step(self, loss: torch.Tensor | float | None = None) -> None:
        """Close the current step: add ``loss`` (a scalar) and the parameter gradients as they
        are now (call after backward, before clipping), and flush when the buffer is full."""
        if not self._entered:
            raise ProbeError("p.step() called outside the `with probe(...)` block")
        k = self.step_index
        if self.records(k):
            row = self._current_row()
            self.taps.end_step(row)
            row.settle_grads()
            row.commit(self._index_tensor)  # gradient terms from the backward pass
            if loss is not None:
                self._add_loss(row, loss)
            self._add_param_grads(row)
            self._row_steps.append(k)
            self._open_row = None
            if len(self._row_steps) == self.flush_every:
                self._flush()
        self.step_index = k + 1
        if self._pending is not None:
            self._drain(block=False)

    def _current_row(self) -> StepRow:
        if self._open_row is None:
            n = len(self._row_steps)
            self._open_row = StepRow(self._sum_views[n], self._count_views[n])
        return self._open_row

    def _before_forward(self, module: nn.Module, args: tuple) -> None:
        self._depth += 1
        if self._depth > 1:
            return
        if not self.records(self.step_index):
            # The taps' module hooks come with recorded steps and leave before any other
            # forward: unrecorded steps run the model exactly as without a probe.
            self._remove_forward_hooks()
            return
        row = self._current_row()
        if not self._forward_handles:
            self.taps.attach(self, self._forward_handles)
        self.taps.begin_forward(row)
        self.row = row

    def _after_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._depth = max(0, self._depth - 1)
        row = self.row
        if self._depth > 0 or row is None:
            return
        self.row = None
        self.taps.end_forward(row)
        row.commit(self._index_tensor)
        out = first_tensor(output)
        if out is not None and out.requires_grad:
            out.register_hook(_count_backward(row.counts["backward_passes"]))

    def _remove_forward_hooks(self) -> None:
        for handle in self._forward_handles:
            handle.remove()
        self._forward_handles.clear()

    def _add_loss(self, row: StepRow, loss: torch.Tensor | float) -> None:
        slot = row.sums["loss"]
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise ValueError(
                    f"loss has shape {tuple(loss.shape)}; p.step(loss=...) takes a scalar, "
                    "e.g. loss.mean()"
                )
            slot.add_(loss.detach().reshape(1).to(slot.device, torch.float32, non_blocking=True))
        else:
            slot.add_(float(loss))
        row.counts["loss"][0] += 1

    def _add_param_grads(self, row: StepRow) -> None:
        """Σ grad² per layer into the row; layers stay missing without a backward pass."""
        if row.counts["backward_passes"][0] == 0:
            return
        grads, layers = [], []
        for p, layer in self._params:
            g = p.grad
            if g is None:
                continue
            if self._sharded and hasattr(g, "to_local"):
                g = g.to_local()
            grads.append(g)
            layers.append(layer)
        if not grads:
            return
        index = self._index_tensor(tuple(layers))
        norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
        row.sums["param_sq"].index_add_(0, index, torch.stack(norms).to(self._buf.device).square())
        row.counts["param_present"][np.unique(layers)] += 1

    # ------------------------------------------------------------------ flushing

    def _flush(self, during_exception: bool = False) -> None:
        """Start moving the buffered rows to the host (all-reduced under distributed)."""
        with interrupts.deferred:  # rows between the buffer and the store are in no one place
            self._flush_rows(during_exception)

    def _flush_rows(self, during_exception: bool) -> None:
        n = len(self._row_steps)
        if n == 0:
            return
        self._drain(block=True, during_exception=during_exception)  # keep flushes in order
        sums = self._buf[:n]
        counts = self._counts[:n].copy()
        source, host_counts = sums, counts
        if self.ranks.active:
            source = torch.cat(
                [sums.double(), torch.from_numpy(counts).to(sums.device, torch.float64)], 1
            )
            if not self._sharded and not self.ranks.is_writer:
                source[:, self.layout.sum_columns("param_sq")] = 0  # replicated: count rank 0's
            self.ranks.all_reduce_sum(source)
            host_counts = None
        steps = list(self._row_steps)
        self._row_steps.clear()
        self.recorded_steps += steps
        if self.ranks.is_writer:
            if source.is_cuda:
                host = torch.empty(source.shape, dtype=source.dtype, pin_memory=True)
                host.copy_(source, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
            else:
                host, event = source.clone(), None
            self._pending = _Flush(steps, host, host_counts, event)
        self._buf[:n].zero_()  # ordered after the copy on the same stream
        self._counts[:n] = 0
        if self._pending is not None and self._pending.event is None:
            self._drain(block=True, during_exception=during_exception)

    def _drain(self, block: bool, during_exception: bool = False) -> None:
        """Hand a flush whose copy has finished to the store (wait for it if ``block``)."""
        if self._pending is None:
            return
        with interrupts.deferred:
            self._drain_rows(block, during_exception)

    def _drain_rows(self, block: bool, during_exception: bool) -> None:
        pending = self._pending  # not None: _drain checked
        if pending.event is not None:
            if not block and not pending.event.query():
                return
            pending.event.synchronize()
        self._pending = None
        data = pending.host.numpy()
        n_sums = self.layout.n_sums
        if pending.counts is None:
            sums, counts = data[:, :n_sums], np.rint(data[:, n_sums:]).astype(np.int64)
        else:
            sums, counts = data, pending.counts
        values = self.layout.variables(sums, counts, self.ranks.grad_scale)
        self._sink.write(pending.steps, values, during_exception)
        if self.on_nonfinite is not None:
            for step, count in zip(pending.steps, values["nonfinite"], strict=True):
                if count > 0:
                    self.on_nonfinite(step, int(count))


def probe(
    model: nn.Module,
    run_path: str | os.PathLike,
    every: int = 1,
    layers: LayersArg | None = None,
    attrs: dict[str, Any] | None = None,
    strict: bool = False,
    flush_every: int = 64,
    on_nonfinite: Callable[[int, int], None] | None = None,
    distributed: bool | None = None,
    sharded_grads: bool | None = None,
) -> Probe:
    """A probe recording ``model`` every ``every`` steps into the run at ``run_path``.

    model: this project's ``Transformer`` (statistics from the ops), or any PreNorm decoder
    such as a Hugging Face GPT-2 or Llama (module hooks; layers found automatically, or named
    by ``layers`` as in ``attnres_probe.hooks.discovery``); DDP/FSDP wrappers are looked through.
    attrs: extra run attributes. strict: raise on store failures instead of warning once.
    flush_every: recorded steps per device->host copy and store flush.
    on_nonfinite(step, count): called when a flushed step holds non-finite statistics.
    distributed: reduce across torch.distributed ranks (None: when initialized).
    sharded_grads: parameter gradients are sharded across ranks (None: detect FSDP).
    """
    return Probe(
        model,
        run_path,
        every=every,
        layers=layers,
        attrs=attrs,
        strict=strict,
        flush_every=flush_every,
        on_nonfinite=on_nonfinite,
        distributed=distributed,
        sharded_grads=sharded_grads,
    )


def _model_hooks(p: Probe) -> tuple[Callable, Callable]:
    """The model's pre/post forward hooks as plain functions: ``copy.deepcopy(model)`` shares
    them instead of copying the probe, and they ignore calls on any module but the probed one."""

    def before(module: nn.Module, args: tuple) -> None:
        if module is p.module:
            p._before_forward(module, args)

    def after(module: nn.Module, args: tuple, output: Any) -> None:
        if module is p.module:
            p._after_forward(module, args, output)

    return before, after


def _count_backward(counter: np.ndarray) -> Callable[[torch.Tensor], None]:
    def hook(grad: torch.Tensor) -> None:
        counter[0] += 1

    return hook


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")
