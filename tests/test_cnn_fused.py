"""PPO modules with image observations run the fused conv step (C++ on CPU; Triton under the
interpreter on a tiny image): ``PPOTorchRLModule.policy_layers()`` describes RLlib's CNN encoder
(and the CNN tokenizer of a CNN -> LSTM / GRU encoder) as ``EncoderLayers.conv``, and
``FastPPOTorchRLModule`` does the same for RLlib's own CNN modules.

What is checked, per module: ``fast_path_info()`` says the fused step runs; ``forward_inference``
/ ``forward_exploration`` give the torch layers' distribution inputs (inference: the argmax;
exploration: ``action_logp`` = the distribution's logp of the sampled action); the value head
through the critic's own conv stage; CNN -> LSTM / GRU stepping against the sequence path;
uint8 frames; weight updates seen by the next call; NaN / inf observations refused.

Tolerance (calibrated, STYLE.md rule 4): the float64 torch layers are the truth; the fused
float32 step may be at most ``K_ERR`` times the float32 torch layers' own error away from it,
plus a floor of a few float32 ulps of the outputs (both errors can be ~0 on tiny stacks).

Shape legend: B batch, T time, H, W, C image, A actions.
"""
from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlmodule_fast.core.columns import Columns
from rlmodule_fast.fastpath import fused_plan
from rlmodule_fast.ops import dispatch
from rlmodule_fast.ops import triton as tri
from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

K_ERR = 16.0
DISC6 = gym.spaces.Discrete(6)
TUNED = [[16, 4, 2], [32, 4, 2], [64, 4, 2], [128, 4, 2]]
NATURE = [[32, 8, 4], [64, 4, 2], [64, 3, 1]]

# name -> (image, action space, model config)
CASES = {
    "10x10x1-default-shared": ((10, 10, 1), DISC6, {}),
    "42x42x3-default-separate": ((42, 42, 3), DISC6, {"vf_share_layers": False}),
    "84x84x4-default-shared": ((84, 84, 4), DISC6, {}),
    "84x84x4-nature-separate": ((84, 84, 4), DISC6, {"conv_filters": NATURE, "vf_share_layers": False,
                                                     "head_fcnet_hiddens": [16]}),
    "84x84x4-tuned-tanh": ((84, 84, 4), DISC6, {"conv_filters": TUNED, "conv_activation": "tanh"}),
    "13x9x2-odd-box-elu": ((13, 9, 2), gym.spaces.Box(-1, 1, (3,), np.float32),
                           {"conv_filters": [[4, [3, 2], [2, 1]], [6, 3, 2, "valid"]], "conv_activation": "elu",
                            "vf_share_layers": False}),
    "12x10x3-multidiscrete-silu": ((12, 10, 3), gym.spaces.MultiDiscrete([3, 2]),
                                   {"conv_filters": [[8, 3, 2], [6, [3, 2], 1]], "conv_activation": "silu"}),
}
RNN_CASES = {
    "10x10x1-lstm-shared": ((10, 10, 1), DISC6, {"use_lstm": True, "lstm_cell_size": 16}),
    "12x10x3-lstm-separate": ((12, 10, 3), gym.spaces.MultiDiscrete([2, 4]),
                              {"use_lstm": True, "vf_share_layers": False, "lstm_cell_size": 8,
                               "conv_filters": [[4, 3, 2], [8, [3, 2], 2]], "head_fcnet_hiddens": [5]}),
    "10x10x1-gru-separate": ((10, 10, 1), DISC6, {"use_gru": True, "lstm_cell_size": 12, "vf_share_layers": False,
                                                  "conv_filters": [[4, 3, 2], [8, 3, 2]]}),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):  # conftest.one_torch_thread
    yield


def build(name: str, dtype=np.float32, seed: int = 0) -> PPOTorchRLModule:
    shape, act, cfg = {**CASES, **RNN_CASES}[name]
    space = gym.spaces.Box(0, 255, shape, np.uint8) if dtype == np.uint8 else gym.spaces.Box(-1, 1, shape, dtype)
    torch.manual_seed(seed)
    return PPOTorchRLModule(observation_space=space, action_space=act, model_config=dict(cfg),
                            catalog_class=PPOCatalog)


