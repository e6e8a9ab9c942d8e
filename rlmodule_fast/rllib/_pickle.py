"""A restricted unpickler for the files RLlib writes next to an RLModule checkpoint.

RLlib's new API stack (tested: ray 2.60) writes ``module_state.pkl`` (a dict of parameter name -> numpy array) and
``class_and_ctor_args.pkl`` (the module class, the spaces, the model config and the catalog
class) with cloudpickle. A plain ``pickle.load`` of such a file runs whatever callable the file
names; this loader runs none of it:

- admitted as real callables: numpy's array/scalar/dtype rebuilders, wrapped so that only plain
  numeric dtypes pass (no object dtype, no forged dtype flags: BUILD is checked too, which is why
  this is CPython's pure-Python ``pickle._Unpickler``), ``collections.OrderedDict``, ``set`` and
  ``frozenset``;
- a space's seeded numpy ``Generator`` is recorded as inert data (never rebuilt);
- gymnasium spaces (Box, Discrete, MultiDiscrete, MultiBinary) and RLlib's
  ``DefaultModelConfig`` are *recorded*, never constructed by the pickle: the loader gets plain
  records (class name + state dict) and :func:`space_from_record` rebuilds the space through
  its public constructor, which validates it;
- the RLlib classes a checkpoint names as data (the module class, the catalog class) come back
  as :class:`ClassRef` placeholders, never imported, never callable;
- anything else (``os.system``, ``builtins.eval``, a cloudpickled function, torch's rebuild
  helpers, ...) raises :class:`UnsafeCheckpointError` naming the file and the global, before
  any of it can run.

No ray import here: serving an RLlib checkpoint does not need ray installed.
"""
from __future__ import annotations

import collections
import io
import pathlib
import pickle
from typing import Any

import numpy as np

try:  # numpy 2
    from numpy._core import multiarray as _ma
    from numpy._core import numeric as _nu
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _ma  # type: ignore[no-redef]
    from numpy.core import numeric as _nu  # type: ignore[no-redef]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file names a class or function the restricted unpickler does not admit."""


