"""The Triton policy step with layer norms, in every launch mode (TRITON_INTERPRET=1 on CPU,
tests/conftest.py): register tiles (D <= 64), staged tiles (D <= 256), recurrent (tokenizer
kernels + fused heads) and per-layer (wider nets) against ``ops.reference.policy_step``."""
import pytest
import torch

pytest.importorskip("triton")

from rlmodule_fast.fastpath.triton_plan import TritonPolicyPlan  # noqa: E402

from test_layernorm import SPACES, _check_step, _module  # noqa: E402

MODES = {
    "fused": dict(fcnet_hiddens=[13, 9], fcnet_use_layernorm=True, head_fcnet_hiddens=[7],
                  head_fcnet_use_layernorm=True, vf_share_layers=False),
    "staged": dict(fcnet_hiddens=[70, 33], fcnet_use_layernorm=True, head_fcnet_hiddens=[67],
                   head_fcnet_use_layernorm=True, vf_share_layers=False),
    "recurrent": dict(use_lstm=True, lstm_cell_size=9, fcnet_hiddens=[13], fcnet_use_layernorm=True,
                      head_fcnet_hiddens=[5], head_fcnet_use_layernorm=True),
    "sequence": dict(fcnet_hiddens=[300], fcnet_use_layernorm=True, head_fcnet_hiddens=[6],
                     head_fcnet_use_layernorm=True, vf_share_layers=False),
}


@pytest.mark.parametrize("space", ["mcat", "gauss"])
@pytest.mark.parametrize("mode", list(MODES))
def test_triton_step_matches_reference(mode, space):
    m = _module(MODES[mode], SPACES[space])
    plan = TritonPolicyPlan(m.policy_layers())
    want_mode = "fused" if mode == "staged" else mode
    assert plan.mode == want_mode
    if mode in ("fused", "staged"):
        assert plan.meta["NORM_MASK"] and (plan.D > 64) == (mode == "staged")
    _check_step(plan, m, 5)


def test_triton_sees_norm_updates():
    m = _module(MODES["fused"], SPACES["mcat"])
    plan = TritonPolicyPlan(m.policy_layers())
    _check_step(plan, m, 3)
    with torch.no_grad():
        m.pi.net.mlp[1].weight.mul_(-2.0)  # an in-place write bumps the version: repacked
    _check_step(plan, m, 3)
