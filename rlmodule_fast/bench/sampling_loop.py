"""Sampling-loop throughput: env steps per second of a gymnasium vector env driven by a policy.

Drivers (one row each, per env id and number of envs):

=====================  =======================================================================
``env-alone``          random actions (precomputed): the env's own cost, the ceiling
``torch-eager``        ``nn.Sequential`` + ``torch.distributions`` on the module's weights
``rf-torch``           ``module.forward_exploration({"obs": obs})`` under
                       ``RLMODULE_FAST_BACKEND=torch`` + the distribution's ``sample``
``rf-fast``            ``module.forward_exploration({"obs": obs})`` under
                       ``RLMODULE_FAST_BACKEND=cpp``: one fused call returns the actions
``ort-sampling``       the same layers exported to ONNX and run by ONNX Runtime (one intra-op
                       thread), actions sampled in numpy (needs onnxruntime and onnx)
``rllib-module``       RLlib's own ``DefaultPPOTorchRLModule`` (same weights) in the same loop:
                       ``forward_exploration`` + its distribution's ``sample`` (needs ray[rllib])
``rllib-runner``       RLlib's ``SingleAgentEnvRunner.sample(num_timesteps=N, explore=True)``
                       with its ``DefaultPPOTorchRLModule`` (needs ray[rllib])
``rllib-runner-fast``  the same runner with ``rlmodule_fast.rllib.FastPPOTorchRLModule``
``rllib-fast-env-      ``rlmodule_fast.rllib.FastEnvRunner`` (the fused columnar sampling loop)
runner``               with the same config (RLlib's default module class, same weights)
``rllib-runner-lstm``  ``rllib-runner`` / ``rllib-fast-env-runner`` with ``use_lstm=True``
``rllib-fast-env-      (RLlib's default ``lstm_cell_size`` 256)
runner-lstm``
=====================  =======================================================================

RLlib rows carry ``vs_rllib_runner``: the rate over ``rllib-runner``'s (the ``-lstm`` rows: over
``rllib-runner-lstm``'s), same env and number of envs, same run.

The env is ``gym.make_vec(env_id, num_envs=n, vectorization_mode="sync")`` (what RLlib's env
runner builds), autoreset on; the module is ``PPOTorchRLModule`` with ``fcnet_hiddens``
[256, 256] (tanh). Atari (``ATARI_ENVS``, opt-in with ``--envs ALE/Pong-v5``; needs ale-py,
opencv-python-headless and ray[rllib]): each env wrapped by RLlib's
``wrap_atari_for_new_api_stack(dim=84, framestack=4)`` (84x84x4 float32 frames, frameskip 4),
the module RLlib's CNN with the Atari stack ``cases.ATARI_TUNED_FILTERS``. ``rf-fast`` is n/a
while the module's step is not fused (``fast_path_info()`` says why). Each driver runs ``repeats`` timed stretches of about ``time_s`` seconds,
interleaved with the other drivers; the median rate is reported. RLlib runners are built by
``rlmodule_fast.rllib.bench._runner`` (the env-runner benchmark of the interop package).
"""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Callable

import numpy as np
import torch

from .cases import (
    ATARI_TUNED_FILTERS, Unavailable, _rllib_module, eager_policy, forced_backend, image_module, ppo_module, ray_status,
)

DRIVERS = ("env-alone", "torch-eager", "rf-torch", "rf-fast", "ort-sampling", "rllib-module", "rllib-runner",
           "rllib-runner-fast", "rllib-fast-env-runner", "rllib-runner-lstm", "rllib-fast-env-runner-lstm")
#: RLlib env-runner drivers: (module class name, FastEnvRunner?, extra model config)
_RLLIB = {
    "rllib-runner": ("default", False, {}),
    "rllib-runner-fast": ("fast", False, {}),
    "rllib-fast-env-runner": ("default", True, {}),
    "rllib-runner-lstm": ("default", False, {"use_lstm": True}),
    "rllib-fast-env-runner-lstm": ("default", True, {"use_lstm": True}),
}
ENVS = ("CartPole-v1", "Pendulum-v1")
#: opt-in env ids (not in the default run), wrapped as RLlib's Atari examples do
ATARI_ENVS = ("ALE/Pong-v5",)
#: the project's targets for rf-fast (CartPole, 4 -> [256, 256] -> 2, one thread): env steps/s;
#: recorded in the JSON rows ("goal"), not printed
GOALS = {("CartPole-v1", 1): 40_000, ("CartPole-v1", 16): 110_000}


def _vec_env(env_id: str, n: int):
    import gymnasium as gym

    if env_id in ATARI_ENVS:
        import ale_py  # noqa: F401 -- ImportError: the rows say n/a
        from ray.rllib.env.wrappers.atari_wrappers import wrap_atari_for_new_api_stack

        gym.register_envs(ale_py)
        return gym.make_vec(env_id, num_envs=n, vectorization_mode="sync",
                            wrappers=[lambda e: wrap_atari_for_new_api_stack(e, dim=84, framestack=4)],
                            frameskip=1, repeat_action_probability=0.0, full_action_space=False)
    return gym.make_vec(env_id, num_envs=n, vectorization_mode="sync")


