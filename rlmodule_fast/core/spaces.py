"""gymnasium spaces <-> plain JSON data, so checkpoints and specs never pickle objects.

Reading (:func:`space_from_json`) is bounded and strict, since the data may come from a
checkpoint file: dtypes are checked by value (plain bool/int/uint/float kinds, native byte order,
at most 8 bytes, no fields, no sub-array), shapes and sizes are non-negative ints, and one
description may hold at most :data:`MAX_SPACE_ELEMENTS` elements in all (Box, MultiDiscrete,
MultiBinary), :data:`MAX_SPACE_NODES` spaces and :data:`MAX_SPACE_DEPTH` levels of Tuple / Dict.
Anything else is a ValueError. Raise the module constants to read larger spaces.
"""
from __future__ import annotations

import math
import reprlib
from typing import Any

import gymnasium as gym
import numpy as np

#: Elements (Box entries, MultiDiscrete / MultiBinary entries) one description may hold in all.
MAX_SPACE_ELEMENTS = 1 << 22
#: Spaces one description may hold (Tuple / Dict members counted).
MAX_SPACE_NODES = 10_000
#: Nesting depth of Tuple / Dict spaces.
MAX_SPACE_DEPTH = 16
#: Largest Discrete ``n`` / MultiDiscrete entry.
MAX_DISCRETE_N = 2**31 - 1
#: Boxes with more elements than this and uniform bounds store each bound as one number.
_COMPACT_BOUNDS_MIN = 4096

_brief = reprlib.Repr()
_brief.maxstring = 80
_brief.maxother = 80
_brief.maxlist = 6
_brief.maxdict = 6
_brief.maxlevel = 3


def _num(x: float) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def _array(a: np.ndarray) -> Any:
    if a.size > _COMPACT_BOUNDS_MIN and a.size and (a == a.flat[0]).all():
        v = a.flat[0].item()
        return _num(int(v) if isinstance(v, bool) else v)  # gymnasium takes no bool scalar
    lst = a.tolist()

    def walk(v):
        return [walk(e) for e in v] if isinstance(v, list) else _num(v)
    return walk(lst)


def space_to_json(space: gym.Space | None) -> Any:
    """A JSON-serialisable description of a (possibly nested) gymnasium space."""
    if space is None:
        return None
    if isinstance(space, gym.spaces.Box):
        return {"type": "Box", "low": _array(space.low), "high": _array(space.high),
                "shape": list(space.shape), "dtype": str(space.dtype)}
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "dtype": str(space.dtype)}
    if isinstance(space, gym.spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, gym.spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_json(s) for s in space.spaces]}
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_json(s) for k, s in space.spaces.items()}}
    raise ValueError(f"cannot serialise space {space!r} (supported: Box, Discrete, MultiDiscrete, MultiBinary, Tuple, Dict)")


# ---------------------------------------------------------------------------------------------
# reading


class _Budget:
    def __init__(self):
        self.nodes = 0
        self.elements = 0

    def node(self) -> None:
        self.nodes += 1
        if self.nodes > MAX_SPACE_NODES:
            raise ValueError(f"more than {MAX_SPACE_NODES} spaces in one description")

    def take(self, n: int, what: str) -> None:
        self.elements += n
        if self.elements > MAX_SPACE_ELEMENTS:
            raise ValueError(f"{what}: more than {MAX_SPACE_ELEMENTS} elements in one space description "
                             "(rlmodule_fast.core.spaces.MAX_SPACE_ELEMENTS)")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _int_in(v: Any, lo: int, hi: int, what: str) -> int:
    if not _is_int(v) or not lo <= int(v) <= hi:
        raise ValueError(f"{what}: expected an int in [{lo}, {hi}], got {_brief.repr(v)}")
    return int(v)


def is_plain_dtype(dt: Any) -> bool:
    """Whether ``dt`` is a plain scalar numeric dtype and nothing more, judged by its value: a
    dtype whose state was forged (a pickle's ``__setstate__``) can claim kind 'f' while carrying
    fields, a sub-array, flags or metadata. (Kind, size and byte order are the caller's policy.)"""
    if not (isinstance(dt, np.dtype) and dt.fields is None and dt.names is None and dt.subdtype is None
            and dt.shape == () and dt.flags == 0 and not dt.hasobject and dt.metadata is None):
        return False
    canon = np.dtype(dt.str)  # and it equals the dtype its own type string names, alignment included
    return dt == canon and dt.alignment == canon.alignment and dt.itemsize == canon.itemsize


def _dtype(v: Any, kinds: str, what: str) -> np.dtype:
    if isinstance(v, np.dtype):
        dt = v
    else:
        if not isinstance(v, str) or not 0 < len(v) <= 32:
            raise ValueError(f"{what}: expected a dtype name, got {_brief.repr(v)}")
        try:
            dt = np.dtype(v)
        except (TypeError, ValueError, SyntaxError) as e:
            raise ValueError(f"{what}: {v!r} is not a dtype ({e})") from None
    if dt.kind not in kinds or not is_plain_dtype(dt) or not dt.isnative or dt.itemsize > 8:
        raise ValueError(f"{what}: dtype {str(v)!r} is not a plain {'/'.join(_KIND_NAMES[k] for k in kinds)} dtype")
    return dt


_KIND_NAMES = {"b": "bool", "i": "int", "u": "uint", "f": "float"}


def _shape(v: Any, budget: _Budget, what: str) -> tuple:
    if (not isinstance(v, (list, tuple)) or len(v) > 32
            or not all(_is_int(s) and 0 <= s <= MAX_SPACE_ELEMENTS for s in v)):
        raise ValueError(f"{what}: shape must be a list of at most 32 non-negative ints, got {_brief.repr(v)}")
    shape = tuple(int(s) for s in v)
    budget.take(math.prod(shape), what)
    return shape


