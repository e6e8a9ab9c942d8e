"""A masked PPO module, trained with the public API only, learns a task where the mask matters.

The env (``MaskedPicker``, vectorised numpy, written here): each step shows a preference vector
``p`` ([A] in [-1, 1]) and an action mask (a random subset of the A actions, at least two allowed;
RLlib's Dict layout {"action_mask", "observations"}). Reward 1 for the allowed action of highest
preference, 0 for any other allowed action; a masked action would be a bug (the env raises).
Episodes last ``EP_LEN`` steps. The best unmasked action is often masked, so the policy must
combine what it sees with the mask -- which the module does by RLlib's FLOAT_MIN logits.
Uniform over allowed actions scores ~``EP_LEN`` / 3.4; the test asks for >= 0.8 * EP_LEN.

Sampling: ``forward_exploration`` (the fused step on this machine's backend) on numpy batches;
learning: clipped PPO on ``forward_train``'s masked ``action_dist_inputs`` with the value head as
the baseline (steps are independent: advantage = reward - value); a greedy evaluation runs
``forward_inference``. Seeded, a fixed budget of iterations, a few seconds on one CPU thread.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf

A = 6
EP_LEN = 8
NUM_ENVS = 128
ITERS = 20
EPOCHS = 4
MINIBATCH = 256
LR = 3e-3
CLIP = 0.2


class MaskedPicker:
    """NUM_ENVS copies of the task above, stepped together (obs dicts of float32 arrays)."""

    observation_space = gym.spaces.Dict({
        "action_mask": gym.spaces.Box(0.0, 1.0, (A,), np.float32),
        "observations": gym.spaces.Box(-1.0, 1.0, (A,), np.float32),
    })
    action_space = gym.spaces.Discrete(A)

    def __init__(self, n: int, seed: int):
        self.n = n
        self.rng = np.random.default_rng(seed)
        self.t = 0

    def _draw(self) -> dict:
        self.pref = self.rng.uniform(-1, 1, (self.n, A)).astype(np.float32)
        mask = (self.rng.random((self.n, A)) < 0.4).astype(np.float32)
        for _ in range(2):  # at least two allowed actions per row
            mask[np.arange(self.n), self.rng.integers(0, A, self.n)] = 1.0
        self.mask = mask
        self.best = np.where(mask == 1, self.pref, -np.inf).argmax(-1)
        return {"action_mask": mask, "observations": self.pref}

    def reset(self) -> dict:
        self.t = 0
        return self._draw()

    def step(self, actions: np.ndarray):
        if not (self.mask[np.arange(self.n), actions] == 1).all():
            raise AssertionError("a masked action was taken")
        reward = (actions == self.best).astype(np.float32)
        self.t += 1
        done = self.t >= EP_LEN
        obs = self.reset() if done else self._draw()
        return obs, reward, done


def _module(seed: int):
    torch.manual_seed(seed)
    rf.manual_seed(seed)
    return rf.RLModuleSpec(module_class=rf.ppo.PPOTorchRLModule, observation_space=MaskedPicker.observation_space,
                           action_space=MaskedPicker.action_space,
                           model_config_dict={"fcnet_hiddens": [64, 64], "vf_share_layers": False}).build()


def _episode_return(module, env: MaskedPicker, greedy: bool) -> float:
    """Mean return of one episode per env copy."""
    obs, total = env.reset(), np.zeros(env.n)
    for _ in range(EP_LEN):
        with torch.no_grad():
            out = (module.forward_inference if greedy else module.forward_exploration)({"obs": obs})
        obs, r, _ = env.step(np.asarray(out["actions"]))
        total += r
    return float(total.mean())


def train(seed: int = 0) -> dict:
    module = _module(seed)
    env = MaskedPicker(NUM_ENVS, seed)
    optim = torch.optim.Adam(module.parameters(), lr=LR)
    train_dist = module.get_train_action_dist_cls()
    before = _episode_return(module, MaskedPicker(NUM_ENVS, seed + 1), greedy=False)
    history = []
    obs = env.reset()
    for _ in range(ITERS):
        rows = []
        for _ in range(EP_LEN):  # one episode per env copy
            with torch.no_grad():
                out = module.forward_exploration({"obs": obs})
            act = np.asarray(out["actions"])
            nxt, r, _ = env.step(act)
            rows.append((obs, act, np.asarray(out["action_logp"]), r))
            obs = nxt
        b_obs = {k: torch.from_numpy(np.concatenate([o[k] for o, *_ in rows])) for k in rows[0][0]}
        b_act = torch.from_numpy(np.concatenate([a for _, a, _, _ in rows]))
        b_logp = torch.from_numpy(np.concatenate([lp for _, _, lp, _ in rows]))
        b_rew = torch.from_numpy(np.concatenate([r for *_, r in rows]))
        history.append(float(b_rew.sum()) / NUM_ENVS)
        n = b_act.shape[0]
        for _ in range(EPOCHS):
            perm = torch.randperm(n)
            for i in range(0, n, MINIBATCH):
                idx = perm[i:i + MINIBATCH]
                fwd = module.forward_train({"obs": {k: v[idx] for k, v in b_obs.items()}})
                dist = train_dist.from_logits(fwd["action_dist_inputs"])
                adv = b_rew[idx] - fwd["vf_preds"].detach()
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                ratio = torch.exp(dist.logp(b_act[idx]) - b_logp[idx])
                pi_loss = -torch.min(adv * ratio, adv * ratio.clamp(1 - CLIP, 1 + CLIP)).mean()
                vf_loss = (fwd["vf_preds"] - b_rew[idx]).pow(2).mean()
                optim.zero_grad()
                (pi_loss + 0.5 * vf_loss).backward()
                optim.step()
    after = _episode_return(module, MaskedPicker(NUM_ENVS, seed + 2), greedy=True)
    return {"before": before, "after": after, "history": history, "module": module}


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_masked_ppo_learns(one_thread):
    res = train(0)
    # uniform over the allowed actions: EP_LEN / E[#allowed] ~ 2.3 of 8
    assert res["before"] < 0.45 * EP_LEN, res["before"]
    assert res["after"] >= 0.8 * EP_LEN, (
        f"greedy return {res['after']:.2f} < {0.8 * EP_LEN} (before training {res['before']:.2f}); "
        f"training returns per iteration: {[round(h, 2) for h in res['history']]}")
    assert res["history"][-1] > res["history"][0] + 2.0


if __name__ == "__main__":
    import sys
    import time

    torch.set_num_threads(1)
    for s in [int(a) for a in sys.argv[1:]] or [0]:
        t0 = time.time()
        r = train(s)
        print(f"seed {s}: before {r['before']:.2f} after {r['after']:.2f} ({time.time() - t0:.1f} s) "
              f"history {[round(h, 2) for h in r['history'][::5]]}")
