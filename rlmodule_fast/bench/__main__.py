"""``rlmodule-fast-bench`` / ``python -m rlmodule_fast.bench``: side-by-side latency of the
hot path on this machine, every provider in one run, medians and ratios to torch eager."""
from __future__ import annotations

import argparse
import json
import platform
import sys
from typing import Callable, Optional

import numpy as np
import torch

from .timing import median_us


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ppo_module(obs_space, act_space, hiddens):
    from .. import RLModuleSpec
    from ..ppo import PPOCatalog, PPOTorchRLModule

    return RLModuleSpec(module_class=PPOTorchRLModule, observation_space=obs_space, action_space=act_space,
                        model_config_dict={"fcnet_hiddens": hiddens}, catalog_class=PPOCatalog).build()


def _eager_policy(module) -> Callable:
    """The torch-eager peer: nn.Sequential over the same weights + Categorical sample/log_prob."""
    layers = []
    for lin in module.encoder.actor.net.linears:
        layers += [lin, torch.nn.Tanh()]
    layers += module.pi.net.linears
    seq = torch.nn.Sequential(*layers)

    def step(obs: np.ndarray):
        with torch.no_grad():
            logits = seq(torch.from_numpy(obs))
            dist = torch.distributions.Categorical(logits=logits)
            a = dist.sample()
            return a.numpy(), dist.log_prob(a).numpy()
    return step


def _rows(quick: bool) -> list[dict]:
    import gymnasium as gym

    from .. import ops

    rows = []
    batches = [1, 256] if quick else [1, 16, 256, 4096]
    obs_space = gym.spaces.Box(-1, 1, (4,), np.float32)
    module = _ppo_module(obs_space, gym.spaces.Discrete(2), [256, 256])
    eager = _eager_policy(module)
    weights = [lin.weight for lin in module.encoder.actor.net.linears] + [module.pi.net.linears[-1].weight]
    biases = [lin.bias for lin in module.encoder.actor.net.linears] + [module.pi.net.linears[-1].bias]
    rng = np.random.default_rng(0)
    budget = 0.15 if quick else 0.5
    for b in batches:
        obs = rng.standard_normal((b, 4), dtype=np.float32)
        x = torch.from_numpy(obs)
        row = {"case": "policy step 4->[256,256]->2 (numpy obs -> action+logp)", "batch": b}
        row["torch eager"] = median_us(lambda: eager(obs), min_time_s=budget)
        with torch.no_grad():
            row["rf torch backend"] = median_us(
                lambda: _with_backend("torch", lambda: module.forward_exploration({"obs": obs})), min_time_s=budget)
            row["rf auto"] = median_us(lambda: module.forward_exploration({"obs": obs}), min_time_s=budget)
        rows.append(row)
        mlp = {"case": "fused_mlp 4->[256,256]->2", "batch": b}
        with torch.no_grad():
            mlp["torch eager"] = median_us(lambda: ops.fused_mlp(x, weights, biases, "tanh", backend="torch"), min_time_s=budget)
            for name in ("cpp", "triton"):
                try:
                    fn = ops.dispatch.get("fused_mlp", name, x)
                except RuntimeError:
                    continue
                mlp[name] = median_us(lambda: fn(x, weights, biases, "tanh", None), min_time_s=budget)
        rows.append(mlp)
    return rows


def _with_backend(name: str, fn: Callable):
    import os

    old = os.environ.get("RLMODULE_FAST_BACKEND")
    os.environ["RLMODULE_FAST_BACKEND"] = name
    try:
        return fn()
    finally:
        if old is None:
            del os.environ["RLMODULE_FAST_BACKEND"]
        else:
            os.environ["RLMODULE_FAST_BACKEND"] = old


def _print_table(rows: list[dict]) -> None:
    providers: list[str] = []
    for r in rows:
        providers += [k for k in r if k not in ("case", "batch") and k not in providers]
    print(f"{'case':58s} {'batch':>6s} " + " ".join(f"{p:>22s}" for p in providers))
    for r in rows:
        base = r.get("torch eager")
        cells = []
        for p in providers:
            v = r.get(p)
            if v is None:
                cells.append(f"{'-':>22s}")
            else:
                ratio = f" ({base / v:4.1f}x)" if base and p != "torch eager" else ""
                cells.append(f"{v:12.1f} us{ratio:>7s}")
        print(f"{r['case']:58s} {r['batch']:6d} " + " ".join(cells))


def main(argv: Optional[list] = None) -> int:
    from .. import __version__, backend_info

    parser = argparse.ArgumentParser(prog="rlmodule-fast-bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short run (batches 1 and 256)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", help="write rows and machine info to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = backend_info()
    print(f"rlmodule_fast {__version__} | torch {torch.__version__} | python {sys.version.split()[0]} | "
          f"{_cpu_model()} | threads {args.threads}")
    for name in ("torch", "cpp", "triton"):
        e = info[name]
        print(f"  backend {name:6s}: {'available' if e['available'] else 'unavailable: ' + e['reason']}")
    print("medians of per-call latency; (Nx) = speed-up over torch eager in the same run")
    rows = _rows(args.quick)
    _print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": {"cpu": _cpu_model(), "torch": torch.__version__, "rlmodule_fast": __version__,
                                   "threads": args.threads, "backends": info}, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
