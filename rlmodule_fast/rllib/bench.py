"""RLlib env-runner sampling throughput: RLlib's DefaultPPOTorchRLModule vs FastPPOTorchRLModule
(``--algo dqn``: DefaultDQNTorchRLModule vs FastDQNTorchRLModule, epsilon-greedy at RLlib's schedule).

    python -m rlmodule_fast.rllib.bench [--algo ppo|dqn] [--steps 4000] [--repeats 5] [--envs 1] [--hiddens 256 256]

Same PPO config for both (CartPole-v1, RLlib's default model unless --hiddens), one
``SingleAgentEnvRunner`` each, built in this process (the code a remote env runner runs, without
the actor round trips), ``sample(num_timesteps=N, explore=True)`` timed; the two runners
alternate ``--repeats`` times and the median env steps/s is printed, plus the batch-size-1
``forward_exploration`` latency of each module (median of 2000 calls, torch.no_grad, the tensor
batch RLlib's connectors hand the module). torch runs with ``--threads`` (default 1: Ray starts
env-runner actors with OMP_NUM_THREADS=1; with 2 intra-op threads on a busy 2-core machine
torch's small GEMMs stall for milliseconds). Needs ray[rllib]. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time


def _runner(module_class, hiddens, envs: int, algo: str = "ppo", *, env_id: str = "CartPole-v1", runner_cls=None,
            model_config: dict | None = None):
    """A PPO (or ``algo="dqn"``: DQN) env runner (``runner_cls``, default RLlib's
    ``SingleAgentEnvRunner``) built in this process; ``model_config`` adds keys to ``fcnet_hiddens``."""
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    model_config = {**({} if hiddens is None else {"fcnet_hiddens": list(hiddens)}), **(model_config or {})}
    config = (
        (DQNConfig() if algo == "dqn" else PPOConfig())
        .environment(env_id)
        .env_runners(num_env_runners=1, num_envs_per_env_runner=envs)
        .rl_module(rl_module_spec=RLModuleSpec(module_class=module_class, model_config=model_config))
        .debugging(seed=0)
    )
    return (runner_cls or SingleAgentEnvRunner)(config=config, worker_index=1)


def _forward_latency(module, n: int = 2000, **kwargs) -> float:
    import torch

    obs = {"obs": torch.zeros(1, 4)}
    times = []
    with torch.no_grad():
        for _ in range(200):
            module.forward_exploration(dict(obs), **kwargs)
        for _ in range(n):
            t0 = time.perf_counter()
            module.forward_exploration(dict(obs), **kwargs)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algo", choices=("ppo", "dqn"), default="ppo")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--envs", type=int, default=1, help="num_envs_per_env_runner")
    ap.add_argument("--hiddens", type=int, nargs="*", default=None, help="fcnet_hiddens (default: RLlib's)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1, as in Ray's env-runner actors, which get OMP_NUM_THREADS=1)")
    args = ap.parse_args(argv)

    import ray
    import torch

    torch.set_num_threads(args.threads)
    if args.algo == "dqn":
        from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule as Default

        from .dqn_module import FastDQNTorchRLModule as Fast
    else:
        from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule as Default

        from .module import FastPPOTorchRLModule as Fast

    runners = {"rllib_default": _runner(Default, args.hiddens, args.envs, args.algo),
               "rlmodule_fast": _runner(Fast, args.hiddens, args.envs, args.algo)}
    # same weights in both
    runners["rlmodule_fast"].module.set_state(runners["rllib_default"].module.get_state())
    rates: dict[str, list] = {k: [] for k in runners}
    for r in runners.values():  # warm-up
        r.sample(num_timesteps=500, explore=True)
    for _ in range(args.repeats):
        for name, r in runners.items():
            t0 = time.perf_counter()
            r.sample(num_timesteps=args.steps, explore=True)
            rates[name].append(args.steps / (time.perf_counter() - t0))
    fast = runners["rlmodule_fast"].module
    result = {
        "algo": args.algo,
        "env": "CartPole-v1",
        "num_envs_per_env_runner": args.envs,
        "fcnet_hiddens": args.hiddens or ("RLlib default ([256, 256], dueling)" if args.algo == "dqn"
                                          else "RLlib default ([256, 256], vf_share_layers=False)"),
        "steps_per_sample": args.steps,
        "repeats": args.repeats,
        "env_steps_per_s_median": {k: round(statistics.median(v), 1) for k, v in rates.items()},
        "env_steps_per_s_all": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "forward_exploration_B1_us_median": {k: round(_forward_latency(r.module, **({"t": 5000} if args.algo == "dqn" else {})), 1)
                                             for k, r in runners.items()},
        "fast_path": fast.fast_path_info(),
        "versions": {"ray": ray.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }
    d, f = result["env_steps_per_s_median"]["rllib_default"], result["env_steps_per_s_median"]["rlmodule_fast"]
    result["speedup"] = round(f / d, 3)
    print(json.dumps(result, indent=1))
    for r in runners.values():
        r.stop()
    return result


if __name__ == "__main__":
    main()
