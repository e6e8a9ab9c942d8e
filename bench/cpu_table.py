"""CPU policy-step benchmark: torch eager vs the cpp backend, side by side in one run.

Model: obs 4 -> [256, 256] tanh -> 2 logits (categorical), RLlib's default PPO encoder shape.
Providers per batch size:
  torch-eager   nn.Sequential + torch.distributions.Categorical(logits).sample() / log_prob()
  cpp-plan      rlmodule_fast.fastpath.PolicyPlan.step(obs)          (the whole Python call)
  cpp-raw       the one C++ call inside it (_C.Policy.step)          (no Python checks)
each under torch.set_num_threads(n) (the cpp backend follows torch's thread count) for every n
in --threads. Prints medians (microseconds per call) and torch-eager / cpp ratios.

    python bench/cpu_table.py [--batches 1,16,256,4096] [--threads 1,2] [--samples 30]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rlmodule_fast as rf  # noqa: E402
from rlmodule_fast.fastpath import EncoderLayers, PolicyLayers, PolicyPlan  # noqa: E402


def build(obs_dim=4, hidden=(256, 256), n_actions=2, seed=0):
    torch.manual_seed(seed)
    lins = []
    d = obs_dim
    for h in hidden:
        lins.append(torch.nn.Linear(d, h))
        d = h
    pi = torch.nn.Linear(d, n_actions)
    seq = torch.nn.Sequential(*[m for lin in lins for m in (lin, torch.nn.Tanh())], pi)
    layers = PolicyLayers(actor=EncoderLayers(lins, "tanh"), critic=None, pi=[pi], vf=None, head_activation="relu",
                          dist="categorical", action_sizes=[n_actions], log_std_clip=None)
    return seq, layers


def torch_eager_step(seq, obs):
    with torch.no_grad():
        logits = seq(obs)
        dist = torch.distributions.Categorical(logits=logits)
        a = dist.sample()
        return logits, a, dist.log_prob(a)


def measure(fn, samples: int, min_sample_s: float = 2e-3) -> float:
    """Median over `samples` of the mean time per call (us), each sample >= min_sample_s."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    number = max(1, int(min_sample_s / one))
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times) * 1e6


def providers(seq, plan, obs_t):
    obs_np = obs_t.numpy()
    B = obs_t.shape[0]
    net = plan.impl._net
    none4 = (None, None, None, None)
    return {
        "torch-eager": lambda: torch_eager_step(seq, obs_t),
        "cpp-plan": lambda: plan.step(obs_t),
        "cpp-plan-np": lambda: plan.step(obs_np),
        "cpp-raw": lambda: net.step(obs_np, B, 4, none4, False, False, None),
    }


def machine() -> str:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except Exception:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except Exception:
        commit = "?"
    info = rf.backend_info()["cpp"]
    return (f"cpu: {cpu} ({os.cpu_count()} logical cores), isa: {info.get('isa')}, torch {torch.__version__}, "
            f"numpy {np.__version__}, python {platform.python_version()}, commit {commit}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,16,256,4096")
    ap.add_argument("--threads", default=f"1,{max(1, min(os.cpu_count() or 1, 8))}")
    ap.add_argument("--samples", type=int, default=30)
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    threads = sorted({int(t) for t in args.threads.split(",")})
    seq, layers = build()
    plan = PolicyPlan(layers, backend="cpp")
    print(machine())
    print("model: obs 4 -> [256, 256] tanh -> 2 logits, categorical sample + logp; times: median us per call\n")
    hdr = f"{'threads':>7} {'batch':>6} | {'torch-eager':>11} {'cpp-plan':>9} {'cpp-plan-np':>11} {'cpp-raw':>8} | " \
          f"{'eager/plan':>10} {'eager/raw':>9}"
    print(hdr)
    print("-" * len(hdr))
    prev_threads = torch.get_num_threads()
    try:
        for n in threads:
            torch.set_num_threads(n)
            for B in batches:
                obs = torch.randn(B, 4)
                res = {k: measure(f, args.samples) for k, f in providers(seq, plan, obs).items()}
                e = res["torch-eager"]
                print(f"{n:>7} {B:>6} | {e:>11.1f} {res['cpp-plan']:>9.1f} {res['cpp-plan-np']:>11.1f} "
                      f"{res['cpp-raw']:>8.1f} | {e / res['cpp-plan']:>9.2f}x {e / res['cpp-raw']:>8.2f}x", flush=True)
    finally:
        torch.set_num_threads(prev_threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
