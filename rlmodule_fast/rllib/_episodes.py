"""Bulk episode building for ``FastEnvRunner``: the ``SingleAgentEpisode`` chunks RLlib's
``SingleAgentEnvRunner`` would have built step by step, made at once from a ``Rollout``.

What the stock runner does per step, and what is reproduced here per chunk:

- an episode continued from the previous ``sample()`` (a chunk ``cut()`` with
  ``episode_lookback_horizon`` steps of lookback) gets the new steps appended after its lookback;
  an autoreset step starts a new episode (new id) whose first observation is that step's output;
- done episodes and (``num_timesteps`` mode) the ongoing chunks come back numpy'ized
  (``to_numpy()``), the ongoing ones ``cut()`` into list-based continuations first -- with
  RLlib's own ``cut``, so lookback contents are RLlib's by construction;
- ``_start_time`` / ``_last_step_time`` (episode durations in the metrics) are the
  ``perf_counter`` after the reset / step that RLlib would have stamped.

Data types are the stock pipeline's (the runner fills the ``Rollout`` columns with them: actions
and module outputs as RLlib's ``TensorToNumpy`` gives them, rewards as the vector env's).
"""
from __future__ import annotations

import uuid

import numpy as np
import tree

from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.env.utils.infinite_lookback_buffer import InfiniteLookbackBuffer
from ray.rllib.utils.spaces.space_utils import batch, unbatch


def _nest(flat: dict) -> dict:
    """{("state_out", "actor", "h"): a, ("action_logp",): b} -> {"state_out": {"actor": {"h": a}}, ...}."""
    out: dict = {}
    for path, v in flat.items():
        d = out
        for p in path[:-1]:
            d = d.setdefault(p, {})
        d[path[-1]] = v
    return out


def _extend(prefix: InfiniteLookbackBuffer | None, new, space=None) -> InfiniteLookbackBuffer:
    """``prefix`` (a list-based buffer of a continued chunk, lookback included) followed by the
    numpy (struct) ``new``, as one finalized buffer with the prefix's lookback."""
    if prefix is None or len(prefix.data) == 0:
        lookback = 0 if prefix is None else prefix.lookback
        return InfiniteLookbackBuffer(data=new, lookback=lookback, space=space if prefix is None else prefix.space)
    old = prefix.data if prefix.finalized else batch(prefix.data)
    data = tree.map_structure(lambda a, b: np.concatenate([a, b], axis=0), old, new)
    return InfiniteLookbackBuffer(data=data, lookback=prefix.lookback, space=prefix.space)


def listify(ep: SingleAgentEpisode) -> SingleAgentEpisode:
    """Turn a (numpy) continuation chunk into the list-based one the stock runner keeps (its
    lookback items as individual rows / scalars / dicts), in place."""
    def lst(b: InfiniteLookbackBuffer) -> InfiniteLookbackBuffer:
        if not b.finalized:
            return b
        items = unbatch(b.data) if isinstance(b.data, dict) else list(b.data)
        return InfiniteLookbackBuffer(data=items, lookback=b.lookback, space=b.space)

    ep.observations = lst(ep.observations)
    ep.actions = lst(ep.actions)
    ep.rewards = lst(ep.rewards)
    ep.extra_model_outputs = {k: lst(v) for k, v in ep.extra_model_outputs.items()}
    return ep


