"""Long run: 10^6 policy steps with resident memory measured (issue: growth < 1 MiB after warm-up).

    python bench/long_run.py                      # 10^6 steps, prints one JSON line
    python bench/long_run.py --steps 20000 --warmup 2000 --json out.json

Each "step" is one call on the hot path, cycling through the things a long job does:
``forward_exploration`` of a feed-forward PPO module at batch 1 (the env-runner step, lean
path), the same at batch 64, ``forward_inference``, an LSTM module stepped with its state
carried, and every ``--repack-every`` steps a ``set_state`` (which makes the fused plan repack).
RSS is read from /proc/self/statm after ``gc.collect()`` at warm-up end and every
``--sample-every`` steps; the result gives the growth after warm-up and the largest RSS seen.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build():
    import gymnasium as gym
    import torch

    import rlmodule_fast as rf
    from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

    def mod(seed, **cfg):
        torch.manual_seed(seed)
        conf = {"fcnet_hiddens": [64, 64]}
        conf.update(cfg)
        return rf.RLModuleSpec(module_class=PPOTorchRLModule, observation_space=gym.spaces.Box(-1, 1, (8,)),
                               action_space=gym.spaces.Discrete(4), model_config_dict=conf,
                               catalog_class=PPOCatalog).build()

    return mod(0), mod(1, use_lstm=True, lstm_cell_size=32, fcnet_hiddens=[32])


def run(steps: int, warmup: int, sample_every: int, repack_every: int, seed: int = 0) -> dict:
    import numpy as np
    import torch

    ff, rnn = build()
    rng = np.random.default_rng(seed)
    obs1 = rng.standard_normal((1, 8)).astype(np.float32)
    obs64 = rng.standard_normal((64, 8)).astype(np.float32)
    obs_r = torch.from_numpy(rng.standard_normal((4, 1, 8)).astype(np.float32))
    init = rnn.get_initial_state()
    state = {k: v.expand(4, 1, v.shape[-1]).clone() for k, v in init.items()}
    states = [ff.get_state(), {k: v * 0.5 if v.is_floating_point() else v for k, v in ff.get_state().items()}]
    samples = []
    base = None
    t0 = time.perf_counter()
    for i in range(steps):
        k = i % 8
        if k < 5:
            ff.forward_exploration({"obs": obs1})
        elif k == 5:
            ff.forward_exploration({"obs": obs64})
        elif k == 6:
            ff.forward_inference({"obs": obs1})
        else:
            out = rnn.forward_exploration({"obs": obs_r, "state_in": state})
            state = out["state_out"]
        if repack_every and i % repack_every == repack_every - 1:
            ff.set_state(states[(i // repack_every) % 2])
        if i + 1 == warmup:
            gc.collect()
            base = rss_bytes()
            samples.append((i + 1, base))
        elif i + 1 > warmup and (i + 1) % sample_every == 0:
            gc.collect()
            samples.append((i + 1, rss_bytes()))
    elapsed = time.perf_counter() - t0
    gc.collect()
    end = rss_bytes()
    samples.append((steps, end))
    peak = max(r for _, r in samples)
    return {
        "steps": steps, "warmup": warmup, "seconds": round(elapsed, 1),
        "us_per_step": round(elapsed / steps * 1e6, 2),
        "rss_after_warmup_mib": round(base / 2**20, 2) if base else None,
        "rss_end_mib": round(end / 2**20, 2),
        "growth_after_warmup_kib": round((end - base) / 1024, 1) if base else None,
        "max_growth_after_warmup_kib": round((peak - base) / 1024, 1) if base else None,
        "samples": [(s, round(r / 2**20, 3)) for s, r in samples],
        "python": sys.version.split()[0], "torch": torch.__version__,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--warmup", type=int, default=20_000)
    ap.add_argument("--sample-every", type=int, default=100_000)
    ap.add_argument("--repack-every", type=int, default=10_000)
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--max-growth-kib", type=float, default=None, help="exit 1 if growth after warm-up exceeds this")
    a = ap.parse_args(argv)
    res = run(a.steps, a.warmup, a.sample_every, a.repack_every)
    text = json.dumps(res)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text)
    if a.max_growth_kib is not None and res["growth_after_warmup_kib"] > a.max_growth_kib:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
