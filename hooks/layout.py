"""The per-step record of a probe: which running sums and counts a step keeps, and how they
become the run variables.

A recorded step accumulates in one ``ops.Recording`` (float32 sums and int64 counts on the
model's device, and gradient taps); when the step closes, the probe copies its sums and counts
into one row of a flush buffer. :meth:`RowLayout.variables` turns whole flushes of rows into the
run variables of the store's schema on the host, once per flush.

Sites: ``n_sites = n_sublayers + 1``; site ``l < n_sublayers`` is the input of sublayer ``l``,
site ``n_sublayers`` the model output (the final norm, or the output AttnRes op).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from attnres_probe import ops
from attnres_probe.store.schema import recorded_variables

# Where a layer's output (what it hands on) is read from:
#   "stream": the stream entering the next layer's first sublayer (an additive residual stream:
#             its norm statistic; the model output's norm for the last layer);
#   "update": the layer's last sublayer update (Full AttnRes: the source the layer adds last);
#   "own":    a sum of its own (Block AttnRes partial sums, other decoders' layer outputs).
# and its gradient: "update" — the layer's last update feeds nothing but that output (this
# project's models: h + f, partial + f, or f itself), so ∂L/∂output = ∂L/∂f of that update —
# or "own", a tap on the output (other decoders).
LAYER_OUTPUTS = ("stream", "update", "own")


@dataclass(frozen=True)
class ProbeShape:
    """What a probed model looks like to the record.

    layer_of [n_sublayers]: transformer layer of each sublayer; kinds [n_sublayers]: "attn" or
    "mlp"; residual: the residual kind ("baseline" for any additive-residual decoder);
    source_names: depth sources of the AttnRes ops (empty: no depth attention);
    source_mask [n_sites, n_sources] bool: the source exists at that site;
    grad_from_norm: ``grad_norm[l]`` is the fused add + norm statistic of site ``l + 1``
    (baseline, where ∂L/∂f_l = ∂L/∂(h_l + f_l)) instead of a tap on f_l;
    layer_output: one of ``LAYER_OUTPUTS``; layer_grad: "update" or "own" (see there);
    width: model width, for counts known per token (this project's models), else 0.
    """

    layer_of: tuple[int, ...]
    kinds: tuple[str, ...]
    n_layers: int
    residual: str = "baseline"
    source_names: tuple[str, ...] = ()
    source_mask: np.ndarray | None = field(default=None, compare=False)
    grad_from_norm: bool = False
    layer_output: str = "own"
    layer_grad: str = "own"
    width: int = 0

    @property
    def n_sublayers(self) -> int:
        return len(self.layer_of)

    @property
    def n_sites(self) -> int:
        return self.n_sublayers + 1

    @property
    def n_sources(self) -> int:
        return len(self.source_names)

    @property
    def has_queries(self) -> bool:
        return self.n_sources > 0


class RowLayout:
    """The sums, counts and taps of a step for a model of ``shape``, and the variables they
    give (:meth:`variables`, :meth:`dims`)."""

    def __init__(self, shape: ProbeShape):
        if shape.layer_output not in LAYER_OUTPUTS or shape.layer_grad not in ("update", "own"):
            raise ValueError(
                f"layer_output={shape.layer_output!r} / layer_grad={shape.layer_grad!r} are not "
                f"one of {LAYER_OUTPUTS} / ('update', 'own')"
            )
        self.shape = shape
        n_sub, n_sites, n_layers = shape.n_sublayers, shape.n_sites, shape.n_layers
        self.sums: dict[str, tuple[int, ...]] = {
            "loss": (1,),
            "norm_sq": (n_sites,),  # Σx² of the stream entering each sublayer
            "update_sq": (n_sub,),  # Σf² of each sublayer's update
            "param_sq": (n_layers,),  # Σ grad² of the layer's own weights
            "cos_sum": (n_layers,),  # Σ_tokens cos(stream in, stream out)
        }
        self.counts: dict[str, int] = {
            "loss": 1,
            "norm_numel": n_sites,
            "update_numel": n_sub,
            "param_present": n_layers,
            "cos_tokens": n_layers,
        }
        self.grads: list[str] = []  # sums fed by gradient taps
        if shape.grad_from_norm:
            self._grad("norm_grad_sq", (n_sites,))  # Σ(∂L/∂h)² of a fused add + norm's stream
        else:
            self._grad("grad_sq", (n_sub,))  # Σ(∂L/∂f)² at each update
        if shape.layer_output == "own":
            self.sums["layer_out_sq"] = (n_layers,)
            self.counts["layer_out_numel"] = n_layers
        if shape.layer_grad == "own":
            self._grad("layer_grad_sq", (n_layers,))
        if shape.has_queries:
            self.sums["query_sq"] = (n_sites,)  # Σ grad² of each pseudo-query and key scale
            self.counts["query_present"] = n_sites
            self.sums["depth_weight_sum"] = (n_sites, shape.n_sources)  # Σ_tokens α
            self.sums["depth_entropy_sum"] = (n_sites,)  # Σ_tokens H(α)
            self.counts["depth_tokens"] = n_sites

    def _grad(self, name: str, shape: tuple[int, ...]) -> None:
        self.sums[name] = shape
        self.grads.append(name)

    def per_token(self) -> dict[str, list[int]]:
        """Counts that grow by a fixed amount per token in every forward (this project's
        models, whose every site sees every token once): element counts D, token counts 1."""
        shape, width = self.shape, self.shape.width
        if not width:
            return {}
        per = {
            "norm_numel": [width] * shape.n_sites,
            "update_numel": [width] * shape.n_sublayers,
            "cos_tokens": [1] * shape.n_layers,
        }
        if "layer_out_numel" in self.counts:
            per["layer_out_numel"] = [width] * shape.n_layers
        if shape.has_queries:
            per["depth_tokens"] = [1] * shape.n_sites
        return per

    def recording(self, device: torch.device | str, sources_at=None) -> ops.Recording:
        """A Recording with this layout's sums, counts and taps."""
        return ops.Recording(
            self.sums,
            self.counts,
            self.grads,
            device,
            per_token=self.per_token(),
            sources_at=sources_at,
            n_sites=self.shape.n_sites,
            norm_grads=self.shape.grad_from_norm,
        )

    def variables(
        self,
        sums: dict[str, np.ndarray],
        counts: dict[str, np.ndarray],
        grad_scale: float = 1.0,
    ) -> dict[str, np.ndarray]:
        """Run variables for k recorded steps from the named sums and counts of k rows
        ([k, *segment shape], see :meth:`split`) -> arrays [k, ...] float32 (NaN where
        nothing was observed).

        ``grad_scale`` multiplies the squared activation-gradient sums: 1/world² under data
        parallelism, where each rank's loss is its local mean and gradients are averaged.
        """
        shape = self.shape
        s = {n: v.astype(np.float64) for n, v in sums.items()}
        c = {n: v.astype(np.float64) for n, v in counts.items()}
        n_sub = shape.n_sublayers
        hidden_rms = np.sqrt(_mean(s["norm_sq"], c["norm_numel"]))
        update_rms = np.sqrt(_mean(s["update_sq"], c["update_numel"]))
        if shape.grad_from_norm:  # g_l = ∂L/∂h_{l+1}, read at site l + 1
            grad = _grad_norm(s["norm_grad_sq"], c["norm_grad_sq_hits"], grad_scale)
            grad_norm = grad[:, 1:]
        else:
            grad_norm = _grad_norm(s["grad_sq"], c["grad_sq_hits"], grad_scale)
        out: dict[str, np.ndarray] = {
            "loss": _mean(s["loss"][:, 0], c["loss"][:, 0]),
            "hidden_rms": hidden_rms[:, :n_sub],
            "update_rms": update_rms,
            "grad_norm": grad_norm,
            "param_grad_norm": _present(np.sqrt(s["param_sq"]), c["param_present"]),
            "cos_in_out": _mean(s["cos_sum"], c["cos_tokens"]),
        }
        last = [
            max(i for i, k in enumerate(shape.layer_of) if k == layer)
            for layer in range(shape.n_layers)
        ]
        if shape.layer_output == "stream":  # the stream entering the site after the layer
            out["layer_output_rms"] = hidden_rms[:, [i + 1 for i in last]]
        elif shape.layer_output == "update":
            out["layer_output_rms"] = update_rms[:, last]
        else:
            out["layer_output_rms"] = np.sqrt(_mean(s["layer_out_sq"], c["layer_out_numel"]))
        if shape.layer_grad == "update":
            out["layer_grad_norm"] = grad_norm[:, last]
        else:
            out["layer_grad_norm"] = _grad_norm(
                s["layer_grad_sq"], c["layer_grad_sq_hits"], grad_scale
            )
        if shape.has_queries:
            query = _present(np.sqrt(s["query_sq"]), c["query_present"])
            out["query_grad_norm"] = query[:, :n_sub]
            out["query_grad_norm_out"] = query[:, n_sub]
            tokens = c["depth_tokens"]  # [k, n_sites]
            weights = _mean(s["depth_weight_sum"], tokens[:, :, None])
            if shape.source_mask is not None:
                weights = np.where(shape.source_mask[None], weights, np.nan)
            entropy = _mean(s["depth_entropy_sum"], tokens)
            out["depth_weights"] = weights[:, :n_sub]
            out["depth_entropy"] = entropy[:, :n_sub]
            out["depth_weights_out"] = weights[:, n_sub]
            out["depth_entropy_out"] = entropy[:, n_sub]
        k = s["loss"].shape[0]
        out["nonfinite"] = sum(
            (~np.isfinite(value)).reshape(k, -1).sum(1) for value in s.values()
        ).astype(np.float64)
        return {name: value.astype(np.float32) for name, value in out.items()}

    def dims(self) -> dict[str, tuple[str, ...]]:
        """The variables :meth:`variables` returns and their dims (the schema's, ``step``
        first): those the store's schema declares for this residual kind."""
        return recorded_variables(self.shape.residual)

    def split(self, rows: np.ndarray, sizes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
        """Named segments of k flat rows [k, n]: name -> [k, *shape]."""
        k, start, out = rows.shape[0], 0, {}
        for name, shp in sizes.items():
            size = math.prod(shp)
            out[name] = rows[:, start : start + size].reshape((k, *shp))
            start += size
        return out


def _mean(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / np.where(count > 0, count, 1), np.nan)


def _present(value: np.ndarray, count: np.ndarray) -> np.ndarray:
    return np.where(count > 0, value, np.nan)


def _grad_norm(sq: np.ndarray, hits: np.ndarray, grad_scale: float) -> np.ndarray:
    """‖g‖ from Σg², NaN where no backward pass reached the tap."""
    return np.where(hits > 0, np.sqrt(sq * grad_scale), np.nan)
