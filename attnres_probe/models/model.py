"""The transformer family: one model, three residual kinds, chosen by ``ModelConfig.residual``.

Sublayers are numbered 0 … 2·n_layers−1 (attention, MLP, attention, …). Sublayer ``l`` reads
its input ``h_l``, applies its PreNorm and computes its update ``f_l``:

    baseline  h_{l+1} = h_l + f_l                           (one residual stream)
    full      h_l = Σ_i α_{i→l} v_i,  v_0 = emb, v_i = f_{i−1}
    block     h_l = AttnRes over completed blocks b_0 … b_{n−1} and the block's partial sum

The model output is the final stream (baseline) or one more AttnRes op over every source.

Recording: while ``model.recording`` holds an ``ops.Recording`` (the probe sets it for recorded
steps), the ops add their statistics into it and the forward adds what only the model sees
(each update, the streams around each layer, a Block AttnRes layer's partial sum), all as
plain tensor ops: the forward compiles whole either way.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn

from attnres_probe import ops
from attnres_probe.models.config import ModelConfig
from attnres_probe.models.layers import Block, DepthQuery, RMSNorm

REMOVALS = ("mask", "zero")


class HookPoint(nn.Identity):
    """An identity module marking a tensor worth observing, for anyone's read-only hooks."""


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.recording: ops.Recording | None = None
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layers)])
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, site=cfg.n_sublayers)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # hook_stream[i]: the stream entering layer i; hook_stream[n_layers]: the final stream.
        self.hook_stream = nn.ModuleList([HookPoint() for _ in range(cfg.n_layers + 1)])
        if cfg.residual != "baseline":
            # One pseudo-query per sublayer plus one for the model output.
            self.depth_queries = nn.ModuleList(
                [DepthQuery(cfg.d_model) for _ in range(cfg.n_sublayers + 1)]
            )
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith(".proj.weight"):  # output projections feeding the residual
                nn.init.normal_(p, mean=0.0, std=0.02 / (2 * cfg.n_layers) ** 0.5)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=1.0)

    def sublayers(self) -> list[tuple[RMSNorm, nn.Module]]:
        """(PreNorm, sublayer) pairs in depth order."""
        return [pair for block in self.layers for pair in block.sublayers()]

    def forward(
        self,
        idx: torch.Tensor,
        skip: Collection[int] = (),
        removal: str | None = None,
        depth_weights_out: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """idx (B, T) int64 -> logits (B, T, vocab_size).

        skip: sublayer indices to remove (pruning). removal: how — "mask" (AttnRes default):
        the removed update is not a source at all, so every later depth softmax renormalises
        over the sources that remain (Block AttnRes: it leaves the partial sum; a removed whole
        block leaves every later softmax); "zero" (baseline's only mode): the update is replaced
        by zeros, which in AttnRes stay a source with logit 0 (it only rescales each AttnRes
        output, which every reader normalises: the same function as "mask" up to the eps).
        depth_weights_out: if a list is given (AttnRes kinds), it receives one weight tensor
        [n_sources_at_site, B, T] per AttnRes op, in site order (per-token depth views).
        """
        B, T = idx.shape
        if T > self.cfg.max_seq_len:
            raise ValueError(
                f"sequence length {T} exceeds max_seq_len={self.cfg.max_seq_len}; "
                "use shorter sequences or a config with a larger max_seq_len"
            )
        removal = self._removal(removal, skip)
        rec = self.recording
        if rec is not None:
            rec.count_tokens(B * T)
        emb = self.embed(idx)  # (B, T, C)
        run = {
            "baseline": self._forward_baseline,
            "full": self._forward_full,
            "block": self._forward_block,
        }[self.cfg.residual]
        out = run(emb, frozenset(skip), removal, depth_weights_out, rec)
        logits = self.lm_head(out)
        return logits if rec is None else rec.mark_output(logits)

    def _removal(self, removal: str | None, skip: Collection[int]) -> str:
        if removal is None:
            return "zero" if self.cfg.residual == "baseline" else "mask"
        if removal not in REMOVALS:
            raise ValueError(f"removal={removal!r} is not one of {', '.join(REMOVALS)}")
        if removal == "mask" and self.cfg.residual == "baseline" and skip:
            raise ValueError(
                "removal='mask' takes a source out of the depth softmax, and a baseline model "
                "has none; remove baseline units with removal='zero'"
            )
        return removal

    # ------------------------------------------------------------------ statistics

    def _update(self, i: int, f: torch.Tensor, rec: ops.Recording | None) -> torch.Tensor:
        """Sublayer i's update as computed, recorded (Σf², and for AttnRes its gradient)."""
        if rec is None:
            return f
        rec.add_sq("update_sq", i, f)
        if self.cfg.residual == "baseline":
            return f  # ∂L/∂f_i is the gradient the next fused add + norm records
        return rec.tap(f, "grad_sq", i)

    def _stream(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """The stream entering ``layer`` (n_layers: the final stream) passes its hook point."""
        return self.hook_stream[layer](h)

    @staticmethod
    def _cos(rec: ops.Recording | None, layer: int, h_in, h_out, in_norms=None):
        """Σ_tokens cos(stream entering ``layer``, stream leaving it) into ``cos_sum``; returns
        the per-token norms of h_out (the next layer's h_in)."""
        if rec is None or h_in is None:
            return None
        with torch.no_grad():
            out_norms = torch.linalg.vector_norm(h_out, dim=-1, dtype=torch.float32)
            if in_norms is None:
                in_norms = torch.linalg.vector_norm(h_in, dim=-1, dtype=torch.float32)
            dots = torch.linalg.vecdot(h_in.float(), h_out.float())
            rec.add("cos_sum", layer, (dots / (in_norms * out_norms).clamp_min(1e-8)).sum())
        return out_norms

    # ------------------------------------------------------------------ residual kinds

    def _forward_baseline(self, h, skip, removal, _weights_out, rec):
        pairs = self.sublayers()
        norms = [norm for norm, _ in pairs] + [self.final_norm]
        h = self._stream(0, h)
        y = norms[0](h, rec)
        layer_in, in_norms = h, None
        for i, (_, sub) in enumerate(pairs):
            f = self._update(i, sub(y), rec)
            if i in skip:
                f = torch.zeros_like(f)
            y, h = norms[i + 1].add_forward(h, f, rec)  # fused h += f; y = norm(h)
            if i % 2 == 1:
                h = self._stream(i // 2 + 1, h)
                in_norms = self._cos(rec, i // 2, layer_in, h, in_norms)
                layer_in = h
        return y

    def _forward_full(self, emb, skip, removal, weights_out, rec):
        eps = self.cfg.norm_eps
        keep_inv = ops.kernel_backend(emb) == "reference"  # the kernels form RMS in registers
        sources, inv = [emb], [ops.inv_rms(emb, eps)] if keep_inv else []  # v_0 … v_l
        layer_in, in_norms = None, None
        for i, (norm, sub) in enumerate(self.sublayers()):
            h, w = ops.attnres(
                sources, self.depth_queries[i](), eps, rec, i, inv if keep_inv else None
            )
            if weights_out is not None:
                weights_out.append(w.detach())
            if i % 2 == 0:
                h = self._stream(i // 2, h)
                in_norms = self._cos(rec, i // 2 - 1, layer_in, h, in_norms)
                layer_in = h
            f = self._update(i, sub(norm(h, rec)), rec)
            if i in skip:
                if removal == "mask":
                    continue
                f = torch.zeros_like(f)
            sources.append(f)
            # A low-precision source keeps its RMS inside the op: the RMS and logit terms of
            # its gradient nearly cancel, and summed apart in bfloat16 they lose that balance.
            keep_inv = keep_inv and f.dtype in (torch.float32, torch.float64)
            if keep_inv:
                inv.append(ops.inv_rms(f, eps))
        out, w = ops.attnres(
            sources,
            self.depth_queries[-1](),
            eps,
            rec,
            self.cfg.n_sublayers,
            inv if keep_inv else None,
        )
        if weights_out is not None:
            weights_out.append(w.detach())
        out = self._stream(self.cfg.n_layers, out)
        self._cos(rec, self.cfg.n_layers - 1, layer_in, out, in_norms)
        return self.final_norm(out, rec)

    def _forward_block(self, emb, skip, removal, weights_out, rec):
        cfg = self.cfg
        S = cfg.sublayers_per_block
        pairs = self.sublayers()
        blocks = [emb]  # completed block representations b_0 … b_{n-1}
        layer_in, in_norms = None, None
        for n in range(cfg.n_blocks):
            queries = torch.stack([self.depth_queries[n * S + s]() for s in range(S)])
            phase1_out, phase1_lse, phase1_logits = ops.block_attnres_phase1(
                torch.stack(blocks), queries, cfg.norm_eps
            )
            partial = None
            for s in range(S):
                i = n * S + s
                h, w = ops.block_attnres_phase2(
                    phase1_out[s],
                    phase1_lse[s],
                    phase1_logits[s],
                    partial,
                    queries[s],
                    cfg.norm_eps,
                    rec,
                    i,
                )
                if weights_out is not None:
                    weights_out.append(w.detach())
                if i % 2 == 0:
                    h = self._stream(i // 2, h)
                    in_norms = self._cos(rec, i // 2 - 1, layer_in, h, in_norms)
                    layer_in = h
                norm, sub = pairs[i]
                f = self._update(i, sub(norm(h, rec)), rec)
                if i in skip:
                    if removal == "mask":
                        f = None
                    else:
                        f = torch.zeros_like(f)
                if f is not None:
                    partial = f if partial is None else partial + f
                if i % 2 == 1 and rec is not None and partial is not None:
                    # What the layer hands on: the block's partial sum after it. (Its gradient
                    # is the last update's: f feeds nothing but this sum.)
                    rec.add_sq("layer_out_sq", i // 2, partial)
            if partial is not None:
                blocks.append(partial)
        out, w = ops.attnres(
            torch.stack(blocks), self.depth_queries[-1](), cfg.norm_eps, rec, cfg.n_sublayers
        )
        if weights_out is not None:
            weights_out.append(w.detach())
        out = self._stream(self.cfg.n_layers, out)
        self._cos(rec, self.cfg.n_layers - 1, layer_in, out, in_norms)
        return self.final_norm(out, rec)

    @torch.no_grad()
    def depth_weights(self, idx: torch.Tensor) -> torch.Tensor:
        """Per-token depth weights for one input: [n_sublayers + 1, n_sources, B, T], NaN where a
        source does not exist at that site. Baseline models have none (a ValueError says so)."""
        if self.cfg.residual == "baseline":
            raise ValueError("baseline models have no depth weights; use a full or block model")
        captured: list[torch.Tensor] = []
        self(idx, depth_weights_out=captured)
        names = self.cfg.source_names
        B, T = idx.shape
        out = torch.full((len(captured), len(names), B, T), float("nan"))
        for site, w in enumerate(captured):
            # An op's weight rows are its sources in order (Block phase 2 always returns the
            # partial sum's row last, zero where the block has no partial sum yet).
            columns = list(self.cfg.sources_at(site))
            out[site, columns] = w.float().cpu()[: len(columns)]
        return out


def build_model(cfg: ModelConfig) -> Transformer:
    """The model a config describes; ``model(idx)`` returns logits (B, T, vocab_size)."""
    return Transformer(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
