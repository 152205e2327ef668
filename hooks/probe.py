"""``probe``: record the depth dynamics of a model while it trains, into a run store.

    with probe(model, "runs/exp1", every=10) as p:
        for batch in loader:
            loss = loss_fn(model(batch)); loss.backward()
            p.step(loss=loss)            # after backward, before clipping and the optimizer
            opt.step(); opt.zero_grad()

Step semantics: the probe counts steps from 0; ``p.step()`` closes step k. Statistics are
taken during step k's forward and backward passes only if ``k % every == 0`` (the decision for
the next step is taken when the previous one closes), so unrecorded steps compute no
statistics at all. Every forward of the model inside a recorded step adds to it (gradient
accumulation works); parameter gradients are read when ``p.step`` is called, i.e. before
clipping.

One accumulation path: a recorded step adds into one ``ops.Recording`` (float32 sums and int64
counts on the model's device; gradient statistics through identity taps whose backward hands
‖∂L/∂x‖² to autograd). The ops, this project's models and the module hooks on any other model
all add into it with plain tensor ops, so nothing on the hot path reads a device value and a
``torch.compile``d model keeps one graph for recorded and one for unrecorded steps. When a step
closes its sums and counts are copied into one row of a flush buffer; each flush
(``flush_every`` recorded steps, and on exit) copies the rows to the host once
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
import threading
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
from attnres_probe.hooks.layout import RowLayout
from attnres_probe.hooks.ranks import Ranks, has_sharded_params, unwrap
from attnres_probe.hooks.sink import RunSink, run_attrs, run_coords
from attnres_probe.hooks.taps import ModuleTaps, NativeTaps, is_native

__all__ = ["probe", "Probe", "ProbeError", "ProbeStoreError", "ProbeWarning"]

# Unwrapped model -> the probe attached to it (a model is probed by one probe at a time).
_ATTACHED: weakref.WeakKeyDictionary[nn.Module, Probe] = weakref.WeakKeyDictionary()
# The most the flush buffer may take (device memory, and as much again pinned on the host).
MAX_BUFFER_BYTES = 256 * 2**20


@dataclass
class _Flush:
    """Recorded rows on their way to the host: ``host`` [k, n_sums + n_counts] (float64 when
    reduced across ranks), or ``sums`` / ``counts`` apart."""

    steps: list[int]
    sums: torch.Tensor
    counts: torch.Tensor
    event: Any  # a CUDA event marking the copy, or None when the copy already happened


class Probe:
    """A probe recording ``model`` every ``every`` steps into the run at ``run_path``; use it
    as a context manager (statistics are taken only inside the ``with``). A probe records one
    run: once closed it cannot be entered again.

    model: this project's ``Transformer`` (statistics from its ops and forward), or any decoder
    with an additive residual stream such as a Hugging Face GPT-2, Llama, Gemma 2 or OLMo 2
    (module hooks; layers and their layout found automatically, or named by ``layers`` as in
    ``attnres_probe.hooks.discovery``; checked at the first recorded step, ``hooks.wiring``);
    DDP/FSDP wrappers and ``torch.compile`` are looked through.
    attrs: extra run attributes. strict: raise on store failures instead of warning once.
    flush_every: recorded steps per device->host copy and store flush.
    on_nonfinite(step, count): called when a flushed step holds non-finite statistics.
    distributed: reduce across torch.distributed ranks (None: when initialized).
    sharded_grads: parameter gradients are sharded across ranks (None: detect FSDP).
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
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
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
        self._layers = layers
        self._attrs = dict(attrs or {})
        self._distributed = distributed
        self._sharded_grads = sharded_grads
        self._handles: list[RemovableHandle] = []  # every hook, while attached
        self._entered = False
        self._closed = False
        self._thread: int | None = None
        self._held_signals = False  # SIGTERM / SIGINT handled by ``interrupts`` while attached
        self._disabled = False  # no store to write to: nothing is recorded
        self._pending: _Flush | None = None
        self._forward_seen = False  # a forward ran since the last p.step()
        self._forward_failed = False  # a forward of this step raised midway
        self._warned_no_forward = False

    # ------------------------------------------------------------------ attach / detach

    def __enter__(self) -> Probe:
        if self._entered:
            raise ProbeError("this probe is already attached; use one `with probe(...)` block")
        if self._closed:
            raise ProbeError(
                f"this probe already recorded the run {str(self.run_path)!r} and was closed; "
                "make a new probe(...) for another recording (entering it again would replace "
                "that run)"
            )
        other = _ATTACHED.get(self.module)
        if other is not None:
            raise ProbeError(
                f"{type(self.module).__name__} is already probed (run {str(other.run_path)!r}); "
                "a model takes one probe at a time: exit the first `with probe(...)` block "
                "before attaching another"
            )
        module = self.module
        device = _device_of(module)
        if device.type == "meta":
            raise ProbeError(
                "the model's parameters are on the meta device (no data); load or materialise "
                "the weights (e.g. model.to_empty(device=...) and load a state dict) before "
                "attaching a probe"
            )
        if self._layers is None and is_native(module):
            self.taps = NativeTaps(module)
        else:
            config = getattr(module, "config", None)
            self.taps = ModuleTaps(discover_layers(module, self._layers), config)
        self.layout = layout = RowLayout(self.taps.shape)
        self.rec = rec = layout.recording(device, self.taps.sources_at)
        n_sums, n_counts = rec.sums.numel(), rec.counts.numel()
        needed = self.flush_every * (4 * n_sums + 8 * n_counts)
        if needed > MAX_BUFFER_BYTES:
            raise ProbeError(
                f"flush_every={self.flush_every} needs a {needed / 2**20:.0f} MiB buffer for this "
                f"model ({n_sums + n_counts} values a step), over the "
                f"{MAX_BUFFER_BYTES // 2**20} MiB limit; use flush_every <= "
                f"{max(1, MAX_BUFFER_BYTES // (4 * n_sums + 8 * n_counts))}"
            )
        self._sum_buf = torch.zeros(self.flush_every, n_sums, device=device)
        self._count_buf = torch.zeros(self.flush_every, n_counts, dtype=torch.int64, device=device)
        self._row_steps: list[int] = []
        self._params = [
            (p, index) for index, params in enumerate(self.taps.layer_params) for p in params
        ]
        self._query_params = [
            (p, index) for index, params in enumerate(self.taps.query_params) for p in params
        ]
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
        self._thread = threading.get_ident()
        _ATTACHED[module] = self
        try:
            self.taps.attach(self, self._handles)
            before, after = _model_hooks(self)
            self._handles.append(module.register_forward_pre_hook(before))
            self._handles.append(module.register_forward_hook(after, always_call=True))
            self.taps.set_recording(rec if self.records(0) else None)
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
        self.taps.detach()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if _ATTACHED.get(self.module) is self:
            del _ATTACHED[self.module]
        self._entered = False
        self._closed = True

    # ------------------------------------------------------------------ the training step

    def records(self, step: int) -> bool:
        """Whether step ``step`` is (or would be) recorded."""
        return not self._disabled and step % self.every == 0

    def step(
        self,
        loss: torch.Tensor | float | None = None,
        grad_scale: torch.Tensor | float | None = None,
    ) -> None:
        """Close the current step: add ``loss`` (a scalar) and the parameter gradients as they
        are now (call after backward, before clipping), and flush when the buffer is full.

        grad_scale: the factor the parameter gradients were multiplied by since backward (a
        clip coefficient, for a loop that cannot call ``p.step`` before clipping; a float or a
        0-d device tensor, read without a host sync): the recorded norms are divided by it."""
        if not self._entered:
            raise ProbeError("p.step() called outside the `with probe(...)` block")
        if threading.get_ident() != self._thread:
            raise ProbeError(
                "p.step() was called from another thread than the one that entered the probe; "
                "a probe records one training loop: call it from that loop's thread"
            )
        if not self._forward_seen and not self._warned_no_forward:
            self._warned_no_forward = True
            warnings.warn(
                f"probe: p.step() closed step {self.step_index} with no forward of the model "
                "since the previous p.step(); call it once per training step, after backward "
                "(this warning is shown once)",
                ProbeWarning,
                stacklevel=2,
            )
        self._forward_seen = False
        k = self.step_index
        if self.records(k) and self._forward_failed:
            # Part of a forward added its statistics and part did not: no mean would be right.
            self._forward_failed = False
            self.rec.settle()
            self.rec.reset()
            warnings.warn(
                f"probe: a forward of step {k} raised midway; the step is not recorded",
                ProbeWarning,
                stacklevel=2,
            )
        elif self.records(k):
            rec = self.rec
            rec.settle()
            # Once, at the first recorded step with a forward: one device->host copy, and a
            # LayerDiscoveryError if a layer does not compute what was discovered.
            self.taps.check_wiring(rec)
            if loss is not None:
                self._add_loss(rec, loss)
            if rec.backward_seen:  # parameter gradients belong to this step
                self._add_param_grads(rec, self._params, "param_sq", "param_present", grad_scale)
                self._add_param_grads(
                    rec, self._query_params, "query_sq", "query_present", grad_scale
                )
            n = len(self._row_steps)
            self._sum_buf[n].copy_(rec.sums)
            self._count_buf[n].copy_(rec.counts)
            rec.reset()
            self._row_steps.append(k)
            if len(self._row_steps) == self.flush_every:
                self._flush()
        self.step_index = k + 1
        self.taps.set_recording(self.rec if self.records(k + 1) else None)
        if self._pending is not None:
            self._drain(block=False)

    def _add_loss(self, rec: ops.Recording, loss: torch.Tensor | float) -> None:
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise ValueError(
                    f"loss has shape {tuple(loss.shape)}; p.step(loss=...) takes a scalar, "
                    "e.g. loss.mean()"
                )
            value = loss.detach().reshape(()).to(rec.device, torch.float32, non_blocking=True)
            rec.add("loss", 0, value)
        else:
            rec.add("loss", 0, float(loss))
        rec.count("loss", 0, 1)

    def _add_param_grads(
        self, rec: ops.Recording, params: list, name: str, present: str, scale: Any = None
    ) -> None:
        """Σ (grad / scale)² per unit into ``name``; units without a gradient stay missing."""
        grads, units = [], []
        for p, unit in params:
            g = p.grad
            if g is None:
                continue
            if self._sharded and hasattr(g, "to_local"):
                g = g.to_local()
            grads.append(g)
            units.append(unit)
        if not grads:
            return
        norms = torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32)).to(rec.device)
        if scale is not None:
            norms = norms / torch.as_tensor(scale, dtype=torch.float32, device=rec.device)
        rec.views[name].index_add_(0, rec.index(tuple(units)), norms.square())
        seen = tuple(sorted(set(units)))
        rec.count_views[present].index_fill_(0, rec.index(seen), 1)

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
        sums, counts = self._sum_buf[:n], self._count_buf[:n]
        if self.ranks.active:
            both = torch.cat([sums.double(), counts.double()], 1)
            if not self._sharded and not self.ranks.is_writer:
                both[:, self._param_columns()] = 0  # replicated gradients: count rank 0's
            self.ranks.all_reduce_sum(both)
            sums, counts = both[:, : sums.shape[1]].float(), both[:, sums.shape[1] :].round().long()
        steps = list(self._row_steps)
        self._row_steps.clear()
        self.recorded_steps += steps
        if self.ranks.is_writer:
            if sums.is_cuda:
                host_sums = torch.empty(sums.shape, dtype=sums.dtype, pin_memory=True)
                host_counts = torch.empty(counts.shape, dtype=counts.dtype, pin_memory=True)
                host_sums.copy_(sums, non_blocking=True)
                host_counts.copy_(counts, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
            else:
                host_sums, host_counts, event = sums.clone(), counts.clone(), None
            self._pending = _Flush(steps, host_sums, host_counts, event)
        self._sum_buf[:n].zero_()  # ordered after the copy on the same stream
        self._count_buf[:n].zero_()
        if self._pending is not None and self._pending.event is None:
            self._drain(block=True, during_exception=during_exception)

    def _param_columns(self) -> list[int]:
        """Columns of the parameter-gradient sums in a row."""
        columns, start = [], 0
        for name, shape in self.rec.sum_shapes.items():
            size = int(np.prod(shape))
            if name in ("param_sq", "query_sq"):
                columns += range(start, start + size)
            start += size
        return columns

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
        layout, rec = self.layout, self.rec
        sums = layout.split(pending.sums.numpy(), rec.sum_shapes)
        counts = layout.split(pending.counts.numpy(), {n: (k,) for n, k in rec.count_sizes.items()})
        values = layout.variables(sums, counts, self.ranks.grad_scale)
        self._sink.write(pending.steps, values, during_exception)
        if self.on_nonfinite is not None:
            for step, count in zip(pending.steps, values["nonfinite"], strict=True):
                if count > 0:
                    self.on_nonfinite(step, int(count))


# ``probe(model, run_path, every=10, ...)`` makes a Probe: one name for the class and the call.
probe = Probe


class CallbackSettings:
    """What a training framework's probe callback is given: the run to record into, how often
    (optimizer steps) and the :class:`Probe` options; the model comes from the trainer."""

    def __init__(self, run_path: str | os.PathLike, every: int = 1, **probe_options: Any):
        if "model" in probe_options or "run_path" in probe_options:
            raise TypeError("ProbeCallback takes the model from the Trainer; pass run_path once")
        self.run_path = run_path
        self.every = every
        self.probe_options = probe_options
        self.probe: Probe | None = None


def _model_hooks(p: Probe) -> tuple[Callable, Callable]:
    """The model's forward pre-hook (a forward ran) and post-hook, which eager PyTorch also calls
    when the forward raised (``always_call``; then the output is None): part of that forward's
    statistics were added, so the step is dropped. Plain functions, so that
    ``copy.deepcopy(model)`` shares them instead of copying the probe; they ignore copies."""

    def before(module: nn.Module, args: tuple) -> None:
        if module is p.module:
            p._forward_seen = True

    def after(module: nn.Module, args: tuple, output: Any) -> None:
        if module is p.module and output is None and p.taps.recording_now():
            p._forward_failed = True

    return before, after


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")
