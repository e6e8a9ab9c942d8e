"""gymnasium spaces <-> plain JSON data, so checkpoints and specs never pickle objects."""
from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np


def _num(x: float) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def _unnum(x: Any) -> Any:
    if isinstance(x, list):
        return [_unnum(v) for v in x]
    return float(x) if isinstance(x, str) else x


def _array(a: np.ndarray) -> Any:
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


def space_from_json(data: Any) -> gym.Space | None:
    """Inverse of ``space_to_json``; raises ValueError on anything malformed."""
    if data is None:
        return None
    try:
        kind = data["type"]
        if kind == "Box":
            dtype = np.dtype(data["dtype"])
            return gym.spaces.Box(np.array(_unnum(data["low"]), dtype=dtype), np.array(_unnum(data["high"]), dtype=dtype),
                                  shape=tuple(data["shape"]), dtype=dtype)
        if kind == "Discrete":
            return gym.spaces.Discrete(int(data["n"]), start=int(data.get("start", 0)))
        if kind == "MultiDiscrete":
            return gym.spaces.MultiDiscrete(np.array(data["nvec"]), dtype=np.dtype(data.get("dtype", "int64")))
        if kind == "MultiBinary":
            return gym.spaces.MultiBinary(data["n"])
        if kind == "Tuple":
            return gym.spaces.Tuple([space_from_json(s) for s in data["spaces"]])
        if kind == "Dict":
            return gym.spaces.Dict({k: space_from_json(s) for k, s in data["spaces"].items()})
    except (KeyError, TypeError, ValueError, AssertionError) as e:  # gymnasium validates with asserts
        raise ValueError(f"malformed space description {data!r}: {e}") from e
    raise ValueError(f"unknown space type {data.get('type') if isinstance(data, dict) else data!r}")