class EpisodeBuilder:
    """Builds the chunks of one ``sample()`` from a ``Rollout``.

    ``extra_names``: the rollout's extra columns as tuple paths (e.g. ``("action_logp",)``,
    ``("state_out", "actor", "h")``); ``constants``: extra keys with one value for every step
    (``weights_seq_no``)."""

    def __init__(self, roll, obs_space, act_space, extra_names, constants: dict):
        self.r = roll
        self.obs_space, self.act_space = obs_space, act_space
        self.extra_names = list(extra_names)
        self.constants = constants
        K = roll.k
        self.next_obs = roll.view("next_obs")
        self.actions = roll.view("actions")
        self.rewards = roll.view("rewards")
        self.term = roll.view("terminated")
        self.trunc = roll.view("truncated")
        self.reset = roll.view("reset")
        self.extra = {p: roll.view(p) for p in self.extra_names}
        self.times = roll.times[:K]
        self.infos = roll.infos[:K]
        self.K = K

    # -- one env's columns ------------------------------------------------------------------------
    def _infos(self, i: int, a: int, b: int) -> list:
        return [{} if inf is None else inf[i] for inf in self.infos[a:b]]

    def _steps(self, i: int, a: int, b: int) -> dict:
        """Steps a..b-1 of env i: actions, rewards, extra outputs (contiguous copies)."""
        n = b - a
        extra = {p: self.extra[p][a:b, i].copy() for p in self.extra_names}
        for k, v in self.constants.items():
            extra[(k,)] = np.full(n, v)
        return {"actions": self.actions[a:b, i].copy(), "rewards": self.rewards[a:b, i].copy(),
                "extra": _nest(extra)}

    def fresh(self, i: int, r: int, e: int, id_: str) -> SingleAgentEpisode:
        """A new episode of env i: reset at iteration r (its first obs), steps r+1..e."""
        st = self._steps(i, r + 1, e + 1)
        ep = SingleAgentEpisode(
            id_=id_, observations=self.next_obs[r:e + 1, i].copy(), observation_space=self.obs_space,
            infos=self._infos(i, r, e + 1), actions=st["actions"], action_space=self.act_space,
            rewards=st["rewards"], terminated=self.term[e, i] if e > r else False,
            truncated=self.trunc[e, i] if e > r else False, extra_model_outputs=st["extra"],
            t_started=0, len_lookback_buffer=0)
        ep._start_time = float(self.times[r])
        if e > r:
            ep._last_step_time = float(self.times[e])
        return ep

    def continued(self, i: int, E: SingleAgentEpisode, s: int, e: int) -> SingleAgentEpisode:
        """The list-based chunk ``E`` (already reset) followed by iterations s..e of env i."""
        st = self._steps(i, s, e + 1)
        extra = {}
        new_extra = st["extra"]
        for k in set(E.extra_model_outputs) | set(new_extra):
            if k in new_extra:
                extra[k] = _extend(E.extra_model_outputs.get(k), new_extra[k])
            else:  # as the stock runner: a key the new steps do not write is left as it was
                extra[k] = E.extra_model_outputs[k]
        infos = InfiniteLookbackBuffer(data=list(E.infos.data) + self._infos(i, s, e + 1), lookback=E.infos.lookback)
        ep = SingleAgentEpisode(
            id_=E.id_, observations=_extend(E.observations, self.next_obs[s:e + 1, i].copy()),
            observation_space=self.obs_space, infos=infos,
            actions=_extend(E.actions, st["actions"]), action_space=self.act_space,
            rewards=_extend(E.rewards, st["rewards"]), terminated=self.term[e, i], truncated=self.trunc[e, i],
            extra_model_outputs=extra, t_started=E.t_started)
        ep._custom_data = E._custom_data
        ep._start_time = E._start_time if E._start_time is not None else float(self.times[s])
        ep._last_step_time = float(self.times[e])
        return ep

    # -- all envs ---------------------------------------------------------------------------------
    def build(self, episodes: list, ongoing: bool):
        """(done, ongoing_chunks): done episodes as ((iteration, env), episode) pairs, numpy'ized;
        with ``ongoing`` also each env's last chunk (not numpy'ized yet, not cut), else None."""
        done, last = [], []
        done_mask = (self.term | self.trunc) & ~self.reset
        for i, E in enumerate(episodes):
            # cur: the chunk that steps s.. extend; None: a new episode reset at iteration `first`
            cur, s, first, new_id = E, 0, None, None
            if self.K and self.reset[0, i]:   # E was not reset yet: iteration 0 resets it
                cur, s, first, new_id = None, 1, 0, E.id_
            for d in np.flatnonzero(done_mask[:, i]):
                d = int(d)
                ep = self.fresh(i, first, d, new_id) if cur is None else self.continued(i, cur, s, d)
                done.append(((d, i), ep.to_numpy()))
                new_id = uuid.uuid4().hex
                cur, s, first = None, d + 2, d + 1
            if not ongoing:
                continue
            last.append(self._last(i, cur, s, first, new_id))
        return done, (last if ongoing else None)

    def _last(self, i, cur, s, first, new_id):
        """Env i's chunk at the end of the sample (may hold no steps; then list-based, as the
        stock runner's)."""
        K = self.K
        if cur is not None:
            return cur if s >= K else self.continued(i, cur, s, K - 1)
        if first >= K:  # the episode ended at the last iteration: a new one, not reset yet
            return SingleAgentEpisode(id_=new_id, observation_space=self.obs_space, action_space=self.act_space)
        if first == K - 1:  # reset at the last iteration: the first observation only
            ep = SingleAgentEpisode(id_=new_id, observations=[self.next_obs[first, i].copy()],
                                    observation_space=self.obs_space, infos=self._infos(i, first, K),
                                    action_space=self.act_space, len_lookback_buffer=0)
            ep._start_time = float(self.times[first])
            return ep
        return self.fresh(i, first, K - 1, new_id)
