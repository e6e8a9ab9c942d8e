"""SAC learns Pendulum-v1, written against the public API only: an ``rf.sac.SACTorchRLModule``
built from an ``rf.RLModuleSpec`` samples through ``forward_exploration`` (the fused
squashed-Gaussian step), learns from ``forward_train``'s columns with RLlib's SAC losses
(critic, actor, temperature; ``sac_losses`` below), syncs its target Q networks through
``get_target_network_pairs``; a small loop of our own, seeded (one torch thread), bounded in steps.

Settings an SAC user would pick for Pendulum (its 200-step episodes make gamma=0.98 enough):
[64, 64] nets, lr 1e-3 for actor, critics and alpha, batch 128, one update per env step after
250 random steps, tau 0.01. Measured here (seeds 0-5): the deterministic policy swings up after
1500-2250 env steps (1250-2000 updates), 10-30 s on a loaded 2-core machine; the budget is 4000
steps. "Learned": the deterministic policy's mean return over 5 seeded evaluation episodes reaches
-400 (untrained: -1076 to -1405; the learned policies: -133 to -379 at the first evaluation past
the goal). Broken losses never get there in 4000 steps (best returns: actor's logp sign flipped
-1076 to -1283 over seeds 0-2; actor minimising Q -1072; no target sync -1040), and then the test
takes ~60 s.
"""
from __future__ import annotations

import time

import gymnasium as gym
import numpy as np
import torch

import rlmodule_fast as rf

MAX_STEPS, WARMUP, BATCH, HIDDEN = 4000, 250, 128, 64
GAMMA, TAU, LR, TARGET_ENTROPY = 0.98, 0.01, 1e-3, -1.0  # target entropy: -|A| (RLlib's "auto")
EVAL_EVERY, EVAL_EPISODES, GOAL = 250, 5, -400.0


def sac_losses(fwd: dict, rewards: torch.Tensor, terminateds: torch.Tensor, log_alpha: torch.Tensor,
               gamma: float, target_entropy: float) -> tuple:
    """RLlib's continuous SAC losses (sac_torch_learner.py) on ``forward_train``'s columns.

    fwd: ``qf_preds`` / ``qf_twin_preds`` / ``q_target_next`` / ``q_curr`` / ``logp_resampled`` /
    ``logp_next_resampled``, each [B] float32; rewards, terminateds: [B] float32; log_alpha: a
    scalar leaf tensor. Returns (critic, actor, alpha) losses, scalars."""
    alpha = log_alpha.exp().detach()
    q_next = fwd["q_target_next"] - alpha * fwd["logp_next_resampled"]
    q_target = (rewards + gamma * (1.0 - terminateds) * q_next).detach()
    critic = 0.5 * ((fwd["qf_preds"] - q_target) ** 2).mean() + 0.5 * ((fwd["qf_twin_preds"] - q_target) ** 2).mean()
    actor = (alpha * fwd["logp_resampled"] - fwd["q_curr"]).mean()
    alpha_loss = -(log_alpha * (fwd["logp_resampled"].detach() + target_entropy)).mean()
    return critic, actor, alpha_loss


def rescale(a: np.ndarray, space: gym.spaces.Box) -> np.ndarray:
    """[-1, 1] -> [low, high] (RLlib's unsquash_action for normalize_actions=True)."""
    return space.low + (a + 1.0) * (space.high - space.low) / 2.0


def deterministic_return(module, episodes: int = EVAL_EPISODES) -> float:
    """Mean return of ``forward_inference``'s tanh(mean) actions over seeded Pendulum episodes."""
    env = gym.make("Pendulum-v1")
    total = 0.0
    for i in range(episodes):
        obs, _ = env.reset(seed=10_000 + i)
        done = False
        while not done:
            a = module.forward_inference({"obs": obs[None]})["actions"][0].numpy()
            obs, r, term, trunc, _ = env.step(rescale(a, env.action_space))
            total += r
            done = term or trunc
    return total / episodes


