"""rf.dqn.DQNTorchRLModule: RLlib 2.60's DefaultDQNTorchRLModule names / outputs, the fused
epsilon-greedy step (cpp) against the torch layers, its exact draws, masking, errors, freshness.

Tolerances: the fused step computes in float32 with a different summation order (register-blocked
GEMMs, double accumulation of the dueling mean / distributional expectation): rtol=atol=2e-5 on
Q-values of magnitude ~1; greedy actions are compared on rows whose top-2 gap exceeds 1e-3.
"""
from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.dqn import FLOAT_MIN, DQNCatalog, DQNTorchRLModule, EpsilonSchedule

TOL = dict(rtol=2e-5, atol=2e-5)
# the 2-D Box case is flattened into the MLP on purpose (models.catalog says so with this warning)
pytestmark = pytest.mark.filterwarnings("ignore::rlmodule_fast.models.catalog.FlattenedObservationWarning")
BOX5 = gym.spaces.Box(-1.0, 1.0, (5,), np.float32)

# (dueling, double_q, num_atoms)
VARIANTS = [(True, True, 1), (False, False, 1), (True, False, 7), (False, True, 5)]
VARIANT_IDS = [f"{'duel' if d else 'plain'}-{'dq' if q else 'q'}-N{n}" for d, q, n in VARIANTS]


def config(dueling=True, double_q=True, num_atoms=1, **kw):
    cfg = {"fcnet_hiddens": [17, 9], "head_fcnet_hiddens": [7], "dueling": dueling, "double_q": double_q,
           "num_atoms": num_atoms, "v_min": -3.0, "v_max": 4.0, "epsilon": [(0, 1.0), (100, 0.1)], "std_init": 0.5}
    cfg.update(kw)
    return cfg


def build(obs_space=BOX5, n=3, seed=0, **kw) -> DQNTorchRLModule:
    torch.manual_seed(seed)
    return DQNTorchRLModule(observation_space=obs_space, action_space=gym.spaces.Discrete(n), model_config=config(**kw))


def torch_path(monkeypatch):
    monkeypatch.setenv("RLMODULE_FAST_BACKEND", "torch")