class ClassRef:
    """A class a checkpoint names as data (``"module.QualName"``); never imported or called."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"ClassRef({self.path!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClassRef) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)


class Record:
    """Recorded instance of an admitted data class (a gymnasium space, DefaultModelConfig).

    Pickle builds it with ``cls.__new__(cls)`` + ``__setstate__(state)``; calling the class with
    arguments (REDUCE) is refused: the real constructor is called later, by us, with checks.
    """

    kind = "record"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise pickle.UnpicklingError(f"{self.kind}: refusing to call the constructor from a pickle")

    def __setstate__(self, state: Any) -> None:
        # Protocol-2 default: state is a dict, or (dict, slots-dict) for classes with __slots__.
        if isinstance(state, tuple) and len(state) == 2:
            d = dict(state[0] or {})
            d.update(state[1] or {})
            state = d
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.kind}: expected a dict state, got {type(state).__name__}")
        object.__setattr__(self, "state", state)

    def __repr__(self) -> str:
        return f"<{self.kind} record {sorted(getattr(self, 'state', {}))}>"


def _record_class(kind: str) -> type:
    return type(f"{kind}Record", (Record,), {"kind": kind})


BoxRecord = _record_class("Box")
DiscreteRecord = _record_class("Discrete")
MultiDiscreteRecord = _record_class("MultiDiscrete")
MultiBinaryRecord = _record_class("MultiBinary")
ModelConfigRecord = _record_class("DefaultModelConfig")


class RngRecord(Record):
    """A space's seeded numpy Generator (``_np_random``): kept as inert data, never rebuilt
    (the rebuilt space gets a fresh generator, as any unseeded space)."""

    kind = "numpy RNG"

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)


def _rng(*args: Any) -> RngRecord:
    rec = RngRecord.__new__(RngRecord)
    object.__setattr__(rec, "args", args)
    return rec


def _safe_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if not isinstance(spec, str):
        raise pickle.UnpicklingError(f"numpy dtype {spec!r}: refused (only dtype strings such as 'f4')")
    dt = np.dtype(spec, bool(align), True)  # always a private copy: BUILD then sets its state
    _check_plain(dt, "numpy dtype")
    return dt


def _np(module: str) -> list[str]:
    return [f"numpy.core.{module}", f"numpy._core.{module}"]


def _admitted() -> dict[str, Any]:
    table: dict[str, Any] = {
        "numpy.dtype": _safe_dtype,
        "numpy.ndarray": _NDARRAY,
        "collections.OrderedDict": collections.OrderedDict,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        # spaces: recorded, rebuilt later through their constructors
        "gymnasium.spaces.box.Box": BoxRecord,
        "gymnasium.spaces.discrete.Discrete": DiscreteRecord,
        "gymnasium.spaces.multi_discrete.MultiDiscrete": MultiDiscreteRecord,
        "gymnasium.spaces.multi_binary.MultiBinary": MultiBinaryRecord,
        "ray.rllib.core.rl_module.default_model_config.DefaultModelConfig": ModelConfigRecord,
    }
    for name in _np("multiarray"):
        table[f"{name}._reconstruct"] = _safe_reconstruct
        table[f"{name}.scalar"] = _safe_scalar
    for name in _np("numeric"):
        table[f"{name}._frombuffer"] = _safe_frombuffer
    table["_codecs.encode"] = _latin1
    # a seeded space pickles its numpy Generator: recorded, not run (see RngRecord)
    for name in ("numpy.random._pickle.__generator_ctor", "numpy.random._pickle.__bit_generator_ctor",
                 "numpy.random._pickle.__randomstate_ctor", "numpy.random.bit_generator.__pyx_unpickle_SeedSequence"):
        table[name] = _rng
    for name in ("numpy.random._pcg64.PCG64", "numpy.random._pcg64.PCG64DXSM", "numpy.random._mt19937.MT19937",
                 "numpy.random._philox.Philox", "numpy.random._sfc64.SFC64", "numpy.random.bit_generator.SeedSequence"):
        table[name] = ClassRef(name)
    return table


def _safe_scalar(dtype: Any, *args: Any) -> Any:
    _check_plain(dtype, "numpy scalar")
    return _ma.scalar(dtype, *args)


class _NDArrayName:
    """What ``numpy.ndarray`` resolves to: usable only as ``_reconstruct``'s first argument
    (never called, so no array can be made from an arbitrary buffer and dtype)."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NDArrayName()


def _safe_reconstruct(subtype: Any, shape: Any, dtype_char: Any) -> np.ndarray:
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError(f"numpy array subtype {subtype!r}: refused (only numpy.ndarray)")
    return _ma._reconstruct(np.ndarray, (0,), b"b")


def _safe_frombuffer(buf: Any, dtype: Any, *args: Any) -> np.ndarray:
    _check_plain(dtype, "numpy array")
    return _nu._frombuffer(buf, dtype, *args)


#: The RLlib classes a checkpoint may name as data; they come back as ClassRef.
CLASS_REFS = frozenset({
    "ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module.DefaultPPOTorchRLModule",
    "ray.rllib.algorithms.ppo.torch.ppo_torch_rl_module.PPOTorchRLModule",
    "ray.rllib.algorithms.ppo.ppo_catalog.PPOCatalog",
    "rlmodule_fast.rllib.module.FastPPOTorchRLModule",
})

_ADMITTED: dict[str, Any] | None = None


def _latin1(text: Any, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes: (str, "latin1") only."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode: only (str, 'latin1') is admitted")
    return text.encode("latin1")


def _check_plain(dtype: Any, what: str) -> None:
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or dtype.flags != 0 or dtype.hasobject:
        raise pickle.UnpicklingError(f"{what}: dtype {dtype!r} refused (only plain numeric dtypes)")


