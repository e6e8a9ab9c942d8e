"""``rf.rllib.FastEnvRunner``: the episodes and metrics RLlib's ``SingleAgentEnvRunner`` builds,
from the fused columnar loop; the stock loop (loudly) where they could differ; PPO on Ray with two
remote fast env runners.

Equivalence is checked step by step against the stock runner with the same weights and seeds:
``explore=False`` (deterministic actions) against RLlib's default module, ``explore=True`` against
the stock runner driving ``FastPPOTorchRLModule`` (the same fused sampler stream, reseeded with
``rf.manual_seed``), and structurally against RLlib's own sampler. Tolerances: the fused C++ step
and torch compute the same float32 ops in a different order (rtol=atol=1e-5; 1e-4 on state and
log-probs, which accumulate over steps); everything discrete (actions, lengths, flags,
lookbacks, dtypes, ids across chunks) is compared exactly.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("ray.rllib")

import tree  # noqa: E402  (dm-tree: installed with ray[rllib])

from ray.rllib.algorithms.ppo import PPOConfig  # noqa: E402
from ray.rllib.core.rl_module.rl_module import RLModuleSpec  # noqa: E402
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner  # noqa: E402
from ray.rllib.utils.spaces.space_utils import batch  # noqa: E402

import rlmodule_fast as rf  # noqa: E402
from rlmodule_fast.rllib import FastEnvRunner, FastPPOTorchRLModule  # noqa: E402

LSTM = {"use_lstm": True, "lstm_cell_size": 8, "fcnet_hiddens": [16]}   # separate critic: nested state
LSTM_SHARED = {**LSTM, "vf_share_layers": True}                            # one encoder: {"h", "c"}
# sample() calls of each comparison: chunks cut and continued (shorter and longer than an
# episode), whole episodes, an empty sample, a forced reset
CALLS = [dict(num_timesteps=7), dict(num_timesteps=30), dict(num_timesteps=3), dict(num_episodes=2),
         dict(num_timesteps=0), dict(num_timesteps=12, force_reset=True)]
# per-connector timers of the module-to-env pipeline: those connectors do not run in the fast loop
NOT_LOGGED = "module_to_env_connector/timers/connectors/"


def config(env: str, n: int, model_config: dict, module_class=None, actions: dict | None = None, **env_runners):
    """PPO's config for ``env`` with n sub-envs per runner; ``actions``: environment() options
    (normalize_actions / clip_actions)."""
    spec = RLModuleSpec(model_config=dict(model_config)) if module_class is None else \
        RLModuleSpec(module_class=module_class, model_config=dict(model_config))
    return (PPOConfig().environment(env, **(actions or {}))
            .env_runners(num_env_runners=0, num_envs_per_env_runner=n, **env_runners)
            .rl_module(rl_module_spec=spec).debugging(seed=3))


def runners(cfg):
    stock = SingleAgentEnvRunner(config=cfg, worker_index=1)
    fast = FastEnvRunner(config=cfg, worker_index=1)
    fast.module.set_state(stock.module.get_state())
    return stock, fast


def _data(buf):
    """A buffer's data as (numpy struct, finalized)."""
    if buf.finalized:
        return buf.data, True
    return (batch(buf.data) if len(buf.data) else None), False


def assert_same_episodes(got: list, want: list, what: str, *, values: bool = True) -> None:
    """Same chunks, in order: lengths, t_started, flags, lookbacks, numpy-ness, dtypes, shapes,
    infos and (``values``) the data within float tolerance."""
    assert len(got) == len(want), f"{what}: {len(got)} episodes != stock's {len(want)}"
    for j, (g, w) in enumerate(zip(got, want)):
        at = f"{what}[{j}]"
        assert (len(g), g.t_started, bool(g.is_terminated), bool(g.is_truncated), g.is_numpy) == \
               (len(w), w.t_started, bool(w.is_terminated), bool(w.is_truncated), w.is_numpy), at
        assert g.infos.data == w.infos.data and g.infos.lookback == w.infos.lookback, f"{at}: infos"
        assert sorted(g.extra_model_outputs) == sorted(w.extra_model_outputs), f"{at}: extra_model_outputs keys"
        bufs = [("observations", g.observations, w.observations), ("actions", g.actions, w.actions),
                ("rewards", g.rewards, w.rewards)]
        bufs += [(k, g.extra_model_outputs[k], w.extra_model_outputs[k]) for k in w.extra_model_outputs]
        for name, bg, bw in bufs:
            assert bg.lookback == bw.lookback, f"{at}.{name}: lookback {bg.lookback} != {bw.lookback}"
            (dg, fg), (dw, fw) = _data(bg), _data(bw)
            assert fg == fw, f"{at}.{name}: finalized {fg} != {fw}"
            if dw is None:
                assert dg is None, f"{at}.{name}"
                continue
            tree.assert_same_structure(dg, dw)
            for u, v in zip(tree.flatten(dg), tree.flatten(dw)):
                u, v = np.asarray(u), np.asarray(v)
                assert (u.dtype, u.shape) == (v.dtype, v.shape), \
                    f"{at}.{name}: {u.dtype}{u.shape} != {v.dtype}{v.shape}"
                if not values:
                    continue
                if name in ("actions", "observations", "rewards") and u.dtype.kind in "iub":
                    np.testing.assert_array_equal(u, v, err_msg=f"{at}.{name}")
                else:
                    tol = 1e-4 if name in ("state_out", "action_logp", "observations", "rewards") else 1e-5
                    np.testing.assert_allclose(u, v, rtol=tol, atol=tol, err_msg=f"{at}.{name}")


