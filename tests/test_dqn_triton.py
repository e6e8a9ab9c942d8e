"""The Triton DQN step (kernels/qnet.py through fastpath.qnet_triton_plan) against the module's
torch layers, in Triton's interpreter on CPU tensors (tests/conftest.py sets TRITON_INTERPRET=1):
register-tile (widths <= 64) and staged (widths <= 256) variants, dueling and distributional,
masks, the epsilon-greedy distribution, errors and weight freshness. Small sizes: the
interpreter is slow. Tolerance: the kernels' "tf32x3" matmuls are float32-exact on CPU here;
rtol=atol=2e-5 on Q-values ~1.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.dqn import FLOAT_MIN, DQNTorchRLModule

TRI = rf.backend_info()["triton"]
pytestmark = pytest.mark.skipif(not TRI["available"], reason=f"triton backend unavailable: {TRI['reason']}")
TOL = dict(rtol=2e-5, atol=2e-5)
BOX5 = gym.spaces.Box(-1.0, 1.0, (5,), np.float32)


@pytest.fixture(autouse=True)
def triton_backend(monkeypatch):
    monkeypatch.setenv("RLMODULE_FAST_BACKEND", "triton")


def build(obs_space=BOX5, n=3, **cfg):
    torch.manual_seed(0)
    return DQNTorchRLModule(observation_space=obs_space, action_space=gym.spaces.Discrete(n),
                            model_config={"epsilon": [(0, 1.0), (100, 0.1)], **cfg})


CASES = {
    "regs-duel": dict(fcnet_hiddens=[17, 9], head_fcnet_hiddens=[7]),
    "regs-N5": dict(fcnet_hiddens=[13], num_atoms=5, dueling=False, v_min=-2.0, v_max=3.0),
    "staged-duel": dict(fcnet_hiddens=[70], head_fcnet_hiddens=[33]),
    "staged-duel-N4": dict(fcnet_hiddens=[80], num_atoms=4),
}


@pytest.mark.parametrize("B", [1, 37])
@pytest.mark.parametrize("case", list(CASES))
def test_triton_greedy_equals_torch(case, B):
    m = build(**CASES[case])
    assert m.fast_path_info() == {"backend": "triton", "active": True, "reason": "RLMODULE_FAST_BACKEND=triton"}
    obs = np.random.default_rng(B).uniform(-1, 1, (B, 5)).astype(np.float32)
    out = m.forward_inference({"obs": obs})
    with torch.no_grad():
        q = m.compute_q_values({"obs": torch.from_numpy(obs)})["qf_preds"]
    torch.testing.assert_close(out["action_dist_inputs"], q, **TOL)
    assert torch.equal(out["actions"], q.argmax(-1))
    torch.testing.assert_close(out["action_logp"], torch.log_softmax(q, -1).gather(1, q.argmax(-1, keepdim=True))[:, 0], **TOL)


def test_triton_epsilon_greedy_distribution():
    m = build(n=4, fcnet_hiddens=[8], epsilon=0.4)
    obs = np.repeat(np.random.default_rng(0).uniform(-1, 1, (1, 5)).astype(np.float32), 1200, axis=0)
    torch.manual_seed(3)
    acts = m.forward_exploration({"obs": obs})["actions"].numpy()
    g = int(m.forward_inference({"obs": obs[:1]})["actions"][0])
    p = np.full(4, 0.1)
    p[g] += 0.6
    counts = np.bincount(acts, minlength=4)
    assert float(((counts - p * len(acts)) ** 2 / (p * len(acts))).sum()) < 16.27  # 3 dof, p = 0.001
    torch.manual_seed(3)
    assert np.array_equal(m.forward_exploration({"obs": obs[:64]})["actions"].numpy(), acts[:64])  # torch's seed reproduces


def test_triton_masks():
    space = gym.spaces.Dict({"action_mask": gym.spaces.Box(0.0, 1.0, (5,), np.float32), "observations": BOX5})
    m = build(space, n=5, fcnet_hiddens=[12], epsilon=1.0)
    rng = np.random.default_rng(1)
    mask = (rng.random((64, 5)) < 0.5).astype(np.float32)
    mask[np.arange(64), rng.integers(0, 5, 64)] = 1
    batch = {"obs": {"observations": rng.uniform(-1, 1, (64, 5)).astype(np.float32), "action_mask": mask}}
    for fwd in (m.forward_exploration, m.forward_inference):
        out = fwd(batch)
        assert (mask[np.arange(64), out["actions"].numpy()] == 1).all()
        assert (out["action_dist_inputs"].numpy()[mask == 0] == np.float32(FLOAT_MIN)).all()
    bad = mask.copy()
    bad[5] = 0
    with pytest.raises(ValueError, match=r"every action is masked \(row 5\)"):
        m.forward_inference({"obs": {"observations": batch["obs"]["observations"], "action_mask": bad}})


def test_triton_errors_and_freshness():
    m = build(fcnet_hiddens=[10])
    obs = np.random.default_rng(0).uniform(-1, 1, (6, 5)).astype(np.float32)
    obs[4, 0] = np.inf
    with pytest.raises(ValueError, match=r"obs: contains NaN or inf \(row 4\)"):
        m.forward_inference({"obs": obs})
    obs[4, 0] = 0.0
    m.forward_inference({"obs": obs})
    with torch.no_grad():
        m.af.net.mlp[0].weight.mul_(-3.0)
        want = m.compute_q_values({"obs": torch.from_numpy(obs)})["qf_preds"]
    torch.testing.assert_close(m.forward_inference({"obs": obs})["action_dist_inputs"], want, **TOL)
