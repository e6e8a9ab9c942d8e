"""Observation structure in one place: RLlib's action-masking Dict split, and the flattening of
Dict / Tuple (nested) observations exactly as RLlib's ``FlattenObservations`` connector does it.

Action masking (RLlib's pattern, rllib/examples/rl_modules/classes/action_masking_rlm.py): a
``Dict`` observation space with the keys ``"action_mask"`` (a 1-D Box of 0/1, one entry per
logit) and ``"observations"`` (any supported space): only ``"observations"`` is encoded, the mask
goes to the logits.

Flattening (rllib/connectors/env_to_module/flatten_observations.py ->
``flatten_inputs_to_1d_tensor``): the leaves in ``tree.flatten`` order (Dict keys sorted,
Tuple in order, depth first); a Box (any shape) or MultiBinary leaf is reshaped to [*lead, -1],
a Discrete leaf is one-hot of the value (depth n; RLlib ignores ``start``, so do we), a
MultiDiscrete leaf is the concatenated one-hots of its components; everything as float.

Shape legend: B batch (T time: the lead dims), D the flattened width.
"""
from __future__ import annotations

import math
from typing import Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

ACTION_MASK = "action_mask"
OBSERVATIONS = "observations"

_LEAVES = (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)


def split_action_mask(space: gym.Space) -> tuple[gym.Space, Optional[int]]:
    """(the space the encoder reads, mask width or None). A Dict holding ``"action_mask"`` must
    hold exactly ``"action_mask"`` (a 1-D Box) and ``"observations"``; ValueError naming the
    key otherwise."""
    if not (isinstance(space, gym.spaces.Dict) and ACTION_MASK in space.spaces):
        return space, None
    keys = sorted(space.spaces)
    if keys != sorted([ACTION_MASK, OBSERVATIONS]):
        raise ValueError(f"observation_space: an action-masking Dict needs exactly the keys "
                         f"['action_mask', 'observations'] (RLlib's pattern), got {keys}")
    m = space.spaces[ACTION_MASK]
    if not isinstance(m, gym.spaces.Box) or len(m.shape) != 1 or m.shape[0] < 1:
        raise ValueError(f"observation_space['action_mask']: expected a 1-D Box of 0/1 (one entry per "
                         f"action logit), got {m!r}")
    return space.spaces[OBSERVATIONS], int(m.shape[0])


def is_structured(space: gym.Space) -> bool:
    """True for Dict / Tuple spaces (flattened by ``flatten``)."""
    return isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple))


def leaves(space: gym.Space, path: str = "obs") -> list[tuple[str, gym.Space]]:
    """(path, leaf space) in RLlib's flattening order (``tree.flatten``: sorted Dict keys)."""
    if isinstance(space, gym.spaces.Dict):
        return [x for k in sorted(space.spaces) for x in leaves(space.spaces[k], f"{path}[{k!r}]")]
    if isinstance(space, gym.spaces.Tuple):
        return [x for i, s in enumerate(space.spaces) for x in leaves(s, f"{path}[{i}]")]
    if not isinstance(space, _LEAVES):
        raise ValueError(f"observation_space: {path} is a {type(space).__name__}, not one RLlib's "
                         "FlattenObservations flattens (Box, Discrete, MultiDiscrete, MultiBinary, Dict, Tuple)")
    return [(path, space)]


def _leaf_dim(space: gym.Space) -> int:
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return int(np.sum(space.nvec))
    return int(math.prod(space.shape)) if space.shape else 1


def flat_dim(space: gym.Space) -> int:
    """Width D of a flattened observation of ``space`` (Box, Discrete, MultiDiscrete,
    MultiBinary, or Dict / Tuple of them)."""
    return sum(_leaf_dim(s) for _, s in leaves(space))


def _item(obs, key, path: str):
    try:
        return obs[key]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"obs: missing {path} (expected a nested batch matching the observation space)") from None


