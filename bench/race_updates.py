"""Torn-result race: one thread steps a module's fused forward_inference while another replaces
its weights, alternating two weight sets; counts results that match neither set's output.

    python bench/race_updates.py --seconds 8

Covers ``PPOTorchRLModule.load_state_dict`` and (with ray[rllib]) ``FastPPOTorchRLModule.set_state``
(the path of RLlib's weight syncs). Weights are multiples of 2^-10, so both outputs are exact.
"""
from __future__ import annotations

import argparse
import threading
import time

import gymnasium as gym
import numpy as np
import torch

import rlmodule_fast as rf
from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

OBS = gym.spaces.Box(-1, 1, (6,), np.float32)
ACT = gym.spaces.Discrete(4)
CFG = {"fcnet_hiddens": [64, 64]}


def two_weight_sets(mod) -> list:
    g = torch.Generator().manual_seed(7)
    params = dict(mod.named_parameters())
    return [{k: torch.round(torch.randn(v.shape, generator=g) * 64) / 1024 if k in params else v.clone()
             for k, v in mod.state_dict().items()} for _ in range(2)]


def race(mod, update, seconds: float) -> tuple[int, int]:
    """(steps, torn) of stepping ``mod`` while ``update(state)`` alternates two weight sets."""
    states = two_weight_sets(mod)
    obs = torch.from_numpy(np.random.default_rng(0).standard_normal((32, 6)).astype(np.float32))
    outs = []
    for s in states:
        update(s)
        outs.append(mod.forward_inference({"obs": obs})["action_dist_inputs"].clone())
    stop = threading.Event()

    def updater():
        i = 0
        while not stop.is_set():
            update(states[i % 2])
            i += 1

    th = threading.Thread(target=updater)
    th.start()
    steps = torn = 0
    t_end = time.perf_counter() + seconds
    try:
        while time.perf_counter() < t_end:
            o = mod.forward_inference({"obs": obs})["action_dist_inputs"]
            steps += 1
            torn += not any(torch.equal(o, w) for w in outs)
    finally:
        stop.set()
        th.join()
    return steps, torn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    ours = rf.RLModuleSpec(module_class=PPOTorchRLModule, observation_space=OBS, action_space=ACT,
                           model_config_dict=CFG, catalog_class=PPOCatalog).build()
    steps, torn = race(ours, ours.load_state_dict, args.seconds)
    print(f"PPOTorchRLModule.load_state_dict: {steps} steps, {torn} torn")
    try:
        from rlmodule_fast.rllib import FastPPOTorchRLModule
        fast = FastPPOTorchRLModule(observation_space=OBS, action_space=ACT, model_config=CFG)
    except ImportError as e:
        print(f"FastPPOTorchRLModule: skipped ({e})")
        return
    steps, torn = race(fast, fast.set_state, args.seconds)
    print(f"FastPPOTorchRLModule.set_state: {steps} steps, {torn} torn")


if __name__ == "__main__":
    main()
