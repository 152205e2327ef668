"""The transformer family: one model, three residual kinds, chosen by ``ModelConfig.residual``.

Sublayers are numbered 0 … 2·n_layers−1 (attention, MLP, attention, …). Sublayer ``l`` reads
its input ``h_l``, applies its PreNorm and computes its update ``f_l``:

    baseline  h_{l+1} = h_l + f_l                           (one residual stream)
    full      h_l = Σ_i α_{i→l} v_i,  v_0 = emb, v_i = f_{i−1}
    block     h_l = AttnRes over completed blocks b_0 … b_{n−1} and the block's partial sum

The model output is the final stream (baseline) or one more AttnRes op over every source.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn

from attnres_probe import ops
from attnres_probe.models.config import ModelConfig
from attnres_probe.models.layers import Block, DepthQuery, RMSNorm


class HookPoint(nn.Identity):
    """An identity module marking a tensor worth observing, for read-only module hooks.

    The model also hands these tensors (and each sublayer's update) to ``ops.observe_*``, which
    is how this project's probe reads them without module hooks.
    """


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
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
        depth_weights_out: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """idx (B, T) int64 -> logits (B, T, vocab_size).

        skip: sublayer indices whose update is replaced by zeros (pruning by zero-ablation).
        depth_weights_out: if a list is given (AttnRes kinds), it receives one weight tensor
        [n_sources_at_site, B, T] per AttnRes op, in site order (per-token depth views).
        """
        B, T = idx.shape
        if T > self.cfg.max_seq_len:
            raise ValueError(
                f"sequence length {T} exceeds max_seq_len={self.cfg.max_seq_len}; "
                "use shorter sequences or a config with a larger max_seq_len"
            )
        emb = self.embed(idx)  # (B, T, C)
        run = {
            "baseline": self._forward_baseline,
            "full": self._forward_full,
            "block": self._forward_block,
        }[self.cfg.residual]
        out = run(emb, frozenset(skip), depth_weights_out)
        return self.lm_head(out)

    def _update(self, i: int, x: torch.Tensor, skip: frozenset[int]) -> torch.Tensor:
        norm, sub = self.sublayers()[i]
        return self._observed_update(i, sub(norm(x)), skip)

    @staticmethod
    def _observed_update(i: int, f: torch.Tensor, skip: frozenset[int]) -> torch.Tensor:
        """Sublayer i's output, observed as computed, then zeroed when i is skipped."""
        ops.observe_update(i, f)
        return torch.zeros_like(f) if i in skip else f

    def _stream(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """The stream entering ``layer`` (n_layers: the final stream) passes its hook point."""
        h = self.hook_stream[layer](h)
        ops.observe_stream(layer, h)
        return h

    def _forward_baseline(self, h, skip, _weights_out):
        pairs = self.sublayers()
        norms = [norm for norm, _ in pairs] + [self.final_norm]
        h = self._stream(0, h)
        y = norms[0](h)
        for i, (_, sub) in enumerate(pairs):
            f = self._observed_update(i, sub(y), skip)
            y, h = norms[i + 1].add_forward(h, f)  # fused h += f; y = norm(h)
            if i % 2 == 1:
                h = self._stream(i // 2 + 1, h)
        return y

    def _forward_full(self, emb, skip, weights_out):
        sources = [emb]  # v_0 … v_l, each (B, T, C)
        for i in range(self.cfg.n_sublayers):
            h, w = ops.attnres(torch.stack(sources), self.depth_queries[i](), site=i)
            if weights_out is not None:
                weights_out.append(w.detach())
            if i % 2 == 0:
                h = self._stream(i // 2, h)
            sources.append(self._update(i, h, skip))
        out, w = ops.attnres(
            torch.stack(sources), self.depth_queries[-1](), site=self.cfg.n_sublayers
        )
        if weights_out is not None:
            weights_out.append(w.detach())
        out = self._stream(self.cfg.n_layers, out)
        return self.final_norm(out)

    def _forward_block(self, emb, skip, weights_out):
        cfg = self.cfg
        S = cfg.sublayers_per_block
        blocks = [emb]  # completed block representations b_0 … b_{n-1}
        for n in range(cfg.n_blocks):
            stacked = torch.stack(blocks)  # (n, B, T, C)
            queries = torch.stack([self.depth_queries[n * S + s]() for s in range(S)])
            phase1_out, phase1_lse = ops.block_attnres_phase1(stacked, queries)
            partial = None
            for s in range(S):
                i = n * S + s
                h, w = ops.block_attnres_phase2(
                    stacked, phase1_out[s], phase1_lse[s], partial, queries[s], site=i
                )
                if weights_out is not None:
                    weights_out.append(w.detach())
                if i % 2 == 0:
                    h = self._stream(i // 2, h)
                f = self._update(i, h, skip)
                partial = f if partial is None else partial + f
            blocks.append(partial)
        out, w = ops.attnres(torch.stack(blocks), self.depth_queries[-1](), site=cfg.n_sublayers)
        if weights_out is not None:
            weights_out.append(w.detach())
        out = self._stream(self.cfg.n_layers, out)
        return self.final_norm(out)

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
