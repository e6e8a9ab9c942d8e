"""DQN modules with image observations run the fused conv stage (issues 14 + 15): RLlib's CNN
encoder ([H, W, C] Box, ``models/cnn.py``) is ``QNetLayers.conv`` and the epsilon-greedy step runs
conv stage, heads, dueling combine / distributional expectation, mask, argmax and the draw in one
``_C`` call (the conv stage is the policy step's: csrc/conv.h), or, under Triton, the conv
kernels of ``kernels/conv.py`` then the one DQN kernel.

What is checked: Q-values against the torch layers over odd image sizes (RLlib's default stacks
via ``conv_filters=None`` and explicit ones), float32 and uint8 frames, dueling on / off,
distributional heads, action masks; greedy actions where the Q gap exceeds the tolerance; the
epsilon draws are the non-image fused step's stream; weight updates seen; bitwise equal results
on 1 and 2 threads; NaN / inf frames refused; the Triton step in the interpreter on tiny images
(and its refusal, with a reason, of conv stages wider than one kernel); a few steps of Pong.

Tolerance (calibrated, STYLE.md rule 4; tests/test_cnn_fused.py's rule): the float64 torch layers
are the truth; the fused float32 step may be at most ``K_ERR`` times the float32 torch layers'
own error away from it, plus a few float32 ulps of the outputs.

Shape legend: B batch, H, W, C image, A actions, N atoms.
"""
from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_cnn_fused import K_ERR, calibrated_close
from test_dqn_module import rng_bits

import rlmodule_fast as rf
from rlmodule_fast.dqn import FLOAT_MIN, DQNTorchRLModule
from rlmodule_fast.fastpath.qnet_plan import fused_qnet_plan

A = 5
# name -> (image shape, conv_filters: None = RLlib's default stack for the size)
IMAGES = {
    "10x10x1-default": ((10, 10, 1), None),
    "10x10x1-explicit": ((10, 10, 1), [[4, 3, 2], [8, 3, 2]]),
    "13x9x2-explicit": ((13, 9, 2), [[4, [3, 2], [2, 1]], [6, 3, 2, "valid"]]),
    "42x42x3-default": ((42, 42, 3), None),
    "42x42x3-explicit": ((42, 42, 3), [[8, 4, 2], [16, [3, 5], 3, "valid"]]),
}
# (dueling, num_atoms)
VARIANTS = [(True, 1), (False, 1), (True, 5), (False, 3)]
VARIANT_IDS = [f"{'duel' if d else 'plain'}-N{n}" for d, n in VARIANTS]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):  # conftest.one_torch_thread
    yield


def image_space(shape, dtype=np.float32) -> gym.spaces.Box:
    return gym.spaces.Box(0, 255, shape, np.uint8) if dtype == np.uint8 else gym.spaces.Box(-1.0, 1.0, shape, np.float32)


def build(name: str, dueling: bool = True, num_atoms: int = 1, dtype=np.float32, obs_space=None, seed: int = 0,
          **kw) -> DQNTorchRLModule:
    shape, filters = IMAGES[name]
    cfg = {"conv_filters": filters, "dueling": dueling, "num_atoms": num_atoms, "v_min": -3.0, "v_max": 4.0,
           "head_fcnet_hiddens": [8], "epsilon": [(0, 1.0), (100, 0.1)]}
    cfg.update(kw)
    torch.manual_seed(seed)
    return DQNTorchRLModule(observation_space=obs_space or image_space(shape, dtype),
                            action_space=gym.spaces.Discrete(A), model_config=cfg)


def frames(name: str, B: int, dtype=np.float32, seed: int = 0) -> np.ndarray:
    shape = IMAGES[name][0]
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(0, 256, (B, *shape), dtype=np.uint8)
    return rng.uniform(-1, 1, (B, *shape)).astype(np.float32)


def torch_q(m: DQNTorchRLModule, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32, float64) Q-values of the module's torch layers."""
    with torch.no_grad():
        q32 = m.compute_q_values(batch)["qf_preds"]
        q64 = copy.deepcopy(m).double().compute_q_values(batch)["qf_preds"]
    return q32, q64