def _one_hot(idx: torch.Tensor, n: int, path: str) -> torch.Tensor:
    idx = idx.long()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"{path}: Discrete values must lie in [0, {n}), got values in "
                         f"[{int(idx.min())}, {int(idx.max())}]")
    return F.one_hot(idx, n)


def _flatten_leaf(x, space: gym.Space, n_lead: int, dtype: torch.dtype, path: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if isinstance(space, gym.spaces.Discrete):
        return _one_hot(t, int(space.n), path).to(dtype)
    if isinstance(space, gym.spaces.MultiDiscrete):
        lead = t.shape[:n_lead]
        t = t.reshape(*lead, -1)
        nvec = [int(n) for n in np.ravel(space.nvec)]
        if t.shape[-1] != len(nvec):
            raise ValueError(f"{path}: expected {len(nvec)} MultiDiscrete components, got shape {tuple(t.shape)}")
        return torch.cat([_one_hot(t[..., i], n, f"{path}[{i}]") for i, n in enumerate(nvec)], -1).to(dtype)
    want = tuple(space.shape)
    if tuple(t.shape[n_lead:]) != want:
        raise ValueError(f"{path}: expected shape [{', '.join(['B'] * n_lead)}, {', '.join(map(str, want))}] "
                         f"(lead dims, then the space's), got {tuple(t.shape)}")
    return t.reshape(*t.shape[:n_lead], _leaf_dim(space)).to(dtype)


def flatten(obs, space: gym.Space, n_lead: int, dtype: torch.dtype) -> torch.Tensor:
    """A nested batch (dicts / tuples / lists of numpy arrays or tensors with ``n_lead`` lead
    dims) -> [*lead, D] in ``dtype``, RLlib's FlattenObservations layout (see the module doc)."""
    parts = []

    def walk(o, sp, path):
        if isinstance(sp, gym.spaces.Dict):
            for k in sorted(sp.spaces):
                walk(_item(o, k, f"{path}[{k!r}]"), sp.spaces[k], f"{path}[{k!r}]")
        elif isinstance(sp, gym.spaces.Tuple):
            for i, s in enumerate(sp.spaces):
                walk(_item(o, i, f"{path}[{i}]"), s, f"{path}[{i}]")
        else:
            parts.append(_flatten_leaf(o, sp, n_lead, dtype, path))

    walk(obs, space, "obs")
    return torch.cat(parts, -1)


def first_leaf(obs, space: gym.Space):
    """The first leaf array of a nested batch (for its lead dims and device); ValueError naming
    the path when ``obs`` does not have the space's structure (e.g. a flat array for a Dict)."""
    path = "obs"
    while isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)):
        if not isinstance(obs, (dict, tuple, list)) and not hasattr(obs, "keys"):
            raise ValueError(f"{path}: expected a nested batch matching the {type(space).__name__} observation "
                             f"space (a {'dict' if isinstance(space, gym.spaces.Dict) else 'tuple'}), "
                             f"got a {type(obs).__name__}")
        key = sorted(space.spaces)[0] if isinstance(space, gym.spaces.Dict) else 0
        path = f"{path}[{key!r}]"
        obs, space = _item(obs, key, path), space.spaces[key]
    return obs


def leaf_rank(space: gym.Space) -> int:
    """Rank of one (unbatched) value of a leaf space: 0 for Discrete, 1 for MultiDiscrete
    (its nvec's rank), the shape's length for Box / MultiBinary."""
    if isinstance(space, gym.spaces.Discrete):
        return 0
    if isinstance(space, gym.spaces.MultiDiscrete):
        return int(np.ndim(space.nvec))
    return len(space.shape)


def lead_dims(obs, space: gym.Space) -> int:
    """How many lead (batch / time) dims a nested batch of ``space`` has (from its first leaf)."""
    path, leaf = leaves(space)[0]
    return int(np.ndim(first_leaf(obs, space))) - leaf_rank(leaf)
