"""DQN learns CartPole-v1 with rf.dqn.DQNTorchRLModule, through the public API only: a tiny
double-Q dueling DQN loop (replay buffer, Huber loss on RLlib's forward_train outputs, hard
target syncs through get_target_network_pairs), acting with forward_exploration(t=...) on the
fused step with the module's own epsilon schedule, judged greedily with forward_inference.

Seeded (rf.manual_seed, env and replay seeds; one torch thread), bounded: at most 10 000 env steps
(~3 000-6 000 needed for seeds 0-2 here, 15-25 s on a loaded 2-core machine). "Learned": the
greedy policy's mean return over 3 evaluation episodes reaches 150 (random play: ~22).
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

import rlmodule_fast as rf
from rlmodule_fast.dqn import DQNTorchRLModule

MAX_STEPS, WARMUP, BATCH, GAMMA, SYNC_EVERY, GOAL = 10_000, 500, 64, 0.99, 500, 150.0


def greedy_return(module, episodes: int = 3) -> float:
    env = gym.make("CartPole-v1")
    total = 0.0
    for i in range(episodes):
        obs, _ = env.reset(seed=1000 + i)
        done = False
        while not done:
            a = int(module.forward_inference({"obs": obs[None]})["actions"][0])
            obs, r, term, trunc, _ = env.step(a)
            total += r
            done = term or trunc
    return total / episodes


def test_dqn_learns_cartpole():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seed = 0
        torch.manual_seed(seed)
        rf.manual_seed(seed)
        env = gym.make("CartPole-v1")
        m = DQNTorchRLModule(observation_space=env.observation_space, action_space=env.action_space,
                             model_config={"fcnet_hiddens": [64, 64], "fcnet_activation": "relu", "dueling": True,
                                           "double_q": True, "epsilon": [(0, 1.0), (3000, 0.02)]})
        assert m.fast_path_info()["active"]
        m.make_target_networks()
        opt = torch.optim.Adam(m.parameters(), lr=1e-3, foreach=True)
        obs_b = np.zeros((MAX_STEPS, 4), np.float32)
        nxt_b = np.zeros((MAX_STEPS, 4), np.float32)
        act_b = np.zeros(MAX_STEPS, np.int64)
        rew_b = np.zeros(MAX_STEPS, np.float32)
        term_b = np.zeros(MAX_STEPS, np.float32)
        rng = np.random.default_rng(seed)
        obs, _ = env.reset(seed=seed)
        best = 0.0
        start = greedy_return(m)
        for t in range(MAX_STEPS):
            a = int(m.forward_exploration({"obs": obs[None]}, t=t)["actions"][0])
            nxt, r, term, trunc, _ = env.step(a)
            obs_b[t], nxt_b[t], act_b[t], rew_b[t], term_b[t] = obs, nxt, a, r, float(term)
            obs = nxt if not (term or trunc) else env.reset()[0]
            if t >= WARMUP and t % 2 == 0:
                idx = torch.from_numpy(rng.integers(0, t + 1, BATCH))
                out = m.forward_train({"obs": torch.from_numpy(obs_b)[idx], "new_obs": torch.from_numpy(nxt_b)[idx]})
                q = out["qf_preds"].gather(1, torch.from_numpy(act_b)[idx, None]).squeeze(1)
                best_next = out["qf_next_preds"].argmax(-1, keepdim=True)  # double Q: online argmax
                q_next = out["qf_target_next_preds"].gather(1, best_next).squeeze(1).detach()
                target = torch.from_numpy(rew_b)[idx] + GAMMA * (1 - torch.from_numpy(term_b)[idx]) * q_next
                loss = torch.nn.functional.smooth_l1_loss(q, target)
                opt.zero_grad()
                loss.backward()
                opt.step()
            if t % SYNC_EVERY == 0 and t >= WARMUP:
                for main, target_net in m.get_target_network_pairs():
                    target_net.load_state_dict(main.state_dict())
            if t % 1000 == 999 and t > 2000:
                best = max(best, greedy_return(m))
                if best >= GOAL:
                    break
        assert start < 60, f"untrained greedy return {start} (expected a poor policy before learning)"
        assert best >= GOAL, f"greedy return {best} < {GOAL} after {t + 1} env steps"
        assert m.epsilon_schedule.current == 0.02 or t < 3000
    finally:
        torch.set_num_threads(threads)
