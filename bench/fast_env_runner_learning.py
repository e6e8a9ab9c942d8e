"""Learning unchanged with FastEnvRunner: PPO on CartPole-v1 (RLlib's defaults, one local env
runner), stock ``SingleAgentEnvRunner`` vs ``rlmodule_fast.rllib.FastEnvRunner``, per seed, trained
to 20,000 env steps (5 iterations of 4000). One JSON line per run: the episode_return_mean of each
iteration ("returns", the last is "final"), wall time, the env runner's sample timer per iteration
and (fast runs) ``fast_path_info()``.

    python bench/fast_env_runner_learning.py 0,1,2,3,4 > learning.jsonl

Needs ray[rllib]. Slow on a small machine (PPO's default 30 epochs over 4000 steps per iteration).
"""
import json
import sys
import time

import ray
import torch
from ray.rllib.algorithms.ppo import PPOConfig

from rlmodule_fast.rllib import FastEnvRunner

ENV_STEPS = 20_000


def run(seed: int, which: str) -> dict:
    cfg = PPOConfig().environment("CartPole-v1").env_runners(num_env_runners=0).debugging(seed=seed)
    if which == "fast":
        cfg = cfg.env_runners(env_runner_cls=FastEnvRunner)
    algo = cfg.build_algo()
    try:
        t0, returns, sample_s, steps = time.time(), [], [], 0
        while steps < ENV_STEPS:
            r = algo.train()["env_runners"]
            steps = r["num_env_steps_sampled_lifetime"]
            returns.append(round(float(r["episode_return_mean"]), 2))
            sample_s.append(round(float(r["sample"]), 4))
        info = algo.env_runner.fast_path_info() if which == "fast" else None
        return {"seed": seed, "runner": which, "env_steps": steps, "returns": returns, "final": returns[-1],
                "wall_s": round(time.time() - t0, 1), "sample_timer_s": sample_s, "fast_path": info}
    finally:
        algo.stop()


def main() -> None:
    torch.set_num_threads(1)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    for seed in (int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "0,1,2,3,4").split(",")):
        for which in ("stock", "fast"):
            print(json.dumps(run(seed, which)), flush=True)


if __name__ == "__main__":
    main()
