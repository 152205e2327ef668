"""ModelConfig: one frozen dataclass describes every model of the family."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

RESIDUAL_KINDS = ("baseline", "full", "block")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and what would be valid."""


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer; ``residual`` picks how sublayers combine across depth.

    baseline: PreNorm additive residual stream. full: Full AttnRes (each sublayer attends over
    the embedding and every earlier sublayer output). block: Block AttnRes over ``n_blocks``
    blocks of ``2 * n_layers / n_blocks`` sublayers each.
    """

    residual: str = "baseline"
    n_layers: int = 8
    d_model: int = 128
    n_heads: int = 4
    n_blocks: int = 4
    vocab_size: int = 256
    max_seq_len: int = 256
    mlp_hidden: int = 0  # 0: the SwiGLU default, 8/3 · d_model rounded up to a multiple of 16
    norm_eps: float = 1e-6
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        if self.residual not in RESIDUAL_KINDS:
            raise ConfigError(
                f"residual={self.residual!r} is not a residual kind; use one of "
                + ", ".join(RESIDUAL_KINDS)
            )
        for name in ("n_layers", "d_model", "n_heads", "n_blocks", "vocab_size", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                "pick n_heads that divides d_model"
            )
        if (self.d_model // self.n_heads) % 2:
            raise ConfigError(
                f"head size d_model/n_heads={self.d_model // self.n_heads} must be even for RoPE"
            )
        if self.residual == "block" and (2 * self.n_layers) % self.n_blocks:
            raise ConfigError(
                f"n_blocks={self.n_blocks} does not divide the {2 * self.n_layers} sublayers of "
                f"n_layers={self.n_layers}; use a divisor of {2 * self.n_layers}"
            )
        if self.mlp_hidden < 0:
            raise ConfigError(f"mlp_hidden={self.mlp_hidden} must be >= 0 (0 picks the default)")

    @property
    def n_sublayers(self) -> int:
        return 2 * self.n_layers

    @property
    def sublayers_per_block(self) -> int:
        return self.n_sublayers // self.n_blocks

    @property
    def ffn_hidden(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        return -(-int(8 * self.d_model / 3) // 16) * 16

    @property
    def source_names(self) -> list[str]:
        """Names of the depth sources an AttnRes op can attend over (empty for baseline)."""
        if self.residual == "full":
            return ["emb"] + [
                f"L{i // 2}.{'attn' if i % 2 == 0 else 'mlp'}" for i in range(self.n_sublayers)
            ]
        if self.residual == "block":
            return ["emb"] + [f"block{b + 1}" for b in range(self.n_blocks)] + ["partial"]
        return []

    def sources_at(self, site: int) -> tuple[int, ...]:
        """Columns of ``source_names`` that the AttnRes op at ``site`` attends over, in the order
        the op receives them (site ``n_sublayers``: the model output; baseline: none).

        Full: the embedding and every earlier sublayer output. Block: the completed blocks
        (the embedding first) and, after a block's first sublayer, the partial sum (last column).
        """
        if not 0 <= site <= self.n_sublayers:
            raise ValueError(f"site={site} is outside 0..{self.n_sublayers}")
        if self.residual == "full":
            return tuple(range(site + 1))
        if self.residual == "block":
            if site == self.n_sublayers:
                return tuple(range(self.n_blocks + 1))
            per_block = self.sublayers_per_block
            completed = tuple(range(site // per_block + 1))
            return completed + ((self.n_blocks + 1,) if site % per_block else ())
        return ()

    def source_mask(self) -> np.ndarray:
        """[n_sublayers + 1, n_sources] bool: True where the source exists at that site."""
        mask = np.zeros((self.n_sublayers + 1, len(self.source_names)), dtype=bool)
        for site in range(self.n_sublayers + 1):
            mask[site, list(self.sources_at(site))] = True
        return mask

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)
