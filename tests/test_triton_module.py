"""PPOTorchRLModule wired to the Triton backend: with RLMODULE_FAST_BACKEND=triton (and, without
a GPU, TRITON_INTERPRET=1 from conftest.py) every forward pass of the module runs through the
Triton kernels -- the fused policy step for exploration/inference, the differentiable fused MLP
for forward_train -- and equals the torch backend's outputs and gradients."""
import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.ops import dispatch
from rlmodule_fast.ops import triton as tri
from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

ok, why = tri.status()
pytestmark = [
    pytest.mark.skipif(not ok, reason=f"triton backend unavailable: {why}"),
    pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

BOX = gym.spaces.Box(-1, 1, (5,), np.float32)
CASES = {
    "discrete-shared": (gym.spaces.Discrete(3), {"fcnet_hiddens": [17, 9]}),
    "box-separate-relu": (gym.spaces.Box(-1, 1, (2,), np.float32),
                          {"fcnet_hiddens": [16], "vf_share_layers": False, "fcnet_activation": "relu",
                           "head_fcnet_hiddens": [7]}),
    "multidiscrete": (gym.spaces.MultiDiscrete([2, 3]), {"fcnet_hiddens": [12, 12], "fcnet_activation": "silu"}),
    "lstm": (gym.spaces.Discrete(2), {"fcnet_hiddens": [8], "use_lstm": True, "lstm_cell_size": 6}),
}


def _module(case):
    act, cfg = CASES[case]
    torch.manual_seed(0)
    m = rf.RLModuleSpec(module_class=PPOTorchRLModule, observation_space=BOX, action_space=act,
                        model_config=cfg, catalog_class=PPOCatalog).build()
    return m.to(DEVICE)


def _batch(m, B, T=None):
    g = torch.Generator().manual_seed(1)
    shape = (B, T, 5) if T else (B, 5)
    batch = {"obs": torch.randn(*shape, generator=g).to(DEVICE)}
    if m.is_stateful():
        batch["state_in"] = {k: torch.randn(B, 1, v.shape[-1], generator=g).to(DEVICE)
                             for k, v in m.get_initial_state().items()}
    return batch


def _run(monkeypatch, backend, fn):
    monkeypatch.setenv(dispatch.ENV_VAR, backend)
    try:
        return fn()
    finally:
        monkeypatch.delenv(dispatch.ENV_VAR)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", ["inference", "exploration"])
def test_step_forwards_run_through_triton_and_match_torch(monkeypatch, case, kind):
    m = _module(case)
    batch = _batch(m, 3)
    fwd = getattr(m, f"forward_{kind}")
    with torch.no_grad():
        ref = _run(monkeypatch, "torch", lambda: fwd(batch))
        out = _run(monkeypatch, "triton", lambda: fwd(batch))
    assert "actions" in out and "action_logp" in out, "the triton policy step did not run"
    assert set(ref) == set(out), "every backend returns the same keys"
    torch.testing.assert_close(out["action_dist_inputs"], ref["action_dist_inputs"], atol=2e-5, rtol=1e-4)
    dist = m.get_inference_action_dist_cls().from_logits(ref["action_dist_inputs"])
    torch.testing.assert_close(out["action_logp"], dist.logp(out["actions"]), atol=2e-5, rtol=1e-4)
    if kind == "inference":
        torch.testing.assert_close(out["actions"], dist.to_deterministic().sample())
    if m.is_stateful():
        for k in ref["state_out"]:
            torch.testing.assert_close(out["state_out"][k], ref["state_out"][k], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("case", ["discrete-shared", "box-separate-relu"])
def test_forward_train_runs_triton_mlp_and_matches_torch_gradients(monkeypatch, case):
    m = _module(case)
    batch = _batch(m, 4)
    calls = []
    real = tri.FusedMLPFunction.apply
    monkeypatch.setattr(tri.FusedMLPFunction, "apply", lambda *a: calls.append(1) or real(*a))

    def loss_and_grads(backend):
        m.zero_grad()
        monkeypatch.setenv(dispatch.TRAIN_ENV_VAR, backend)
        out = _run(monkeypatch, backend, lambda: m.forward_train(batch))
        loss = out["action_dist_inputs"].square().sum() + out["vf_preds"].sum()
        loss.backward()
        return out, {n: p.grad.clone() for n, p in m.named_parameters()}

    ref_out, ref_g = loss_and_grads("torch")
    assert not calls
    monkeypatch.delenv(dispatch.TRAIN_ENV_VAR)
    _run(monkeypatch, "triton", lambda: m.forward_train(batch))
    assert not calls, "forward_train must not run Triton kernels unless RLMODULE_FAST_TRAIN_BACKEND=triton"
    out, g = loss_and_grads("triton")
    assert calls, "forward_train did not go through the Triton autograd Function"
    for k in ("action_dist_inputs", "vf_preds", "embeddings"):
        torch.testing.assert_close(out[k], ref_out[k], atol=2e-5, rtol=1e-4)
    for n in ref_g:
        torch.testing.assert_close(g[n], ref_g[n], atol=5e-5, rtol=1e-4, msg=n)
