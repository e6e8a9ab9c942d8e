"""``fastpath.CudaGraphStep``: the Triton policy step captured in a CUDA graph for one batch size.

Every behavioural test runs twice: on "cuda" (``cuda``-marked: a real ``torch.cuda.CUDAGraph``,
skipped without a GPU) and on "cpu" with ``EmulatedGraph`` under Triton's interpreter (the body is
re-run at each replay; host syncs, host->device tensor creation and CPU RNG reads inside it
raise). The argument checks and the no-CUDA error need neither.
"""
import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.fastpath import CudaGraphStep, plan_for
from rlmodule_fast.fastpath import cuda_graph as cg
from rlmodule_fast.ops import dispatch
from rlmodule_fast.ops import triton as tri
from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

ok, why = tri.status()
needs_triton = pytest.mark.skipif(not ok, reason=f"triton backend unavailable: {why}")
pytestmark = [
    pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
]

DEVICES = [
    pytest.param("cpu", id="cpu-emulated", marks=[needs_triton, pytest.mark.skipif(
        not tri.interpreted(), reason="CPU tensors need Triton's interpreter (TRITON_INTERPRET=1)")]),
    pytest.param("cuda", id="cuda", marks=[needs_triton, pytest.mark.cuda, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device")]),
]

BOX = gym.spaces.Box(-1, 1, (5,), np.float32)
CASES = {
    "discrete": (gym.spaces.Discrete(3), {"fcnet_hiddens": [17, 9]}),
    "gauss-separate": (gym.spaces.Box(-1, 1, (2,), np.float32),
                       {"fcnet_hiddens": [16], "vf_share_layers": False, "fcnet_activation": "relu",
                        "head_fcnet_hiddens": [7]}),
    "multidiscrete": (gym.spaces.MultiDiscrete([2, 3]), {"fcnet_hiddens": [12, 12], "fcnet_activation": "silu"}),
    "lstm": (gym.spaces.Discrete(2), {"fcnet_hiddens": [8], "use_lstm": True, "lstm_cell_size": 6}),
}


def _module(case, device, obs_space=BOX):
    act, cfg = CASES[case]
    torch.manual_seed(0)
    m = rf.RLModuleSpec(module_class=PPOTorchRLModule, observation_space=obs_space, action_space=act,
                        model_config=cfg, catalog_class=PPOCatalog).build()
    return m.to(device)


def _batch(m, B, device, seed=1, time_axis=False):
    g = torch.Generator().manual_seed(seed)
    batch = {"obs": torch.randn(B, *((1,) if time_axis else ()), 5, generator=g).to(device)}
    if m.is_stateful():
        batch["state_in"] = {k: torch.randn(B, 1, v.shape[-1], generator=g).to(device)
                             for k, v in m.get_initial_state().items()}
    return batch


@pytest.fixture
def env(monkeypatch):
    """triton for every fused step (CPU tensors: the interpreter), fresh graph-mode state."""
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    tri._rng_states.clear()
    tri._error_flags.clear()
    yield
    tri._rng_states.clear()
    tri._error_flags.clear()


def _step(m, B, device, **kw):
    if device == "cpu":
        kw["_graph"] = cg.EmulatedGraph
    return CudaGraphStep(m, B, **kw)


def _eager(m, batch, deterministic, compute_value=False):
    """The module's fused triton plan, stepped eagerly on the graph-safe path (check=False)."""
    obs = batch["obs"]
    x = obs.reshape(obs.shape[0], -1)
    st = None
    if m.is_stateful():
        st = {k: v.reshape(v.shape[0], -1) for k, v in batch["state_in"].items()}
    return plan_for(m, x).step(x, st, deterministic=deterministic, compute_value=compute_value, check=False)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- no CUDA, bad arguments

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a CUDA device")
def test_without_cuda_a_clear_error():
    m = _module("discrete", "cpu")
    with pytest.raises(RuntimeError, match="cuda_graph=True needs a CUDA device"):
        CudaGraphStep(m, 4)


@pytest.mark.parametrize("kw, match", [
    ({"batch_size": 0}, "batch_size"), ({"batch_size": -3}, "batch_size"), ({"batch_size": 2.0}, "batch_size"),
    ({"batch_size": True}, "batch_size"), ({"explore": "yes"}, "explore"), ({"compute_value": 1}, "compute_value"),
    ({"return_static": None}, "return_static"), ({"recapture": "no"}, "recapture"),
    ({"errors": "loud"}, "errors"), ({"warmup": 0}, "warmup"),
], ids=lambda v: str(v) if not isinstance(v, dict) else "-".join(f"{k}={v[k]!r}" for k in v))
def test_bad_arguments_name_themselves(kw, match):
    m = _module("discrete", "cpu")
    args = {"batch_size": 4, **kw}
    with pytest.raises(ValueError, match=match):
        CudaGraphStep(m, **args)


@pytest.mark.parametrize("what", ["no-policy-layers", "discrete-obs"])
def test_modules_it_cannot_capture(what):
    if what == "no-policy-layers":
        m, match = torch.nn.Linear(3, 2), "module: expected a module with policy_layers"
    else:
        m, match = _module("discrete", "cpu", obs_space=gym.spaces.Discrete(4)), "observation_space"
    with pytest.raises(ValueError, match=match):
        CudaGraphStep(m, 4)


def test_cpu_module_refused_even_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="module: its parameters are on cpu"):
        CudaGraphStep(_module("discrete", "cpu"), 4)


@needs_triton
@pytest.mark.skipif(not tri.interpreted(), reason="the emulation runs on CPU tensors under the interpreter")
def test_the_emulation_catches_a_host_sync():
    """The test double refuses what a real capture refuses (so the tests below can fail)."""
    g = cg.EmulatedGraph(torch.device("cpu"))
    t = torch.ones(2)
    for body in (lambda: t.sum().item(), lambda: int(t[0]), lambda: torch.tensor([1.0]),
                 lambda: torch.rand(1)):
        with pytest.raises(AssertionError, match="EmulatedGraph"):
            g.capture(body)


# ----------------------------------------------------------------------------- replays vs the eager step

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CASES))
def test_inference_replays_equal_the_eager_step(case, device, env, monkeypatch):
    m = _module(case, device)
    B = 5
    s = _step(m, B, device, explore=False, compute_value=True)
    for seed in (1, 2, 3):  # new inputs each call: copied into the static buffers
        batch = _batch(m, B, device, seed)
        out = s(batch)
        ref = _eager(m, batch, deterministic=True, compute_value=True)
        keys = {"action_dist_inputs", "actions", "action_logp", "vf_preds"} | ({"state_out"} if m.is_stateful() else set())
        assert set(out) == keys
        for k in ("action_dist_inputs", "actions", "action_logp", "vf_preds"):
            assert out[k].dtype == ref[k].dtype and torch.equal(out[k], ref[k]), k
        if m.is_stateful():
            for k, v in ref["state_out"].items():
                assert out["state_out"][k].shape == (B, 1, v.shape[-1])
                assert torch.equal(out["state_out"][k][:, 0], v)
        # and the torch layers agree (float32 tolerance)
        monkeypatch.setenv(dispatch.ENV_VAR, "torch")
        with torch.no_grad():
            tref = m.forward_inference(batch)
        monkeypatch.setenv(dispatch.ENV_VAR, "triton")
        torch.testing.assert_close(out["action_dist_inputs"], tref["action_dist_inputs"], atol=2e-5, rtol=1e-4)
    assert s.captures == 1 and s.calls == 3


