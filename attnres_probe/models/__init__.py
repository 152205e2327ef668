"""Models: the config, the shared layers, and the transformer with its three residual kinds."""

from attnres_probe.models.config import RESIDUAL_KINDS, ConfigError, ModelConfig
from attnres_probe.models.model import HookPoint, Transformer, build_model, count_parameters

__all__ = [
    "RESIDUAL_KINDS",
    "ConfigError",
    "ModelConfig",
    "HookPoint",
    "Transformer",
    "build_model",
    "count_parameters",
]