def frames(shape, lead, seed=0) -> torch.Tensor:
    return torch.rand(*lead, *shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def to64(m: PPOTorchRLModule) -> PPOTorchRLModule:
    """A float64 copy of ``m`` (its recurrent state read in float64 too: the module casts
    ``state_in`` to float32 for its float32 layers)."""
    m64 = copy.deepcopy(m).double()
    m64._state_3d = lambda state: {k: (v.unsqueeze(1) if v.dim() == 2 else v).double() for k, v in state.items()}
    return m64


def torch_step(m, batch: dict, deterministic: bool) -> dict:
    """The module's torch layers (no fused step)."""
    with torch.no_grad():
        return m._forward_torch(dict(batch), deterministic)


def calibrated_close(got, f32, f64, what: str) -> None:
    """|got - f64| <= K_ERR * |f32 - f64| (max over the tensor) + a few ulps of the outputs."""
    got, f32, f64 = (torch.as_tensor(t).detach().double() for t in (got, f32, f64))
    assert got.shape == f64.shape, f"{what}: shape {tuple(got.shape)} != {tuple(f64.shape)}"
    ref_err = (f32 - f64).abs().max().item()
    floor = 4 * torch.finfo(torch.float32).eps * max(1.0, f64.abs().max().item())
    err = (got - f64).abs().max().item()
    assert err <= K_ERR * ref_err + floor, f"{what}: fused error {err:.3g} > {K_ERR} x torch f32 error {ref_err:.3g} + {floor:.3g}"


def check_step(m, batch: dict, out: dict, deterministic: bool, what: str) -> None:
    """``out`` (a fused step) against the float32 and float64 torch layers on ``batch``."""
    m64 = to64(m)
    ref32, ref64 = torch_step(m, batch, True), torch_step(m64, batch, True)
    calibrated_close(out[Columns.ACTION_DIST_INPUTS], ref32[Columns.ACTION_DIST_INPUTS],
                     ref64[Columns.ACTION_DIST_INPUTS], f"{what} action_dist_inputs")
    adi = out[Columns.ACTION_DIST_INPUTS]
    dist = m.action_dist_cls.from_logits(adi.reshape(-1, adi.shape[-1]))
    acts = out[Columns.ACTIONS].reshape(-1, *out[Columns.ACTIONS].shape[(2 if adi.dim() == 3 else 1):])
    if deterministic:
        assert torch.equal(acts, dist.to_deterministic().sample()), f"{what}: inference action is not the mode"
    torch.testing.assert_close(out[Columns.ACTION_LOGP].reshape(-1), dist.logp(acts).float(), rtol=1e-5, atol=1e-5,
                               msg=lambda s: f"{what} action_logp: {s}")
    if Columns.STATE_OUT in ref32:
        for k in ref32[Columns.STATE_OUT]:
            o, r32, r64 = (d[Columns.STATE_OUT][k] for d in (out, ref32, ref64))
            if isinstance(o, dict):
                for kk in o:
                    calibrated_close(o[kk], r32[kk], r64[kk], f"{what} state_out[{k}][{kk}]")
            else:
                calibrated_close(o, r32, r64, f"{what} state_out[{k}]")


# --------------------------------------------------------------------------------------------
# Feed-forward CNN modules on cpp
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_fused_conv_step_equals_torch_layers(name):
    m = build(name)
    info = m.fast_path_info()
    assert info["active"] is True and info["backend"] == "cpp", info
    shape = CASES[name][0]
    B = 2 if shape[0] == 84 else 5
    x = frames(shape, (B,), seed=1)
    for det in (True, False):
        with torch.no_grad():
            fwd = m.forward_inference if det else m.forward_exploration
            for obs, kind in ((x, "tensor"), (x.numpy(), "numpy")):
                out = fwd({Columns.OBS: obs})
                assert Columns.ACTIONS in out and Columns.ACTION_LOGP in out
                check_step(m, {Columns.OBS: x}, out, det, f"{name} {kind} det={det}")
    # the value head (the critic's own conv stage when vf_share_layers=False) through the plan
    plan = fused_plan(m, x)
    res = plan.step(x, compute_value=True, deterministic=True)
    m64 = to64(m)
    with torch.no_grad():
        v32, v64 = m.compute_values({Columns.OBS: x}), m64.compute_values({Columns.OBS: x})
    calibrated_close(res["vf_preds"], v32, v64, f"{name} vf_preds")


def test_fused_step_batch_layouts_and_odd_arrays():
    name = "12x10x3-multidiscrete-silu"
    m = build(name)
    x = frames((12, 10, 3), (7,), seed=2)
    with torch.no_grad():
        want = m.forward_inference({Columns.OBS: x})
        # a non-contiguous numpy view (every other row), a float64 array, a batch of one
        got = m.forward_inference({Columns.OBS: x.numpy()[::2]})
        torch.testing.assert_close(got[Columns.ACTION_DIST_INPUTS], want[Columns.ACTION_DIST_INPUTS][::2])
        got = m.forward_inference({Columns.OBS: x.double().numpy()})
        torch.testing.assert_close(got[Columns.ACTION_DIST_INPUTS], want[Columns.ACTION_DIST_INPUTS])
        got = m.forward_inference({Columns.OBS: x[3:4]})
        torch.testing.assert_close(got[Columns.ACTION_DIST_INPUTS], want[Columns.ACTION_DIST_INPUTS][3:4])
        assert got[Columns.ACTIONS].shape == (1, 2)
        with pytest.raises(ValueError, match="obs"):
            m.forward_inference({Columns.OBS: x[:, :11]})  # wrong image size


@pytest.mark.parametrize("name", ["10x10x1-default-shared", "10x10x1-lstm-shared"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nonfinite_obs_is_a_value_error(name, bad):
    m = build(name)
    assert m.fast_path_info()["active"] is True
    lead = (4, 1) if "lstm" in name else (4,)
    x = frames((10, 10, 1), lead)
    x[2, ..., 3, 7, 0] = bad
    batch = {Columns.OBS: x}
    if "lstm" in name:
        batch[Columns.STATE_IN] = {k: torch.zeros(4, 1, v.shape[-1]) for k, v in m.get_initial_state().items()}
    for fwd in (m.forward_inference, m.forward_exploration):
        with torch.no_grad(), pytest.raises(ValueError, match=r"obs: contains NaN or inf \(row 2\)"):
            fwd(dict(batch))


# --------------------------------------------------------------------------------------------
# uint8 frames
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["84x84x4-tuned-tanh", "42x42x3-default-separate", "10x10x1-lstm-shared"])
def test_uint8_frames_go_to_the_kernels_uncast(name):
    m8 = build(name, dtype=np.uint8)
    assert m8.fast_path_info()["active"] is True
    shape = {**CASES, **RNN_CASES}[name][0]
    rnn = "lstm" in name
    lead = (3, 1) if rnn else (3,)
    u8 = torch.randint(0, 256, (*lead, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    state = {k: 0.3 * torch.randn(3, 1, v.shape[-1]) for k, v in m8.get_initial_state().items()} if rnn else None

    def batch(obs):
        return {Columns.OBS: obs, **({Columns.STATE_IN: state} if rnn else {})}
    with torch.no_grad():
        float_out = m8.forward_inference(batch(u8.float()))
        for obs in (u8, u8.numpy()):
            got = m8.forward_inference(batch(obs))
            # the kernels convert each byte exactly, then run the same float32 arithmetic
            torch.testing.assert_close(got[Columns.ACTION_DIST_INPUTS], float_out[Columns.ACTION_DIST_INPUTS],
                                       rtol=0, atol=0)
        check_step(m8, batch(u8), m8.forward_exploration(batch(u8)), False, f"{name} uint8")


# --------------------------------------------------------------------------------------------
# CNN -> LSTM / GRU: stepping equals the sequence path
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(RNN_CASES))
def test_cnn_rnn_stepping_equals_sequence_path(name):
    m = build(name)
    info = m.fast_path_info()
    assert info["active"] is True and info["backend"] == "cpp", info
    shape = RNN_CASES[name][0]
    B, T = 3, 6
    x = frames(shape, (B, T), seed=3)
    g = torch.Generator().manual_seed(4)
    state0 = _map(lambda s: 0.5 * torch.randn(B, *s.shape, generator=g), m.get_initial_state())
    with torch.no_grad():
        seq = m.forward_train({Columns.OBS: x, Columns.STATE_IN: state0})
    m64 = to64(m)
    with torch.no_grad():
        seq64 = m64.forward_train({Columns.OBS: x.double(), Columns.STATE_IN: _map(lambda s: s.double(), state0)})
    state = state0
    for t in range(T):
        b = {Columns.OBS: x[:, t:t + 1], Columns.STATE_IN: state}
        with torch.no_grad():
            out = m.forward_inference(dict(b)) if t % 2 else m.forward_exploration(dict(b))
        assert out[Columns.ACTION_DIST_INPUTS].shape[:2] == (B, 1)
        calibrated_close(out[Columns.ACTION_DIST_INPUTS][:, 0], seq[Columns.ACTION_DIST_INPUTS][:, t],
                         seq64[Columns.ACTION_DIST_INPUTS][:, t], f"{name} t={t}")
        check_step(m, b, out, bool(t % 2), f"{name} t={t}")
        state = out[Columns.STATE_OUT]
    _zip_close(state, seq[Columns.STATE_OUT], seq64[Columns.STATE_OUT], f"{name} final state")
    # [B, H, W, C] stepping input (no T axis): outputs without T
    with torch.no_grad():
        flat = m.forward_inference({Columns.OBS: x[:, 0], Columns.STATE_IN: state0})
    assert flat[Columns.ACTION_DIST_INPUTS].shape[0] == B and flat[Columns.ACTION_DIST_INPUTS].dim() == 2


def _map(fn, d):
    return {k: _map(fn, v) if isinstance(v, dict) else fn(v) for k, v in d.items()}


def _zip_close(got, f32, f64, what):
    if isinstance(got, dict):
        for k in got:
            _zip_close(got[k], f32[k], f64[k], f"{what}[{k}]")
        return
    calibrated_close(got.reshape(f64.shape), f32, f64, what)


# --------------------------------------------------------------------------------------------
# Weight updates
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["42x42x3-default-separate", "12x10x3-lstm-separate"])
def test_weight_updates_are_seen_by_the_next_call(name):
    m = build(name)
    shape = {**CASES, **RNN_CASES}[name][0]
    rnn = name in RNN_CASES
    x = frames(shape, (4, 1) if rnn else (4,), seed=6)
    batch = {Columns.OBS: x}
    if rnn:
        batch[Columns.STATE_IN] = _map(lambda s: torch.zeros(4, *s.shape), m.get_initial_state())
    with torch.no_grad():
        before = m.forward_inference(dict(batch))[Columns.ACTION_DIST_INPUTS]
    # an optimizer step on the forward_train loss (every conv weight moves)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    loss = m.forward_train(dict(batch))[Columns.ACTION_DIST_INPUTS].square().sum()
    loss.backward()
    assert next(m.encoder.actor_encoder.parameters()).grad is not None
    opt.step()
    with torch.no_grad():
        after = m.forward_inference(dict(batch))
    assert not torch.allclose(after[Columns.ACTION_DIST_INPUTS], before)
    check_step(m, batch, after, True, f"{name} after optimizer step")
    # set_state from another module with other weights
    other = build(name, seed=11)
    m.set_state(other.get_state())
    with torch.no_grad():
        got = m.forward_inference(dict(batch))
        want = other.forward_inference(dict(batch))
    torch.testing.assert_close(got[Columns.ACTION_DIST_INPUTS], want[Columns.ACTION_DIST_INPUTS], rtol=0, atol=0)
    check_step(m, batch, got, True, f"{name} after set_state")


# --------------------------------------------------------------------------------------------
# Action masking over image observations (the image step carries the mask)
# --------------------------------------------------------------------------------------------
def test_masked_image_module_is_fused_and_never_samples_masked_actions():
    space = gym.spaces.Dict({"action_mask": gym.spaces.Box(0.0, 1.0, (6,)),
                             "observations": gym.spaces.Box(-1, 1, (10, 10, 1), np.float32)})
    torch.manual_seed(0)
    m = PPOTorchRLModule(observation_space=space, action_space=DISC6, model_config={}, catalog_class=PPOCatalog)
    assert m.fast_path_info()["active"] is True
    B = 64
    mask = np.zeros((B, 6), np.float32)
    mask[np.arange(B), np.arange(B) % 6] = 1
    mask[:, 5] = 1
    batch = {Columns.OBS: {"action_mask": mask, "observations": frames((10, 10, 1), (B,)).numpy()}}
    with torch.no_grad():
        out = m.forward_exploration(batch)
        ref = m._forward_torch({Columns.OBS: {k: torch.from_numpy(v) for k, v in batch[Columns.OBS].items()}}, True)
    acts = out[Columns.ACTIONS].numpy()
    assert (mask[np.arange(B), acts] == 1).all()
    torch.testing.assert_close(out[Columns.ACTION_DIST_INPUTS], ref[Columns.ACTION_DIST_INPUTS], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Triton (interpreter without a GPU) on a tiny image
# --------------------------------------------------------------------------------------------
TRITON_OK, TRITON_WHY = tri.status()


@pytest.mark.skipif(not TRITON_OK, reason=f"triton backend unavailable: {TRITON_WHY}")
@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("cfg", [{"conv_filters": [[4, 3, 2], [8, 3, 2]]},
                                 {"conv_filters": [[4, 3, 2], [6, 3, 2]], "vf_share_layers": False,
                                  "use_lstm": True, "lstm_cell_size": 8}],
                         ids=["shared", "lstm-separate"])
def test_triton_conv_step_tiny_image(monkeypatch, cfg):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    m = PPOTorchRLModule(observation_space=gym.spaces.Box(-1, 1, (10, 10, 1), np.float32), action_space=DISC6,
                         model_config=dict(cfg), catalog_class=PPOCatalog).to(device)
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    info = m.fast_path_info()
    assert info["active"] is True and info["backend"] == "triton", info
    rnn = cfg.get("use_lstm", False)
    x = frames((10, 10, 1), (3, 1) if rnn else (3,), seed=8).to(device)
    batch = {Columns.OBS: x}
    if rnn:
        batch[Columns.STATE_IN] = _map(lambda s: 0.5 * torch.randn(3, *s.shape).to(device), m.get_initial_state())
    with torch.no_grad():
        for det in (True, False):
            out = (m.forward_inference if det else m.forward_exploration)(dict(batch))
            ref = m._forward_torch(dict(batch), True)
            torch.testing.assert_close(out[Columns.ACTION_DIST_INPUTS], ref[Columns.ACTION_DIST_INPUTS],
                                       rtol=1e-4, atol=2e-5)
            adi = out[Columns.ACTION_DIST_INPUTS].reshape(3, 6)
            dist = m.action_dist_cls.from_logits(adi)
            acts = out[Columns.ACTIONS].reshape(3)
            if det:
                assert torch.equal(acts, adi.argmax(-1))
            torch.testing.assert_close(out[Columns.ACTION_LOGP].reshape(3), dist.logp(acts), rtol=1e-5, atol=1e-5)
            if rnn:
                _zip_close(out[Columns.STATE_OUT], ref[Columns.STATE_OUT], ref[Columns.STATE_OUT], "triton state_out")
        u8 = torch.randint(0, 256, x.shape, dtype=torch.uint8).to(device)
        got = m.forward_inference(dict(batch, obs=u8))
        want = m._forward_torch(dict(batch, obs=u8), True)
        torch.testing.assert_close(got[Columns.ACTION_DIST_INPUTS], want[Columns.ACTION_DIST_INPUTS],
                                   rtol=1e-4, atol=1e-3)


# --------------------------------------------------------------------------------------------
# FastPPOTorchRLModule: RLlib's CNN modules, fused
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["42x42x3-default-separate", "84x84x4-nature-separate", "10x10x1-lstm-shared",
                                  "12x10x3-lstm-separate"])
def test_fast_rllib_module_fuses_rllibs_cnn(name):
    pytest.importorskip("ray.rllib")
    from ray.rllib.algorithms.ppo.ppo_catalog import PPOCatalog as RLlibPPOCatalog
    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule

    from rlmodule_fast.rllib import FastPPOTorchRLModule

    shape, act, cfg = {**CASES, **RNN_CASES}[name]
    space = gym.spaces.Box(-1, 1, shape, np.float32)
    torch.manual_seed(0)
    fast = FastPPOTorchRLModule(observation_space=space, action_space=act, model_config=dict(cfg),
                                catalog_class=RLlibPPOCatalog)
    rl = DefaultPPOTorchRLModule(observation_space=space, action_space=act, model_config=dict(cfg),
                                 catalog_class=RLlibPPOCatalog)
    rl.set_state(fast.get_state())
    info = fast.fast_path_info()
    assert info["active"] is True and info["backend"] == "cpp", info
    rnn = name in RNN_CASES
    B = 2 if shape[0] == 84 else 4
    x = frames(shape, (B, 1) if rnn else (B,), seed=9)
    batch = {Columns.OBS: x}
    if rnn:
        batch[Columns.STATE_IN] = _map(lambda s: 0.5 * torch.randn(B, 1, s.shape[-1]), fast.get_initial_state())
    with torch.no_grad():
        for det in (True, False):
            calls = fast.fast_path_info()["calls"]
            got = (fast.forward_inference if det else fast.forward_exploration)(dict(batch))
            assert fast.fast_path_info()["calls"] == calls + 1, "the fused step did not run"
            want = rl.forward_inference(dict(batch))
            torch.testing.assert_close(got[Columns.ACTION_DIST_INPUTS], want[Columns.ACTION_DIST_INPUTS],
                                       rtol=1e-5, atol=1e-5)
            adi = got[Columns.ACTION_DIST_INPUTS].reshape(B, -1)
            dist = rl.get_inference_action_dist_cls().from_logits(adi)
            acts = got[Columns.ACTIONS].reshape(B, *got[Columns.ACTIONS].shape[(2 if rnn else 1):])
            if det:
                assert torch.equal(acts, dist.to_deterministic().sample())
            torch.testing.assert_close(got[Columns.ACTION_LOGP].reshape(B), dist.logp(acts).float(), rtol=1e-5,
                                       atol=1e-5)
            if rnn:
                _zip_close(got[Columns.STATE_OUT], want[Columns.STATE_OUT], want[Columns.STATE_OUT], f"{name} state_out")
        # uint8 frames: converted in the kernels (RLlib's own forward takes floats only)
        u8 = torch.randint(0, 256, x.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        got = fast.forward_inference(dict(batch, obs=u8))
        want = rl.forward_inference(dict(batch, obs=u8.float()))
        torch.testing.assert_close(got[Columns.ACTION_DIST_INPUTS], want[Columns.ACTION_DIST_INPUTS],
                                   rtol=1e-4, atol=1e-3)
        # weights synced the way RLlib's learner does (set_state) are used by the next step
        other = DefaultPPOTorchRLModule(observation_space=space, action_space=act, model_config=dict(cfg),
                                        catalog_class=RLlibPPOCatalog)
        fast.set_state(other.get_state())
        rl.set_state(other.get_state())
        torch.testing.assert_close(fast.forward_inference(dict(batch))[Columns.ACTION_DIST_INPUTS],
                                   rl.forward_inference(dict(batch))[Columns.ACTION_DIST_INPUTS], rtol=1e-5, atol=1e-5)


def test_kernel_smaller_than_stride_is_refused_by_name_and_runs_torch_layers():
    # RLlib's "same" total is negative when kernel < stride (a crop): the fused stage refuses it,
    # fast_path_info names the layer and the torch layers run (one UserWarning)
    torch.manual_seed(0)
    m = PPOTorchRLModule(observation_space=gym.spaces.Box(-1, 1, (12, 10, 2), np.float32), action_space=DISC6,
                         model_config={"conv_filters": [[4, 3, 2], [5, 1, 2]]}, catalog_class=PPOCatalog)
    with pytest.warns(UserWarning, match=r"conv\[1\]\.pad"):
        info = m.fast_path_info()
    assert info["active"] is False and info["backend"] == "torch" and "conv[1].pad" in info["reason"], info
    x = frames((12, 10, 2), (3,))
    with torch.no_grad():
        out = m.forward_inference({Columns.OBS: x})
    torch.testing.assert_close(out[Columns.ACTION_DIST_INPUTS], torch_step(m, {Columns.OBS: x}, True)[
        Columns.ACTION_DIST_INPUTS], rtol=0, atol=0)
