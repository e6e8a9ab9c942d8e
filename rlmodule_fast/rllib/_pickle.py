"""A restricted unpickler for the files RLlib writes next to an RLModule checkpoint.

RLlib's new API stack (tested: ray 2.60) writes ``module_state.pkl`` (a dict of parameter name -> numpy array) and
``class_and_ctor_args.pkl`` (the module class, the spaces, the model config and the catalog
class) with cloudpickle. A plain ``pickle.load`` of such a file runs whatever callable the file
names; this loader runs none of it:

- admitted as real callables: numpy's array/scalar/dtype rebuilders, wrapped so that only plain
  numeric dtypes pass (no object dtype, no forged dtype state: BUILD is checked too, which is why
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

A pickle that names only admitted globals can still be hostile through its *shape*: nesting a
million levels deep (``hash()`` of it overflows the C stack), re-using memoized objects so that
a few hundred bytes describe 10^10 nodes (``hash``, ``repr`` or ``np.asarray`` of it never end),
declaring a huge length, or giving a numpy dtype a state that makes it a subarray / structured
type. The loader therefore measures every object as it is built and refuses, with a ValueError
naming the file, anything beyond the limits documented in :func:`restricted_load`. Messages
describe attacker-controlled values by type and size, never by ``repr()``; any other error's
message is cut to 300 characters.

No ray import here: serving an RLlib checkpoint does not need ray installed.
"""
from __future__ import annotations

import collections
import io
import pathlib
import pickle
import struct
from typing import Any, Iterable

import numpy as np

from ..core.spaces import is_plain_dtype

try:  # numpy 2
    from numpy._core import multiarray as _ma
    from numpy._core import numeric as _nu
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _ma  # type: ignore[no-redef]
    from numpy.core import numeric as _nu  # type: ignore[no-redef]

# ---- limits (see restricted_load) ----------------------------------------------------------------
#: Deepest nesting of containers/records (RLlib's files: < 10; numpy's own limit is 64 dims).
MAX_DEPTH = 64
#: Most opcodes, hence objects, per file (RLlib's: a few hundred, plus ~20 per parameter tensor);
#: bounds the loader's own memory (~100 bytes per object) and time (~2 us per opcode).
MAX_OPCODES = 1 << 18
#: Size budget in *cells* (one object reference, 8 bytes of bytes/array data, 2 characters), per file:
#: BASE_CELLS + CELLS_PER_FILE_BYTE * file size, i.e. 8 MiB + 16 x the file size of expanded data.
BASE_CELLS = 1 << 20
CELLS_PER_FILE_BYTE = 2
#: Most non-str dict keys / set members per file (ints, tuples, ... have attacker-chosen hash
#: collisions; str hashes are randomized). RLlib's files have none.
MAX_NONSTR_KEYS = 4096

_PLAIN_SIZES = {"b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": (2, 4, 8), "c": (8, 16)}


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """A checkpoint file names a class or function the restricted unpickler does not admit.

    Also a ValueError: every hostile or malformed pickle gives a ValueError naming the file."""


class _Refused(pickle.UnpicklingError):
    """A structure beyond the loader's limits (size, depth, count)."""