def check_q_and_greedy(out: dict, q32, q64, what: str) -> None:
    """Q-values calibrated against float64; greedy actions equal float64's argmax on every row
    whose top-2 gap exceeds twice the allowed error; logp = log_softmax(Q)[action]."""
    q = out["action_dist_inputs"]
    calibrated_close(q, q32, q64, f"{what} q")
    ref_err = (q32.double() - q64).abs().max().item()
    bound = K_ERR * ref_err + 4 * torch.finfo(torch.float32).eps * max(1.0, q64.abs().max().item())
    top2 = q64.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * bound
    assert clear.any(), f"{what}: no row with a clear greedy action (the check would be empty)"
    assert torch.equal(out["actions"][clear], q64.argmax(-1)[clear]), f"{what}: greedy actions differ"
    assert out["actions"].dtype == torch.int64 and out["action_logp"].dtype == torch.float32
    want = torch.log_softmax(q.double(), -1).gather(-1, out["actions"][:, None])[:, 0]
    torch.testing.assert_close(out["action_logp"].double(), want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# The cpp step against the torch layers
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.uint8], ids=["f32", "u8"])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("name", list(IMAGES))
def test_fused_q_values_equal_torch_layers(name, variant, dtype):
    dueling, atoms = variant
    m = build(name, dueling, atoms, dtype)
    assert m.fast_path_info() == {"backend": "cpp", "active": True, "reason": "CPU inputs run on cpp (auto)"}
    B = 4 if name.startswith("42x42x3-default") else 9
    x = frames(name, B, dtype, seed=1)
    q32, q64 = torch_q(m, {"obs": torch.from_numpy(x)})
    for obs, kind in ((x, "numpy"), (torch.from_numpy(x), "tensor")):
        check_q_and_greedy(m.forward_inference({"obs": obs}), q32, q64, f"{name} {kind}")


def test_uint8_frames_are_cast_not_scaled_in_the_kernels():
    """uint8 frames give what their float32 values give (the torch layers cast, no scaling)."""
    m8 = build("13x9x2-explicit", dtype=np.uint8)
    x = frames("13x9x2-explicit", 6, np.uint8)
    out8 = m8.forward_inference({"obs": x})
    outf = m8.forward_inference({"obs": x.astype(np.float32)})
    assert torch.equal(out8["action_dist_inputs"], outf["action_dist_inputs"])
    assert torch.equal(out8["actions"], outf["actions"])


def test_batch_forms_and_bad_shapes():
    name = "13x9x2-explicit"
    m = build(name)
    x = frames(name, 7, seed=2)
    want = m.forward_inference({"obs": x})["action_dist_inputs"]
    # a non-contiguous view (every other image), float64, a batch of one, a torch tensor view
    got = m.forward_inference({"obs": x[::2]})["action_dist_inputs"]
    assert torch.equal(got, want[::2])
    assert torch.equal(m.forward_inference({"obs": x.astype(np.float64)})["action_dist_inputs"], want)
    assert torch.equal(m.forward_inference({"obs": x[3:4]})["action_dist_inputs"], want[3:4])
    assert torch.equal(m.forward_inference({"obs": torch.from_numpy(x)[1:]})["action_dist_inputs"], want[1:])
    plan = fused_qnet_plan(m, x)
    assert torch.equal(plan.step(x.reshape(7, -1), None, 0.0, True)[0], want)  # HWC rows
    with pytest.raises(ValueError, match=r"obs: expected shape \[B, 234\] or \[B, 13, 9, 2\], got \(7, 13, 8, 2\)"):
        plan.step(x[:, :, :8], None, 0.0, True)
    with pytest.raises(ValueError, match="obs"):
        m.forward_inference({"obs": x[:, :12]})  # the module's spec check