def rng_bits(key: int, ctr: int) -> int:
    """csrc/common.h's rng_bits in Python (uint64 arithmetic)."""
    M = (1 << 64) - 1

    def mix64(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        return z ^ (z >> 31)

    return mix64((mix64(key ^ ((ctr * 0x9E3779B97F4A7C15) & M)) + key) & M)


# ---- RLlib parity --------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_same_state_and_outputs_as_rllib(variant):
    pytest.importorskip("ray.rllib")
    from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    dueling, double_q, atoms = variant
    cfg = config(dueling, double_q, atoms)
    torch.manual_seed(1)
    theirs = RLModuleSpec(module_class=DefaultDQNTorchRLModule, observation_space=BOX5,
                          action_space=gym.spaces.Discrete(3), model_config=cfg).build()
    theirs.make_target_networks()
    ours = build(dueling=dueling, double_q=double_q, num_atoms=atoms)
    ours.make_target_networks()
    t_state, o_state = theirs.state_dict(), ours.state_dict()
    assert {k: tuple(v.shape) for k, v in t_state.items()} == {k: tuple(v.shape) for k, v in o_state.items()}
    with torch.no_grad():  # distinct target weights, so target outputs are checked too
        for k, v in t_state.items():
            if k.startswith("_target") and v.is_floating_point():
                v.add_(0.01)
    ours.set_state({k: v.clone() for k, v in t_state.items()})

    g = torch.Generator().manual_seed(2)
    obs, nxt = torch.rand(11, 5, generator=g) * 2 - 1, torch.rand(11, 5, generator=g) * 2 - 1
    q_t, q_o = theirs.compute_q_values({"obs": obs}), ours.compute_q_values({"obs": obs})
    assert set(q_t) == set(q_o)
    for k in q_t:
        torch.testing.assert_close(q_o[k], q_t[k], rtol=1e-6, atol=1e-6)
    tr_t = theirs.forward_train({"obs": obs, "new_obs": nxt})
    tr_o = ours.forward_train({"obs": obs, "new_obs": nxt})
    assert set(tr_t) == set(tr_o)
    for k in tr_t:
        torch.testing.assert_close(tr_o[k], tr_t[k], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.forward_target({"obs": nxt})["qf_preds"], theirs.forward_target({"obs": nxt})["qf_preds"])
    # greedy actions: RLlib's forward_inference vs ours on the fused step
    assert torch.equal(ours.forward_inference({"obs": obs.numpy()})["actions"], theirs.forward_inference({"obs": obs})["actions"])
    # and back: our weights into RLlib's module
    theirs.load_state_dict(ours.get_state())


def test_rllib_dqn_config_model_config_is_accepted():
    pytest.importorskip("ray.rllib")
    from ray.rllib.algorithms.dqn import DQNConfig

    mc = DQNConfig().rl_module(model_config={"fcnet_hiddens": [16]})._model_config_auto_includes
    m = DQNTorchRLModule(observation_space=BOX5, action_space=gym.spaces.Discrete(2), model_config=mc)
    assert m.uses_dueling and m.uses_double_q and m.num_atoms == 1 and m.epsilon_schedule.at(10000) == 0.05


def test_apis_and_targets():
    m = build()
    for api in (rf.apis.TargetNetworkAPI, rf.apis.QNetAPI, rf.apis.InferenceOnlyAPI):
        assert isinstance(m, api)
    with pytest.raises(RuntimeError, match="make_target_networks"):
        m.forward_train({"obs": torch.zeros(2, 5), "new_obs": torch.zeros(2, 5)})
    m.make_target_networks()
    pairs = m.get_target_network_pairs()
    assert [(a is m.encoder, b is m._target_encoder) for a, b in pairs][0] == (True, True) and len(pairs) == 3
    assert not any(p.requires_grad for _, t in pairs for p in t.parameters())
    inf_state = m.get_state(inference_only=True)
    assert inf_state and not any(k.startswith("_target") for k in inf_state)
    small = DQNTorchRLModule(observation_space=BOX5, action_space=gym.spaces.Discrete(3), model_config=config(),
                             inference_only=True)
    small.set_state(m.get_state())  # a learner's full state into an inference-only copy
    with pytest.raises(RuntimeError, match="inference_only"):
        small.forward_train({"obs": torch.zeros(2, 5), "new_obs": torch.zeros(2, 5)})


def test_bad_config_and_spaces():
    with pytest.raises(ValueError, match="num_atoms"):
        build(num_atoms=0)
    with pytest.raises(ValueError, match="dueling"):
        build(dueling="yes")
    with pytest.raises(ValueError, match="epsilon"):
        build(epsilon=[(5, 1.0), (10, 0.1)])
    with pytest.raises(ValueError, match="epsilon"):
        build(epsilon=1.5)
    with pytest.raises(ValueError, match="v_min"):
        build(num_atoms=3, v_min=1.0, v_max=1.0)
    with pytest.raises(ValueError, match="not_a_key"):
        build(not_a_key=1)
    with pytest.raises(ValueError, match="Discrete"):
        DQNTorchRLModule(observation_space=BOX5, action_space=gym.spaces.Box(-1, 1, (2,)), model_config={})
    with pytest.raises(ValueError, match="use_lstm"):
        build(use_lstm=True)


def test_epsilon_schedule_matches_rllib():
    sched = [(0, 1.0), (100, 0.5), (300, 0.05)]
    ours = EpsilonSchedule(sched)
    ts = [0, 1, 50, 99, 100, 101, 250, 299, 300, 10**6]
    want = [1.0, 0.995, 0.75, 0.505, 0.5, 0.49775, 0.1625, 0.05225, 0.05, 0.05]
    assert [ours.update(t) for t in ts] == pytest.approx(want)
    assert ours.update(None) == pytest.approx(0.05)  # no t: the last value
    ray = pytest.importorskip("ray.rllib")  # noqa: F841
    from ray.rllib.utils.schedules.scheduler import Scheduler

    theirs = Scheduler(sched, framework="torch")
    assert [ours.update(t) for t in ts] == pytest.approx([theirs.update(t) for t in ts])


# ---- the fused step against the torch layers -------------------------------------------------------
SPACES = {
    "box5": BOX5,
    "box2x3": gym.spaces.Box(-1.0, 1.0, (2, 3), np.float32),
    "disc6": gym.spaces.Discrete(6),
}


def sample_obs(space, B, seed=0):
    rng = np.random.default_rng(seed)
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(0, space.n, size=(B,))
    return rng.uniform(-1, 1, size=(B, *space.shape)).astype(np.float32)


@pytest.mark.parametrize("B", [1, 7, 50, 131])
@pytest.mark.parametrize("space", list(SPACES), ids=list(SPACES))
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_fused_greedy_equals_torch(variant, space, B, monkeypatch):
    dueling, double_q, atoms = variant
    m = build(SPACES[space], n=6, dueling=dueling, double_q=double_q, num_atoms=atoms,
              fcnet_hiddens=[33], head_fcnet_hiddens=[] if atoms > 1 else [7])
    assert m.fast_path_info()["backend"] == "cpp"
    obs = sample_obs(SPACES[space], B)
    fast = m.forward_inference({"obs": obs})
    with torch.no_grad():
        q_ref = m.compute_q_values({"obs": torch.as_tensor(obs)})["qf_preds"]
    torch_path(monkeypatch)
    ref = m.forward_inference({"obs": obs})
    assert set(fast) == set(ref) == {"actions", "action_dist_inputs", "action_logp"}
    torch.testing.assert_close(fast["action_dist_inputs"], q_ref, **TOL)
    torch.testing.assert_close(fast["action_dist_inputs"], ref["action_dist_inputs"], **TOL)
    top2 = q_ref.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-3
    assert torch.equal(fast["actions"][clear], ref["actions"][clear])
    assert fast["actions"].dtype == torch.int64 and fast["action_logp"].dtype == torch.float32
    torch.testing.assert_close(fast["action_logp"][clear], ref["action_logp"][clear], **TOL)


CPP = rf.backend_info()["cpp"]
ISAS = [i for i in ("sse2", "avx2", "avx512") if CPP.get("available") and
        ["sse2", "avx2", "avx512"].index(i) <= ["sse2", "avx2", "avx512"].index(CPP["best_isa"])]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("variant", [(True, True, 1), (False, True, 33)], ids=["duel", "N33"])
def test_every_isa_equals_torch(isa, variant):
    from rlmodule_fast import _C

    dueling, double_q, atoms = variant
    m = build(n=5, dueling=dueling, num_atoms=atoms, fcnet_hiddens=[70, 37], head_fcnet_hiddens=[19])
    obs = sample_obs(BOX5, 61)
    with torch.no_grad():
        want = m.compute_q_values({"obs": torch.from_numpy(obs)})["qf_preds"]
    _C.set_isa(isa)
    try:
        got = m.forward_inference({"obs": obs})["action_dist_inputs"]
    finally:
        _C.set_isa(_C.best_isa())
    torch.testing.assert_close(got, want, **TOL)


def test_fused_draws_are_exact_and_reproducible():
    m = build(n=5)
    obs = sample_obs(BOX5, 300, seed=3)
    greedy = m.forward_inference({"obs": obs})["actions"].numpy()
    rf.manual_seed(123)
    state = rf.get_rng_state()
    out = m.forward_exploration({"obs": obs}, t=50)  # epsilon 0.55
    eps = m.epsilon_schedule.current
    assert eps == pytest.approx(0.55)
    want = greedy.copy()
    for r in range(len(obs)):
        z = rng_bits(state["key"], state["counter"] + r)
        if ((z >> 32) + 0.5) / 2**32 < eps:
            want[r] = min(4, int(((z & 0xFFFFFFFF) + 0.5) / 2**32 * 5))
    assert np.array_equal(out["actions"].numpy(), want)
    assert 0 < (want != greedy).sum() < len(obs)
    rf.set_rng_state(state)
    assert torch.equal(m.forward_exploration({"obs": obs}, t=50)["actions"], out["actions"])


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_epsilon_greedy_distribution(backend, monkeypatch):
    """chi-square: P(greedy) = 1 - eps + eps / A, P(other) = eps / A, on both backends."""
    if backend == "torch":
        torch_path(monkeypatch)
    m = build(n=4, epsilon=0.3)
    obs = np.repeat(sample_obs(BOX5, 1), 20000, axis=0)
    rf.manual_seed(7)
    torch.manual_seed(7)
    acts = m.forward_exploration({"obs": obs})["actions"].numpy()
    g = int(m.forward_inference({"obs": obs[:1]})["actions"][0])
    p = np.full(4, 0.3 / 4)
    p[g] += 0.7
    counts = np.bincount(acts, minlength=4)
    chi2 = float(((counts - p * len(acts)) ** 2 / (p * len(acts))).sum())
    assert chi2 < 16.27  # 3 dof, p = 0.001


def test_schedule_drives_exploration():
    m = build(n=3)
    obs = sample_obs(BOX5, 400)
    greedy = m.forward_inference({"obs": obs})["actions"]
    at0 = m.forward_exploration({"obs": obs}, t=0)["actions"]         # epsilon 1.0: uniform
    late = m.forward_exploration({"obs": obs}, t=10**6)["actions"]    # epsilon 0.1
    assert (at0 != greedy).float().mean() > 0.5
    assert 0 < (late != greedy).float().mean() < 0.15
    assert m.epsilon_schedule.current == pytest.approx(0.1)


# ---- masking -----------------------------------------------------------------------------------------
def masked_space(n):
    return gym.spaces.Dict({"action_mask": gym.spaces.Box(0.0, 1.0, (n,), np.float32), "observations": BOX5})


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_masked_actions_never_taken(backend, monkeypatch):
    if backend == "torch":
        torch_path(monkeypatch)
    m = build(masked_space(6), n=6, epsilon=1.0)
    rng = np.random.default_rng(0)
    B = 500
    mask = (rng.random((B, 6)) < 0.4).astype(np.float32)
    mask[np.arange(B), rng.integers(0, 6, B)] = 1.0
    batch = {"obs": {"observations": sample_obs(BOX5, B), "action_mask": mask}}
    for fwd in (m.forward_exploration, m.forward_inference):
        out = fwd(batch)
        a = out["actions"].numpy()
        assert (mask[np.arange(B), a] == 1).all()
        q = out["action_dist_inputs"].numpy()
        assert (q[mask == 0] == np.float32(FLOAT_MIN)).all() and (q[mask == 1] > -1e30).all()
    # epsilon 1: uniform among valid actions only
    counts = np.zeros(6)
    for _ in range(20):
        counts += np.bincount(m.forward_exploration(batch)["actions"].numpy(), minlength=6)
    assert counts.sum() == 20 * B
    bad = mask.copy()
    bad[3] = 0
    with pytest.raises(ValueError, match=r"action_mask: every action is masked \(row 3\)"):
        m.forward_exploration({"obs": {"observations": batch["obs"]["observations"], "action_mask": bad}})


def test_masked_fused_equals_torch(monkeypatch):
    m = build(masked_space(4), n=4)
    mask = np.array([[1, 0, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]], np.float32)
    batch = {"obs": {"observations": sample_obs(BOX5, 3), "action_mask": mask}}
    fast = m.forward_inference(batch)
    torch_path(monkeypatch)
    ref = m.forward_inference(batch)
    torch.testing.assert_close(fast["action_dist_inputs"], ref["action_dist_inputs"], **TOL)
    assert torch.equal(fast["actions"], ref["actions"]) and int(fast["actions"][1]) == 3
    torch.testing.assert_close(fast["action_logp"], ref["action_logp"], **TOL)
    m.make_target_networks()
    tr = m.forward_train({"obs": batch["obs"], "new_obs": batch["obs"]})
    assert (tr["qf_target_next_preds"][torch.from_numpy(mask) == 0] == FLOAT_MIN).all()


# ---- errors, freshness, paths ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_nan_obs_and_bad_mask_raise(backend, monkeypatch):
    if backend == "torch":
        torch_path(monkeypatch)
    m = build()
    obs = sample_obs(BOX5, 4)
    obs[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"obs: contains NaN or inf \(row 2\)"):
        m.forward_exploration({"obs": obs})
    with pytest.raises(ValueError, match="obs"):
        m.forward_exploration({"obs": np.zeros((4, 6), np.float32)})
    mm = build(masked_space(3))
    mask = np.ones((2, 3), np.float32)
    mask[1, 2] = 0.5
    with pytest.raises(ValueError, match=r"action_mask: expected 0 or 1.*row 1, action 2"):
        mm.forward_inference({"obs": {"observations": sample_obs(BOX5, 2), "action_mask": mask}})


def test_any_layout_of_obs(monkeypatch):
    """Strided, transposed, reversed, float64 and tensor observations give the same Q-values."""
    m = build()
    base = sample_obs(BOX5, 6)
    want = m.forward_inference({"obs": base})["action_dist_inputs"]
    wide = np.zeros((6, 9), np.float32)
    wide[:, 2:7] = base
    for obs in (wide[:, 2:7], np.ascontiguousarray(base.T).T, base[::-1][::-1], base[::-1].copy()[::-1],
                base.astype(np.float64), torch.from_numpy(base).t().contiguous().t()):
        torch.testing.assert_close(m.forward_inference({"obs": obs})["action_dist_inputs"], want, **TOL)


def test_fused_step_sees_weight_updates():
    m = build(fcnet_hiddens=[16])
    obs = sample_obs(BOX5, 9)
    before = m.forward_inference({"obs": obs})["action_dist_inputs"]
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    m.make_target_networks()
    loss = m.forward_train({"obs": torch.from_numpy(obs), "new_obs": torch.from_numpy(obs)})["qf_preds"].pow(2).sum()
    loss.backward()
    opt.step()
    after = m.forward_inference({"obs": obs})["action_dist_inputs"]
    with torch.no_grad():
        want = m.compute_q_values({"obs": torch.from_numpy(obs)})["qf_preds"]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, want, **TOL)
    m.af.net.mlp[0].weight = torch.nn.Parameter(torch.zeros_like(m.af.net.mlp[0].weight))  # replaced parameter
    with torch.no_grad():
        want = m.compute_q_values({"obs": torch.from_numpy(obs)})["qf_preds"]
    torch.testing.assert_close(m.forward_inference({"obs": obs})["action_dist_inputs"], want, **TOL)
    m.af.net.mlp[2].bias.data.add_(1.0)  # bypasses the version counter: refresh_fast_path
    m.refresh_fast_path()
    with torch.no_grad():
        want = m.compute_q_values({"obs": torch.from_numpy(obs)})["qf_preds"]
    torch.testing.assert_close(m.forward_inference({"obs": obs})["action_dist_inputs"], want, **TOL)


