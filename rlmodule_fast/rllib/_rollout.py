"""Columnar rollout storage for ``FastEnvRunner``: what one ``sample()`` call collects, step by
step, before episodes are built from it in bulk (``_episodes.py``).

Shape legend: K loop iterations (one ``env.step`` of the vector env each), N sub-envs.

Per iteration k and sub-env i the buffers hold the env's output of that step (``next_obs``,
``rewards``, ``terminated``, ``truncated``, the info dict) and the module's outputs that chose the
action (``actions``, ``extra`` columns: ``action_dist_inputs``, ``action_logp``, the rnn
``state_out`` leaves). ``reset[k, i]`` marks an autoreset step (gymnasium's NEXT_STEP mode: the
step after an episode ended returns the new episode's first observation, its action is
ignored), ``times[k]`` the ``time.perf_counter()`` after the step (episode durations).
"""
from __future__ import annotations

import numpy as np


class Rollout:
    """Growable [K, N, ...] numpy buffers (capacity doubles when full; rows are contiguous, so
    ``buf[k]`` can be written in place). ``extra`` maps a column name (a tuple path for nested
    ``state_out`` leaves) to (per-env item shape, dtype)."""

    def __init__(self, num_envs: int, obs_shape, obs_dtype, act_shape, act_dtype, extra: dict, capacity: int = 256):
        self.n = num_envs
        self.k = 0
        self.cap = 0
        self._specs = {
            "next_obs": (tuple(obs_shape), obs_dtype),
            "actions": (tuple(act_shape), act_dtype),
            "rewards": ((), np.float64),
            "terminated": ((), np.bool_),
            "truncated": ((), np.bool_),
            "reset": ((), np.bool_),
        }
        self._extra_specs = dict(extra)
        self.cols: dict = {}
        self.extra: dict = {}
        self.times = np.zeros(0)
        self.infos: list = []   # per iteration: None (no infos) or the list of per-env dicts
        self._grow(capacity)

    def _grow(self, cap: int) -> None:
        def resized(old, shape, dtype):
            new = np.zeros((cap, self.n, *shape), dtype=dtype)
            if old is not None:
                new[: self.k] = old[: self.k]
            return new

        for name, (shape, dtype) in self._specs.items():
            self.cols[name] = resized(self.cols.get(name), shape, dtype)
        for name, (shape, dtype) in self._extra_specs.items():
            self.extra[name] = resized(self.extra.get(name), shape, dtype)
        times = np.zeros(cap)
        times[: self.k] = self.times[: self.k]
        self.times = times
        self.cap = cap

    def grow(self) -> None:
        """Double the capacity (keeping the first ``k`` rows)."""
        self._grow(2 * self.cap)

    def view(self, name: str) -> np.ndarray:
        """The filled rows [k, N, ...] of a column or extra column."""
        buf = self.cols.get(name)
        if buf is None:
            buf = self.extra[name]
        return buf[: self.k]
