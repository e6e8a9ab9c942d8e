"""Input/output spec checks for the public ``forward_*`` wrappers.

A spec is either a list of required keys (values unchecked) or a dict mapping a key to a
``TensorSpec``, to a nested dict of specs (e.g. ``state_in``), or to None (presence only).
A ``TensorSpec`` lists the shape patterns it accepts; a pattern dimension is an int (must
match) or a name such as "B" or "T" (any size). Checks are cached per (key path, shape,
dtype), so a steady-state forward pays a dict lookup per key.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import torch

Pattern = tuple


class TensorSpec:
    """Accepted shapes of one tensor: ``TensorSpec(("B", 4))`` or several patterns
    ``TensorSpec(("B", 4), ("B", "T", 4))``; ``dtype_kind`` "float" | "int" | "number" (real
    numbers or bool: no strings, objects, datetimes, complex) | None."""

    __slots__ = ("patterns", "dtype_kind")

    def __init__(self, *patterns: Sequence[Union[int, str]], dtype_kind: Optional[str] = None):
        if not patterns:
            raise ValueError("TensorSpec needs at least one shape pattern")
        self.patterns = tuple(tuple(p) for p in patterns)
        self.dtype_kind = dtype_kind

    def describe(self) -> str:
        shown = [f"({', '.join(str(d) for d in p)}{',' if len(p) == 1 else ''})" for p in self.patterns]
        return " or ".join(shown)

    def matches(self, shape: tuple) -> bool:
        for p in self.patterns:
            if len(p) == len(shape) and all(isinstance(d, str) or d == s for d, s in zip(p, shape)):
                return True
        return False

    def __repr__(self) -> str:
        return f"TensorSpec({self.describe()})"


SpecType = Union[None, Sequence[str], Mapping[str, Any]]


def _shape_dtype(value: Any) -> tuple[tuple, Any]:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return tuple(value.shape), value.dtype
    return None, type(value)


def _dtype_ok(dtype: Any, kind: Optional[str]) -> bool:
    if kind is None:
        return True
    if isinstance(dtype, torch.dtype):
        if kind == "number":
            return not dtype.is_complex
        return dtype.is_floating_point if kind == "float" else not dtype.is_floating_point and not dtype.is_complex
    if isinstance(dtype, np.dtype):
        if kind == "number":
            return dtype.kind in "fiub"
        return dtype.kind == "f" if kind == "float" else dtype.kind in "iub"
    return False


_MISSING = object()


class SpecChecker:
    """Checks dicts against one spec, caching shapes already accepted.

    The spec is compiled once into (key, path, kind, sub) entries; a steady-state check costs a
    dict lookup and a set lookup per key.
    """

    def __init__(self, spec: SpecType, what: str):
        self.what = what
        if spec is None:
            spec = {}
        elif not isinstance(spec, Mapping):
            spec = {k: None for k in spec}
        self.spec: Mapping[str, Any] = spec
        self._entries = self._compile(spec, "")
        #: The top-level keys this spec names (``to_torch`` converts these strictly).
        self.keys = frozenset(spec)
        self._ok: set = set()

    @classmethod
    def _compile(cls, spec: Mapping[str, Any], prefix: str) -> list:
        entries = []
        for key, sub in spec.items():
            path = f"{prefix}{key}"
            if sub is None:
                entries.append((key, path, 0, None))
            elif isinstance(sub, Mapping):
                entries.append((key, path, 1, (sub, cls._compile(sub, path + "/"))))
            elif isinstance(sub, TensorSpec):
                entries.append((key, path, 2, sub))
            else:
                raise TypeError(f"spec for {path!r}: expected a TensorSpec, a dict of specs or None, got {sub!r}")
        return entries

    def check(self, data: Mapping[str, Any]) -> None:
        """Raise ValueError naming the key, expected and received shape, on any mismatch."""
        if type(data) is not dict and not isinstance(data, Mapping):
            raise ValueError(f"{self.what}: expected a dict of tensors, got {type(data).__name__}")
        self._check(data, self._entries)

    def _check(self, data: Mapping[str, Any], entries: list) -> None:
        ok = self._ok
        for key, path, kind, sub in entries:
            value = data.get(key, _MISSING)
            if value is _MISSING:
                expected = f" (expected shape {sub.describe()})" if kind == 2 else ""
                raise ValueError(f"{self.what}: missing key {path!r}{expected}; got keys {sorted(map(str, data))}")
            if kind == 0:
                continue
            if kind == 1:
                if type(value) is not dict and not isinstance(value, Mapping):  # (the ABC check is slow)
                    raise ValueError(f"{self.what}: {path!r} must be a dict with keys {sorted(sub[0])}, got {type(value).__name__}")
                self._check(value, sub[1])
                continue
            try:
                cache_key = (path, value.shape, value.dtype)
            except AttributeError:
                raise ValueError(f"{self.what}: {path!r} must be a tensor of shape {sub.describe()}, "
                                 f"got {type(value).__name__}") from None
            if cache_key in ok:
                continue
            shape, dtype = _shape_dtype(value)
            if shape is None:
                raise ValueError(f"{self.what}: {path!r} must be a tensor of shape {sub.describe()}, got {type(value).__name__}")
            if not sub.matches(shape):
                raise ValueError(f"{self.what}: {path!r} has shape {shape}, expected {sub.describe()}")
            if not _dtype_ok(dtype, sub.dtype_kind):
                raise ValueError(f"{self.what}: {path!r} has dtype {dtype}, expected a {sub.dtype_kind} dtype")
            if len(ok) >= 256:  # bounded: a stream of new shapes cannot grow it without end
                ok.clear()
            ok.add(cache_key)


def to_torch(batch: Mapping[str, Any], strict: Optional[Iterable[str]] = None) -> dict:
    """A new dict where numpy arrays (also nested in dicts) become torch tensors without a copy
    where numpy allows it. The input dict is not modified.

    ``strict``: the keys the module's input specs name (e.g. ``{"obs", "state_in"}``). An array
    under one of them that cannot become a tensor (object, string, datetime dtype) is a
    ValueError naming the key. Every other column is converted when it can be and otherwise
    passed through unchanged, as are values that are not arrays (None, strings, lists, infos):
    a batch may carry columns the module never reads (RLlib's connectors add several)."""
    strict = () if strict is None else strict
    out = {}
    for k, v in batch.items():
        if isinstance(v, np.ndarray):
            v = _array_to_tensor(k, v, k in strict)
        elif isinstance(v, Mapping):
            v = to_torch(v, v.keys() if k in strict else None)
        out[k] = v
    return out


def _array_to_tensor(key: Any, v: np.ndarray, strict: bool) -> Any:
    try:
        return torch.from_numpy(v)
    except (ValueError, TypeError):  # negative strides, read-only or object arrays
        pass
    if not strict and v.dtype.kind not in "biufc":
        return v  # a column the specs do not name, of a dtype torch has no tensor for
    try:
        return torch.as_tensor(np.ascontiguousarray(v))
    except (ValueError, TypeError, RuntimeError) as e:
        if not strict:
            return v
        raise ValueError(f"{key!r}: a numpy array of dtype {v.dtype} cannot become a tensor "
                         f"(expected a numeric dtype): {e}") from None


def iter_keys(spec: SpecType) -> Iterable[str]:
    if spec is None:
        return ()
    return list(spec.keys()) if isinstance(spec, Mapping) else list(spec)