@pytest.mark.parametrize("dtype", [np.float32, np.uint8], ids=["f32", "u8"])
@pytest.mark.parametrize("variant", [(True, 1), (False, 4)], ids=["duel", "N4"])
def test_action_masks(variant, dtype):
    dueling, atoms = variant
    name = "10x10x1-explicit"
    space = gym.spaces.Dict({"action_mask": gym.spaces.Box(0.0, 1.0, (A,), np.float32),
                             "observations": image_space(IMAGES[name][0], dtype)})
    m = build(name, dueling, atoms, obs_space=space)
    assert m.fast_path_info()["active"] is True
    B = 64
    rng = np.random.default_rng(3)
    mask = (rng.random((B, A)) < 0.5).astype(np.float32)
    mask[np.arange(B), rng.integers(0, A, B)] = 1.0
    x = frames(name, B, dtype, seed=4)
    batch = {"obs": {"action_mask": mask, "observations": x}}
    out = m.forward_inference(batch)
    tb = {"obs": {"action_mask": torch.from_numpy(mask), "observations": torch.from_numpy(x)}}
    q32, q64 = torch_q(m, tb)
    masked = torch.from_numpy(mask) == 0
    q = out["action_dist_inputs"]
    assert torch.all(q[masked] == FLOAT_MIN) and torch.all(q32[masked] == FLOAT_MIN)
    calibrated_close(q.masked_fill(masked, 0), q32.masked_fill(masked, 0), q64.masked_fill(masked, 0), "masked q")
    assert not masked[torch.arange(B), out["actions"]].any()
    # epsilon 1: every action a uniform draw among the row's valid ones, never a masked one
    m.epsilon_schedule = type(m.epsilon_schedule)(1.0)
    for _ in range(5):
        acts = m.forward_exploration(batch)["actions"]
        assert not masked[torch.arange(B), acts].any()


# --------------------------------------------------------------------------------------------
# Draws, freshness, threads, errors
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.uint8], ids=["f32", "u8"])
def test_epsilon_draws_follow_the_non_image_stream(dtype):
    """Row r's coin and random action are rng_bits(key, counter + r), as for a flat-Box module: the
    same seed gives both modules the same random rows and the same random actions."""
    name = "13x9x2-explicit"
    m = build(name, dtype=dtype)
    flat = DQNTorchRLModule(observation_space=gym.spaces.Box(-1.0, 1.0, (4,), np.float32),
                            action_space=gym.spaces.Discrete(A),
                            model_config={"fcnet_hiddens": [8], "epsilon": [(0, 1.0), (100, 0.1)]})
    B = 200
    x = frames(name, B, dtype, seed=5)
    xf = np.random.default_rng(6).uniform(-1, 1, (B, 4)).astype(np.float32)
    greedy = m.forward_inference({"obs": x})["actions"].numpy()
    greedy_flat = flat.forward_inference({"obs": xf})["actions"].numpy()
    rf.manual_seed(123)
    state = rf.get_rng_state()
    out = m.forward_exploration({"obs": x}, t=50)["actions"].numpy()
    eps = m.epsilon_schedule.current
    assert eps == pytest.approx(0.55)
    assert rf.get_rng_state()["counter"] == state["counter"] + B  # one draw per row
    want = greedy.copy()
    rand = np.zeros(B, bool)
    for r in range(B):
        z = rng_bits(state["key"], state["counter"] + r)
        if ((z >> 32) + 0.5) / 2**32 < eps:
            rand[r] = True
            want[r] = min(A - 1, int(((z & 0xFFFFFFFF) + 0.5) / 2**32 * A))
    assert np.array_equal(out, want)
    assert 0 < rand.sum() < B
    rf.set_rng_state(state)
    out_flat = flat.forward_exploration({"obs": xf}, t=50)["actions"].numpy()
    assert np.array_equal(out_flat[rand], out[rand]) and np.array_equal(out_flat[~rand], greedy_flat[~rand])
    rf.set_rng_state(state)
    assert np.array_equal(m.forward_exploration({"obs": x}, t=50)["actions"].numpy(), out)


def test_fused_step_sees_weight_updates():
    name = "13x9x2-explicit"
    m = build(name)
    m.make_target_networks()
    x = frames(name, 12, seed=7)
    tx = torch.from_numpy(x)
    before = m.forward_inference({"obs": x})["action_dist_inputs"]
    conv0 = m.encoder.net[0].cnn[1].weight
    assert isinstance(conv0, torch.nn.Parameter) and conv0.dim() == 4
    w_before = conv0.detach().clone()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    loss = m.forward_train({"obs": tx, "new_obs": tx})["qf_preds"].pow(2).sum()
    loss.backward()
    opt.step()
    assert not torch.equal(conv0.detach(), w_before)  # the conv stage itself moved
    after = m.forward_inference({"obs": x})["action_dist_inputs"]
    assert not torch.allclose(before, after)
    q32, q64 = torch_q(m, {"obs": tx})
    calibrated_close(after, q32, q64, "after an optimizer step")
    with torch.no_grad():  # only the conv bias: the packed conv stage is re-read
        m.encoder.net[0].cnn[-2].bias.add_(0.25)
    q32, q64 = torch_q(m, {"obs": tx})
    calibrated_close(m.forward_inference({"obs": x})["action_dist_inputs"], q32, q64, "after a conv bias write")


