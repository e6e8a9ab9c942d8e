"""The epsilon schedule of DQN's exploration: RLlib's ``Scheduler`` over a ``PiecewiseSchedule``
(``ray.rllib.utils.schedules``), as plain Python floats.

``epsilon`` is a number in [0, 1] (fixed) or ``[(t0, v0), (t1, v1), ...]`` with ``t0 == 0``,
timesteps increasing and every value in [0, 1]: linear interpolation between the points, and
the last value from the last timestep on (RLlib's ``outside_value``).
"""
from __future__ import annotations

from typing import Any, Optional

from ..models.config import _short


def check_epsilon(value: Any, key: str = "epsilon") -> Any:
    """``value`` as a float or a list of (int timestep, float value) pairs; ValueError naming
    ``key``, the expected and the received otherwise."""
    def prob(v) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"model config {key!r}: expected values in [0, 1], got {_short(v)}")
        return float(v)

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return prob(value)
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise ValueError(f"model config {key!r}: expected a number in [0, 1] or a list of 2 or more "
                         f"(timestep, value) pairs starting at timestep 0, got {_short(value)}")
    points = []
    for p in value:
        if not isinstance(p, (list, tuple)) or len(p) != 2 or isinstance(p[0], bool) \
                or not isinstance(p[0], (int, float)) or p[0] != int(p[0]):
            raise ValueError(f"model config {key!r}: expected (int timestep, value) pairs, got {_short(p)}")
        points.append((int(p[0]), prob(p[1])))
    if points[0][0] != 0:
        raise ValueError(f"model config {key!r}: the first timestep must be 0, got {points[0][0]}")
    if any(b[0] <= a[0] for a, b in zip(points, points[1:])):
        raise ValueError(f"model config {key!r}: timesteps must increase, got {[p[0] for p in points]}")
    return points


class EpsilonSchedule:
    """``update(t) -> epsilon`` at timestep ``t`` (RLlib's ``Scheduler.update``);
    ``current`` the last value (the schedule's first value before any update)."""

    def __init__(self, value: Any):
        self.value = check_epsilon(value)
        self.use_schedule = isinstance(self.value, list)
        self.current: float = self.value[0][1] if self.use_schedule else self.value
        self._t = None  # the timestep ``current`` was computed for

    def at(self, t: int) -> float:
        if not self.use_schedule:
            return self.value
        for (l_t, l_v), (r_t, r_v) in zip(self.value[:-1], self.value[1:]):
            if l_t <= t < r_t:
                return l_v + float(t - l_t) / (r_t - l_t) * (r_v - l_v)
        return self.value[-1][1]

    def peek(self, t: Optional[int]) -> float:
        """What ``update(t)`` would return, without updating."""
        return self.current if t is None or t == self._t else self.at(int(t))

    def update(self, t: Optional[int]) -> float:
        if t is not None and t != self._t:
            self.current, self._t = self.at(int(t)), t
        return self.current
