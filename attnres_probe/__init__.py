"""attnres-probe: depth dynamics of Attention-Residual and PreNorm transformers.

The public names are few; everything else is importable from its module.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("attnres-probe")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"

__all__ = ["ModelConfig", "build_model", "open_run", "prune_model", "__version__"]


def __getattr__(name: str):
    # Lazy: the store and analysis faces must not pay for importing torch.
    if name in ("ModelConfig", "build_model"):
        from attnres_probe import models

        return getattr(models, name)
    if name == "open_run":
        from attnres_probe.store import open_run

        return open_run
    if name == "prune_model":
        from attnres_probe.analysis.pruning import prune_model

        return prune_model
    if name in ("ops", "hooks", "store", "analysis", "figures", "train", "data", "kernels"):
        import importlib

        return importlib.import_module(f"attnres_probe.{name}")
    raise AttributeError(f"module 'attnres_probe' has no attribute {name!r}")