def _describe(x: Any) -> str:
    """Type and size of an attacker-controlled value, for error messages: never its full repr."""
    t = type(x)
    if t in (str, bytes, bytearray):
        return repr(x[:40]) + (f"... ({len(x)} long)" if len(x) > 40 else "")
    if t is int:
        return repr(x) if x.bit_length() <= 64 else f"an int of {x.bit_length()} bits"
    if t in (float, bool, type(None)):
        return repr(x)
    if t in (tuple, list, dict, set, frozenset, collections.OrderedDict):
        return f"a {t.__name__} of {len(x)}"
    if isinstance(x, np.dtype):
        return f"a dtype (kind {x.kind!r}, itemsize {x.itemsize})"
    if isinstance(x, np.ndarray):
        return f"an array of {x.size} x {_describe(x.dtype)}"
    if isinstance(x, (ClassRef, _NDArrayName)):
        return repr(x)
    return f"a {t.__name__}"


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
            if not all(s is None or type(s) is dict for s in state):
                raise pickle.UnpicklingError(f"{self.kind}: expected (dict, dict) state")
            d = dict(state[0] or {})
            d.update(state[1] or {})
            state = d
        if type(state) is not dict:
            raise pickle.UnpicklingError(f"{self.kind}: expected a dict state, got {_describe(state)}")
        object.__setattr__(self, "state", state)

    def __repr__(self) -> str:
        return f"<{self.kind} record {_str_keys(getattr(self, 'state', {}))}>"


def _str_keys(d: Any) -> list:
    """The first few str keys of a dict, for messages (sorting mixed keys would raise)."""
    keys = sorted(k for k in d if type(k) is str) if isinstance(d, dict) else []
    return [k if len(k) <= 40 else k[:40] + "..." for k in keys[:20]] + (["..."] if len(keys) > 20 else [])


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


def _check_plain(dtype: Any, what: str) -> None:
    """Refuse any dtype but a plain bool/int/uint/float/complex one, judged by its value (a dtype
    whose state was forged can claim kind 'f' while carrying a subarray, fields or flags)."""
    if not (is_plain_dtype(dtype) and dtype.itemsize in _PLAIN_SIZES.get(dtype.kind, ())):
        raise pickle.UnpicklingError(f"{what}: {_describe(dtype)} refused (only plain numeric dtypes)")


def _safe_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if type(spec) is not str or len(spec) > 8 or type(align) not in (bool, int):
        raise pickle.UnpicklingError(f"numpy dtype {_describe(spec)}: refused (only dtype strings such as 'f4')")
    dt = np.dtype(spec, bool(align), True)  # always a private copy: BUILD then sets its state
    _check_plain(dt, "numpy dtype")
    return dt


def _np(module: str) -> list[str]:
    return [f"numpy.core.{module}", f"numpy._core.{module}"]


def _set(items: Any = ()) -> set:
    if type(items) not in (list, tuple):
        raise pickle.UnpicklingError(f"set: expected a list of items, got {_describe(items)}")
    return set(items)


def _frozenset(items: Any = ()) -> frozenset:
    if type(items) not in (list, tuple):
        raise pickle.UnpicklingError(f"frozenset: expected a list of items, got {_describe(items)}")
    return frozenset(items)


def _ordered_dict() -> collections.OrderedDict:
    return collections.OrderedDict()  # its items come by SETITEMS, as pickle writes them


