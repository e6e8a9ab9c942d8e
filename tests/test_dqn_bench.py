"""The ``dqn_step`` benchmark rows compute the same thing: every provider's greedy action
(epsilon 0) agrees with the module's torch Q-values, and the epsilon-greedy providers return
valid actions of shape [B]. No timings are asserted."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rlmodule_fast.bench import cases as C
from rlmodule_fast.bench import dqn_cases as D


def run_providers(case, ctx, B: int, n_actions: int) -> list:
    """Build and call every provider of a dqn_step case: each available one returns B valid
    actions (an unavailable one says why); torch-eager, rf-torch and cpp always run."""
    ran = []
    for p in case.providers:
        try:
            b = case.build(p, ctx)
        except C.Unavailable as e:
            assert str(e), p
            continue
        with torch.no_grad(), b.ctx():
            a = np.asarray(b.fn())
        assert a.shape == (B,) and a.dtype.kind == "i" and ((a >= 0) & (a < n_actions)).all(), p
        ran.append(p)
    assert {"torch-eager", "rf-torch", "cpp"} <= set(ran)
    return ran


def test_dqn_step_providers_agree(monkeypatch):
    monkeypatch.setattr(D, "T", 10**6)  # past the schedule: epsilon 0.05
    ctx = C.Context(device="cpu", quick=True)
    case = next(c for c in C.cases(ops=["dqn_step"], batches=[5]))
    module = D.dqn_module("CartPole-v1", seed=ctx.seed)
    ran = run_providers(case, ctx, B=5, n_actions=2)
    obs = np.random.default_rng(ctx.seed).standard_normal((5, 4), dtype=np.float32)
    with torch.no_grad():
        q = module.compute_q_values({"obs": torch.from_numpy(obs)})["qf_preds"]
    greedy = q.argmax(-1).numpy()
    if "ort" in ran:
        assert np.array_equal(case.build("ort", ctx).fn(), greedy)
    m = ctx._cache[("dqn-module", case.config_id, ctx.seed)]
    assert np.array_equal(m.forward_inference({"obs": obs})["actions"].numpy(), greedy)


def test_vision_dqn_case_providers_agree(monkeypatch):
    """The Nature CNN DQN rows (84x84x4 frames): every provider runs or says why, the cpp row is
    the fused conv step, and the greedy actions of cpp and ort are the torch Q-values' argmax."""
    monkeypatch.setattr(D, "T", 10**6)
    ctx = C.Context(device="cpu", quick=True)
    case = next(c for c in C.cases(ops=["dqn_step"], batches=[2]) if c.config_id == "NatureCNNDQN")
    assert case.id == "dqn_step-NatureCNNDQN-B2" and "rllib" in case.providers
    assert not [c for c in C.cases(ops=["dqn_step"], quick=True) if c.config_id == "NatureCNNDQN"]
    ran = run_providers(case, ctx, B=2, n_actions=6)
    m = ctx._cache[("dqn-module", case.config_id, ctx.seed)]
    assert m.fast_path_info()["active"] and m.af.net.linears[0].in_features == 11 * 11 * 64
    obs = np.random.default_rng(ctx.seed).uniform(-1, 1, (2, 84, 84, 4)).astype(np.float32)
    with torch.no_grad():
        q = m.compute_q_values({"obs": torch.from_numpy(obs)})["qf_preds"]
    greedy = q.argmax(-1).numpy()
    assert np.array_equal(m.forward_inference({"obs": obs})["actions"].numpy(), greedy)
    if "ort" in ran:
        assert np.array_equal(case.build("ort", ctx).fn(), greedy)