@pytest.mark.parametrize("case", [("42x42x3-default", 1, np.float32), ("42x42x3-default", 3, np.uint8),
                                  ("13x9x2-explicit", 131, np.float32), ("10x10x1-default", 64, np.uint8)],
                         ids=lambda c: f"{c[0]}-B{c[1]}-{np.dtype(c[2]).name}")
def test_bitwise_equal_across_thread_counts(case):
    """1 and 2 threads (torch.set_num_threads: images over the pool, or one image's rows for
    B < threads; row blocks of the heads) give the same bits: q, actions and logp of the same
    draws."""
    from rlmodule_fast import _C

    name, B, dtype = case
    m = build(name, dtype=dtype, num_atoms=1)
    x = frames(name, B, dtype, seed=8)
    res = []
    for n in (1, 2):
        torch.set_num_threads(n)
        try:
            rf.manual_seed(9)
            ex = m.forward_exploration({"obs": x}, t=50)
            inf = m.forward_inference({"obs": x})
            assert _C.get_num_threads() == n
        finally:
            torch.set_num_threads(1)
        res.append([ex["action_dist_inputs"], ex["actions"], ex["action_logp"], inf["action_dist_inputs"],
                    inf["actions"], inf["action_logp"]])
    for a, b in zip(*res):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nonfinite_frames_raise(bad, backend, monkeypatch):
    if backend == "torch":
        monkeypatch.setenv("RLMODULE_FAST_BACKEND", "torch")
    m = build("10x10x1-default")
    assert m.fast_path_info()["backend"] == backend
    x = frames("10x10x1-default", 4)
    x[2, 3, 7, 0] = bad
    for fwd in (m.forward_inference, m.forward_exploration):
        with pytest.raises(ValueError, match=r"obs: contains NaN or inf \(row 2\)"):
            fwd({"obs": x})


# --------------------------------------------------------------------------------------------
# Triton: the conv kernels, then the one DQN kernel (interpreter on CPU tensors; CUDA when present)
# --------------------------------------------------------------------------------------------
TRI = rf.backend_info()["triton"]


def triton_only(fn):
    """Skipped without a usable triton backend; the interpreter's numpy warnings on masked
    (padding) lanes, which are never stored, ignored."""
    fn = pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")(fn)
    fn = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")(fn)
    return pytest.mark.skipif(not TRI["available"], reason=f"triton backend unavailable: {TRI['reason']}")(fn)


@pytest.fixture
def device(triton_device):  # conftest.triton_device
    return triton_device


