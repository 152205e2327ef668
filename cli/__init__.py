"""The ``attnres-probe`` command line: thin commands over library calls."""

from attnres_probe.cli.main import app

__all__ = ["app"]
