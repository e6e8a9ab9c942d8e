"""Action masking (RLlib's Dict {"action_mask", "observations"} pattern): the masked sampler op on
every backend, the fused policy step (cpp, triton under the interpreter) against the float64
reference, the PPO module against RLlib's own ActionMaskingTorchRLModule with the same weights."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from scipy import stats

import rlmodule_fast as rf
from rlmodule_fast.fastpath import PolicyPlan
from rlmodule_fast.ops import dispatch
from rlmodule_fast.ops import reference as ref

from test_fastpath import make_layers

INFO = rf.backend_info()
BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(not INFO[b]["available"], reason=INFO[b]["reason"]))
            for b in ("torch", "cpp", "triton")]
PLAN_BACKENDS = BACKENDS[1:]
F32_MIN = float(np.float32(ref.FLOAT_MIN))


def _mask(B, A, seed=0, p=0.5):
    g = np.random.default_rng(seed)
    m = (g.random((B, A)) < p).astype(np.float32)
    m[np.arange(B), g.integers(0, A, B)] = 1.0  # at least one allowed action per row
    return m


# ----------------------------------------------------------------------------- the sampler op

@pytest.mark.parametrize("B,A", [(1, 2), (17, 7), (33, 40)], ids=lambda v: str(v))
@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_sample_categorical_matches_reference(backend, B, A):
    torch.manual_seed(0)
    logits = torch.randn(B, A) * 3
    mask = _mask(B, A, seed=B)
    want_all = torch.log_softmax(ref.mask_logits(logits.double(), torch.from_numpy(mask)), -1)
    for det in (True, False):
        a, lp = rf.ops.sample_categorical(logits, det, mask=torch.from_numpy(mask), backend=backend)
        assert bool((torch.from_numpy(mask).gather(1, a[:, None]) == 1).all()), "a masked action was drawn"
        torch.testing.assert_close(lp.double(), want_all.gather(1, a[:, None])[:, 0], atol=2e-5, rtol=1e-5)
        if det:
            assert torch.equal(a, want_all.argmax(-1))
    # numpy in, numpy out; bool masks accepted
    a_np, lp_np = rf.ops.sample_categorical(logits.numpy(), True, mask=mask.astype(bool), backend=backend)
    assert isinstance(a_np, np.ndarray) and np.array_equal(a_np, want_all.argmax(-1).numpy())


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_sampling_chi_square(backend):
    """Draws follow softmax over the allowed actions only (one row repeated)."""
    rf.manual_seed(3)
    n = 4000
    logits = torch.tensor([0.3, -1.0, 2.0, 0.5, 0.0, -0.4, 1.1])
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    a, _ = rf.ops.sample_categorical(logits.expand(n, -1).contiguous(), mask=mask.expand(n, -1).contiguous(),
                                     backend=backend)
    counts = np.bincount(a.numpy(), minlength=7)
    assert counts[2] == 0 and counts[4] == 0
    p = torch.softmax(ref.mask_logits(logits.double(), mask), -1).numpy()
    keep = mask.numpy() == 1
    _, pval = stats.chisquare(counts[keep], p[keep] / p[keep].sum() * n)
    assert pval > 1e-4, (counts, p)


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_sampler_errors_name_the_row(backend):
    logits = torch.randn(5, 4)
    mask = torch.ones(5, 4)
    mask[3] = 0
    with pytest.raises(ValueError, match=r"action_mask: every action is masked \(row 3\)"):
        rf.ops.sample_categorical(logits, mask=mask, backend=backend)
    mask = torch.ones(5, 4)
    mask[2, 1] = 0.5
    with pytest.raises(ValueError, match=r"action_mask: expected values 0 or 1.*row 2"):
        rf.ops.sample_categorical(logits, mask=mask, backend=backend)
    mask = torch.ones(5, 4)
    mask[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"action_mask.*row 1"):
        rf.ops.sample_categorical(logits, mask=mask, backend=backend)
    bad = logits.clone()
    bad[4, 0] = float("nan")  # NaN under a masked entry is still an error, never hidden
    mask = torch.ones(5, 4)
    mask[4, 0] = 0
    with pytest.raises(ValueError, match="NaN"):
        rf.ops.sample_categorical(bad, mask=mask, backend=backend)
    with pytest.raises(ValueError, match="action_mask"):
        rf.ops.sample_categorical(logits, mask=torch.ones(5, 3), backend=backend)


# ----------------------------------------------------------------------------- the fused step

@pytest.mark.parametrize("dist,sizes", [("categorical", (7,)), ("multi_categorical", (3, 5))],
                         ids=["cat7", "multi3x5"])
@pytest.mark.parametrize("B", [1, 19])
@pytest.mark.parametrize("backend", PLAN_BACKENDS)
def test_masked_policy_step_matches_reference(backend, B, dist, sizes):
    L = make_layers(obs=6, hid=(13,), dist=dist, sizes=sizes, shared=False, seed=B)
    plan = PolicyPlan(L, backend=backend)
    obs = torch.randn(B, 6, generator=torch.Generator().manual_seed(1))
    D = sum(sizes)
    mask = np.ones((B, D), np.float32)
    lo = 0
    for j, n in enumerate(sizes):  # per segment: some masked, one always allowed
        mask[:, lo:lo + n] = _mask(B, n, seed=10 * j + B)
        lo += n
    want = ref.policy_step(L, obs, deterministic=True, compute_value=True, mask=mask)
    for det in (True, False):
        got = plan.step(obs, deterministic=det, compute_value=True, mask=mask)
        d = torch.as_tensor(got["action_dist_inputs"]).double()
        masked = torch.from_numpy(mask) == 0
        assert bool((d[masked] == F32_MIN).all()), "masked logits must be RLlib's FLOAT_MIN"
        torch.testing.assert_close(d[~masked], want["action_dist_inputs"][~masked], atol=3e-5, rtol=3e-5)
        acts = torch.as_tensor(got["actions"]).reshape(B, -1)
        offs = torch.tensor([0, *np.cumsum(sizes)[:-1]])
        assert bool((torch.from_numpy(mask).gather(1, acts + offs) == 1).all()), "a masked action was sampled"
        lp_ref = ref.action_logp(dist, list(sizes), want["action_dist_inputs"], acts if dist != "categorical" else acts[:, 0])
        torch.testing.assert_close(torch.as_tensor(got["action_logp"]).double(), lp_ref, atol=3e-5, rtol=3e-5)
        torch.testing.assert_close(torch.as_tensor(got["vf_preds"]).double(), want["vf_preds"], atol=3e-5, rtol=3e-5)
        if det:
            assert torch.equal(acts.reshape(torch.as_tensor(want["actions"]).shape), want["actions"])


@pytest.mark.parametrize("backend", PLAN_BACKENDS)
def test_masked_policy_step_errors(backend):
    L = make_layers(obs=5, hid=(9,), dist="multi_categorical", sizes=(2, 3))
    plan = PolicyPlan(L, backend=backend)
    obs = torch.randn(4, 5)
    mask = np.ones((4, 5), np.float32)
    mask[2, 2:] = 0  # the second segment of row 2 has nothing allowed
    with pytest.raises(ValueError, match=r"every action is masked \(row 2\)"):
        plan.step(obs, mask=mask)
    mask = np.ones((4, 5), np.float32)
    mask[1, 0] = 2.0
    with pytest.raises(ValueError, match=r"expected values 0 or 1.*row 1"):
        plan.step(obs, mask=mask)
    with pytest.raises(ValueError, match="action_mask: expected shape"):
        plan.step(obs, mask=np.ones((4, 4), np.float32))
    G = make_layers(obs=5, hid=(9,), dist="diag_gaussian", sizes=(2,))
    with pytest.raises(ValueError, match="action_mask: masking needs categorical"):
        PolicyPlan(G, backend=backend).step(obs, mask=np.ones((4, 4), np.float32))


# ----------------------------------------------------------------------------- the module

OBS = gym.spaces.Dict({"action_mask": gym.spaces.Box(0.0, 1.0, (6,)), "observations": gym.spaces.Box(-1, 1, (5,))})
CFG = {"fcnet_hiddens": [16, 16], "vf_share_layers": False}


def _masked_module(**kw):
    torch.manual_seed(0)
    return rf.RLModuleSpec(module_class=rf.ppo.PPOTorchRLModule, observation_space=OBS,
                           action_space=gym.spaces.Discrete(6), model_config_dict={**CFG, **kw}).build()


def _obs_batch(B, seed=0):
    g = np.random.default_rng(seed)
    return {"obs": {"action_mask": _mask(B, 6, seed=seed), "observations": g.standard_normal((B, 5)).astype(np.float32)}}


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_module_never_takes_masked_actions(backend, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, backend)
    m = _masked_module()
    info = m.fast_path_info()
    assert info["backend"] == backend and info["active"] == (backend != "torch")
    batch = _obs_batch(23, seed=4)
    mask = torch.from_numpy(batch["obs"]["action_mask"])
    with torch.no_grad():
        want = m.forward_train({"obs": {k: torch.from_numpy(v) for k, v in batch["obs"].items()}})
    for fwd in (m.forward_exploration, m.forward_inference):
        out = fwd(batch)
        assert set(out) >= {"action_dist_inputs", "actions", "action_logp"}
        adi = torch.as_tensor(out["action_dist_inputs"])
        assert bool((adi[mask == 0] == F32_MIN).all())
        torch.testing.assert_close(adi, want["action_dist_inputs"].detach(), atol=3e-5, rtol=3e-5)
        a = torch.as_tensor(out["actions"])
        assert bool((mask.gather(1, a[:, None]) == 1).all())
        torch.testing.assert_close(torch.as_tensor(out["action_logp"]).double(),
                                   torch.log_softmax(adi.double(), -1).gather(1, a[:, None])[:, 0],
                                   atol=3e-5, rtol=3e-5)
    assert batch["obs"].keys() == {"action_mask", "observations"}  # the caller's batch is untouched
    bad = _obs_batch(3)
    bad["obs"]["action_mask"][1] = 0
    with pytest.raises(ValueError, match=r"every action is masked \(row 1\)"):
        m.forward_exploration(bad)


def test_masked_module_spec_errors():
    m = _masked_module()
    with pytest.raises(ValueError, match="action_mask"):
        m.forward_exploration({"obs": {"observations": np.zeros((2, 5), np.float32)}})
    with pytest.raises(ValueError, match="observations"):
        m.forward_train({"obs": {"action_mask": np.ones((2, 6), np.float32)}})
    with pytest.raises(ValueError, match=r"expected shape \[4\].*got \[6\]"):
        rf.RLModuleSpec(module_class=rf.ppo.PPOTorchRLModule, observation_space=OBS,
                        action_space=gym.spaces.Discrete(4)).build()
    with pytest.raises(ValueError, match="masking needs Discrete or MultiDiscrete"):
        rf.RLModuleSpec(module_class=rf.ppo.PPOTorchRLModule, observation_space=OBS,
                        action_space=gym.spaces.Box(-1, 1, (3,))).build()
    with pytest.raises(ValueError, match="exactly the keys"):
        rf.RLModuleSpec(module_class=rf.ppo.PPOTorchRLModule,
                        observation_space=gym.spaces.Dict({**OBS.spaces, "x": gym.spaces.Box(0, 1, (1,))}),
                        action_space=gym.spaces.Discrete(6)).build()


def test_masked_lstm_module_steps_with_mask():
    m = _masked_module(use_lstm=True, lstm_cell_size=8)
    B = 5
    batch = _obs_batch(B, seed=2)
    batch["state_in"] = {k: {kk: torch.zeros(B, 1, vv.shape[-1]) for kk, vv in v.items()}
                         for k, v in m.get_initial_state().items()}
    out = m.forward_exploration(batch)
    a = torch.as_tensor(out["actions"]).reshape(B)
    assert bool((torch.from_numpy(batch["obs"]["action_mask"]).gather(1, a[:, None]) == 1).all())
    tb = {"obs": {k: torch.from_numpy(v)[:, None] for k, v in batch["obs"].items()}, "state_in": batch["state_in"]}
    tr = m.forward_train(tb)
    torch.testing.assert_close(torch.as_tensor(out["action_dist_inputs"]).reshape(B, 6),
                               tr["action_dist_inputs"][:, 0].detach(), atol=3e-5, rtol=3e-5)


def test_masked_module_matches_rllib_action_masking_module():
    """Same weights, same outputs as RLlib's ActionMaskingTorchRLModule (forward_train,
    compute_values, inference logits); our batch is never modified (theirs pops the mask)."""
    pytest.importorskip("ray.rllib")
    from ray.rllib.examples.rl_modules.classes.action_masking_rlm import ActionMaskingTorchRLModule

    ours = _masked_module()
    theirs = ActionMaskingTorchRLModule(observation_space=OBS, action_space=gym.spaces.Discrete(6),
                                        model_config=dict(CFG))
    theirs.load_state_dict(ours.state_dict())
    batch = _obs_batch(9, seed=7)

    def tb():
        return {"obs": {k: torch.from_numpy(v.copy()) for k, v in batch["obs"].items()}}

    with torch.no_grad():
        b_theirs = tb()
        v_theirs = theirs.compute_values(b_theirs)  # pops the mask into b_theirs["action_mask"]
        t_theirs = theirs.forward_train(b_theirs)
        i_theirs = theirs.forward_inference(tb())
        v_ours = ours.compute_values(tb())
        t_ours = ours.forward_train(tb())
        i_ours = ours.forward_inference(tb())
        t_learner = ours.forward_train(b_theirs)  # RLlib's learner layout after its compute_values
    torch.testing.assert_close(v_ours, v_theirs, atol=1e-5, rtol=1e-5)
    for t in (t_ours, t_learner):
        torch.testing.assert_close(t["action_dist_inputs"], t_theirs["action_dist_inputs"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(t["vf_preds"], v_theirs, atol=1e-5, rtol=1e-5)  # RLlib 2.60: compute_values
    torch.testing.assert_close(i_ours["action_dist_inputs"], i_theirs["action_dist_inputs"], atol=1e-5, rtol=1e-5)
    dist = theirs.get_inference_action_dist_cls().from_logits(i_theirs["action_dist_inputs"])
    assert torch.equal(i_ours["actions"], dist.to_deterministic().sample())


@pytest.mark.skipif(not INFO["triton"]["available"], reason=INFO["triton"]["reason"])
def test_triton_graph_mode_reports_mask_errors_later():
    """check=False (CUDA-graph safe, no host sync): a bad mask sets the device flag's ERR_MASK bit,
    which raise_if_error turns into the ValueError afterwards."""
    from rlmodule_fast.ops import triton as tri

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tri.raise_if_error(dev)  # start from a clear flag
    mask = torch.ones(3, 4, device=dev)
    mask[1] = 0
    tri.sample_categorical(torch.randn(3, 4, device=dev), check=False, mask=mask)
    with pytest.raises(ValueError, match="action_mask"):
        tri.raise_if_error(dev)
    tri.raise_if_error(dev)  # reset by the raise


@pytest.mark.skipif(not INFO["triton"]["available"], reason=INFO["triton"]["reason"])
@pytest.mark.parametrize("dist,sizes", [("categorical", (5,)), ("multi_categorical", (2, 3))], ids=["cat5", "multi2x3"])
def test_masked_triton_sequence_mode(dist, sizes):
    """Nets wider than the one-kernel step (hidden 300: the "sequence" launches) mask too."""
    L = make_layers(obs=6, hid=(300,), dist=dist, sizes=sizes)
    plan = PolicyPlan(L, backend="triton")
    assert plan.impl.mode == "sequence"
    obs = torch.randn(7, 6, generator=torch.Generator().manual_seed(0))
    mask = np.ones((7, sum(sizes)), np.float32)
    mask[:, 0] = 0
    mask[3, 2] = 0
    got = plan.step(obs, deterministic=True, mask=mask)
    want = ref.policy_step(L, obs, deterministic=True, mask=mask)
    torch.testing.assert_close(got["action_dist_inputs"].double(), want["action_dist_inputs"], rtol=1e-4, atol=1e-4)
    assert torch.equal(got["actions"], want["actions"])
    mask[4] = 0
    with pytest.raises(ValueError, match=r"every action is masked \(row 4\)"):
        plan.step(obs, mask=mask)
