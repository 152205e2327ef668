"""Fused kernels and their pure-torch references (``reference``)."""