def test_fast_path_info_tells_the_truth(monkeypatch):
    m = build()
    assert m.fast_path_info() == {"backend": "cpp", "active": True, "reason": "CPU inputs run on cpp (auto)"}
    monkeypatch.setenv("RLMODULE_FAST_BACKEND", "torch")
    assert m.fast_path_info()["backend"] == "torch" and not m.fast_path_info()["active"]
    monkeypatch.setenv("RLMODULE_FAST_BACKEND", "triton")
    info = m.fast_path_info()
    if rf.backend_info()["triton"]["available"]:  # the interpreter (tests/conftest.py) or a GPU
        assert info == {"backend": "triton", "active": True, "reason": "RLMODULE_FAST_BACKEND=triton"}
    else:
        assert not info["active"] and "triton" in info["reason"]
        with pytest.raises(RuntimeError, match="triton"):
            m.forward_inference({"obs": sample_obs(BOX5, 2)})


def test_cuda_inputs_choose_triton():
    """CUDA inputs go to the Triton step when triton is usable, else the torch layers, saying why."""
    from types import SimpleNamespace

    from rlmodule_fast.fastpath.qnet_plan import qnet_fast_path_info

    info = qnet_fast_path_info(build(), SimpleNamespace(device=SimpleNamespace(type="cuda")))
    if rf.backend_info()["triton"]["available"]:
        assert info == {"backend": "triton", "active": True, "reason": "CUDA inputs run on triton (auto)"}
    else:
        assert info["backend"] == "torch" and not info["active"] and "CUDA" in info["reason"]