def _admitted() -> dict[str, Any]:
    table: dict[str, Any] = {
        "numpy.dtype": _safe_dtype,
        "numpy.ndarray": _NDARRAY,
        "collections.OrderedDict": _ordered_dict,
        "builtins.set": _set,
        "builtins.frozenset": _frozenset,
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
    if len(args) != 1 or type(args[0]) is not bytes or len(args[0]) != dtype.itemsize:
        raise pickle.UnpicklingError("numpy scalar: expected the value's bytes")
    return _ma.scalar(dtype, *args)


class _NDArrayName:
    """What ``numpy.ndarray`` resolves to: usable only as ``_reconstruct``'s first argument
    (never called, so no array can be made from an arbitrary buffer and dtype)."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NDArrayName()


def _safe_reconstruct(subtype: Any, shape: Any, dtype_char: Any) -> np.ndarray:
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError(f"numpy array subtype {_describe(subtype)}: refused (only numpy.ndarray)")
    return _ma._reconstruct(np.ndarray, (0,), b"b")


def _check_shape(shape: Any, dtype: np.dtype, nbytes: int, what: str) -> None:
    """``shape`` is a tuple of at most 32 non-negative ints describing exactly ``nbytes``."""
    if type(shape) is not tuple or len(shape) > 32 or not all(type(n) is int and n >= 0 for n in shape):
        raise pickle.UnpicklingError(f"{what}: bad shape {_describe(shape)}")
    size = 1
    for n in shape:
        size *= n
    if size * dtype.itemsize != nbytes:
        raise pickle.UnpicklingError(f"{what}: shape and dtype describe {size * dtype.itemsize} bytes, "
                                     f"the data has {nbytes}")


def _safe_frombuffer(buf: Any, dtype: Any, shape: Any = None, order: Any = "C", axis_order: Any = None) -> np.ndarray:
    _check_plain(dtype, "numpy array")
    if type(buf) not in (bytes, bytearray):
        raise pickle.UnpicklingError("numpy array: data must be raw bytes")
    _check_shape(shape, dtype, len(buf), "numpy array")
    if not (order in ("C", "F") and axis_order is None
            or order == "K" and type(axis_order) is tuple and sorted(axis_order) == list(range(len(shape)))):
        raise pickle.UnpicklingError("numpy array: bad memory order")
    return _nu._frombuffer(buf, dtype, shape, order, axis_order)


#: The RLlib classes a checkpoint may name as data; they come back as ClassRef.
CLASS_REFS = frozenset({
    "ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module.DefaultPPOTorchRLModule",
    "ray.rllib.algorithms.ppo.torch.ppo_torch_rl_module.PPOTorchRLModule",
    "ray.rllib.algorithms.ppo.ppo_catalog.PPOCatalog",
    "rlmodule_fast.rllib.module.FastPPOTorchRLModule",
    "ray.rllib.algorithms.appo.torch.default_appo_torch_rl_module.DefaultAPPOTorchRLModule",
    "ray.rllib.algorithms.appo.torch.appo_torch_rl_module.APPOTorchRLModule",
    "rlmodule_fast.rllib.appo_module.FastAPPOTorchRLModule",
    "ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module.DefaultDQNTorchRLModule",
    "ray.rllib.algorithms.dqn.dqn_catalog.DQNCatalog",
    "rlmodule_fast.rllib.dqn_module.FastDQNTorchRLModule",
    "ray.rllib.algorithms.sac.torch.default_sac_torch_rl_module.DefaultSACTorchRLModule",
    "ray.rllib.algorithms.sac.sac_catalog.SACCatalog",
    "rlmodule_fast.rllib.sac_module.FastSACTorchRLModule",
})

_ADMITTED: dict[str, Any] | None = None


def _latin1(text: Any, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes: (str, "latin1") only."""
    if type(text) is not str or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode: only (str, 'latin1') is admitted")
    return text.encode("latin1")


_MUTABLE = (list, dict, set, np.dtype, np.ndarray, Record)  # what APPENDS / SETITEMS / ADDITEMS / BUILD change
_DICTS = (dict, collections.OrderedDict)
_U = pickle._Unpickler  # type: ignore[attr-defined]
_NOTHING = object()


class _RestrictedUnpickler(_U):
    """CPython's pure-Python unpickler with the globals restricted and every object measured.

    Each object built gets a size in cells (an object reference, or 8 bytes of data, counted
    again each time a memoized object is re-used) and a depth; a container may be filled only
    before it is first used (so its recorded size stays true), never with itself (so there are
    no cycles). Hashing (dict keys, set members) and calls are charged to a per-file work
    budget, so re-using one large key many times is bounded too.
    """

    dispatch = dict(_U.dispatch)

    def __init__(self, data: bytes, source: str) -> None:
        super().__init__(io.BytesIO(data))
        self.source = source
        self._size = len(data)
        self._cells = BASE_CELLS + CELLS_PER_FILE_BYTE * len(data)
        self._work = self._ops = self._nonstr = 0
        self._meta: dict[int, tuple[Any, int, int]] = {}  # id -> (object, cells, depth); pins the object
        self._used: dict[int, Any] = {}  # id -> mutable object already stored somewhere: frozen from now on

    # ---- accounting -----------------------------------------------------------------------------
    def _measure(self, x: Any) -> tuple[int, int]:
        m = self._meta.get(id(x))
        if m is not None:
            return m[1], m[2]
        t = type(x)
        if t is str:  # up to 4 bytes a character
            return 1 + len(x) // 2, 1
        if t is bytes or t is bytearray:
            return 1 + len(x) // 8, 1
        if t is int:
            return 1 + x.bit_length() // 64, 1
        if t is np.ndarray or t is memoryview:
            return 1 + x.nbytes // 8, 1
        return 1, 1  # None, bool, float, numpy scalar, dtype, global, empty container

    def _take(self, items: Iterable, into: Any = _NOTHING, hashed: bool = False) -> tuple[int, int]:
        """Total cells and max depth of ``items``, about to be stored (in ``into``) or passed on;
        from now on they are used (frozen). ``hashed``: they are about to be hashed (charged)."""
        cells = depth = 0
        for x in items:
            if x is into:
                raise _Refused(f"a {type(x).__name__} containing itself")
            c, d = self._measure(x)
            cells += c
            depth = max(depth, d)
            if isinstance(x, _MUTABLE):
                self._used[id(x)] = x
            if hashed and type(x) is not str:
                self._nonstr += 1
                if self._nonstr > MAX_NONSTR_KEYS:
                    raise _Refused(f"more than {MAX_NONSTR_KEYS} non-str dict keys / set members")
        if hashed:
            self._charge(cells)
        return cells, depth

    def _charge(self, cells: int) -> None:
        self._work += cells
        if self._work > self._cells:
            raise _Refused(f"hashing / constructor work beyond {self._cells} cells (memoized objects re-used "
                           "too often)")

    def _check(self, cells: int, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels")
        if cells > self._cells:
            raise _Refused(f"a structure of more than {self._cells} cells (8 MiB + 16 x the file size; memoized "
                           "objects re-used too often?)")

    def _made(self, obj: Any, cells: int, depth: int) -> None:
        self._check(cells, depth)
        self._meta[id(obj)] = (obj, cells, depth)

    # ---- new containers: TUPLE*, LIST, DICT, FROZENSET --------------------------------------------
    def _new(self, base: Any, items: list, keys: list | None = None) -> None:
        kc, kd = self._take(keys or (), hashed=True)
        c, d = self._take(items)
        cells, depth = 1 + kc + c, 1 + max(kd, d)
        self._check(cells, depth)
        base(self)
        self._made(self.stack[-1], cells, depth)

    def load_tuple(self) -> None:
        self._new(_U.load_tuple, self.stack)

    def load_tuple1(self) -> None:
        self._new(_U.load_tuple1, self.stack[-1:])

    def load_tuple2(self) -> None:
        self._new(_U.load_tuple2, self.stack[-2:])

    def load_tuple3(self) -> None:
        self._new(_U.load_tuple3, self.stack[-3:])

    def load_list(self) -> None:
        self._new(_U.load_list, self.stack)

    def load_dict(self) -> None:
        self._new(_U.load_dict, self.stack[1::2], keys=self.stack[0::2])

    def load_frozenset(self) -> None:
        self._new(_U.load_frozenset, [], keys=self.stack)

    # ---- filling containers: APPEND(S), SETITEM(S), ADDITEMS --------------------------------------
    def _fill(self, base: Any, target: Any, types: tuple, items: list, keys: list = ()) -> None:
        if type(target) not in types:
            raise pickle.UnpicklingError(f"cannot add items to {_describe(target)}")
        if id(target) in self._used:
            raise _Refused(f"{_describe(target)} filled after it was used (pickle never writes that)")
        kc, kd = self._take(keys, into=target, hashed=True)
        c, d = self._take(items, into=target)
        c0, d0 = self._measure(target)
        cells, depth = c0 + kc + c, max(d0, 1 + kd, 1 + d)
        self._check(cells, depth)
        base(self)
        self._made(target, cells, depth)

    def load_append(self) -> None:
        self._fill(_U.load_append, self.stack[-2], (list,), self.stack[-1:])

    def load_appends(self) -> None:
        self._fill(_U.load_appends, self.metastack[-1][-1], (list,), self.stack)

    def load_setitem(self) -> None:
        self._fill(_U.load_setitem, self.stack[-3], _DICTS, self.stack[-1:], keys=self.stack[-2:-1])

    def load_setitems(self) -> None:
        self._fill(_U.load_setitems, self.metastack[-1][-1], _DICTS, self.stack[1::2], keys=self.stack[0::2])

    def load_additems(self) -> None:
        self._fill(_U.load_additems, self.metastack[-1][-1], (set,), [], keys=self.stack)

    # ---- calls: REDUCE, NEWOBJ; state: BUILD ------------------------------------------------------
    def load_reduce(self) -> None:
        args, func = self.stack[-1], self.stack[-2]
        if type(args) is not tuple:
            raise pickle.UnpicklingError(f"REDUCE: arguments must be a tuple, got {_describe(args)}")
        if (func is _set or func is _frozenset) and args and type(args[0]) in (list, tuple):
            self._take(args[0], hashed=True)  # members are hashed: counted and charged
        c, d = self._take([args, func])
        self._charge(c)
        self._check(1 + c, 1 + d)
        _U.load_reduce(self)
        self._made(self.stack[-1], 1 + c, 1 + d)

    def load_newobj(self) -> None:
        args, cls = self.stack[-1], self.stack[-2]
        if not (isinstance(cls, type) and issubclass(cls, Record)) or type(args) is not tuple or args:
            raise pickle.UnpicklingError(f"NEWOBJ: refused for {_describe(cls)} (only recorded classes, no arguments)")
        _U.load_newobj(self)

    def load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if id(inst) in self._used:
            raise _Refused(f"state of {_describe(inst)} set after it was used (pickle never writes that)")
        c, d = self._take([state], into=inst)
        self._charge(c)
        c0, d0 = self._measure(inst)
        cells, depth = c0 + c, max(d0, 1 + d)
        self._check(cells, depth)
        if isinstance(inst, np.dtype):
            # numpy's own layout: (3, byteorder, subarray, names, fields, elsize, alignment, flags)
            if not (type(state) is tuple and len(state) == 8 and all(x is None for x in state[2:5])):
                raise pickle.UnpicklingError("numpy dtype: refused state (only plain numeric dtypes)")
            _U.load_build(self)
            _check_plain(inst, "numpy dtype")
        elif isinstance(inst, np.ndarray):
            if not (type(state) is tuple and len(state) == 5 and type(state[3]) is bool):
                raise pickle.UnpicklingError("numpy array: unexpected state layout")
            _check_plain(state[2], "numpy array")
            if type(state[4]) not in (bytes, bytearray):
                raise pickle.UnpicklingError("numpy array: data must be raw bytes")
            _check_shape(state[1], state[2], len(state[4]), "numpy array")
            _U.load_build(self)
        elif isinstance(inst, Record):
            inst.__setstate__(state)
            self.stack.pop()
        else:
            raise pickle.UnpicklingError(f"refusing to set the state of {_describe(inst)}")
        self._made(inst, cells, depth)

    def load_bytearray8(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self._size:  # the base class would allocate n bytes before reading them
            raise pickle.UnpicklingError(f"BYTEARRAY8 of {n} bytes in a file of {self._size}")
        self.append(bytearray(self.read(n)))

    # ---- globals ------------------------------------------------------------------------------------
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
            f"{self.source}: refusing to load {_describe(path)}: only numpy arrays, gymnasium spaces, plain "
            "builtins and RLlib's PPO / APPO / DQN / SAC module and catalog names are admitted (nothing from the "
            "file was run)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(f"{self.source}: refusing persistent id {_describe(pid)} "
                                    "(not an RLlib module file)")

    def _never(self) -> None:
        raise pickle.UnpicklingError("opcode never written for these files (protocol 0/1 instance, extension "
                                     "registry, keyword NEWOBJ)")


def _counted(f: Any) -> Any:
    def op(self: _RestrictedUnpickler) -> None:
        self._ops += 1
        if self._ops > MAX_OPCODES:
            raise _Refused(f"more than {MAX_OPCODES} opcodes")
        f(self)
    return op


def _wire(cls: type) -> None:
    """Route the measured opcodes to ``cls``'s methods, refuse the unused ones, count them all."""
    d = cls.dispatch
    for code, name in [(pickle.TUPLE, "load_tuple"), (pickle.TUPLE1, "load_tuple1"), (pickle.TUPLE2, "load_tuple2"),
                       (pickle.TUPLE3, "load_tuple3"), (pickle.LIST, "load_list"), (pickle.DICT, "load_dict"),
                       (pickle.FROZENSET, "load_frozenset"), (pickle.APPEND, "load_append"),
                       (pickle.APPENDS, "load_appends"), (pickle.SETITEM, "load_setitem"),
                       (pickle.SETITEMS, "load_setitems"), (pickle.ADDITEMS, "load_additems"),
                       (pickle.REDUCE, "load_reduce"), (pickle.NEWOBJ, "load_newobj"), (pickle.BUILD, "load_build"),
                       (pickle.BYTEARRAY8, "load_bytearray8")]:
        d[code[0]] = getattr(cls, name)
    for code in (pickle.INST, pickle.OBJ, pickle.EXT1, pickle.EXT2, pickle.EXT4, pickle.NEWOBJ_EX):
        d[code[0]] = cls._never
    cls.dispatch = {k: _counted(f) for k, f in d.items()}


_wire(_RestrictedUnpickler)


def restricted_load(path: pathlib.Path) -> Any:
    """Unpickle ``path`` admitting only the types listed in this module's docstring.

    Limits, per file (RLlib's own files are far inside them); beyond any of them the file is
    refused with a ValueError naming it, before the work or memory is spent:

    - nesting depth at most ``MAX_DEPTH`` (64) containers / records;
    - at most ``MAX_OPCODES`` (2**18) opcodes, so at most that many objects;
    - every object's size, counting a memoized object again each time it is re-used, and the
      total work of hashing keys and calling constructors, at most 2**20 cells + 2 cells per byte
      of file (a cell: one reference, 8 bytes of bytes/array data or 2 characters), so about
      8 MiB + 16 x the file size: ``hash``, ``repr`` or ``np.asarray`` of anything loaded stays
      proportionate;
    - at most ``MAX_NONSTR_KEYS`` (4096) non-str dict keys / set members (hash flooding);
    - no declared length beyond the file; containers filled only before their first use (what
      pickle writes), never with themselves; numpy dtypes and arrays checked by value after
      every construction and ``__setstate__`` (plain b/i/u/f/c, itemsize at most 8, 16 for complex).

    Raises UnsafeCheckpointError (a foreign global; also a ValueError), FileNotFoundError
    (missing file) or ValueError naming the file (truncated / corrupt / hostile / not a pickle).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"RLlib checkpoint file missing: {path}")
    data = path.read_bytes()
    try:
        return _RestrictedUnpickler(data, str(path)).load()
    except UnsafeCheckpointError:
        raise
    except _Refused as e:
        raise ValueError(f"{path}: refusing the pickle: beyond the loader's limits: {e}") from None
    except Exception as e:  # noqa: BLE001 -- every other failure: corrupt or hostile data
        msg = str(e)
        msg = msg if len(msg) <= 300 else msg[:300] + "..."
        raise ValueError(f"{path}: cannot read RLlib pickle (corrupt, truncated or unsupported): "
                         f"{type(e).__name__}: {msg}") from None


# ---- records -> real objects, through public constructors ---------------------------------------
def _numbers(value: Any, what: str) -> np.ndarray:
    """A plain numeric array from a record field: an array, a number, or nested lists of numbers
    (never strings or objects, whose arrays can be far larger than the file)."""
    if not isinstance(value, np.ndarray):
        todo = [value]
        while todo:  # bounded: the loader bounded the value's size
            v = todo.pop()
            if type(v) in (list, tuple):
                todo.extend(v)
            elif not isinstance(v, (int, float, np.bool_, np.integer, np.floating)):
                raise ValueError(f"{what}: expected numbers, got {_describe(v)}")
    arr = np.asarray(value)
    _check_plain(arr.dtype, what)
    return arr


def _int(value: Any, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what}: expected an integer, got {_describe(value)}")
    return int(value)


class _SpaceError(ValueError):
    pass


def space_from_record(rec: Any, what: str):
    """A gymnasium space rebuilt from a :class:`Record` through its public constructor.

    Bounds, ``nvec`` and ``start`` become plain numeric numpy arrays (numbers or nested lists of
    numbers, never strings or objects), so the constructor never broadcasts them to a shape
    larger than the file carried; ``n`` and ``shape`` must be ints. Anything malformed ->
    ValueError starting with ``what``.
    """
    import gymnasium as gym

    if not isinstance(rec, Record) or not hasattr(rec, "state") or type(rec) is RngRecord:
        raise ValueError(f"{what}: expected a gymnasium space, got {_describe(rec)}")
    s = rec.state

    def get(*names: str, default: Any = KeyError) -> Any:
        for n in names:
            if n in s:
                return s[n]
        if default is KeyError:
            raise _SpaceError(f"{what}: {rec.kind} record lacks {names[0]!r} (has {_str_keys(s)})")
        return default

    dtype = get("dtype", default=None)
    if dtype is not None and not isinstance(dtype, np.dtype):
        raise ValueError(f"{what}: dtype must be a numpy dtype, got {_describe(dtype)}")
    try:
        if dtype is not None:
            _check_plain(dtype, "dtype")
        if isinstance(rec, BoxRecord):
            low, high = _numbers(get("low"), "low"), _numbers(get("high"), "high")
            shape = get("_shape", "shape")
            if type(shape) not in (tuple, list) or len(shape) > 32:
                raise ValueError(f"shape must be a tuple, got {_describe(shape)}")
            shape = tuple(_int(v, "shape") for v in shape)
            return gym.spaces.Box(low=low, high=high, shape=shape, dtype=dtype if dtype is not None else np.float32)
        if isinstance(rec, DiscreteRecord):
            return gym.spaces.Discrete(_int(get("n"), "n"), start=_int(get("start", default=0), "start"))
        if isinstance(rec, MultiDiscreteRecord):
            start = get("start", default=None)
            return gym.spaces.MultiDiscrete(_numbers(get("nvec"), "nvec"),
                                            dtype=dtype if dtype is not None else np.int64,
                                            start=None if start is None else _numbers(start, "start"))
        if isinstance(rec, MultiBinaryRecord):
            n = get("n")
            return gym.spaces.MultiBinary(n if type(n) is int else [_int(v, "n") for v in _numbers(n, "n").ravel()])
    except _SpaceError:
        raise
    except (TypeError, ValueError, AssertionError, OverflowError, MemoryError, pickle.UnpicklingError) as e:
        msg = str(e)
        raise ValueError(f"{what}: invalid {rec.kind} space in the checkpoint: "
                         f"{msg if len(msg) <= 300 else msg[:300] + '...'}") from None
    raise ValueError(f"{what}: expected a space, got a {rec.kind} record")
