"""Shared test set-up: Triton kernels run on the CPU through the interpreter."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
