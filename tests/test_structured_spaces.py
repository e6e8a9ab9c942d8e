"""Dict / Tuple observations (flattened exactly as RLlib's FlattenObservations connector does) and
Tuple / Dict actions (RLlib's TorchMultiDistribution semantics; all-Discrete structures fused)."""
from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.models.flatten import flat_dim, flatten
from rlmodule_fast.ops import dispatch

INFO = rf.backend_info()
BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(not INFO[b]["available"], reason=INFO[b]["reason"]))
            for b in ("torch", "cpp", "triton")]

# keys deliberately out of sorted order (gymnasium keeps an explicit order for a list of pairs)
OBS = gym.spaces.Dict([
    ("pos", gym.spaces.Box(-1, 1, (3,), np.float32)),
    ("kind", gym.spaces.Discrete(4)),
    ("more", gym.spaces.Tuple([gym.spaces.MultiDiscrete([2, 3]), gym.spaces.Box(0, 1, (2, 2), np.float32),
                               gym.spaces.MultiBinary(3)])),
])
DISCRETE_TUPLE = gym.spaces.Tuple([gym.spaces.Discrete(3), gym.spaces.Dict([("y", gym.spaces.Discrete(2)),
                                                                            ("x", gym.spaces.Discrete(4))])])
MIXED_DICT = gym.spaces.Dict({"d": gym.spaces.Discrete(3), "g": gym.spaces.Box(-1, 1, (2,), np.float32)})


def _obs_batch(B: int, seed: int = 0) -> dict:
    g = np.random.default_rng(seed)
    return {"pos": g.uniform(-1, 1, (B, 3)).astype(np.float32), "kind": g.integers(0, 4, B),
            "more": (np.stack([g.integers(0, 2, B), g.integers(0, 3, B)], -1),
                     g.random((B, 2, 2)).astype(np.float32), g.integers(0, 2, (B, 3)).astype(np.int8))}


def test_flatten_matches_rllib_flatten_observations():
    pytest.importorskip("ray.rllib")
    from ray.rllib.utils.numpy import flatten_inputs_to_1d_tensor
    from ray.rllib.utils.spaces.space_utils import get_base_struct_from_space

    batch = _obs_batch(7)
    want = flatten_inputs_to_1d_tensor(batch, spaces_struct=get_base_struct_from_space(OBS), batch_axis=True)
    got = flatten(batch, OBS, 1, torch.float32)
    assert got.shape == (7, flat_dim(OBS)) == want.shape
    np.testing.assert_array_equal(got.numpy(), want)


def test_flatten_errors_name_the_leaf():
    batch = _obs_batch(2)
    del batch["kind"]
    with pytest.raises(ValueError, match=r"obs\['kind'\]"):
        flatten(batch, OBS, 1, torch.float32)
    batch = _obs_batch(2)
    batch["kind"] = np.array([0, 4])
    with pytest.raises(ValueError, match=r"obs\['kind'\]: Discrete values must lie in \[0, 4\)"):
        flatten(batch, OBS, 1, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", [gym.spaces.Discrete(3), DISCRETE_TUPLE], ids=["discrete", "tuple-of-discrete"])
def test_dict_obs_module_fused_equals_train_forward(backend, act, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, backend)
    torch.manual_seed(0)
    m = rf.ppo.PPOTorchRLModule(observation_space=OBS, action_space=act,
                                model_config={"fcnet_hiddens": [12], "vf_share_layers": False})
    info = m.fast_path_info()
    assert info["backend"] == backend and info["active"] == (backend != "torch"), info
    batch = {"obs": _obs_batch(9, seed=1)}
    out = m.forward_inference(batch)
    want = m.forward_train(batch)["action_dist_inputs"].detach()
    torch.testing.assert_close(torch.as_tensor(out["action_dist_inputs"]), want, atol=3e-5, rtol=3e-5)
    dist = m.get_inference_action_dist_cls().from_logits(want)
    det = dist.to_deterministic().sample()
    if isinstance(act, gym.spaces.Tuple):
        assert isinstance(out["actions"], tuple) and isinstance(out["actions"][1], dict)
        assert list(out["actions"][1]) == ["y", "x"]  # the space's own key order, as RLlib samples
        for g, w in zip([out["actions"][0], out["actions"][1]["x"], out["actions"][1]["y"]],
                        [det[0], det[1]["x"], det[1]["y"]]):
            assert torch.equal(torch.as_tensor(g), w)
    else:
        assert torch.equal(torch.as_tensor(out["actions"]), det)
    expl = m.forward_exploration(batch)
    torch.testing.assert_close(torch.as_tensor(expl["action_logp"]).float(),
                               dist.logp(expl["actions"]).detach().float(), atol=1e-4, rtol=1e-4)


def test_mixed_action_structure_runs_torch_and_says_why():
    m = rf.ppo.PPOTorchRLModule(observation_space=OBS, action_space=MIXED_DICT, model_config={"fcnet_hiddens": [8]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        info = m.fast_path_info()
    assert not info["active"] and info["backend"] == "torch" and "not fused" in info["reason"], info
    out = m.forward_exploration({"obs": _obs_batch(4)})
    assert set(out["actions"]) == {"d", "g"} and out["actions"]["g"].shape == (4, 2)
    dist = m.get_exploration_action_dist_cls().from_logits(out["action_dist_inputs"])
    torch.testing.assert_close(dist.logp(out["actions"]), out["action_logp"])


@pytest.mark.parametrize("act", [DISCRETE_TUPLE, MIXED_DICT], ids=["tuple-of-discrete", "mixed-dict"])
def test_multi_action_distribution_matches_rllib(act):
    """The same input widths, structure and logp as RLlib's Catalog picks for the action space."""
    pytest.importorskip("ray.rllib")
    from ray.rllib.core.models.catalog import Catalog as RLlibCatalog

    theirs = RLlibCatalog._get_dist_cls_from_action_space(act, framework="torch")
    ours = rf.ppo.PPOCatalog(OBS, act, {"fcnet_hiddens": [8]}).action_dist_cls
    n = ours.required_input_dim(act)
    assert n == theirs.required_input_dim(act)
    logits = torch.randn(5, n, generator=torch.Generator().manual_seed(0))
    d_ours, d_theirs = ours.from_logits(logits), theirs.from_logits(logits)
    sample = d_theirs.sample()
    torch.testing.assert_close(d_ours.logp(sample), d_theirs.logp(sample))
    torch.testing.assert_close(d_ours.entropy(), d_theirs.entropy())
