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
import warnings
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


def env_token() -> Optional[bytes]:
    """RLMODULE_FAST_BACKEND's raw value (None when unset): a cheap key for caching a choice."""
    if _ENV_DATA is None:
        return os.environ.get(ENV_VAR)
    return _ENV_DATA.get(_ENV_KEY)


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
    if mod is None:
        _warn_unavailable_once(preferred)
    return "torch"


_warned: set = set()


def _warn_unavailable_once(name: str) -> None:
    """Under "auto", an unusable preferred backend means the torch reference runs: say so once
    per process (e.g. ``_C`` not importable after a non-editable install run from the repo root)."""
    if name in _warned:
        return
    _warned.add(name)
    warnings.warn(f"rlmodule_fast: backend {name!r} is unavailable ({_status[name][1]}); the torch reference "
                  "runs instead (rlmodule_fast.backend_info() has the details)", RuntimeWarning, stacklevel=3)


def explain(op: str, example: Any = None) -> tuple[str, str]:
    """(backend that runs ``op`` under "auto" for inputs like ``example``, why). Raises as
    ``choose`` does when a forced backend cannot run it."""
    name = choose(op, "auto", example)
    forced = forced_backend()
    if forced is not None:
        return name, f"{ENV_VAR}={forced}"
    preferred = "triton" if _is_cuda(example) else "cpp"
    device = "CUDA" if preferred == "triton" else "CPU"
    if name == preferred:
        return name, f"{device} inputs run on {name} (auto)"
    why = _status[preferred][1] if not _status[preferred][0] else f"{preferred} does not implement {op!r}"
    return name, f"{device} inputs: {preferred} is unavailable here ({why})"


TRAIN_ENV_VAR = "RLMODULE_FAST_TRAIN_BACKEND"


def training_mlp_backend(example: Any) -> Optional[str]:
    """"triton" when the torch MLP layers of ``forward_train`` should run through Triton's
    differentiable fused MLP for inputs like ``example``, else None (the layers' own torch ops).

    Opt-in only: ``RLMODULE_FAST_TRAIN_BACKEND=triton`` (and a usable triton backend for the
    input: CUDA, or the interpreter). The Triton kernels have not yet been proven on a GPU, so
    training never goes through them by default; the cpp backend has no backward."""
    value = os.environ.get(TRAIN_ENV_VAR, "").strip().lower()
    if not value or value in ("auto", "torch"):
        return None
    if value != "triton":
        raise ValueError(f"{TRAIN_ENV_VAR}={value!r}: expected 'torch' (the default) or 'triton'")
    return choose("fused_mlp", "triton", example)


def get(op: str, backend: str = "auto", example: Any = None) -> Callable:
    """The function implementing ``op`` on the chosen backend (see ``choose``)."""
    name = choose(op, backend, example)
    return getattr(_backend_module(name), op)


def backend_info() -> dict:
    """Which backends are usable here, the ops each implements, and why an unusable one is not.

    Returns {"torch": {...}, "cpp": {...}, "triton": {...}, "forced": name-or-None, "train":
    {"backend", "reason"}} ("train": what ``forward_train``'s MLPs run on); each backend
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
    train = os.environ.get(TRAIN_ENV_VAR, "").strip().lower() or "torch"
    info["train"] = {"backend": train, "reason": (
        f"{TRAIN_ENV_VAR}={train}: forward_train's MLPs run on Triton's fused MLP" if train == "triton" else
        f"forward_train runs torch's layers (set {TRAIN_ENV_VAR}=triton to opt in to Triton's fused MLP, "
        "not yet proven on a GPU)")}
    return info