def _module(env_id: str, seed: int):
    """The policy of the loop: RLlib's Atari CNN for ATARI_ENVS, else the [256, 256] MLP."""
    if env_id in ATARI_ENVS:
        return image_module((84, 84, 4), 6, ATARI_TUNED_FILTERS, seed=seed)
    return ppo_module(env_id, seed=seed)


def _drivers(env, module, names, seed: int, na: dict) -> dict:
    """{name: (step(obs) -> actions, context factory or None)} for the in-process drivers; a
    driver that cannot run here goes to ``na`` {name: reason} instead."""
    import gymnasium as gym

    n = env.num_envs
    space = env.single_action_space
    rng = np.random.default_rng(seed)
    out: dict = {}
    if "env-alone" in names:
        if isinstance(space, gym.spaces.Discrete):
            table = rng.integers(0, int(space.n), (1024, n)) + int(space.start)
        else:
            table = rng.uniform(space.low, space.high, (1024, n, *space.shape)).astype(space.dtype)
        k = [0]

        def alone(obs):
            k[0] = (k[0] + 1) & 1023
            return table[k[0]]
        out["env-alone"] = (alone, None)
    if "torch-eager" in names:
        step = eager_policy(module)
        out["torch-eager"] = (lambda obs: step(torch.from_numpy(obs))[0].numpy(), None)
    dist_cls = module.get_exploration_action_dist_cls()
    if "rf-torch" in names:
        def rf_torch(obs):
            logits = module.forward_exploration({"obs": obs})["action_dist_inputs"]
            return dist_cls.from_logits(logits).sample().numpy()
        out["rf-torch"] = (rf_torch, lambda: forced_backend("torch"))
    if "rf-fast" in names:
        with forced_backend("cpp"):
            fi = module.fast_path_info()
        if fi.get("active"):
            out["rf-fast"] = (lambda obs: module.forward_exploration({"obs": obs})["actions"].numpy(),
                              lambda: forced_backend("cpp"))
        else:  # forward_exploration would run the torch layers: that is rf-torch, not a fused row
            na["rf-fast"] = f"no fused cpp step for this module: {fi.get('reason')}"
    if "rllib-module" in names:
        try:
            rm = _rllib_module(module)
        except Unavailable as e:
            na["rllib-module"] = str(e)
        else:
            rcls = rm.get_exploration_action_dist_cls()

            def rllib_module(obs):
                logits = rm.forward_exploration({"obs": torch.from_numpy(obs)})["action_dist_inputs"]
                return rcls.from_logits(logits).sample().numpy()
            out["rllib-module"] = (rllib_module, None)
    if "ort-sampling" in names:
        from .ort import OrtPolicy, OrtUnavailable

        try:
            obs0 = np.zeros((n, *env.single_observation_space.shape), dtype=np.float32)
            pol = OrtPolicy(module, obs0, seed=seed)
            out["ort-sampling"] = (lambda obs: pol.step(obs)[0], None)
        except OrtUnavailable as e:
            na["ort-sampling"] = str(e)
    return out


def _run(env, obs, step: Callable, time_s: float) -> tuple:
    """(obs, env steps/s, policy us/iteration, env us/iteration) of about time_s seconds of the
    loop obs -> step -> env.step. The split is read with perf_counter_ns around each half (the
    same ~0.1 us per iteration for every driver)."""
    n = env.num_envs
    clock = time.perf_counter_ns
    iters = t_pol = t_env = 0
    t0 = time.perf_counter()
    deadline = t0 + time_s
    env_step = env.step
    while True:
        for _ in range(32):
            a = clock()
            act = step(obs)
            b = clock()
            obs = env_step(act)[0]
            t_env += clock() - b
            t_pol += b - a
        iters += 32
        now = time.perf_counter()
        if now >= deadline:
            break
    return obs, iters * n / (now - t0), t_pol / iters / 1e3, t_env / iters / 1e3


