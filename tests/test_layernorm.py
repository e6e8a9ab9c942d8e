"""Layer norm (``fcnet_use_layernorm`` / ``head_fcnet_use_layernorm``): RLlib's TorchMLP layout
(LayerNorm(eps=0.001) between a layer and its activation; encoders norm every layer, heads only
their hidden layers), state dicts interchangeable with RLlib's DefaultPPOTorchRLModule, and the
fused policy step (C++ and Triton, not a fallback) equal to ``ops.reference.policy_step``.
"""
import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.fastpath import EncoderLayers, PolicyLayers, PolicyPlan
from rlmodule_fast.fastpath.triton_plan import TritonPolicyPlan
from rlmodule_fast.ops import reference as ref
from rlmodule_fast.ppo import PPOTorchRLModule

OBS = gym.spaces.Box(-1.0, 1.0, (5,), np.float32)
SPACES = {"cat": gym.spaces.Discrete(3), "mcat": gym.spaces.MultiDiscrete([3, 2]),
          "gauss": gym.spaces.Box(-1.0, 1.0, (2,), np.float32)}
CPP = rf.backend_info()["cpp"]
needs_cpp = pytest.mark.skipif(not CPP["available"], reason=f"cpp backend unavailable: {CPP['reason']}")

CONFIGS = {
    "enc": dict(fcnet_hiddens=[37, 19], fcnet_use_layernorm=True, fcnet_activation="silu"),
    "heads": dict(fcnet_hiddens=[13], head_fcnet_hiddens=[11, 6], head_fcnet_use_layernorm=True,
                  vf_share_layers=False, head_fcnet_activation="tanh"),
    "both-sep": dict(fcnet_hiddens=[21, 9], fcnet_use_layernorm=True, head_fcnet_hiddens=[7],
                     head_fcnet_use_layernorm=True, vf_share_layers=False, fcnet_activation="elu"),
    "lstm": dict(use_lstm=True, lstm_cell_size=9, fcnet_hiddens=[13], fcnet_use_layernorm=True,
                 head_fcnet_hiddens=[5], head_fcnet_use_layernorm=True),
    "gru-sep": dict(use_gru=True, lstm_cell_size=6, fcnet_hiddens=[7], fcnet_use_layernorm=True,
                    vf_share_layers=False),
}


def _module(cfg: dict, space, seed: int = 0, **extra) -> PPOTorchRLModule:
    torch.manual_seed(seed)
    m = PPOTorchRLModule(observation_space=OBS, action_space=space, model_config=dict(cfg, **extra))
    with torch.no_grad():  # norms start at gamma=1, beta=0: move every parameter so all of them matter
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m


def _state(m: PPOTorchRLModule, B: int, gen: torch.Generator):
    init = m.get_initial_state()
    if not init:
        return None
    if "h" in init:
        return {k: torch.randn(B, v.shape[-1], generator=gen) for k, v in init.items()}
    return {part: {k: torch.randn(B, v.shape[-1], generator=gen) for k, v in s.items()} for part, s in init.items()}


def _check_step(plan, m, B: int, seed: int = 1, atol: float = 2e-5):
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(B, 5, generator=gen)
    st = _state(m, B, gen)
    got = plan.step(obs, st, deterministic=True, compute_value=True)
    want = ref.policy_step(m.policy_layers(), obs, st, deterministic=True, compute_value=True)
    torch.testing.assert_close(torch.as_tensor(got["action_dist_inputs"]).double(), want["action_dist_inputs"],
                               atol=atol, rtol=1e-4)
    torch.testing.assert_close(torch.as_tensor(got["vf_preds"]).double(), want["vf_preds"], atol=atol, rtol=1e-4)
    torch.testing.assert_close(torch.as_tensor(got["action_logp"]).double(), want["action_logp"], atol=atol * 4,
                               rtol=1e-4)


def test_layout_and_names_are_rllibs():
    m = PPOTorchRLModule(observation_space=OBS, action_space=SPACES["cat"],
                         model_config=CONFIGS["both-sep"])
    enc = m.encoder.actor_encoder.net.mlp
    assert [type(x).__name__ for x in enc] == ["Linear", "LayerNorm", "ELU", "Linear", "LayerNorm", "ELU"]
    assert enc[1].eps == 1e-3
    pi = m.pi.net.mlp  # heads: norm on the hidden layer, never on the output layer
    assert [type(x).__name__ for x in pi] == ["Linear", "LayerNorm", "ReLU", "Linear"]


@pytest.mark.parametrize("space", ["cat", "gauss"])
@pytest.mark.parametrize("case", ["both-sep", "lstm"])
def test_state_dicts_interchange_with_rllib(case, space):
    pytest.importorskip("ray.rllib")
    from ray.rllib.algorithms.ppo.ppo_catalog import PPOCatalog as RLlibPPOCatalog
    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
    from ray.rllib.core.columns import Columns

    cfg = {k: v for k, v in CONFIGS[case].items() if k != "use_gru"}
    theirs = DefaultPPOTorchRLModule(observation_space=OBS, action_space=SPACES[space], model_config=cfg,
                                     catalog_class=RLlibPPOCatalog)
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    ours = _module(cfg, SPACES[space])
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    obs = torch.randn(4, 3, 5) if cfg.get("use_lstm") else torch.randn(4, 5)
    batch = {Columns.OBS: obs}
    if cfg.get("use_lstm"):
        batch[Columns.STATE_IN] = {k: torch.randn(4, *v.shape) for k, v in theirs.get_initial_state().items()}
    want = theirs.forward_train(dict(batch))
    got = ours.forward_train(dict(batch))
    torch.testing.assert_close(got[Columns.ACTION_DIST_INPUTS], want[Columns.ACTION_DIST_INPUTS])
    torch.testing.assert_close(got[Columns.VF_PREDS], theirs.compute_values(dict(batch), want[Columns.EMBEDDINGS]))