def id_pattern(chunks_per_call: list) -> list:
    """Episode ids replaced by their order of first appearance (ids are random uuids)."""
    seen: dict = {}
    return [[seen.setdefault(e.id_, len(seen)) for e in chunks] for chunks in chunks_per_call]


def metric_keys(d: dict, prefix: str = "") -> set:
    out = set()
    for k, v in d.items():
        out |= metric_keys(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k}
    return out


def sync_weights(stock, fast, seq_no: int) -> None:
    """A learner's weight sync (``set_state`` with new weights and a weights sequence number)
    into both runners, between two sample() calls."""
    state = stock.module.get_state()
    rng = np.random.default_rng(seq_no)
    state = {k: (np.asarray(v) + 0.05 * rng.standard_normal(np.shape(v))).astype(np.float32)
             for k, v in state.items()}
    for r in (stock, fast):
        r.set_state({"rl_module": state, "weights_seq_no": seq_no})


def compare(stock, fast, explore: bool, seed_stream: bool = False) -> None:
    got_all, want_all = [], []
    for j, kw in enumerate(CALLS):
        if j == 3:
            sync_weights(stock, fast, seq_no=7)
        if seed_stream:
            rf.manual_seed(11)
        want = stock.sample(explore=explore, **kw)
        if seed_stream:
            rf.manual_seed(11)
        got = fast.sample(explore=explore, **kw)
        assert_same_episodes(got, want, f"sample({kw})")
        got_all.append(got)
        want_all.append(want)
    assert id_pattern(got_all) == id_pattern(want_all), "episode ids continued across sample() calls differently"
    seq = {int(s) for eps in got_all[3:] for e in eps for s in e.extra_model_outputs["weights_seq_no"].data}
    assert seq == {7}, seq
    assert fast.fast_path_info()["active"], fast.fast_path_info()
    mg, mw = fast.get_metrics(), stock.get_metrics()
    assert metric_keys(mg) == {k for k in metric_keys(mw) if not k.startswith(NOT_LOGGED)}
    for k in ("num_env_steps_sampled_lifetime", "num_episodes_lifetime", "episode_len_mean", "num_episodes"):
        assert mg[k].peek() == mw[k].peek(), k
    np.testing.assert_allclose(mg["episode_return_mean"].peek(), mw["episode_return_mean"].peek(), rtol=1e-5)


@pytest.mark.parametrize("env,n,model_config,vectorize", [
    ("CartPole-v1", 2, {"fcnet_hiddens": [32, 32]}, "sync"),
    ("CartPole-v1", 3, LSTM, "sync"),
    ("Pendulum-v1", 2, {"fcnet_hiddens": [16]}, "async"),   # Box actions, unsquashed for the env
], ids=["mlp-cartpole-x2", "lstm-cartpole-x3", "mlp-pendulum-x2-async"])
def test_deterministic_episodes_match_stock_runner(env, n, model_config, vectorize):
    """explore=False against RLlib's own DefaultPPOTorchRLModule (which FastEnvRunner builds as
    FastPPOTorchRLModule): the same chunks, step by step, and the same metrics."""
    stock, fast = runners(config(env, n, model_config, gym_env_vectorize_mode=vectorize))
    assert type(stock.module).__name__ == "DefaultPPOTorchRLModule" and fast.fast_path_info()["module_swapped"]
    try:
        compare(stock, fast, explore=False)
    finally:
        stock.stop()
        fast.stop()


@pytest.mark.parametrize("env,n,model_config,actions", [
    ("CartPole-v1", 3, {"fcnet_hiddens": [32, 32]}, {}),
    ("Pendulum-v1", 2, LSTM_SHARED, {"normalize_actions": False, "clip_actions": True}),
], ids=["mlp-cartpole-x3", "lstm-shared-pendulum-x2-clip"])
def test_exploring_episodes_match_stock_runner_same_stream(env, n, model_config, actions):
    """explore=True: with FastPPOTorchRLModule in the stock runner both draw from the fused
    sampler's stream, so the sampled chunks must be the same too. Then explore=False: this
    module's inference outputs (the mode and its log-probability)."""
    stock, fast = runners(config(env, n, model_config, FastPPOTorchRLModule, actions))
    compare(stock, fast, explore=True, seed_stream=True)
    compare(stock, fast, explore=False)


