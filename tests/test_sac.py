"""rf.sac: SACCatalog / SACTorchRLModule against RLlib 2.60's DefaultSACTorchRLModule (names,
shapes, outputs for the same weights), its API mixins, and the fused exploration step on every
backend against the module's torch layers."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.sac import SACCatalog, SACTorchRLModule

INFO = rf.backend_info()
OBS = gym.spaces.Box(-1.0, 1.0, (5,), np.float32)
BOX = gym.spaces.Box(-2.0, 2.0, (3,), np.float32)
DISC = gym.spaces.Discrete(4)
SMALL = {"fcnet_hiddens": [16, 12], "head_fcnet_hiddens": [8], "fusionnet_hiddens": [10, 6]}
IMAGE = gym.spaces.Box(0.0, 1.0, (10, 10, 3), np.float32)
IMAGE_CFG = {"fcnet_hiddens": [16], "conv_filters": [[4, [3, 3], 2]], "fusionnet_hiddens": [8], "twin_q": True}
CASES = {
    "box-twin": (BOX, {**SMALL, "twin_q": True}),
    "box-single-nofusion": (BOX, {**SMALL, "twin_q": False, "fusionnet_hiddens": []}),
    "discrete-twin": (DISC, {**SMALL, "twin_q": True}),
    "image-box-twin": (BOX, IMAGE_CFG),       # RLlib's CNN pi encoder and CNN obs stream in the Q encoder
    "image-discrete-twin": (DISC, IMAGE_CFG),
}


def _obs_space(cfg):
    return IMAGE if "conv_filters" in cfg else OBS


def build(act, cfg, **kw):
    return SACTorchRLModule(observation_space=_obs_space(cfg), action_space=act, model_config=cfg, **kw)


def train_batch(act, B=7, seed=0, obs_shape=(5,)):
    g = torch.Generator().manual_seed(seed)
    b = {"obs": torch.rand(B, *obs_shape, generator=g) * 2 - 1,
         "new_obs": torch.rand(B, *obs_shape, generator=g) * 2 - 1}
    b["actions"] = (torch.rand(B, 3, generator=g) * 2 - 1) if isinstance(act, gym.spaces.Box) \
        else torch.randint(0, 4, (B,), generator=g)
    return b


def rllib_module(act, cfg, inference_only=False):
    pytest.importorskip("ray.rllib")
    import dataclasses

    from ray.rllib.algorithms.sac.torch.default_sac_torch_rl_module import DefaultSACTorchRLModule
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    full = {**dataclasses.asdict(DefaultModelConfig()), **cfg}
    return DefaultSACTorchRLModule(observation_space=_obs_space(cfg), action_space=act, model_config=full,
                                   inference_only=inference_only)


# ---------------------------------------------------------------------------------- RLlib parity
@pytest.mark.parametrize("name", list(CASES) + ["box-inference-only"])
def test_state_dict_names_and_shapes_match_rllib(name):
    act, cfg = CASES.get(name, CASES["box-twin"])
    inf = name == "box-inference-only"
    theirs, ours = rllib_module(act, cfg, inf), build(act, cfg, inference_only=inf)
    if not inf:
        theirs.make_target_networks()
        ours.make_target_networks()
    want = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == want


@pytest.mark.parametrize("name", list(CASES))
def test_same_weights_same_outputs_as_rllib(name):
    act, cfg = CASES[name]
    theirs, ours = rllib_module(act, cfg), build(act, cfg)
    theirs.make_target_networks()
    ours.make_target_networks()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    batch = train_batch(act, obs_shape=_obs_space(cfg).shape)
    torch.manual_seed(3)
    want = theirs.forward_train({k: v.clone() for k, v in batch.items()})
    torch.manual_seed(3)
    got = ours.forward_train(batch)
    assert set(got) == set(want)
    for k in want:  # the same torch draws in the same order: equal up to float rounding
        torch.testing.assert_close(got[k], want[k], msg=k)
    with torch.no_grad():
        want_inf = theirs.forward_inference({"obs": batch["obs"]})["action_dist_inputs"]
        got_inf = ours.forward_inference({"obs": batch["obs"]})["action_dist_inputs"]
        torch.testing.assert_close(got_inf, want_inf)
        q_batch = {"obs": batch["obs"], "actions": batch["actions"]} if act is BOX else {"obs": batch["obs"]}
        sq = act is BOX
        torch.testing.assert_close(ours.compute_q_values(q_batch, squeeze=sq),
                                   theirs.compute_q_values(q_batch, squeeze=sq))
        torch.testing.assert_close(ours.forward_target(q_batch, squeeze=sq), theirs.forward_target(q_batch, squeeze=sq))
    assert [type(c).__name__ for c in (ours.get_train_action_dist_cls(),)] == \
        [type(c).__name__ for c in (theirs.get_train_action_dist_cls(),)]
    assert ours.get_train_action_dist_cls().__name__ == theirs.get_train_action_dist_cls().__name__


@pytest.mark.parametrize("extra", [
    {},
    {"fusionnet_kernel_initializer": "xavier_uniform_", "fusionnet_bias_initializer": "normal_",
     "fusionnet_bias_initializer_kwargs": {"std": 0.1}, "fcnet_kernel_initializer": "orthogonal_",
     "fcnet_use_layernorm": True, "head_fcnet_use_layernorm": True},
], ids=["defaults", "initializers-layernorm"])
@pytest.mark.parametrize("act", [BOX, DISC], ids=["box", "discrete"])
def test_same_seed_same_weights_as_rllib(act, extra):
    """RLlib's build order, default inits and the fusion net's initializers: a seed gives RLlib's
    weights (head_fcnet_use_layernorm is ignored by SAC's heads, as in RLlib)."""
    cfg = {**SMALL, "twin_q": True, **extra}
    torch.manual_seed(7)
    theirs = rllib_module(act, cfg)
    torch.manual_seed(7)
    ours = build(act, cfg)
    want, got = theirs.state_dict(), ours.state_dict()
    assert list(got) == list(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_rllib_weights_into_ours_and_back_through_get_state():
    act, cfg = CASES["box-twin"]
    theirs, ours = rllib_module(act, cfg), build(act, cfg)
    state = theirs.get_state()  # RLlib: numpy arrays
    assert all(isinstance(v, np.ndarray) for v in state.values())
    ours.set_state(state)
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    theirs2 = rllib_module(act, cfg)
    theirs2.set_state({k: v.detach().numpy() for k, v in ours.get_state().items()})
    for k, v in ours.state_dict().items():
        assert torch.equal(theirs2.state_dict()[k], v), k


# --------------------------------------------------------------------------- our module's API
def test_api_mixins_and_target_networks():
    act, cfg = CASES["box-twin"]
    m = build(act, cfg)
    for api in (rf.apis.InferenceOnlyAPI, rf.apis.TargetNetworkAPI, rf.apis.QNetAPI):
        assert isinstance(m, api)
    assert not isinstance(m, rf.apis.ValueFunctionAPI)
    assert not hasattr(m, "target_qf")
    with pytest.raises(RuntimeError, match="make_target_networks"):
        m.forward_target(train_batch(act))
    with pytest.raises(RuntimeError, match="make_target_networks"):
        m.forward_train(train_batch(act))
    m.make_target_networks()
    pairs = m.get_target_network_pairs()
    assert [(a is m.qf_encoder, b is m.target_qf_encoder) for a, b in pairs[:1]] == [(True, True)]
    assert len(pairs) == 4
    for _, tgt in pairs:
        assert all(not p.requires_grad for p in tgt.parameters())
        assert all(p.requires_grad for p in _.parameters())
    assert set(m.get_non_inference_attributes()) == {
        "qf", "target_qf", "qf_encoder", "target_qf_encoder", "qf_twin", "target_qf_twin", "qf_twin_encoder",
        "target_qf_twin_encoder"}
    assert m.get_initial_state() == {} and not m.is_stateful()
    # inference-only: the pi parts alone, loadable from the learner's inference-only state
    inf = build(act, cfg, inference_only=True)
    assert not hasattr(inf, "qf") and not hasattr(inf, "qf_encoder")
    inf.set_state(m.get_state(inference_only=True))
    with pytest.raises(RuntimeError, match="inference_only"):
        inf.forward_train(train_batch(act))
    obs = train_batch(act)["obs"]
    torch.testing.assert_close(inf.forward_inference({"obs": obs})["actions"],
                               m.forward_inference({"obs": obs})["actions"])


def test_straight_through_q_pass():
    """q_curr carries the policy's gradient through frozen Q parameters (RLlib's trick), and the
    Q parameters are trainable again afterwards."""
    act, cfg = CASES["box-twin"]
    m = build(act, cfg)
    m.make_target_networks()
    out = m.forward_train(train_batch(act))
    (-out["q_curr"].mean()).backward()
    assert m.pi.net.linears[-1].weight.grad is not None and float(m.pi.net.linears[-1].weight.grad.abs().sum()) > 0
    assert all(p.grad is None for p in m.qf.parameters()) and all(p.requires_grad for p in m.qf.parameters())
    m.zero_grad()
    out = m.forward_train(train_batch(act))
    ((out["qf_preds"] - 1.0) ** 2).mean().backward()
    assert m.qf.net.linears[-1].weight.grad is not None
    assert all(p.grad is None for p in m.target_qf.parameters())


def test_model_config_keys():
    cat = SACCatalog(OBS, BOX, {"twin_q": False, "fusionnet_activation": "relu", "fusionnet_hiddens": [4],
                                "fusionnet_kernel_initializer": None, "fusionnet_bias_initializer_kwargs": None})
    assert SACCatalog(OBS, BOX, rf.DefaultModelConfig(fcnet_hiddens=[8])).model_config_dict["fcnet_hiddens"] == [8]
    assert cat.model_config_dict["twin_q"] is False and cat.model_config_dict["fusionnet_hiddens"] == [4]
    assert cat.get_action_dist_cls() is rf.distributions.TorchSquashedGaussian
    assert SACCatalog(OBS, DISC, {}).get_action_dist_cls() is rf.distributions.TorchCategorical
    assert SACCatalog(OBS, BOX, {}).model_config_dict["twin_q"] is True  # SACConfig's default
    for bad, key in [({"twin_q": 1}, "twin_q"), ({"fusionnet_hiddens": [0]}, "fusionnet_hiddens"),
                     ({"fusionnet_activation": "gelu2"}, "fusionnet_activation"),
                     ({"fusionnet_kernel_initializer": "no_such_init_"}, "fusionnet_kernel_initializer"),
                     ({"free_log_std": True}, "free_log_std"), ({"use_lstm": True}, "use_lstm"),
                     ({"no_such_key": 1}, "no_such_key")]:
        with pytest.raises(ValueError, match=key):
            SACCatalog(OBS, BOX, bad)
    with pytest.raises(ValueError, match="action_space"):
        SACCatalog(OBS, gym.spaces.MultiDiscrete([2, 3]), {})
    masking = gym.spaces.Dict({"action_mask": gym.spaces.Box(0, 1, (4,)), "observations": OBS})
    assert SACCatalog(masking, DISC, {}).action_mask_dim == 4  # discrete SAC masks (test_sac_masking.py)
    with pytest.raises(ValueError, match=r"observation_space\['action_mask'\]: masking needs a Discrete"):
        SACCatalog(masking, BOX, {})  # a continuous policy has no logits to mask: never silently ignored
    with pytest.raises(ValueError, match=r"observation_space\['action_mask'\]: expected shape \(5,\)"):
        SACCatalog(masking, gym.spaces.Discrete(5), {})


# ------------------------------------------------------------------------- the fused step
BACKENDS = [
    pytest.param("torch"),
    pytest.param("cpp", marks=pytest.mark.skipif(not INFO["cpp"]["available"], reason="no cpp backend")),
    pytest.param("triton", marks=pytest.mark.skipif(not INFO["triton"]["available"], reason="no triton backend")),
]


@pytest.mark.parametrize("B", [1, 19], ids=lambda b: f"B{b}")
@pytest.mark.parametrize("name", ["box-twin", "discrete-twin", "box-layernorm"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_step_matches_torch_layers(backend, name, B, monkeypatch):
    act, cfg = CASES[name] if name in CASES else (BOX, {**SMALL, "fcnet_use_layernorm": True})
    m = build(act, cfg)
    obs = np.random.default_rng(B).uniform(-1, 1, (B, 5)).astype(np.float32)
    if backend == "triton" and torch.cuda.is_available():  # else: the interpreter on CPU tensors
        m = m.to("cuda")
        obs = torch.from_numpy(obs).cuda()
    with torch.no_grad():
        logits = m.pi(m.pi_encoder(torch.as_tensor(obs)))
    monkeypatch.setenv("RLMODULE_FAST_BACKEND", backend)
    info = m.fast_path_info()
    assert info["backend"] == backend and info["active"] == (backend != "torch"), info
    det = m.forward_inference({"obs": obs})
    assert set(det) == {"action_dist_inputs", "actions", "action_logp"}
    torch.testing.assert_close(det["action_dist_inputs"], logits, atol=2e-6, rtol=1e-5)
    dist = m.get_inference_action_dist_cls().from_logits(logits.double())
    if act is BOX:
        torch.testing.assert_close(det["actions"].double(), torch.tanh(logits[:, :3]).double(), atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(det["action_logp"].double(), dist._squashed_logp(dist.loc), atol=5e-5, rtol=1e-5)
    else:
        assert torch.equal(det["actions"], logits.argmax(-1))
        torch.testing.assert_close(det["action_logp"].double(), dist.logp(det["actions"]), atol=2e-6, rtol=1e-5)
    rf.manual_seed(0)
    torch.manual_seed(0)
    out = m.forward_exploration({"obs": torch.as_tensor(obs)})
    a = out["actions"]
    if act is BOX:
        assert a.shape == (B, 3) and bool((a.abs() <= 1).all())
        # exact logp for the sampled action (atanh round trip: actions stay well inside (-1, 1) here)
        assert float(a.abs().max()) < 0.999
        torch.testing.assert_close(out["action_logp"].double(), dist.logp(a.double()), atol=2e-3, rtol=1e-4)
    else:
        assert a.shape == (B,) and a.dtype == torch.int64
        torch.testing.assert_close(out["action_logp"].double(), dist.logp(a), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.values[0] != "triton"])
def test_bad_observations(backend, monkeypatch):
    monkeypatch.setenv("RLMODULE_FAST_BACKEND", backend)
    m = build(*CASES["box-twin"])
    obs = np.zeros((3, 5), np.float32)
    obs[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"obs.*row 1"):
        m.forward_exploration({"obs": obs})
    with pytest.raises(ValueError, match="obs"):
        m.forward_exploration({"obs": np.zeros((3, 4), np.float32)})
    with pytest.raises(ValueError, match="new_obs"):
        m.make_target_networks()
        m.forward_train({"obs": torch.zeros(2, 5), "actions": torch.zeros(2, 3)})


def test_fused_step_sees_weight_updates_and_checkpoint_roundtrip(tmp_path):
    act, cfg = CASES["box-twin"]
    m = build(act, cfg)
    obs = torch.rand(4, 5)
    a0 = m.forward_inference({"obs": obs})["actions"]
    with torch.no_grad():
        m.pi.net.linears[-1].bias[:3] += 0.5
    a1 = m.forward_inference({"obs": obs})["actions"]
    with torch.no_grad():
        want = torch.tanh(m.pi(m.pi_encoder(obs))[:, :3])
    assert not torch.allclose(a0, a1)
    torch.testing.assert_close(a1, want, atol=2e-6, rtol=1e-5)
    m.save_to_path(tmp_path / "ckpt")
    m2 = rf.RLModule.from_checkpoint(tmp_path / "ckpt")
    assert type(m2) is SACTorchRLModule and m2.twin_q
    torch.testing.assert_close(m2.forward_inference({"obs": obs})["actions"], a1)


def test_sac_bench_runs():
    """``python -m rlmodule_fast.bench.sac``: every provider that can run here gives a time (tiny sizes)."""
    from rlmodule_fast.bench import sac as bench

    res = bench.run(batches=(2,), hiddens=(8,), budget_s=0.02, blocks=2)
    row = res["rows"][0]
    assert row["batch"] == 2 and set(bench.PROVIDERS) <= set(row)
    assert isinstance(row["torch-eager"], float)
    if INFO["cpp"]["available"]:
        assert isinstance(row["rf-cpp"], float), row["rf-cpp"]


@pytest.mark.parametrize("act", [BOX, DISC], ids=["box", "discrete"])
def test_export_onnx_policy_step_matches_fused_inference(act, tmp_path):
    """``export_onnx`` of a SAC module (pi encoder + head, the squashed Gaussian's tanh(mean) or
    argmax and its logp) gives the fused inference step's outputs in ONNX Runtime."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    m = build(act, {**SMALL, "twin_q": True}, inference_only=True)
    path = m.export_onnx(tmp_path / "sac.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    obs = np.random.default_rng(0).uniform(-1, 1, (6, 5)).astype(np.float32)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"obs": obs})))
    want = m.forward_inference({"obs": obs})
    assert set(got) == {"actions", "action_logp", "action_dist_inputs"}
    for k in got:
        np.testing.assert_allclose(got[k], want[k].numpy(), rtol=1e-5, atol=2e-5, err_msg=k)