@pytest.mark.parametrize("dtype", [np.float32, np.uint8], ids=["f32", "u8"])
@pytest.mark.parametrize("variant", [(True, 1), (False, 3)], ids=["duel", "plain-N3"])
@pytest.mark.parametrize("name", ["10x10x1-explicit", "13x9x2-explicit"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@triton_only
def test_triton_conv_step_equals_torch_layers(name, variant, dtype, masked, device):
    dueling, atoms = variant
    shape = IMAGES[name][0]
    space = image_space(shape, dtype)
    if masked:
        space = gym.spaces.Dict({"action_mask": gym.spaces.Box(0.0, 1.0, (A,), np.float32), "observations": space})
    m = build(name, dueling, atoms, obs_space=space).to(device)
    info = m.fast_path_info()
    assert info["backend"] == "triton" and info["active"] is True, info
    B = 11
    x = torch.from_numpy(frames(name, B, dtype, seed=10)).to(device)
    mask = None
    obs = x
    if masked:
        rng = np.random.default_rng(11)
        mk = (rng.random((B, A)) < 0.5).astype(np.float32)
        mk[np.arange(B), rng.integers(0, A, B)] = 1.0
        mask = torch.from_numpy(mk).to(device)
        obs = {"action_mask": mask, "observations": x}
    out = m.forward_inference({"obs": obs})
    mc = copy.deepcopy(m).cpu()
    cpu_obs = {k: v.cpu() for k, v in obs.items()} if masked else x.cpu()
    with torch.no_grad():
        q32 = mc.compute_q_values({"obs": cpu_obs})["qf_preds"]
        q64 = copy.deepcopy(mc).double().compute_q_values({"obs": cpu_obs})["qf_preds"]
    q = out["action_dist_inputs"].cpu()
    if masked:
        gone = mask.cpu() == 0
        assert torch.all(q[gone] == FLOAT_MIN)
        q, q32, q64 = (t.masked_fill(gone, 0) for t in (q, q32, q64))
        assert not gone[torch.arange(B), out["actions"].cpu()].any()
    calibrated_close(q, q32, q64, f"triton {name}")
    if not masked:
        check_q_and_greedy({k: v.cpu() for k, v in out.items()}, q32, q64, f"triton {name}")
    explore = m.forward_exploration({"obs": obs}, t=50)["actions"]
    assert explore.shape == (B,) and bool(((explore >= 0) & (explore < A)).all())


@triton_only
def test_triton_refuses_wide_conv_features_with_a_reason(device):
    m = build("10x10x1-default").to(device)  # RLlib's 10x10 stack flattens to 3 * 3 * 32 = 288 features
    with pytest.warns(UserWarning, match="flattens to 288 features"):
        info = m.fast_path_info()
    assert info["backend"] == "torch" and not info["active"] and "288" in info["reason"], info
    x = torch.from_numpy(frames("10x10x1-default", 3)).to(device)
    out = m.forward_inference({"obs": x})
    with torch.no_grad():
        q = m.compute_q_values({"obs": x})["qf_preds"]
    assert torch.equal(out["action_dist_inputs"], q)  # the torch layers, as the reason says


@triton_only
def test_triton_nonfinite_frames_raise(device):
    m = build("10x10x1-explicit").to(device)
    x = torch.from_numpy(frames("10x10x1-explicit", 4)).to(device)
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"obs: contains NaN or inf \(row 1\)"):
        m.forward_inference({"obs": x})


# --------------------------------------------------------------------------------------------
# Real Atari: a few Pong steps with the fused DQN step (skipped without ale-py / cv2 / RLlib)
# --------------------------------------------------------------------------------------------
def test_pong_steps_with_the_fused_dqn_step():
    ale_py = pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    pytest.importorskip("ray.rllib")
    from ray.rllib.env.wrappers.atari_wrappers import wrap_atari_for_new_api_stack

    from rlmodule_fast.rllib.dqn_convert import to_rllib_dqn_module

    gym.register_envs(ale_py)
    env = wrap_atari_for_new_api_stack(gym.make("ALE/Pong-v5", frameskip=1, repeat_action_probability=0.0,
                                                full_action_space=False), dim=84, framestack=4)
    assert env.observation_space == gym.spaces.Box(-1.0, 1.0, (84, 84, 4), np.float32)
    torch.manual_seed(0)
    m = DQNTorchRLModule(observation_space=env.observation_space, action_space=env.action_space,
                         model_config={"head_fcnet_hiddens": [32]})  # RLlib's default 84x84 stack
    assert m.fast_path_info()["active"] is True
    obs, _ = env.reset(seed=0)
    n, seen, kept = int(env.action_space.n), set(), []
    for t in range(40):
        out = m.forward_exploration({"obs": obs[None]}, t=5000)  # epsilon 0.525
        a = int(out["actions"][0])
        assert 0 <= a < n and torch.isfinite(out["action_dist_inputs"]).all()
        seen.add(a)
        if t % 10 == 0:
            kept.append(obs)
        obs, _, term, trunc, _ = env.step(a)
        if term or trunc:
            obs, _ = env.reset()
    env.close()
    assert len(seen) > 1
    x = torch.from_numpy(np.stack(kept))
    q32, q64 = torch_q(m, {"obs": x})
    calibrated_close(m.forward_inference({"obs": x})["action_dist_inputs"], q32, q64, "pong q")
    theirs = to_rllib_dqn_module(m)  # RLlib's DefaultDQNTorchRLModule, same weights: our torch layers are its
    with torch.no_grad():
        torch.testing.assert_close(theirs.compute_q_values({"obs": x})["qf_preds"], q32, rtol=1e-5, atol=1e-5)