def run_sac(seed: int = 0, max_steps: int = MAX_STEPS, goal: float = GOAL) -> dict:
    """Train SAC on Pendulum-v1 until the deterministic policy's return reaches ``goal`` (checked
    every EVAL_EVERY env steps) or ``max_steps`` env steps; returns the module, the untrained and
    best returns, env steps and seconds."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rf.manual_seed(seed)
    rng = np.random.default_rng(seed)
    env = gym.make("Pendulum-v1")
    m = rf.RLModuleSpec(module_class=rf.sac.SACTorchRLModule, observation_space=env.observation_space,
                        action_space=env.action_space,
                        model_config_dict={"fcnet_hiddens": [HIDDEN, HIDDEN], "fusionnet_hiddens": [HIDDEN],
                                           "fcnet_activation": "relu", "twin_q": True}).build()
    m.make_target_networks()
    pi_params = list(m.pi_encoder.parameters()) + list(m.pi.parameters())
    q_params = [p for n, p in m.named_parameters() if n.startswith(("qf", "qf_twin")) and p.requires_grad]
    log_alpha = torch.zeros((), requires_grad=True)  # RLlib's initial_alpha=1.0
    opts = [torch.optim.Adam(pi_params, LR), torch.optim.Adam(q_params, LR), torch.optim.Adam([log_alpha], LR)]
    pairs = m.get_target_network_pairs()

    obs_dim = env.observation_space.shape[0]
    buf = {k: np.zeros((max_steps, d), np.float32) for k, d in (("obs", obs_dim), ("new_obs", obs_dim), ("actions", 1))}
    rew, term = np.zeros(max_steps, np.float32), np.zeros(max_steps, np.float32)
    untrained = best = deterministic_return(m)
    obs, _ = env.reset(seed=seed)
    for t in range(max_steps):
        if t < WARMUP:
            a = rng.uniform(-1, 1, (1,)).astype(np.float32)
        else:
            a = m.forward_exploration({"obs": obs[None]})["actions"][0].numpy()
            assert -1.0 <= float(a[0]) <= 1.0
        nxt, r, terminated, truncated, _ = env.step(rescale(a, env.action_space))
        buf["obs"][t], buf["new_obs"][t], buf["actions"][t] = obs, nxt, a
        rew[t], term[t] = r, float(terminated)  # Pendulum only truncates: its targets always bootstrap
        obs = env.reset()[0] if terminated or truncated else nxt
        if t < WARMUP:
            continue
        idx = torch.from_numpy(rng.integers(0, t + 1, BATCH))
        fwd = m.forward_train({k: torch.from_numpy(v)[idx] for k, v in buf.items()})
        losses = sac_losses(fwd, torch.from_numpy(rew)[idx], torch.from_numpy(term)[idx], log_alpha, GAMMA,
                            TARGET_ENTROPY)
        for o in opts:
            o.zero_grad()
        sum(losses).backward()  # the three losses touch disjoint parameters (q_curr records no Q grads)
        for o in opts:
            o.step()
        with torch.no_grad():
            for main, target in pairs:
                for p, q in zip(main.parameters(), target.parameters()):
                    q.lerp_(p, TAU)
        if (t + 1) % EVAL_EVERY == 0:
            best = max(best, deterministic_return(m))
            if best >= goal:
                break
    return {"module": m, "untrained": untrained, "best": best, "steps": t + 1, "secs": time.perf_counter() - t0}


def test_sac_learns_pendulum():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small nets: one thread is fastest (and kind to a shared machine)
    try:
        res = run_sac(seed=0)
    finally:
        torch.set_num_threads(threads)
    assert res["untrained"] < -900, f"untrained return {res['untrained']:.0f} (expected a poor policy before learning)"
    assert res["best"] >= GOAL, (f"deterministic return {res['best']:.0f} < {GOAL} after {res['steps']} env steps "
                                 f"({res['secs']:.1f} s)")
    assert res["module"].fast_path_info()["active"] == rf.backend_info()["cpp"]["available"]
