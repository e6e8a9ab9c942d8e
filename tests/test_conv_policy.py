"""The fused policy step with a CNN stage (``EncoderLayers.conv``) against the float64 reference
(``ops.reference.policy_step``): RLlib's filter stacks with RLlib's "same" padding built straight
from nn.Conv2d, odd image sizes, shared and separate critics, "hwc"/"chw" flatten orders, uint8
observations, weight updates, bad descriptions.

Shape legend: B batch, H, W, C image, A actions.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.fastpath import PolicyPlan
from rlmodule_fast.fastpath.layers import ConvLayer, EncoderLayers, PolicyLayers
from rlmodule_fast.ops import reference as ref
from rlmodule_fast.ops.conv import same_padding

INFO = rf.backend_info()
BACKENDS = [b for b in ("cpp", "triton") if INFO[b]["available"] and "conv2d_nhwc" in INFO[b]["ops"]]

TUNED = [[16, 4, 2], [32, 4, 2], [64, 4, 2], [128, 4, 2]]
NATURE = [[32, 8, 4], [64, 4, 2], [64, 3, 1]]
RLLIB_84 = [[16, 8, 4], [32, 4, 2], [256, 11, 1]]
RLLIB_96 = [[16, 8, 4], [32, 4, 2], [256, 11, 2]]
RLLIB_42 = [[16, 4, 2], [32, 4, 2], [256, 11, 1]]
RLLIB_10 = [[16, 5, 2], [32, 5, 2]]


def conv_stack(image, filters, act="relu", seed=0, scale=1.0):
    """RLlib's TorchCNN layers for `filters` ([[Cout, k, s] | [Cout, k, s, "valid"]]) as ConvLayers."""
    g = torch.Generator().manual_seed(seed)
    H, W, C = image
    layers = []
    for f in filters:
        co, k, s = f[:3]
        same = len(f) < 4 or f[3] == "same"
        conv = torch.nn.Conv2d(C, co, k, s)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * scale / (C * k * k) ** 0.5)
            conv.bias.copy_(torch.randn(co, generator=g) * 0.1)
        if same:
            pad, (H, W) = same_padding(H, W, k, k, s)
        else:
            pad, H, W = (0, 0, 0, 0), (H - k) // s + 1, (W - k) // s + 1
        layers.append(ConvLayer(conv, pad, act))
        C = co
    return layers, H * W * C


def _lin(i, o, g):
    lin = torch.nn.Linear(i, o)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(o, i, generator=g) / i ** 0.5)
        lin.bias.copy_(torch.randn(o, generator=g) * 0.1)
    return lin