def test_checkpoint_roundtrip(tmp_path):
    m = build(num_atoms=3)
    m.save_to_path(tmp_path / "ckpt")
    back = rf.RLModule.from_checkpoint(tmp_path / "ckpt")
    assert isinstance(back, DQNTorchRLModule) and back.num_atoms == 3
    obs = sample_obs(BOX5, 5)
    torch.testing.assert_close(back.forward_inference({"obs": obs})["action_dist_inputs"],
                               m.forward_inference({"obs": obs})["action_dist_inputs"])
    assert back.epsilon_schedule.at(50) == pytest.approx(0.55)


def test_catalog_builds_rllib_heads():
    cat = DQNCatalog(BOX5, gym.spaces.Discrete(4), config(num_atoms=3))
    assert cat.build_af_head().net.linears[-1].out_features == 12
    assert cat.build_vf_head().net.linears[-1].out_features == 1
    assert math.isclose(cat.dqn_config["v_max"], 4.0)


def test_image_observations_use_rllibs_cnn():
    """[H, W, C] observations: RLlib's CNN encoder (same names and shapes as RLlib's DQN module),
    run by the fused step's conv stage (tests/test_dqn_cnn.py covers it in depth)."""
    img = gym.spaces.Box(0.0, 1.0, (10, 10, 3), np.float32)
    cfg = dict(conv_filters=[[4, [3, 3], 2], [8, [3, 3], 2]], num_atoms=1)
    m = build(img, n=4, **cfg)
    obs = np.random.default_rng(0).uniform(0, 1, (6, 10, 10, 3)).astype(np.float32)
    assert m.fast_path_info() == {"backend": "cpp", "active": True, "reason": "CPU inputs run on cpp (auto)"}
    out = m.forward_inference({"obs": obs})
    with torch.no_grad():
        q = m.compute_q_values({"obs": torch.from_numpy(obs)})["qf_preds"]
    torch.testing.assert_close(out["action_dist_inputs"], q, **TOL)
    pytest.importorskip("ray.rllib")
    from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule

    theirs = DefaultDQNTorchRLModule(observation_space=img, action_space=gym.spaces.Discrete(4), model_config=config(**cfg))
    assert {k: tuple(v.shape) for k, v in theirs.state_dict().items()} == {k: tuple(v.shape) for k, v in m.state_dict().items()}
    m.set_state(theirs.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(m.compute_q_values({"obs": torch.from_numpy(obs)})["qf_preds"],
                                   theirs.compute_q_values({"obs": torch.from_numpy(obs)})["qf_preds"])


def test_set_state_while_stepping_never_tears():
    """set_state from another thread (an env runner receiving weights) while the fused step runs:
    every result is all-old or all-new weights (the plan repacks under the module's weights_lock)."""
    from test_concurrency import race

    m = build(fcnet_hiddens=[64, 64])
    obs = sample_obs(BOX5, 8)
    s0 = {k: v.clone() for k, v in m.get_state().items()}
    s1 = {k: (v * 1.5 if k.endswith(("weight", "bias")) else v.clone()) for k, v in s0.items()}
    outs = []
    for s in (s0, s1):
        m.set_state(s)
        outs.append(m.forward_inference({"obs": obs})["action_dist_inputs"])
    assert not torch.equal(outs[0], outs[1])
    steps, torn = race(lambda: m.forward_inference({"obs": obs})["action_dist_inputs"],
                       lambda i: m.set_state(s1 if i % 2 == 0 else s0), outs, seconds=1.0)
    assert steps > 10 and torn == 0


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_layernorm_encoder_fused(backend, monkeypatch):
    """fcnet_use_layernorm (RLlib's LayerNorm(eps=1e-3) after every encoder layer) runs in the fused
    step; same Q-values as the torch layers and as RLlib's module with the same weights."""
    if backend == "torch":
        torch_path(monkeypatch)
    m = build(n=4, fcnet_hiddens=[19, 11], fcnet_use_layernorm=True, head_fcnet_hiddens=[6])
    assert any(m.encoder.net.norms)
    with torch.no_grad():
        for n in m.encoder.net.norms:
            n.weight.uniform_(0.5, 1.5)
            n.bias.uniform_(-0.3, 0.3)
    obs = sample_obs(BOX5, 9)
    out = m.forward_inference({"obs": obs})
    with torch.no_grad():
        q = m.compute_q_values({"obs": torch.from_numpy(obs)})["qf_preds"]
    torch.testing.assert_close(out["action_dist_inputs"], q, **TOL)
    if backend == "cpp":
        assert m.fast_path_info()["backend"] == "cpp"
    pytest.importorskip("ray.rllib")
    from rlmodule_fast.rllib import FastDQNTorchRLModule

    fast = FastDQNTorchRLModule(observation_space=BOX5, action_space=gym.spaces.Discrete(4),
                                model_config=config(fcnet_hiddens=[19, 11], fcnet_use_layernorm=True, head_fcnet_hiddens=[6]))
    fast.set_state(m.get_state())
    got = fast.forward_inference({"obs": torch.from_numpy(obs)})["actions"]
    assert torch.equal(got, q.argmax(-1))
    assert fast.fast_path_info()["active"] == (backend == "cpp")


def test_same_seed_same_weights_as_rllib_with_initializers():
    """RLlib's DQNCatalog passes head_fcnet_*_initializer to the heads and fcnet_*_initializer to
    the encoder: with the same seed our module draws RLlib's weights exactly."""
    pytest.importorskip("ray.rllib")
    from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule

    cfg = config(fcnet_hiddens=[8, 6], head_fcnet_hiddens=[5], head_fcnet_kernel_initializer="xavier_uniform_",
                 head_fcnet_bias_initializer="normal_", head_fcnet_bias_initializer_kwargs={"std": 0.1},
                 fcnet_kernel_initializer="orthogonal_")
    torch.manual_seed(7)
    theirs = DefaultDQNTorchRLModule(observation_space=BOX5, action_space=gym.spaces.Discrete(3), model_config=cfg)
    torch.manual_seed(7)
    ours = DQNTorchRLModule(observation_space=BOX5, action_space=gym.spaces.Discrete(3), model_config=cfg)
    a, b = theirs.state_dict(), ours.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_default_model_config_object_is_accepted():
    cfg = rf.DefaultModelConfig(fcnet_hiddens=[12])
    m = DQNTorchRLModule(observation_space=BOX5, action_space=gym.spaces.Discrete(3), model_config=cfg)
    assert m.encoder.net.linears[0].out_features == 12 and m.uses_dueling  # DQN keys: DQNConfig's defaults


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_dict_and_tuple_observations(backend, monkeypatch):
    """Dict / Tuple observations flattened as RLlib's FlattenObservations; the fused step runs on the
    flattened features; forward_train concatenates obs / new_obs leaf by leaf (double Q)."""
    if backend == "torch":
        torch_path(monkeypatch)
    space = gym.spaces.Dict({"pos": gym.spaces.Box(-1.0, 1.0, (3,), np.float32),
                             "k": gym.spaces.Tuple((gym.spaces.Discrete(4), gym.spaces.Box(-1.0, 1.0, (2,), np.float32)))})
    m = build(space, n=3)
    rng = np.random.default_rng(0)
    obs = {"pos": rng.uniform(-1, 1, (5, 3)).astype(np.float32),
           "k": (rng.integers(0, 4, 5), rng.uniform(-1, 1, (5, 2)).astype(np.float32))}
    out = m.forward_inference({"obs": obs})
    tobs = {"pos": torch.from_numpy(obs["pos"]), "k": (torch.from_numpy(obs["k"][0]), torch.from_numpy(obs["k"][1]))}
    with torch.no_grad():
        q = m.compute_q_values({"obs": tobs})["qf_preds"]
    torch.testing.assert_close(out["action_dist_inputs"], q, **TOL)
    assert m.fast_path_info()["active"] == (backend == "cpp")
    m.make_target_networks()
    tr = m.forward_train({"obs": tobs, "new_obs": tobs})
    torch.testing.assert_close(tr["qf_preds"], tr["qf_next_preds"])


def test_export_onnx_greedy_step(tmp_path):
    """export_onnx: the greedy DQN step (masked Q as action_dist_inputs, argmax actions) equals
    forward_inference in ONNX Runtime; explore=True is refused (epsilon-greedy is not in the graph)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    m = build(masked_space(4), n=4, fcnet_hiddens=[9])
    with pytest.raises(ValueError, match="explore=True"):
        m.export_onnx(tmp_path / "x.onnx", explore=True)
    path = m.export_onnx(tmp_path / "dqn.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    mask = np.array([[1, 0, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]], np.float32)
    obs = {"observations": sample_obs(BOX5, 3), "action_mask": mask}
    feeds = {i.name: obs[i.name.split(".", 1)[1]] for i in sess.get_inputs()}
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    want = m.forward_inference({"obs": obs})
    np.testing.assert_array_equal(got["actions"], want["actions"].numpy())
    np.testing.assert_allclose(got["action_dist_inputs"], want["action_dist_inputs"].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["action_logp"], want["action_logp"].numpy(), rtol=1e-5, atol=1e-5)
