"""The ONNX Runtime providers of ``rlmodule-fast-bench`` (``rlmodule_fast.bench.ort``): numpy
sampling agrees with the torch distributions, the exported logits with the torch layers, and
without onnxruntime every ORT row is "n/a" with the reason. Never timings."""
from __future__ import annotations

import importlib.util
import json
import math
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlmodule_fast import RLModuleSpec
from rlmodule_fast import distributions as D
from rlmodule_fast.bench import cases as C
from rlmodule_fast.bench import ort as O
from rlmodule_fast.bench.__main__ import main
from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

HAVE_ORT = O.ort_status()[0]
needs_ort = pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime / onnx not installed (pip install onnxruntime onnx)")
TINY = ["--budget", "0.002", "--blocks", "2", "--no-progress"]


def hide_ort(monkeypatch):
    """Make onnxruntime look absent (as on a machine without it), whether installed or not."""
    real = importlib.util.find_spec

    def find_spec(name, *a, **k):
        if name.split(".")[0] == "onnxruntime":
            return None
        return real(name, *a, **k)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)


def module(obs_dim=4, action_space=None, **cfg):
    torch.manual_seed(0)
    return RLModuleSpec(module_class=PPOTorchRLModule,
                        observation_space=gym.spaces.Box(-1, 1, (obs_dim,), np.float32),
                        action_space=action_space or gym.spaces.Discrete(3),
                        model_config_dict={"fcnet_hiddens": [16, 16], **cfg}, catalog_class=PPOCatalog).build()


# ---- numpy sampling: the same distribution as the module's ------------------------------------
@pytest.mark.parametrize("space", [gym.spaces.Discrete(5), gym.spaces.Discrete(3, start=2),
                                   gym.spaces.MultiDiscrete([3, 2, 4]), gym.spaces.Box(-1, 1, (3,), np.float32)],
                         ids=["discrete", "discrete-start", "multidiscrete", "box"])
def test_numpy_sampler_logp_matches_torch_distribution(space):
    rng = np.random.default_rng(1)
    dist_cls = PPOCatalog(gym.spaces.Box(-1, 1, (2,), np.float32), space, {}).action_dist_cls
    if isinstance(space, gym.spaces.Box):
        width = 2 * space.shape[0]
    else:
        width = int(np.sum(space.nvec)) if isinstance(space, gym.spaces.MultiDiscrete) else int(space.n)
    logits = rng.standard_normal((64, width)).astype(np.float32)
    a, logp = O.numpy_sampler(space, seed=0, dist_cls=dist_cls)(logits)
    assert a.shape[0] == 64 and logp.shape == (64,)
    if not isinstance(space, gym.spaces.Box):  # Gaussian samples are not clipped to the bounds (as RLlib)
        assert all(space.contains(np.asarray(x, dtype=space.dtype)) for x in a)
    torch_a = torch.from_numpy(np.asarray(a - (space.start if isinstance(space, gym.spaces.Discrete) else 0)))
    ref = dist_cls.from_logits(torch.from_numpy(logits)).logp(torch_a).numpy()
    np.testing.assert_allclose(logp, ref, rtol=1e-4, atol=1e-4)


def test_numpy_categorical_sampler_draws_the_softmax():
    logits = np.log(np.array([[0.7, 0.2, 0.1]], dtype=np.float32)).repeat(20000, axis=0)
    a, _ = O.numpy_sampler(gym.spaces.Discrete(3), seed=3)(logits)
    freq = np.bincount(a, minlength=3) / len(a)
    np.testing.assert_allclose(freq, [0.7, 0.2, 0.1], atol=0.02)


def test_numpy_gaussian_sampler_moments():
    mean_logstd = np.tile(np.array([[1.0, -2.0, math.log(0.5), 0.0]], dtype=np.float32), (20000, 1))
    a, _ = O.numpy_sampler(gym.spaces.Box(-1, 1, (2,), np.float32), seed=4)(mean_logstd)
    np.testing.assert_allclose(a.mean(0), [1.0, -2.0], atol=0.03)
    np.testing.assert_allclose(a.std(0), [0.5, 1.0], atol=0.03)


def test_numpy_sampler_refuses_other_distributions():
    with pytest.raises(O.OrtUnavailable, match="TorchCategorical"):
        O.numpy_sampler(gym.spaces.Discrete(3), dist_cls=D.TorchDiagGaussian)
    with pytest.raises(O.OrtUnavailable, match="not supported"):
        O.numpy_sampler(gym.spaces.Box(-1, 1, (2, 2), np.float32))


