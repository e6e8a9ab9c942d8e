"""Cost of action masking in the fused policy step (cpp backend, one thread).

Times, interleaved round by round so that machine noise hits both alike:
- plan: ``PolicyPlan.step_flat`` of a PPO module's layers, unmasked vs with a [B, A] float32 mask;
- module: ``forward_exploration`` of the default PPO module on a Box observation vs the same
  network on RLlib's masked Dict observation ({"action_mask", "observations"}).
Reports the best-of-rounds median per call (us) and the masked overhead in percent.

    python bench/mask_overhead.py [--batches 1 256] [--hidden 256 256] [--actions 8] [--rounds 7]
"""
from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np
import torch

import rlmodule_fast as rf
from rlmodule_fast.fastpath import PolicyPlan


def _median_us(fn, n: int) -> float:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        ts.append(time.perf_counter_ns() - t0)
    return statistics.median(ts) / 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    ap.add_argument("--obs", type=int, default=16)
    ap.add_argument("--actions", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the cpp kernels follow torch's thread count (ops.cpp.sync_threads)
    A, O = args.actions, args.obs
    cfg = {"fcnet_hiddens": args.hidden}
    box = gym.spaces.Box(-1, 1, (O,), np.float32)
    masked_space = gym.spaces.Dict({"action_mask": gym.spaces.Box(0, 1, (A,)), "observations": box})
    torch.manual_seed(0)
    plain = rf.RLModuleSpec(module_class=rf.ppo.PPOTorchRLModule, observation_space=box,
                            action_space=gym.spaces.Discrete(A), model_config_dict=cfg).build()
    masked = rf.RLModuleSpec(module_class=rf.ppo.PPOTorchRLModule, observation_space=masked_space,
                             action_space=gym.spaces.Discrete(A), model_config_dict=cfg).build()
    masked.load_state_dict(plain.state_dict())
    assert plain.fast_path_info()["backend"] == "cpp" and masked.fast_path_info()["active"]
    plan = PolicyPlan(plain.policy_layers(), backend="cpp")
    rng = np.random.default_rng(0)
    print(f"cpp backend, 1 thread, obs {O}, hidden {args.hidden}, Discrete({A}); median us per call, "
          f"best of {args.rounds} rounds x {args.calls} calls")
    print(f"{'what':<8}{'B':>6}{'unmasked':>12}{'masked':>12}{'overhead':>10}")
    for B in args.batches:
        obs = rng.standard_normal((B, O)).astype(np.float32)
        mask = (rng.random((B, A)) < 0.5).astype(np.float32)
        mask[:, 0] = 1.0
        cases = {
            "plan": (lambda: plan.step_flat(obs, False), lambda: plan.step_flat(obs, False, mask)),
            "module": (lambda: plain.forward_exploration({"obs": obs}),
                       lambda: masked.forward_exploration({"obs": {"action_mask": mask, "observations": obs}})),
        }
        for what, (f0, f1) in cases.items():
            for f in (f0, f1):
                for _ in range(50):
                    f()
            best0 = best1 = float("inf")
            for _ in range(args.rounds):
                best0 = min(best0, _median_us(f0, args.calls))
                best1 = min(best1, _median_us(f1, args.calls))
            print(f"{what:<8}{B:>6}{best0:>12.2f}{best1:>12.2f}{100 * (best1 / best0 - 1):>9.1f}%")


if __name__ == "__main__":
    main()