def _scalar(v: Any, what: str) -> Any:
    if isinstance(v, str):
        if v.strip().lower() not in ("nan", "inf", "+inf", "-inf", "infinity", "-infinity"):
            raise ValueError(f"{what}: {_brief.repr(v)} is not a number")
        return float(v)
    if not isinstance(v, (int, float, np.integer, np.floating)):  # bool is an int: bool Boxes store bools
        raise ValueError(f"{what}: expected a number, got {_brief.repr(v)}")
    return v


def _unnum(x: Any, what: str, depth: int = 0) -> Any:
    if isinstance(x, list):
        if depth > 32:
            raise ValueError(f"{what}: nested more than 32 levels")
        return [_unnum(v, what, depth + 1) for v in x]
    return _scalar(x, what)


def _bound(v: Any, shape: tuple, dt: np.dtype, what: str) -> Any:
    if not isinstance(v, list):
        x = _scalar(v, what)  # gymnasium broadcasts it over the shape
        return int(x) if isinstance(x, bool) else x
    values = _unnum(v, what)
    if dt.kind in "biu":  # integer bounds are ints (out of the dtype's range: OverflowError -> ValueError)
        _flat_ints(values, what, allow_bool=True)
    with np.errstate(all="ignore"):  # float bounds beyond the dtype's range become +-inf, as in numpy
        arr = np.array(values, dtype=dt)
    if arr.shape != shape:
        raise ValueError(f"{what}: shape {arr.shape} does not match the space's shape {shape}")
    return arr


def space_from_json(data: Any) -> gym.Space | None:
    """Inverse of ``space_to_json``; raises ValueError on anything malformed or over the bounds
    (see the module docstring)."""
    if data is None:
        return None
    try:
        return _space(data, _Budget(), 0)
    except ValueError as e:
        raise ValueError(f"malformed space description {_brief.repr(data)}: {e}") from None
    except (KeyError, TypeError, AssertionError, OverflowError, IndexError, AttributeError, RecursionError,
            MemoryError) as e:  # gymnasium validates with asserts
        raise ValueError(f"malformed space description {_brief.repr(data)}: {type(e).__name__}: {e}") from None


def _space(data: Any, budget: _Budget, depth: int) -> gym.Space:
    if depth > MAX_SPACE_DEPTH:
        raise ValueError(f"Tuple/Dict spaces nested more than {MAX_SPACE_DEPTH} levels")
    if not isinstance(data, dict):
        raise ValueError(f"expected an object with a 'type', got {_brief.repr(data)}")
    budget.node()
    kind = data.get("type")
    if kind == "Box":
        dt = _dtype(data["dtype"], "biuf", "Box.dtype")
        shape = _shape(data["shape"], budget, "Box.shape")
        low = _bound(data["low"], shape, dt, "Box.low")
        high = _bound(data["high"], shape, dt, "Box.high")
        return gym.spaces.Box(low, high, shape=shape, dtype=dt)
    if kind == "Discrete":
        n = _int_in(data["n"], 1, MAX_DISCRETE_N, "Discrete.n")
        start = _int_in(data.get("start", 0), -(2**62), 2**62, "Discrete.start")
        return gym.spaces.Discrete(n, start=start)
    if kind == "MultiDiscrete":
        dt = _dtype(data.get("dtype", "int64"), "iu", "MultiDiscrete.dtype")
        nvec = data["nvec"]
        if not isinstance(nvec, list):
            raise ValueError(f"MultiDiscrete.nvec: expected a list, got {_brief.repr(nvec)}")
        flat = _flat_ints(nvec, "MultiDiscrete.nvec")
        budget.take(len(flat), "MultiDiscrete.nvec")
        if not flat or not all(1 <= v <= MAX_DISCRETE_N for v in flat):
            raise ValueError(f"MultiDiscrete.nvec: expected ints in [1, {MAX_DISCRETE_N}], got {_brief.repr(nvec)}")
        return gym.spaces.MultiDiscrete(np.array(nvec, dtype=np.int64), dtype=dt)
    if kind == "MultiBinary":
        n = data["n"]
        shape = _shape([n] if _is_int(n) else n, budget, "MultiBinary.n")
        if not shape or min(shape) < 1:
            raise ValueError(f"MultiBinary.n: expected positive ints, got {_brief.repr(n)}")
        return gym.spaces.MultiBinary(list(shape) if isinstance(n, list) else shape[0])
    if kind == "Tuple":
        subs = data["spaces"]
        if not isinstance(subs, list):
            raise ValueError("Tuple.spaces must be a list")
        return gym.spaces.Tuple([_space(s, budget, depth + 1) for s in subs])
    if kind == "Dict":
        subs = data["spaces"]
        if not isinstance(subs, dict):
            raise ValueError("Dict.spaces must be an object")
        return gym.spaces.Dict({k: _space(s, budget, depth + 1) for k, s in subs.items()})
    raise ValueError(f"unknown space type {_brief.repr(kind)}")


def _flat_ints(v: Any, what: str, depth: int = 0, allow_bool: bool = False) -> list:
    """Leaves of a nested list of ints (rectangular or not: numpy checks that)."""
    if _is_int(v) or (allow_bool and isinstance(v, (bool, np.bool_))):
        return [int(v)]
    if not isinstance(v, list) or depth > 32:
        raise ValueError(f"{what}: expected a (nested) list of ints, got {_brief.repr(v)}")
    out: list = []
    for e in v:
        out.extend(_flat_ints(e, what, depth + 1, allow_bool))
    return out
