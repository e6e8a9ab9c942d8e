"""Triton kernels, shipped as ``rlmodule_fast.kernels`` (one file per op)."""