class _RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """The pure-Python unpickler, so that BUILD (``__setstate__``) can be checked too: numpy's
    ``dtype.__setstate__`` would accept flags that make a float dtype "hold objects", and an
    array built from bytes with such a dtype would read pointers from the file."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, f: io.BufferedIOBase, source: str) -> None:
        super().__init__(f)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        global _ADMITTED
        if _ADMITTED is None:
            _ADMITTED = _admitted()
        path = f"{module}.{name}"
        if path in _ADMITTED:
            return _ADMITTED[path]
        if path in CLASS_REFS:
            return ClassRef(path)
        raise UnsafeCheckpointError(
            f"{self.source}: refusing to load {path!r}: only numpy arrays, gymnasium spaces, plain "
            "builtins and RLlib's PPO module/catalog names are admitted (nothing from the file was run)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(f"{self.source}: refusing persistent id {pid!r} (not an RLlib module file)")

    def load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.dtype):
            pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]
            _check_plain(inst, "numpy dtype")
            return
        if isinstance(inst, np.ndarray):
            if not (isinstance(state, tuple) and len(state) == 5):
                raise pickle.UnpicklingError("numpy array: unexpected state layout")
            _check_plain(state[2], "numpy array")
            if not isinstance(state[4], (bytes, bytearray)):
                raise pickle.UnpicklingError("numpy array: data must be raw bytes")
            pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]
            return
        if isinstance(inst, Record):
            inst.__setstate__(state)
            self.stack.pop()
            return
        raise pickle.UnpicklingError(f"refusing to set the state of a {type(inst).__name__}")

    dispatch[pickle.BUILD[0]] = load_build


def restricted_load(path: pathlib.Path) -> Any:
    """Unpickle ``path`` admitting only the types listed in this module's docstring.

    Raises UnsafeCheckpointError (a foreign global), FileNotFoundError (missing file) or
    ValueError naming the file (truncated / corrupt / not a pickle).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"RLlib checkpoint file missing: {path}")
    data = path.read_bytes()
    try:
        return _RestrictedUnpickler(io.BytesIO(data), str(path)).load()
    except UnsafeCheckpointError:
        raise
    except RecursionError as e:
        raise ValueError(f"{path}: pickle nested too deeply: {e}") from None
    except Exception as e:  # noqa: BLE001 -- every other failure: corrupt or hostile data
        raise ValueError(f"{path}: cannot read RLlib pickle (corrupt, truncated or unsupported): "
                         f"{type(e).__name__}: {e}") from e


# ---- records -> real objects, through public constructors ---------------------------------------
def space_from_record(rec: Any, what: str):
    """A gymnasium space rebuilt from a :class:`Record` through its public constructor."""
    import gymnasium as gym

    if not isinstance(rec, Record) or not hasattr(rec, "state"):
        raise ValueError(f"{what}: expected a gymnasium space, got {type(rec).__name__}")
    s = rec.state

    def get(*names: str, default: Any = KeyError) -> Any:
        for n in names:
            if n in s:
                return s[n]
        if default is KeyError:
            raise ValueError(f"{what}: {rec.kind} record lacks {names[0]!r} (has {sorted(s)})")
        return default

    dtype = get("dtype", default=None)
    if dtype is not None and not isinstance(dtype, np.dtype):
        raise ValueError(f"{what}: dtype must be a numpy dtype, got {type(dtype).__name__}")
    try:
        if isinstance(rec, BoxRecord):
            low, high = np.asarray(get("low")), np.asarray(get("high"))
            shape = tuple(int(v) for v in get("_shape", "shape"))
            return gym.spaces.Box(low=low, high=high, shape=shape, dtype=dtype if dtype is not None else np.float32)
        if isinstance(rec, DiscreteRecord):
            return gym.spaces.Discrete(int(get("n")), start=int(get("start", default=0)))
        if isinstance(rec, MultiDiscreteRecord):
            start = get("start", default=None)
            return gym.spaces.MultiDiscrete(np.asarray(get("nvec")), dtype=dtype if dtype is not None else np.int64,
                                            start=None if start is None else np.asarray(start))
        if isinstance(rec, MultiBinaryRecord):
            n = get("n")
            return gym.spaces.MultiBinary(n if isinstance(n, int) else [int(v) for v in np.asarray(n).ravel()])
    except (TypeError, ValueError, AssertionError) as e:
        raise ValueError(f"{what}: invalid {rec.kind} space in the checkpoint: {e}") from e
    raise ValueError(f"{what}: expected a space, got a {rec.kind} record")
