"""Shared test set-up: where the Triton kernels run.

By default on the CPU, through Triton's interpreter. ``ATTNRES_PROBE_TEST_DEVICE=cuda`` runs the
kernel parity tests (the files ``scripts/gpu_check.py`` lists) natively on a GPU instead: no
interpreter, and every tensor a test makes without naming a device is made there.
"""

import os

TEST_DEVICE = os.environ.get("ATTNRES_PROBE_TEST_DEVICE", "cpu")
if TEST_DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402  (after TRITON_INTERPRET is settled: triton reads it when imported)

if TEST_DEVICE != "cpu":
    if not TEST_DEVICE.startswith("cuda") or not torch.cuda.is_available():
        raise RuntimeError(
            f"ATTNRES_PROBE_TEST_DEVICE={TEST_DEVICE!r} asks for the kernels on a GPU, but only "
            "'cuda' (or 'cuda:N') with torch.cuda.is_available() works; unset it to run them "
            "on the CPU through the Triton interpreter"
        )
    torch.set_default_device(TEST_DEVICE)