@pytest.mark.parametrize("device", DEVICES)
def test_recurrent_time_axis_layout(device, env):
    m = _module("lstm", device)
    s = _step(m, 3, device, explore=False)
    b = _batch(m, 3, device, time_axis=True)
    out = s(b)
    assert out["actions"].shape == (3, 1) and out["action_dist_inputs"].shape == (3, 1, 2)
    ref = _eager(m, {"obs": b["obs"][:, 0], "state_in": b["state_in"]}, deterministic=True)
    assert torch.equal(out["actions"][:, 0], ref["actions"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["discrete", "gauss-separate", "multidiscrete", "lstm"])
def test_explore_draws_fresh_numbers_equal_to_the_eager_graph_safe_stream(case, device, env):
    m = _module(case, device)
    B = 16
    batch = _batch(m, B, device)
    rf.manual_seed(5)
    eager = [_eager(m, batch, deterministic=False) for _ in range(3)]
    rf.manual_seed(5)
    s = _step(m, B, device)
    outs = [s(batch) for _ in range(3)]
    for e, o in zip(eager, outs):  # warm-up and capture left the Philox counter where it was
        assert torch.equal(e["actions"], o["actions"])
        torch.testing.assert_close(e["action_logp"], o["action_logp"], atol=0, rtol=0)
    assert not torch.equal(outs[0]["actions"], outs[1]["actions"])
    assert not torch.equal(outs[1]["actions"], outs[2]["actions"])
    # a reseed redraws the device's key: the step re-captures and follows it
    rf.manual_seed(5)
    again = s(batch)
    assert s.captures == 2 and torch.equal(again["actions"], outs[0]["actions"])


@pytest.mark.parametrize("device", DEVICES)
def test_explore_categorical_frequencies_are_right(device, env):
    from scipy import stats

    m = _module("discrete", device)
    B, n = 256, 8
    obs = torch.randn(1, 5, generator=torch.Generator().manual_seed(3)).to(device).expand(B, 5).contiguous()
    s = _step(m, B, device)
    acts, logits = [], None
    for _ in range(n):
        out = s({"obs": obs})
        acts.append(out["actions"].cpu())
        logits = out["action_dist_inputs"][0].cpu()
        lp = torch.log_softmax(out["action_dist_inputs"], -1).gather(-1, out["actions"][:, None])[:, 0]
        torch.testing.assert_close(out["action_logp"], lp, atol=1e-5, rtol=1e-5)
    counts = torch.bincount(torch.cat(acts), minlength=3).double().numpy()
    p = torch.softmax(logits.double(), -1).numpy()
    assert stats.chisquare(counts, p * counts.sum()).pvalue > 1e-3


@pytest.mark.parametrize("device", DEVICES)
def test_explore_gaussian_draws_are_standard_normal(device, env):
    m = _module("gauss-separate", device)
    B, n = 256, 6
    s = _step(m, B, device)
    zs = []
    for i in range(n):
        b = _batch(m, B, device, seed=i)
        out = s(b)
        mean, log_std = out["action_dist_inputs"].chunk(2, -1)
        z = (out["actions"] - mean) / log_std.exp()
        zs.append(z.cpu().flatten())
        ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(out["actions"]).sum(-1)
        torch.testing.assert_close(out["action_logp"], ref, atol=1e-4, rtol=1e-4)
    z = torch.cat(zs).double()
    se = 1 / z.numel() ** 0.5
    assert abs(float(z.mean())) < 5 * se and abs(float(z.var()) - 1) < 5 * 2 ** 0.5 * se


# ----------------------------------------------------------------------------- buffers, inputs

@pytest.mark.parametrize("device", DEVICES)
def test_outputs_are_fresh_unless_return_static(device, env):
    m = _module("discrete", device)
    s = _step(m, 4, device, explore=False)
    o1 = s(_batch(m, 4, device, 1))
    saved = {k: v.clone() for k, v in o1.items()}
    o2 = s(_batch(m, 4, device, 2))
    for k in saved:
        assert torch.equal(o1[k], saved[k]), f"{k}: a later call overwrote a returned tensor"
    assert not torch.equal(o1["action_dist_inputs"], o2["action_dist_inputs"])
    st = _step(m, 4, device, explore=False, return_static=True)
    a = st(_batch(m, 4, device, 1))
    b = st(_batch(m, 4, device, 2))
    assert a["action_dist_inputs"].data_ptr() == b["action_dist_inputs"].data_ptr()
    assert torch.equal(a["action_dist_inputs"], o2["action_dist_inputs"])  # overwritten, as documented
    # the static input buffer passed back is not copied (and gives the same result)
    st.static_inputs["obs"].copy_(_batch(m, 4, device, 1)["obs"])
    c = st(st.static_inputs["obs"])
    assert torch.equal(c["action_dist_inputs"], saved["action_dist_inputs"])


@pytest.mark.parametrize("device", DEVICES)
def test_bad_batches_name_the_key(device, env):
    m = _module("discrete", device)
    s = _step(m, 4, device)
    x = torch.zeros(4, 5, device=device)
    bad = [
        ({"obs": torch.zeros(3, 5, device=device)}, r"obs: expected shape \[4, 5\].*batch size 3.*batch_size=4"),
        ({"obs": torch.zeros(4, 6, device=device)}, r"obs: expected shape \[4, 5\], got \[4, 6\]"),
        ({"obs": x.double()}, "obs: expected dtype torch.float32"),
        ({"obs": np.zeros((4, 5), np.float32)}, "obs: expected a torch tensor"),
        ({"state": x}, "batch: missing key 'obs'"),
        ({"obs": x, "state_in": {"h": x}}, "not recurrent"),
    ]
    if device == "cuda":
        bad.append(({"obs": torch.zeros(4, 5)}, "obs: on cpu, expected cuda"))
    for batch, match in bad:
        with pytest.raises(ValueError, match=match):
            s(batch)
    r = _module("lstm", device)
    sr = _step(r, 4, device)
    good = _batch(r, 4, device)
    with pytest.raises(ValueError, match="missing key 'state_in'"):
        sr({"obs": good["obs"]})
    with pytest.raises(ValueError, match=r"state_in\['c'\]: missing"):
        sr({"obs": good["obs"], "state_in": {"h": good["state_in"]["h"]}})
    with pytest.raises(ValueError, match=r"state_in\['h'\]: expected shape"):
        sr({"obs": good["obs"], "state_in": {**good["state_in"], "h": torch.zeros(4, 2, 6, device=device)}})
    assert s.calls == 0 and sr.calls == 0


# ----------------------------------------------------------------------------- weights, errors

@pytest.mark.parametrize("device", DEVICES)
def test_weight_changes_recapture_or_refuse(device, env):
    m = _module("gauss-separate", device)
    batch = _batch(m, 4, device)
    s = _step(m, 4, device, explore=False, compute_value=True)
    o0 = s(batch)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    loss = m.forward_train(batch)["action_dist_inputs"].pow(2).sum() + m.forward_train(batch)["vf_preds"].sum()
    loss.backward()
    opt.step()  # in place: the parameters' versions move
    o1 = s(batch)
    assert s.captures == 2
    assert not torch.equal(o0["action_dist_inputs"], o1["action_dist_inputs"])
    assert torch.equal(o1["action_dist_inputs"], _eager(m, batch, True, True)["action_dist_inputs"])
    other = _module("gauss-separate", device)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.25)
    m.set_state(other.get_state())
    o2 = s(batch)
    assert s.captures == 3 and torch.equal(o2["vf_preds"], _eager(other, batch, True, True)["vf_preds"])
    strict = _step(m, 4, device, explore=False, recapture=False)
    strict(batch)
    with torch.no_grad():
        next(m.parameters()).mul_(0.5)
    with pytest.raises(RuntimeError, match="a parameter changed.*recapture=False"):
        strict(batch)
    strict.recapture()
    assert torch.equal(strict(batch)["actions"], _eager(m, batch, True)["actions"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("errors", ["lazy", "sync", "manual"])
def test_nan_observations_surface_through_the_device_flag(errors, device, env):
    m = _module("discrete", device)
    s = _step(m, 4, device, errors=errors)
    good = _batch(m, 4, device)
    bad = {"obs": good["obs"].clone()}
    bad["obs"][2, 1] = float("nan")
    s(good)
    if errors == "sync":
        with pytest.raises(ValueError, match="call #2 saw NaN or inf in action_dist_inputs"):
            s(bad)
    else:
        s(bad)  # no sync: the call returns
        _sync(device)
        if errors == "lazy":
            with pytest.raises(ValueError, match="a replay before call #3 saw NaN or inf"):
                s(good)
        else:
            s(good)
            with pytest.raises(ValueError, match="NaN or inf in action_dist_inputs"):
                s.raise_if_error()
    # reset: clean calls go on
    s(good)
    _sync(device)
    s(good)
    s.raise_if_error()
    assert tri.last_error(device) == 0