# ---- the exported policy: same weights, same logits -------------------------------------------
@needs_ort
@pytest.mark.parametrize("kind", ["discrete", "gaussian", "multidiscrete", "lstm", "lstm-separate"])
def test_ort_policy_logits_match_the_torch_layers(kind):
    space = {"gaussian": gym.spaces.Box(-1, 1, (2,), np.float32),
             "multidiscrete": gym.spaces.MultiDiscrete([3, 2])}.get(kind)
    cfg = {}
    if kind.startswith("lstm"):
        cfg = {"use_lstm": True, "lstm_cell_size": 8, "fcnet_hiddens": [16],
               "vf_share_layers": kind == "lstm"}
    m = module(action_space=space, **cfg)
    B = 5
    obs = np.random.default_rng(0).standard_normal((B, 4)).astype(np.float32)
    state = None
    batch = {"obs": torch.from_numpy(obs)}
    if m.is_stateful():
        state = C._map_leaves(m.get_initial_state(), lambda v: np.full((B, v.shape[-1]), 0.1, np.float32))
        batch = {"obs": torch.from_numpy(obs)[:, None],
                 "state_in": C._map_leaves(state, lambda v: torch.from_numpy(v)[:, None])}
    p = O.OrtPolicy(m, obs, state, seed=0)
    assert p.exporter.startswith("torch.onnx.export") and p.max_abs_diff < 1e-4
    leaves = [] if state is None else [O._get(state, path) for _, path in O._state_leaves(state)]
    got = p.logits(obs, *leaves)
    with C.forced_backend("torch"), torch.no_grad():
        ref = m.forward_train(batch)["action_dist_inputs"].reshape(B, -1).numpy()
    np.testing.assert_allclose(got[0], ref, rtol=1e-4, atol=1e-5)
    a, logp, *state_out = p.step(obs, *leaves)
    assert len(a) == B and logp.shape == (B,) and len(state_out) == len(leaves)
    assert a.shape == (B, *m.action_space.shape)


@needs_ort
def test_fused_mlp_ort_row_runs():
    case = next(c for c in C.cases(ops=["fused_mlp"], batches=[3]) if "ort" in c.providers)
    b = case.build("ort", C.Context())
    (y,) = b.fn()
    assert y.shape == (3, 2) and "torch.onnx.export" in b.note


@needs_ort
def test_ort_rows_side_by_side_in_json(tmp_path, capsys):
    js = tmp_path / "r.json"
    argv = ["--quick", "--ops", "policy_step,fused_mlp", "--batches", "2", "--providers",
            "torch-eager,cpp,ort,ort-sampling", "--no-sampling", "--json", str(js), *TINY]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "vs ort-sampling" in out and "vs ort" in out
    res = json.loads(js.read_text())
    assert res["providers"]["ort"].startswith("ok") and "1 intra-op thread" in res["providers"]["ort"]
    rows = {(r["op"], r["provider"]): r for r in res["ops"]}
    assert ("fused_mlp", "ort-sampling") not in rows  # logits-only op: no sampling row
    for key in [("policy_step", "ort"), ("policy_step", "ort-sampling"), ("fused_mlp", "ort")]:
        assert "na" not in rows[key], rows[key]
        assert rows[key]["median_us"] > 0 and "torch.onnx.export" in rows[key]["note"]
    assert rows[("policy_step", "ort-sampling")]["speedup_vs_ort"] == 1.0
    assert rows[("fused_mlp", "ort")]["speedup_vs_ort"] == 1.0
    assert rows[("policy_step", "cpp")]["speedup_vs_ort"] is not None


# ---- without onnxruntime: n/a with the reason, the run goes on ---------------------------------
def test_without_onnxruntime_rows_say_na_with_reason(tmp_path, capsys, monkeypatch):
    hide_ort(monkeypatch)
    ok, why = O.ort_status()
    assert not ok and "onnxruntime" in why and "not installed" in why
    js = tmp_path / "r.json"
    argv = ["--quick", "--ops", "policy_step,fused_mlp", "--batches", "2", "--providers",
            "torch-eager,cpp,ort,ort-sampling", "--envs", "CartPole-v1", "--num-envs", "1", "--drivers",
            "env-alone,ort-sampling", "--sampling-time", "0.01", "--repeats", "1", "--json", str(js), *TINY]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "ort-sampling: onnxruntime" in out and "pip install onnxruntime" in out  # the reason, printed
    res = json.loads(js.read_text())
    assert res["providers"]["ort"].startswith("n/a: onnxruntime")
    ort_rows = [r for r in res["ops"] if r["provider"].startswith("ort")]
    assert len(ort_rows) == 3  # policy_step: ort, ort-sampling; fused_mlp: ort
    assert all("onnxruntime" in r["na"] and "not installed" in r["na"] for r in ort_rows)
    assert all(r.get("speedup_vs_ort") is None for r in res["ops"])
    samp = {r["driver"]: r for r in res["sampling"]}
    assert "not installed" in samp["ort-sampling"]["na"] and samp["env-alone"]["steps_per_s"] > 0
    with pytest.raises(O.OrtUnavailable, match="not installed"):
        O.OrtPolicy(module(), np.zeros((2, 4), np.float32))
