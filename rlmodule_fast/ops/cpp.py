"""The ``cpp`` backend adapter: checks arguments and hands raw buffers to ``rlmodule_fast._C``."""
from __future__ import annotations

OPS: frozenset = frozenset()


def status() -> tuple[bool, str]:
    try:
        from .. import _C  # noqa: F401
    except ImportError as e:
        return False, f"the C++ extension rlmodule_fast._C is not built/importable ({e})"
    return True, ""