@needs_cpp
@pytest.mark.parametrize("B", [1, 17])
@pytest.mark.parametrize("space", list(SPACES))
@pytest.mark.parametrize("case", list(CONFIGS))
def test_cpp_step_matches_reference(case, space, B):
    m = _module(CONFIGS[case], SPACES[space])
    assert m.fast_path_info()["active"], m.fast_path_info()
    plan = PolicyPlan(m.policy_layers(), backend="cpp")
    _check_step(plan, m, B)


@needs_cpp
def test_cpp_free_log_std_and_module_outputs():
    m = _module(CONFIGS["both-sep"], SPACES["gauss"], free_log_std=True)
    plan = PolicyPlan(m.policy_layers(), backend="cpp")
    _check_step(plan, m, 5)
    obs = torch.randn(6, 5)
    out = m.forward_inference({"obs": obs})
    torch.testing.assert_close(out["action_dist_inputs"], m.forward_train({"obs": obs})["action_dist_inputs"],
                               atol=2e-5, rtol=1e-4)


@needs_cpp
def test_cpp_sees_norm_updates():
    """An optimizer step on the norms' parameters (and only them) reaches the next fused step."""
    m = _module(CONFIGS["enc"], SPACES["cat"])
    obs = torch.randn(4, 5)
    before = m.forward_inference({"obs": obs})["action_dist_inputs"]
    norms = [x for x in m.modules() if isinstance(x, torch.nn.LayerNorm)]
    opt = torch.optim.SGD([p for n in norms for p in n.parameters()], lr=0.5)
    for n in norms:
        for p in n.parameters():
            p.grad = torch.ones_like(p)
    opt.step()
    after = m.forward_inference({"obs": obs})["action_dist_inputs"]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, m.forward_train({"obs": obs})["action_dist_inputs"], atol=2e-5, rtol=1e-4)


def _hand_layers(affine: bool):
    g = torch.Generator().manual_seed(0)
    lin = [torch.nn.Linear(5, 19), torch.nn.Linear(19, 7)]
    pi = [torch.nn.Linear(7, 6), torch.nn.Linear(6, 3)]
    norms = [torch.nn.LayerNorm(19, elementwise_affine=affine), None]
    pi_norms = [torch.nn.LayerNorm(6, eps=0.0, elementwise_affine=affine), torch.nn.LayerNorm(3)]
    with torch.no_grad():
        for mod in lin + pi + [n for n in norms + pi_norms if n is not None]:
            for p in mod.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
    return PolicyLayers(actor=EncoderLayers(mlp=lin, activation="tanh", norms=norms), critic=None, pi=pi,
                        vf=None, head_activation="relu", dist="categorical", action_sizes=[3], log_std_clip=None,
                        pi_norms=pi_norms)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("affine", [True, False])
def test_hand_built_norms_any_layer(backend, affine):
    """Norms without affine weights, eps=0, and a norm on the output layer (not a layout RLlib
    builds, but one the description allows) run fused and match the reference."""
    if backend == "cpp" and not CPP["available"]:
        pytest.skip(CPP["reason"])
    L = _hand_layers(affine)
    plan = PolicyPlan(L, backend="cpp") if backend == "cpp" else TritonPolicyPlan(L)
    obs = torch.randn(9, 5, generator=torch.Generator().manual_seed(2))
    got = plan.step(obs, deterministic=True)
    want = ref.policy_step(L, obs, deterministic=True)
    torch.testing.assert_close(torch.as_tensor(got["action_dist_inputs"]).double(), want["action_dist_inputs"],
                               atol=2e-5, rtol=1e-4)


def test_bad_norms_name_the_field():
    from rlmodule_fast.fastpath.layers import validate

    L = _hand_layers(True)
    L.pi_norms = [None]
    with pytest.raises(ValueError, match="pi_norms"):
        validate(L)
    L = _hand_layers(True)
    L.actor.norms = [torch.nn.LayerNorm(7), None]
    with pytest.raises(ValueError, match=r"actor.norms\[0\]"):
        validate(L)
    L = _hand_layers(True)
    L.actor.norms = [torch.nn.Linear(19, 19), None]
    with pytest.raises(ValueError, match="LayerNorm"):
        validate(L)


@needs_cpp
@pytest.mark.parametrize("case", ["both-sep", "lstm"])
def test_rllib_fast_module_fuses_layernorm(case):
    """RLlib's own module with layer norms (rf.rllib.FastPPOTorchRLModule) runs the fused step."""
    pytest.importorskip("ray.rllib")
    from ray.rllib.algorithms.ppo.ppo_catalog import PPOCatalog as RLlibPPOCatalog

    from rlmodule_fast.rllib import FastPPOTorchRLModule

    cfg = CONFIGS[case]
    m = FastPPOTorchRLModule(observation_space=OBS, action_space=SPACES["cat"], model_config=cfg,
                             catalog_class=RLlibPPOCatalog)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    lstm = cfg.get("use_lstm", False)
    batch = {"obs": torch.randn(3, 1, 5) if lstm else torch.randn(3, 5)}
    if lstm:
        batch["state_in"] = {k: torch.randn(3, *v.shape) for k, v in m.get_initial_state().items()}
    out = m.forward_inference(dict(batch))
    info = m.fast_path_info()
    assert info["active"] and info["calls"] == 1, info
    want = m.forward_train(dict(batch))["action_dist_inputs"]
    torch.testing.assert_close(out["action_dist_inputs"], want.detach(), atol=2e-5, rtol=1e-4)
