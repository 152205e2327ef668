"""The shared building blocks: RMSNorm, RoPE causal self-attention, SwiGLU MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnres_probe import ops
from attnres_probe.models.config import ModelConfig


class RMSNorm(nn.Module):
    """RMSNorm with a learned scale; ``site`` names the sublayer whose input it normalises."""

    def __init__(self, dim: int, eps: float = 1e-6, site: int | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.site = site

    def forward(self, x: torch.Tensor, rec: ops.Recording | None = None) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps, rec, self.site)

    def add_forward(
        self, x: torch.Tensor, update: torch.Tensor, rec: ops.Recording | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused ``h = x + update`` then norm: returns (norm(h), h)."""
        return ops.add_rms_norm(x, update, self.weight, self.eps, rec, self.site)


def rope_tables(head_dim: int, max_seq_len: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)  # (T, hs/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, nh, T, hs); rotate pairs (x[2i], x[2i+1]) by position-dependent angles."""
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return rotated.to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        cos, sin = rope_tables(cfg.d_model // cfg.n_heads, cfg.max_seq_len, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """SwiGLU: proj(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.proj = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """One transformer layer: an attention sublayer and an MLP sublayer, each with its PreNorm.

    The residual combination lives in the model, so every residual kind shares this module.
    """

    def __init__(self, cfg: ModelConfig, index: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, site=2 * index)
        self.attn = CausalSelfAttention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, site=2 * index + 1)
        self.mlp = MLP(cfg)

    def sublayers(self) -> list[tuple[RMSNorm, nn.Module]]:
        return [(self.attn_norm, self.attn), (self.mlp_norm, self.mlp)]


class DepthQuery(nn.Module):
    """The pseudo-query of one AttnRes op and the learned scale of its key norm.

    Zero-initialised query: training starts from a uniform average over sources. The key scale
    g is folded into the query (q · (g ⊙ k̂) = (q ⊙ g) · k̂), so the op itself needs no scale.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(dim))
        self.key_scale = nn.Parameter(torch.ones(dim))

    def forward(self) -> torch.Tensor:
        return self.query * self.key_scale