def _rllib_rates(env_id: str, n: int, names, time_s: float, repeats: int, progress) -> dict:
    """{driver: {"rates": [...]} or {"na": reason}} for the RLlib env-runner drivers."""
    want = [d for d in _RLLIB if d in names]
    if not want:
        return {}
    ok, why = ray_status()
    if not ok:
        return {d: {"na": why} for d in want}
    if env_id in ATARI_ENVS:
        return {d: {"na": "RLlib env-runner rows: gymnasium ids RLlib runs unwrapped only (no Atari wrappers)"}
                for d in want}
    try:
        from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import (
            DefaultPPOTorchRLModule,
        )

        from ..rllib.bench import _runner
        from ..rllib.env_runner import FastEnvRunner
        from ..rllib.module import FastPPOTorchRLModule
    except Exception as e:
        return {d: {"na": f"import failed: {type(e).__name__}: {e}"} for d in want}
    classes = {"default": DefaultPPOTorchRLModule, "fast": FastPPOTorchRLModule}
    threads = torch.get_num_threads()
    runners, res = {}, {}
    for d in want:
        try:
            if progress:
                progress.note(f"building RLlib env runner ({d}, {n} envs)")
            cls, fast_runner, extra = _RLLIB[d]
            runners[d] = _runner(classes[cls], [256, 256], n, env_id=env_id, model_config=extra,
                                 runner_cls=FastEnvRunner if fast_runner else None)
            torch.set_num_threads(threads)  # ray / RLlib set-up may change it
        except Exception as e:
            res[d] = {"na": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"}
    for d, r in runners.items():  # same weights as the stock runner of the same model
        ref = runners.get("rllib-runner-lstm" if d.endswith("-lstm") else "rllib-runner")
        if ref is not None and ref is not r:
            r.module.set_state(ref.module.get_state())
    steps = {}
    for d, r in runners.items():
        t0 = time.perf_counter()
        r.sample(num_timesteps=max(200, 20 * n), explore=True)  # warm-up and rate estimate
        rate = max(200, 20 * n) / (time.perf_counter() - t0)
        steps[d] = max(n, int(rate * time_s))
        res[d] = {"rates": []}
    for _ in range(repeats):
        for d, r in runners.items():
            t0 = time.perf_counter()
            r.sample(num_timesteps=steps[d], explore=True)
            res[d]["rates"].append(steps[d] / (time.perf_counter() - t0))
    for r in runners.values():
        try:
            r.stop()
        except Exception:
            pass
    return res


def run(env_ids=ENVS, num_envs=(1, 16), drivers=DRIVERS, *, time_s: float = 0.5, repeats: int = 5,
        seed: int = 0, progress=None) -> list:
    """Measure every (env id, number of envs, driver). Returns rows {"env", "num_envs",
    "driver", "steps_per_s" (median), "all" (every repeat), "goal" (rf-fast's target or None),
    "policy_us_per_iter", "env_us_per_iter" (in-process drivers: where a loop iteration's time
    goes)} or with "na": reason instead of the rates."""
    rows = []
    for env_id in env_ids:
        try:
            module = _module(env_id, seed)
            env = _vec_env(env_id, num_envs[0])
            env.close()
        except Exception as e:  # e.g. ale-py / ray missing for an Atari env: every row says why
            why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"
            rows += [{"env": env_id, "num_envs": n, "driver": d, "goal": None, "na": why}
                     for n in num_envs for d in drivers]
            continue
        for n in num_envs:
            env = _vec_env(env_id, n)
            obs, _ = env.reset(seed=seed)
            na: dict = {}
            local = _drivers(env, module, drivers, seed, na)
            rates: dict = {d: [] for d in local}
            split: dict = {d: [] for d in local}
            with torch.no_grad():
                for d, (step, ctx) in local.items():  # warm-up (and a failing driver is n/a)
                    try:
                        with ctx() if ctx else contextlib.nullcontext():
                            for _ in range(64):
                                obs, *_ = env.step(step(obs))
                    except Exception as e:
                        na[d] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"
                for rep in range(repeats):
                    for d, (step, ctx) in local.items():
                        if d in na:
                            continue
                        if progress:
                            progress.step(f"sampling {env_id} x{n} {d} ({rep + 1}/{repeats})")
                        with ctx() if ctx else contextlib.nullcontext():
                            obs, rate, pol_us, env_us = _run(env, obs, step, time_s)
                        rates[d].append(rate)
                        split[d].append((pol_us, env_us))
            env.close()
            with torch.no_grad():
                rl = _rllib_rates(env_id, n, drivers, time_s, repeats, progress)
            for d in drivers:
                row = {"env": env_id, "num_envs": n, "driver": d, "goal": GOALS.get((env_id, n)) if d == "rf-fast" else None}
                if d in na:
                    row["na"] = na[d]
                elif d in rates:
                    row.update(steps_per_s=statistics.median(rates[d]), all=[round(r, 1) for r in rates[d]],
                               policy_us_per_iter=round(statistics.median(p for p, _ in split[d]), 2),
                               env_us_per_iter=round(statistics.median(e for _, e in split[d]), 2))
                elif d in rl:
                    if "na" in rl[d]:
                        row["na"] = rl[d]["na"]
                    else:
                        row.update(steps_per_s=statistics.median(rl[d]["rates"]),
                                   all=[round(r, 1) for r in rl[d]["rates"]])
                        ref = rl.get("rllib-runner-lstm" if d.endswith("-lstm") else "rllib-runner", {})
                        if ref.get("rates"):
                            row["vs_rllib_runner"] = round(row["steps_per_s"] / statistics.median(ref["rates"]), 2)
                else:
                    continue
                rows.append(row)
    return rows


def count_steps(env_ids, num_envs, drivers, repeats: int) -> int:
    """Progress-bar units of ``run`` (timed stretches of in-process drivers)."""
    from .ort import ort_status

    local = [d for d in drivers if not d.startswith("rllib-runner") and (d != "ort-sampling" or ort_status()[0])]
    return len(env_ids) * len(num_envs) * len(local) * repeats


__all__ = ["ATARI_ENVS", "DRIVERS", "ENVS", "GOALS", "count_steps", "run"]
