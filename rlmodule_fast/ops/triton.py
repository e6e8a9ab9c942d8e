"""The ``triton`` backend adapter: Triton kernels from ``rlmodule_fast.kernels`` for CUDA tensors
(and CPU tensors under TRITON_INTERPRET=1)."""
from __future__ import annotations

OPS: frozenset = frozenset()


def status() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return False, f"triton is not installed ({e})"
    if not OPS:
        return False, "no Triton kernels are implemented yet"
    return True, ""
