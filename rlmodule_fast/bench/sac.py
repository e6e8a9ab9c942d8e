"""SAC env-runner forward benchmark: ``python -m rlmodule_fast.bench.sac [--batches 1 256]
[--hiddens 256 256] [--obs 3] [--act 1] [--budget 0.3] [--json PATH]``.

One policy step of SAC's default model (Pendulum sizes by default: obs 3, actions 1, RLlib's
[256, 256] tanh encoder, linear pi head -> mean and log-std), obs -> squashed-Gaussian action in
[-1, 1] + logp, on the same weights, one thread everywhere, providers measured interleaved
(``bench.timing``: median over blocks of the per-call host time):

=================  ==========================================================================
``rf-cpp``         ``rf.sac.SACTorchRLModule.forward_exploration({"obs": numpy})``: one fused
                   C++ call (encoder, head, clamp, draw, tanh, logp)
``rf-fast-rllib``  ``rf.rllib.FastSACTorchRLModule`` (RLlib's module class, fused step)
``rllib``          RLlib's ``DefaultSACTorchRLModule.forward_exploration`` + its
                   ``TorchSquashedGaussian.from_logits(...).sample_and_logp()`` (what RLlib's
                   ``GetActions`` connector adds), from a torch obs
``torch-eager``    ``nn.Sequential`` of the same layers + clamp, ``randn``, tanh, logp in torch
``ort``            ONNX Runtime, 1 intra-op thread: the layers only (distribution inputs)
``ort-sampling``   ``ort`` + the squashed-Gaussian draw and logp in numpy (the whole step)
=================  ==========================================================================

Ratios are against ``rllib`` and ``ort-sampling`` in the same run.
"""
from __future__ import annotations

import argparse
import json
import math
import platform

import gymnasium as gym
import numpy as np
import torch

from .timing import Bench, measure

PROVIDERS = ("rf-cpp", "rf-fast-rllib", "rllib", "torch-eager", "ort", "ort-sampling")


def _modules(obs_dim: int, act_dim: int, hiddens: list, seed: int = 0):
    """(our SAC module, RLlib's DefaultSACTorchRLModule or None, FastSAC or None), same pi weights."""
    import rlmodule_fast as rf

    obs_space = gym.spaces.Box(-1.0, 1.0, (obs_dim,), np.float32)
    act_space = gym.spaces.Box(-2.0, 2.0, (act_dim,), np.float32)
    torch.manual_seed(seed)
    ours = rf.sac.SACTorchRLModule(observation_space=obs_space, action_space=act_space,
                                   model_config={"fcnet_hiddens": list(hiddens)}, inference_only=True)
    rl = fast = None
    try:
        import dataclasses

        from ray.rllib.algorithms.sac.torch.default_sac_torch_rl_module import DefaultSACTorchRLModule
        from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

        from ..rllib import FastSACTorchRLModule

        cfg = {**dataclasses.asdict(DefaultModelConfig()), "fcnet_hiddens": list(hiddens), "twin_q": True}
        kw = dict(observation_space=obs_space, action_space=act_space, model_config=cfg, inference_only=True)
        rl, fast = DefaultSACTorchRLModule(**kw), FastSACTorchRLModule(**kw)
        state = ours.get_state()
        rl.set_state(state)
        fast.set_state(state)
        rl.eval()
        fast.eval()
    except ImportError:
        pass
    return ours, rl, fast


def _eager(ours) -> torch.nn.Module:
    import copy

    return torch.nn.Sequential(*copy.deepcopy(list(ours.pi_encoder.net.mlp) + list(ours.pi.net.mlp)))


def _torch_step(seq, A: int):
    def step(x):
        out = seq(x)
        mean, log_std = out[:, :A], out[:, A:].clamp(-5.0, 2.0)
        eps = torch.randn_like(mean)
        u = mean + log_std.exp() * eps
        log_det = 2.0 * (math.log(2.0) - u - torch.nn.functional.softplus(-2.0 * u))
        logp = (-0.5 * eps * eps - log_std - 0.5 * math.log(2 * math.pi) - log_det).sum(-1)
        return out, torch.tanh(u), logp
    return step


