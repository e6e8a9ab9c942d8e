"""The backend dispatcher: explicit choice, RLMODULE_FAST_BACKEND, auto rules, honest backend_info."""
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.ops import dispatch


def _lin(i, o):
    torch.manual_seed(0)
    return torch.nn.Linear(i, o)


def test_backend_info_reports_every_backend_truthfully():
    info = rf.backend_info()
    for name in dispatch.BACKENDS:
        entry = info[name]
        assert set(entry) >= {"available", "reason", "ops"}
        if entry["available"]:
            assert entry["reason"] == ""
        else:
            assert entry["reason"], f"{name} is unavailable without a reason"
            assert entry["ops"] == []
    assert info["torch"]["available"]
    assert {"fused_mlp", "sample_categorical", "sample_diag_gaussian", "lstm_step", "gru_step"} <= set(info["torch"]["ops"])


def test_cpp_backend_is_built_and_used_for_cpu_fused_mlp():
    """The extension must be built by the install: no silent fallback to torch on CPU."""
    info = rf.backend_info()
    assert info["cpp"]["available"], info["cpp"]["reason"]
    assert "fused_mlp" in info["cpp"]["ops"]
    assert dispatch.choose("fused_mlp", "auto", torch.zeros(1, 2)) == "cpp"
    assert dispatch.choose("fused_mlp", "auto", np.zeros((1, 2), np.float32)) == "cpp"


def test_unknown_backend_name_is_a_value_error():
    with pytest.raises(ValueError, match="backend='cuda'"):
        rf.ops.fused_mlp(torch.zeros(1, 2), [torch.zeros(3, 2)], [None], backend="cuda")


def test_env_var_forces_backend(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "torch")
    assert dispatch.choose("fused_mlp", "auto", torch.zeros(1, 2)) == "torch"
    monkeypatch.setenv(dispatch.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=dispatch.ENV_VAR):
        dispatch.choose("fused_mlp", "auto", torch.zeros(1, 2))


def test_explicit_backend_that_cannot_run_raises(monkeypatch):
    monkeypatch.setitem(dispatch._status, "triton", (False, "test: pretend triton is missing"))
    monkeypatch.delitem(dispatch._loaded, "triton", raising=False)
    with pytest.raises(RuntimeError, match="pretend triton is missing"):
        rf.ops.fused_mlp(torch.zeros(1, 2), [torch.zeros(3, 2)], [None], backend="triton")
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    with pytest.raises(RuntimeError, match="pretend triton is missing"):
        rf.ops.fused_mlp(torch.zeros(1, 2), [torch.zeros(3, 2)], [None])


def test_torch_backend_accepts_numpy_and_returns_numpy():
    lin = _lin(3, 5)
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    y = rf.ops.fused_mlp(x, [lin.weight.detach()], [lin.bias.detach()], "relu", "tanh", backend="torch")
    assert isinstance(y, np.ndarray) and y.shape == (4, 5)
    np.testing.assert_allclose(y, torch.tanh(lin(torch.from_numpy(x))).detach().numpy(), rtol=1e-6, atol=1e-6)


def test_manual_seed_reproduces_reference_sampling():
    logits = torch.randn(64, 5)
    rf.manual_seed(123)
    a1, _ = rf.ops.sample_categorical(logits, backend="torch")
    rf.manual_seed(123)
    a2, _ = rf.ops.sample_categorical(logits, backend="torch")
    assert torch.equal(a1, a2)