def policy(image, filters, *, mlp=(), A=6, shared=True, flatten="hwc", obs_scale=None, dist="categorical", seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    convs, flat = conv_stack(image, filters, seed=seed)
    lins, d = [], flat
    for h in mlp:
        lins.append(_lin(d, h, g))
        d = h
    actor = EncoderLayers(lins, "relu", conv=convs, image_shape=image, conv_flatten=flatten, obs_scale=obs_scale)
    critic = None
    if not shared:
        cconvs, cflat = conv_stack(image, filters, seed=seed + 7)
        critic = EncoderLayers([_lin(cflat, 8, g)], "tanh", conv=cconvs, image_shape=image, conv_flatten=flatten,
                               obs_scale=obs_scale)
    A_out = 2 * A if dist == "diag_gaussian" else A
    pi = [_lin(d, 16, g), _lin(16, A_out, g)]
    vf = [_lin(d if shared else 8, 1, g)]
    return PolicyLayers(actor, critic, pi, vf, "relu", dist, [A], None)


def _obs(B, image, seed=0, u8=False):
    g = torch.Generator().manual_seed(seed)
    if u8:
        return torch.randint(0, 256, (B, int(np.prod(image))), generator=g, dtype=torch.uint8).numpy()
    return torch.rand(B, int(np.prod(image)), generator=g).numpy().astype(np.float32)


def _check(plan, L, obs, tol=2e-4):
    got = plan.step(obs, deterministic=True, compute_value=True)
    want = ref.policy_step(L, obs, deterministic=True, compute_value=True)
    d = torch.as_tensor(np.asarray(got["action_dist_inputs"])).double()
    scale = max(1.0, want["action_dist_inputs"].abs().max().item())
    assert (d - want["action_dist_inputs"]).abs().max().item() <= tol * scale
    v = torch.as_tensor(np.asarray(got["vf_preds"])).double()
    assert (v - want["vf_preds"]).abs().max().item() <= tol * max(1.0, want["vf_preds"].abs().max().item())
    return got, want


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("image,filters", [
    ((84, 84, 4), TUNED), ((84, 84, 4), NATURE), ((84, 84, 4), RLLIB_84), ((42, 42, 3), RLLIB_42),
    ((10, 10, 1), RLLIB_10), ((96, 96, 3), RLLIB_96), ((96, 96, 3), [[16, 8, 4], [32, 4, 2], [64, 3, 2, "valid"]]),
    ((13, 11, 2), [[5, 3, 2], [7, 2, 1, "valid"]]),
], ids=["tuned84", "nature84", "rllib84", "rllib42", "rllib10", "rllib96", "96valid", "odd13x11"])
@pytest.mark.parametrize("B", [1, 3])
def test_conv_policy_matches_reference(backend, image, filters, B):
    if backend == "triton" and image[0] > 13:
        pytest.skip("Triton interpreter: small images only")
    L = policy(image, filters, mlp=(32,) if image[0] < 50 else ())
    plan = PolicyPlan(L, backend=backend)
    got, want = _check(plan, L, _obs(B, image))
    assert torch.equal(torch.as_tensor(np.asarray(got["actions"])), want["actions"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mlp", [(), (24,)], ids=["heads-read-conv", "mlp"])
def test_conv_policy_chw_flatten_and_separate_critic(backend, mlp):
    image = (12, 10, 3)
    for shared in (True, False):
        L = policy(image, [[8, 3, 2], [6, 3, 1]], mlp=mlp, shared=shared, flatten="chw", dist="diag_gaussian")
        plan = PolicyPlan(L, backend=backend)
        _check(plan, L, _obs(5, image, seed=2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_policy_uint8_scaled_obs_and_images(backend):
    image = (12, 12, 4)
    L = policy(image, [[16, 4, 2], [32, 3, 2]], obs_scale=1 / 255.0, shared=False)
    plan = PolicyPlan(L, backend=backend)
    obs = _obs(4, image, u8=True)
    _check(plan, L, obs)
    # [B, H, W, C] images (numpy and torch) give the same as their flattened rows
    a = plan.step(obs, deterministic=True)["action_dist_inputs"]
    b = plan.step(torch.from_numpy(obs.reshape(4, *image)), deterministic=True)["action_dist_inputs"]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # float observations read obs * obs_scale too
    _check(plan, L, obs.astype(np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_policy_sees_conv_weight_updates_and_nan(backend):
    image = (10, 10, 1)
    L = policy(image, RLLIB_10)
    plan = PolicyPlan(L, backend=backend)
    obs = _obs(2, image)
    _check(plan, L, obs)
    with torch.no_grad():
        L.actor.conv[0].conv.weight.mul_(-1.5)
        L.actor.conv[1].conv.bias.add_(0.5)
    _check(plan, L, obs)
    obs[1, 7] = np.nan
    msg = r"obs: contains NaN or inf \(row 1\)" if backend == "cpp" else r"action_dist_inputs: the policy produced NaN"
    with pytest.raises(ValueError, match=msg):
        plan.step(obs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_policy_sampling_and_threads(backend):
    image = (10, 10, 1)
    L = policy(image, RLLIB_10)
    plan = PolicyPlan(L, backend=backend)
    obs = _obs(7, image)
    rf.manual_seed(3)
    r1 = plan.step(obs)
    want = ref.action_logp("categorical", [6], r1["action_dist_inputs"], r1["actions"])
    np.testing.assert_allclose(np.asarray(r1["action_logp"]), want.numpy(), rtol=1e-5, atol=1e-5)
    if backend == "cpp":  # results never depend on the thread count
        old = torch.get_num_threads()
        try:
            for t in (1, 2):
                torch.set_num_threads(t)
                rf.manual_seed(3)
                r = plan.step(obs)
                np.testing.assert_array_equal(np.asarray(r["actions"]), np.asarray(r1["actions"]))
                np.testing.assert_array_equal(np.asarray(r["action_dist_inputs"]), np.asarray(r1["action_dist_inputs"]))
                big = _obs(3, image)
                got = plan.step(big[:1], deterministic=True)["action_dist_inputs"]  # B=1: rows split
                np.testing.assert_allclose(np.asarray(got), np.asarray(plan.step(big, deterministic=True)
                                                                       ["action_dist_inputs"])[:1], rtol=0, atol=0)
        finally:
            torch.set_num_threads(old)


@pytest.mark.parametrize("mut,match", [
    (lambda L: setattr(L.actor, "image_shape", (10, 10, 2)), r"actor.conv\[0\].conv: expected in_channels 2"),
    (lambda L: setattr(L.actor, "image_shape", None), r"actor.image_shape: expected \(H, W, C\)"),
    (lambda L: setattr(L.actor, "image_shape", (1, 1, 1)), r"actor.conv\[0\]: padded image 4x4"),
    (lambda L: setattr(L.actor, "conv_flatten", "nchw"), r"actor.conv_flatten: expected 'hwc' or 'chw'"),
    (lambda L: setattr(L.actor.conv[1], "conv", torch.nn.Conv2d(16, 32, 5, 2, dilation=2)), r"dilation"),
    (lambda L: setattr(L.actor.conv[1], "pad", (1, 1, -1, 1)), r"actor.conv\[1\].pad: expected an integer"),
    (lambda L: setattr(L.actor, "obs_scale", float("inf")), r"actor.obs_scale: expected None or a finite number"),
    (lambda L: setattr(L.pi[0], "in_features", 5) or setattr(L.pi[0], "weight", torch.nn.Parameter(torch.zeros(16, 5))),
     r"pi\[0\]: expected in_features 288"),
])
def test_conv_policy_bad_descriptions(mut, match):
    from rlmodule_fast.fastpath.layers import validate

    L = policy((10, 10, 1), RLLIB_10)
    mut(L)
    with pytest.raises(ValueError, match=match):
        validate(L)


def test_conv_params_are_watched():
    from rlmodule_fast.fastpath.layers import _params

    L = policy((10, 10, 1), RLLIB_10, shared=False)
    ids = {id(p) for p in _params(L)}
    for enc in (L.actor, L.critic):
        for cl in enc.conv:
            assert id(cl.conv.weight) in ids and id(cl.conv.bias) in ids


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_conv_then_rnn_tokenizer(backend, kind):
    """RLlib's CNN tokenizer for use_lstm on images: conv stage -> (no mlp) -> LSTM/GRU step."""
    image = (10, 10, 1)
    convs, flat = conv_stack(image, RLLIB_10, seed=4)
    torch.manual_seed(5)
    rnn = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(flat, 12, batch_first=True).requires_grad_(False)
    g = torch.Generator().manual_seed(6)
    for flatten in ("hwc", "chw"):
        actor = EncoderLayers([], "relu", rnn=rnn, conv=convs, image_shape=image, conv_flatten=flatten)
        L = PolicyLayers(actor, None, [_lin(12, 4, g)], [_lin(12, 1, g)], "relu", "categorical", [4], None)
        plan = PolicyPlan(L, backend=backend)
        obs = _obs(3, image, seed=9)
        h = torch.randn(3, 12, generator=g)
        st = {"h": h} if kind == "gru" else {"h": h, "c": torch.randn(3, 12, generator=g)}
        got = plan.step(obs, st, deterministic=True, compute_value=True)
        want = ref.policy_step(L, obs, st, deterministic=True, compute_value=True)
        for key in ("action_dist_inputs", "vf_preds"):
            np.testing.assert_allclose(np.asarray(got[key]), want[key].numpy(), rtol=2e-4, atol=2e-4)
        np.testing.assert_allclose(np.asarray(got["state_out"]["h"]), want["state_out"]["h"].numpy(), rtol=2e-4,
                                   atol=2e-4)


@pytest.mark.skipif("cpp" not in BACKENDS, reason="C++ backend unavailable")
@pytest.mark.parametrize("filters,obs_scale", [
    ([[5, 3, 2], [7, 2, 1, "valid"]], None),      # "same" first layer: tested while padding the image
    ([[5, 3, 2, "valid"], [7, 2, 1]], None),      # no padding, no scale: tested in place
    ([[5, 3, 2, "valid"], [7, 2, 1]], 0.5),       # scaled while loading
], ids=["padded", "in-place", "scaled"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("B", [1, 9])
def test_conv_policy_refuses_nonfinite_obs_before_drawing(filters, obs_scale, threads, B):
    """The conv stage tests float observations as it loads them (in parallel): the lowest bad row
    is named whichever thread meets it, and no draw is reserved for a refused call."""
    image = (13, 11, 2)  # rows of 22 floats: a full vector and a scalar tail at every ISA
    plan = PolicyPlan(policy(image, filters, obs_scale=obs_scale), backend="cpp")
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        rf.manual_seed(5)
        for rows, col, val in [((0,), 21, np.inf), ((B - 1,), 3, np.nan), ((B - 1, B // 2), 200, -np.inf)]:
            obs = _obs(B, image)
            for r in rows:
                obs[r, col] = val
            before = rf.get_rng_state()
            with pytest.raises(ValueError, match=rf"obs: contains NaN or inf \(row {min(rows)}\)"):
                plan.step(obs)
            assert rf.get_rng_state() == before, "a refused step reserved draws"
        before = rf.get_rng_state()["counter"]
        plan.step(_obs(B, image))  # a finite batch draws one counter per row
        assert rf.get_rng_state()["counter"] == before + B
    finally:
        torch.set_num_threads(old)


@pytest.mark.skipif("cpp" not in BACKENDS, reason="C++ backend unavailable")
@pytest.mark.parametrize("B", [2, 5, 13, 50])
def test_conv_policy_heads_split_over_threads_bitwise(B):
    """After the conv stage the heads run in row blocks spread over the pool (even a batch of one
    row block): Gaussian draws (A per row), separate critic CNN and value head give the same bits
    at 1 and 2 threads."""
    image = (13, 11, 2)
    L = policy(image, [[5, 3, 2], [7, 2, 1, "valid"]], mlp=(9,), shared=False, dist="diag_gaussian", A=3)
    plan = PolicyPlan(L, backend="cpp")
    obs = _obs(B, image, seed=B)
    old = torch.get_num_threads()
    out = {}
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            rf.manual_seed(11)
            r = plan.step(obs, compute_value=True)
            out[t] = {k: np.asarray(r[k]).copy() for k in ("action_dist_inputs", "actions", "action_logp", "vf_preds")}
    finally:
        torch.set_num_threads(old)
    for k in out[1]:
        np.testing.assert_array_equal(out[2][k], out[1][k], err_msg=k)
    _check(plan, L, obs)


@pytest.mark.skipif("cpp" not in BACKENDS, reason="C++ backend unavailable")
def test_cpp_plan_reads_float32_image_batches_in_place():
    """[B, H, W, C] float32 frames (numpy or tensor) reach the kernel as a reshaped view, never a
    copy (a copy of 32 Atari frames is a serial 3.6 MB pass); other dtypes are converted."""
    image = (10, 10, 1)
    plan = PolicyPlan(policy(image, RLLIB_10), backend="cpp")
    x = _obs(3, image).reshape(3, *image)
    for obs in (x, torch.from_numpy(x)):
        arg = plan.impl._obs(obs)[0]
        assert arg.shape == (3, 100) and arg.dtype == np.float32
        assert np.shares_memory(arg, x), type(obs)
    arg = plan.impl._obs(x.astype(np.float64))[0]
    assert arg.dtype == np.float32 and not np.shares_memory(arg, x)
    np.testing.assert_array_equal(np.asarray(plan.step_flat(x, True)[0]),
                                  np.asarray(plan.step_flat(x.reshape(3, 100), True)[0]))
