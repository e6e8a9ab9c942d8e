"""THE one place that chooses a backend for an op.

Rules (API.md): ``backend="auto"`` picks ``triton`` for CUDA tensors, ``cpp`` for CPU tensors
and numpy arrays, and ``torch`` otherwise; the environment variable
``RLMODULE_FAST_BACKEND=torch|cpp|triton`` forces one for every ``auto`` call. A backend that
is asked for explicitly (argument or environment) but cannot run the op raises a
``RuntimeError`` that says why -- never a silent fallback. Under ``auto``, an op that the
preferred backend does not implement runs on the torch reference; ``backend_info()`` lists,
per backend, which ops it implements, so this is visible rather than silent.

Each backend is a module with ``OPS`` (names it implements), ``status() -> (ok, reason)``
and one function per op with the reference's signature -- except ``"policy_step"``, which
``fastpath.plan_for`` chooses here and runs as a ``PolicyPlan``.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any, Callable, Optional

BACKENDS = ("torch", "cpp", "triton")
ENV_VAR = "RLMODULE_FAST_BACKEND"

_MODULES = {
    "torch": "rlmodule_fast.ops.torch_backend",
    "cpp": "rlmodule_fast.ops.cpp",
    "triton": "rlmodule_fast.ops.triton",
}
_loaded: dict[str, ModuleType] = {}
_status: dict[str, tuple[bool, str]] = {}


def _backend_module(name: str) -> Optional[ModuleType]:
    if name not in _status:
        try:
            mod = importlib.import_module(_MODULES[name])
            _loaded[name] = mod
            _status[name] = mod.status()
        except Exception as e:  # an adapter that cannot even import is an unusable backend
            _status[name] = (False, f"import of {_MODULES[name]} failed: {type(e).__name__}: {e}")
    return _loaded.get(name) if _status[name][0] else None


# os.environ.get costs ~0.7 us (it encodes the key) and the policy step reads the variable on
# every call; os.environ._data is CPython's mirror that every os.environ write updates.
_ENV_DATA = getattr(os.environ, "_data", None)
try:
    _ENV_KEY = os.environ.encodekey(ENV_VAR)  # type: ignore[attr-defined]
except AttributeError:
    _ENV_DATA = None


def _getenv() -> str:
    if _ENV_DATA is None:
        return os.environ.get(ENV_VAR, "")
    raw = _ENV_DATA.get(_ENV_KEY)
    return "" if raw is None else os.environ.decodevalue(raw)  # type: ignore[attr-defined]


def forced_backend() -> Optional[str]:
    """The backend forced by RLMODULE_FAST_BACKEND, or None. Invalid values raise ValueError."""
    value = _getenv().strip().lower()
    if not value or value == "auto":
        return None
    if value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={value!r}: expected one of {BACKENDS} or 'auto'")
    return value


def _is_cuda(x: Any) -> bool:
    return getattr(getattr(x, "device", None), "type", None) == "cuda"


def choose(op: str, backend: str = "auto", example: Any = None) -> str:
    """Name of the backend that runs ``op`` for an input like ``example``.

    ``backend``: "auto" | "torch" | "cpp" | "triton". Raises ValueError for an unknown name and
    RuntimeError when an explicitly requested (or forced) backend cannot run ``op``.
    """
    if backend is None or backend == "auto":
        explicit = forced_backend()
    else:
        explicit = backend.lower()
        if explicit != "auto" and explicit not in BACKENDS:
            raise ValueError(f"backend={backend!r}: expected 'auto' or one of {BACKENDS}")
        if explicit == "auto":
            explicit = forced_backend()
    if explicit == "torch":  # the reference runs every op (for policy_step: the module's own layers)
        return "torch"
    if explicit is not None:
        mod = _backend_module(explicit)
        if mod is None:
            raise RuntimeError(f"backend {explicit!r} is unavailable: {_status[explicit][1]}")
        if op not in mod.OPS:
            raise RuntimeError(f"backend {explicit!r} does not implement op {op!r} (it has {sorted(mod.OPS)})")
        return explicit
    preferred = "triton" if _is_cuda(example) else "cpp"
    mod = _backend_module(preferred)
    if mod is not None and op in mod.OPS:
        return preferred
    return "torch"


def training_mlp_backend(example: Any) -> Optional[str]:
    """"triton" when the torch MLP layers should run through Triton's differentiable fused MLP
    for inputs like ``example`` (CUDA tensors, or RLMODULE_FAST_BACKEND=triton), else None (the
    layers' own torch ops; the cpp backend has no backward, so training on CPU stays on torch)."""
    name = choose("fused_mlp", "auto", example)
    return name if name == "triton" else None


def get(op: str, backend: str = "auto", example: Any = None) -> Callable:
    """The function implementing ``op`` on the chosen backend (see ``choose``)."""
    name = choose(op, backend, example)
    return getattr(_backend_module(name), op)


def backend_info() -> dict:
    """Which backends are usable here, the ops each implements, and why an unusable one is not.

    Returns {"torch": {...}, "cpp": {...}, "triton": {...}, "forced": name-or-None}; each backend
    entry has "available" (bool), "reason" (str, empty when available), "ops" (sorted list) and
    backend-specific details ("isa" for cpp, "device"/"interpreter" for triton).
    """
    info: dict[str, Any] = {}
    for name in BACKENDS:
        mod = _backend_module(name)
        ok, reason = _status[name]
        entry = {"available": ok, "reason": "" if ok else reason, "ops": sorted(mod.OPS) if mod else []}
        if mod is not None and hasattr(mod, "details"):
            entry.update(mod.details())
        info[name] = entry
    try:
        info["forced"] = forced_backend()
    except ValueError as e:
        info["forced"] = f"invalid: {e}"
    return info