def _numpy_squashed(A: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    c = np.float32(0.5 * math.log(2 * math.pi))

    def sample(d):
        mean, log_std = d[:, :A], np.clip(d[:, A:], -5.0, 2.0)
        eps = rng.standard_normal(mean.shape, dtype=np.float32)
        u = mean + np.exp(log_std) * eps
        log_det = 2.0 * (np.float32(math.log(2.0)) - u - np.logaddexp(0.0, -2.0 * u))
        return np.tanh(u), (-0.5 * eps * eps - log_std - c - log_det).sum(-1)
    return sample


def benches(B: int, obs_dim: int = 3, act_dim: int = 1, hiddens=(256, 256), seed: int = 0) -> dict:
    """{provider: Bench | reason str} for one batch size."""
    ours, rl, fast = _modules(obs_dim, act_dim, list(hiddens), seed)
    obs = np.random.default_rng(seed).uniform(-1, 1, (B, obs_dim)).astype(np.float32)
    obs_t = torch.from_numpy(obs)
    info = ours.fast_path_info()
    out: dict = {}
    fused = info["backend"] == "cpp" and info["active"]
    out["rf-cpp"] = Bench(lambda: ours.forward_exploration({"obs": obs})) if fused \
        else f"fused cpp step not active: {info['reason']}"
    if rl is None:
        out["rllib"] = out["rf-fast-rllib"] = "ray[rllib] not importable"
    else:
        dist_cls = rl.get_exploration_action_dist_cls()

        def rllib_step():
            logits = rl.forward_exploration({"obs": obs_t})["action_dist_inputs"]
            return dist_cls.from_logits(logits).sample_and_logp()
        out["rllib"] = Bench(rllib_step)
        out["rf-fast-rllib"] = Bench(lambda: fast.forward_exploration({"obs": obs_t}))
    seq = _eager(ours)
    step = _torch_step(seq, act_dim)
    out["torch-eager"] = Bench(lambda: step(obs_t))
    try:
        from .ort import export, session

        model, _ = export(seq, (obs_t,), ["obs"], ["action_dist_inputs"])
        sess = session(model, threads=1)
        sample = _numpy_squashed(act_dim, seed)
        want = seq(obs_t).detach().numpy()
        got = sess.run(None, {"obs": obs})[0]
        if not np.allclose(got, want, atol=1e-4, rtol=1e-4):
            raise RuntimeError("ONNX Runtime outputs differ from torch's")
        out["ort"] = Bench(lambda: sess.run(None, {"obs": obs}))
        out["ort-sampling"] = Bench(lambda: sample(sess.run(None, {"obs": obs})[0]))
    except Exception as e:  # noqa: BLE001 -- reported as the providers' reason
        out["ort"] = out["ort-sampling"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    return out


def run(batches=(1, 256), obs_dim: int = 3, act_dim: int = 1, hiddens=(256, 256), budget_s: float = 0.3,
        blocks: int = 7) -> dict:
    """Measure every provider per batch size (one thread); returns a JSON-able dict of rows."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the cpp backend follows torch's count (no process-wide env change)
    rows = []
    try:
        for B in batches:
            bs = benches(B, obs_dim, act_dim, hiddens)
            live = {k: v for k, v in bs.items() if isinstance(v, Bench)}
            res = measure(live, budget_s=budget_s, blocks=blocks)
            row = {"batch": B}
            for p in PROVIDERS:
                v = bs.get(p)
                row[p] = res[p]["host"].get("median_us", res[p]["host"].get("na")) if isinstance(v, Bench) else v
            rows.append(row)
    finally:
        torch.set_num_threads(threads)
    return {"case": f"SAC policy step {obs_dim}->{list(hiddens)}->{2 * act_dim} tanh, squashed Gaussian",
            "threads": 1, "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "unit": "us (median host time per call)", "rows": rows}


def _fmt(v) -> str:
    return f"{v:9.1f}" if isinstance(v, float) else f"{'n/a':>9}"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    ap.add_argument("--hiddens", type=int, nargs="+", default=[256, 256])
    ap.add_argument("--obs", type=int, default=3)
    ap.add_argument("--act", type=int, default=1)
    ap.add_argument("--budget", type=float, default=0.3, help="seconds per provider and batch size")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    res = run(a.batches, a.obs, a.act, a.hiddens, a.budget)
    print(res["case"], "| one thread |", res["unit"])
    print("     B " + "".join(f"{p:>15}" for p in PROVIDERS) + "   x rllib   x ort-sampling")
    for r in res["rows"]:
        cpp, rl, ort = r.get("rf-cpp"), r.get("rllib"), r.get("ort-sampling")
        def ratio(a, b):
            return f"{b / a:8.1f}x" if isinstance(a, float) and isinstance(b, float) else "     n/a"
        print(f"{r['batch']:6d} " + "".join(f"{_fmt(r.get(p)):>15}" for p in PROVIDERS)
              + f"  {ratio(cpp, rl)}  {ratio(cpp, ort)}")
    for r in res["rows"]:
        for p in PROVIDERS:
            if isinstance(r.get(p), str):
                print(f"  B={r['batch']} {p}: n/a ({r[p]})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