def signature(ep) -> tuple:
    """What a chunk holds, apart from its values and length: keys, dtypes, trailing shapes,
    lookbacks, numpy-ness."""
    bufs = {"observations": ep.observations, "actions": ep.actions, "rewards": ep.rewards, **ep.extra_model_outputs}
    return ep.is_numpy, tuple(sorted(
        (k, b.lookback if ep.t_started else 0, tuple((np.asarray(x).dtype.str, np.asarray(x).shape[1:])
                                                     for x in tree.flatten(_data(b)[0])))
        for k, b in bufs.items()))


def test_exploring_episodes_have_stock_structure():
    """explore=True against RLlib's own sampler (other draws): chunks of the same make-up."""
    stock, fast = runners(config("CartPole-v1", 2, LSTM))
    for _ in range(2):
        want, got = stock.sample(explore=True, num_timesteps=24), fast.sample(explore=True, num_timesteps=24)
        assert 24 <= sum(len(e) for e in got) < 26
        assert {signature(e) for e in got} == {signature(e) for e in want}


def test_random_actions_match_stock_runner():
    stock, fast = runners(config("CartPole-v1", 2, {"fcnet_hiddens": [8]}))
    for r in (stock, fast):
        r.env.action_space.seed(5)
    for kw in (dict(num_timesteps=25), dict(num_timesteps=9), dict(num_episodes=2)):
        assert_same_episodes(fast.sample(random_actions=True, **kw), stock.sample(random_actions=True, **kw),
                             f"random_actions {kw}")


def test_custom_connector_runs_stock_loop_loudly(caplog):
    from ray.rllib.connectors.env_to_module import FlattenObservations

    cfg = config("CartPole-v1", 2, {"fcnet_hiddens": [8]},
                 env_to_module_connector=lambda env, spaces, device: [FlattenObservations()])
    with caplog.at_level(logging.WARNING, logger="rlmodule_fast"):
        r = FastEnvRunner(config=cfg, worker_index=1)
        eps = r.sample(num_timesteps=20)
    info = r.fast_path_info()
    assert not info["active"] and "connector" in info["reason"] and not info["module_swapped"], info
    assert any("stock sampling loop" in m and "connector" in m for m in caplog.messages), caplog.messages
    assert sum(len(e) for e in eps) >= 20 and info["fast_env_steps"] == 0


def test_unfusable_step_runs_stock_loop_loudly(monkeypatch, caplog):
    r = FastEnvRunner(config=config("CartPole-v1", 2, {"fcnet_hiddens": [8]}), worker_index=1)
    r.sample(num_timesteps=10)
    assert r.fast_path_info()["active"]
    monkeypatch.setenv("RLMODULE_FAST_BACKEND", "torch")
    with caplog.at_level(logging.WARNING, logger="rlmodule_fast"):
        eps = r.sample(num_timesteps=10)
    info = r.fast_path_info()
    assert not info["active"] and info["reason"], info
    assert any("stock sampling loop" in m for m in caplog.messages) and any("switching" in m for m in caplog.messages)
    assert sum(len(e) for e in eps) >= 10
    monkeypatch.delenv("RLMODULE_FAST_BACKEND")
    r.sample(num_timesteps=10)
    assert r.fast_path_info()["active"]


@pytest.fixture(scope="module")
def ray_session():
    import ray

    if ray.is_initialized():  # another module (or RLlib's build()) left a session running
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ppo_trains_on_two_remote_fast_env_runners(ray_session):
    """PPO via config.build_algo() with 2 remote FastEnvRunner actors: both sample through the
    fused loop, with the learner's weights after each sync."""
    cfg = (PPOConfig().environment("CartPole-v1")
           .env_runners(env_runner_cls=FastEnvRunner, num_env_runners=2, num_envs_per_env_runner=2)
           .training(train_batch_size_per_learner=200, minibatch_size=100, num_epochs=1)
           .rl_module(model_config={"fcnet_hiddens": [16]}).debugging(seed=0))
    algo = cfg.build_algo()
    try:
        results = [algo.train() for _ in range(2)]
        for res in results:
            assert res["env_runners"]["num_env_steps_sampled"] >= 200
            assert np.isfinite(res["env_runners"]["episode_return_mean"])

        def probe(runner):
            import rlmodule_fast

            return runner.fast_path_info(), rlmodule_fast.__file__, \
                {k: np.asarray(v) for k, v in runner.module.get_state().items()}

        learner = algo.learner_group.get_state(components="learner/rl_module/default_policy")
        learner = learner["learner"]["rl_module"]["default_policy"]
        algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group)
        probes = algo.env_runner_group.foreach_env_runner(probe, local_env_runner=False)
        assert len(probes) == 2
        for info, path, state in probes:
            assert info["active"] and info["fast_env_steps"] >= 50, info
            assert path == rf.__file__, f"remote runner imported {path}, not this tree's {rf.__file__}"
            for k, v in state.items():
                np.testing.assert_array_equal(v, np.asarray(learner[k]), err_msg=f"remote runner weight {k}")
    finally:
        algo.stop()
