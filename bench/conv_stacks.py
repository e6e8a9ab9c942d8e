"""Vision policy step: RLlib's CNN stacks on 84x84x4 frames, our fused C++ step vs torch eager vs
ONNX Runtime, in the same run (issue 14's goal rows).

Each case is a conv stack (RLlib's TorchCNN: "same" padding as nn.ZeroPad2d, Conv2d, ReLU after
every layer, channels-last input, flatten in HWC order) plus a small head (Linear(flat, 6)
logits). Providers:
  - fused:  ``fastpath.PolicyPlan(layers, "cpp").step_flat(obs, deterministic=False)``: conv
            stack, head AND categorical sampling in one C++ call (float32 obs rows).
  - torch:  the same nn.Modules, eager, ``torch.no_grad()``, logits only.
  - ort:    ``torch.onnx.export`` of that torch model, onnxruntime CPU session (logits only).
Threads: torch.set_num_threads(T) (our pool follows it), ORT intra_op_num_threads=T.
Figures: median over blocks of the mean per-call host time (providers interleaved per block).
At T > 1 every block starts once the previous provider's pool threads have parked
(``timing.quiesce``), then makes one untimed call: ONNX Runtime's workers spin ~45 ms after each
run, and the fused block, timed right after the ORT block, shared its second core with that
spinner (10 fused 2-thread calls right after one ORT run: 4,242 vs 3,072 us on the tuned stack,
3,767 vs 2,568 on Nature); that, not the step, was most of the 1.2-1.3x two-thread scaling this
harness once reported.

    python bench/conv_stacks.py [--threads 1 2] [--batch 1 32] [--stacks tuned nature rllib84]
                                [--blocks 15] [--csv out.csv]
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from rlmodule_fast.bench.timing import quiesce  # noqa: E402
from rlmodule_fast.fastpath import PolicyPlan  # noqa: E402
from rlmodule_fast.fastpath.layers import ConvLayer, EncoderLayers, PolicyLayers  # noqa: E402
from rlmodule_fast.ops.conv import same_padding  # noqa: E402

STACKS = {
    "tuned": [[16, 4, 2], [32, 4, 2], [64, 4, 2], [128, 4, 2]],
    "nature": [[32, 8, 4], [64, 4, 2], [64, 3, 1]],
    "rllib84": [[16, 8, 4], [32, 4, 2], [256, 11, 1]],
}
IMAGE = (84, 84, 4)
ACTIONS = 6


class TorchCNN(torch.nn.Module):
    """RLlib's TorchCNNEncoder + a linear head: [B, H, W, C] -> logits [B, A]."""

    def __init__(self, convs, pads, head):
        super().__init__()
        layers = []
        for c, p in zip(convs, pads):
            layers += [torch.nn.ZeroPad2d(p), c, torch.nn.ReLU()]
        self.cnn = torch.nn.Sequential(*layers)
        self.head = head

    def forward(self, x):
        y = self.cnn(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.head(torch.flatten(y, 1))


def build(filters, seed=0):
    torch.manual_seed(seed)
    H, W, C = IMAGE
    convs, pads = [], []
    for co, k, s in filters:
        pad, (H, W) = same_padding(H, W, k, k, s)
        convs.append(torch.nn.Conv2d(C, co, k, s))
        pads.append(pad)
        C = co
    flat = H * W * C
    head = torch.nn.Linear(flat, ACTIONS)
    model = TorchCNN(convs, pads, head).eval()
    enc = EncoderLayers([], "relu", conv=[ConvLayer(c, p, "relu") for c, p in zip(convs, pads)], image_shape=IMAGE)
    layers = PolicyLayers(enc, None, [head], None, "relu", "categorical", [ACTIONS], None)
    macs = 0
    H, W, C = IMAGE
    for (co, k, s), p in zip(filters, pads):
        H2, W2 = (H + p[2] + p[3] - k) // s + 1, (W + p[0] + p[1] - k) // s + 1
        macs += H2 * W2 * k * k * C * co
        H, W, C = H2, W2, co
    return model, layers, macs + flat * ACTIONS


def ort_session(model, B, threads):
    import io

    import onnxruntime as ort

    f = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(1, *IMAGE),), f, dynamo=False, input_names=["obs"],
                          output_names=["logits"], dynamic_axes={"obs": {0: "B"}, "logits": {0: "B"}})
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(f.getvalue(), so, providers=["CPUExecutionProvider"])


def measure(fns: dict, reps: int, blocks: int, stat=statistics.median, settle: bool = False) -> dict:
    """``stat`` (median) over blocks of the mean per-call time (us); providers interleaved per
    block. The CSV also keeps the best block (min), a load-robust figure on a shared machine.
    ``settle``: before each block wait until the other providers' pool threads have parked
    (``quiesce``), then make one untimed call."""
    for f in fns.values():
        for _ in range(max(2, reps // 10)):
            f()
    per = {k: [] for k in fns}
    for _ in range(blocks):
        for k, f in fns.items():
            if settle:
                quiesce()
                f()
            t0 = time.perf_counter_ns()
            for _ in range(reps):
                f()
            per[k].append((time.perf_counter_ns() - t0) / reps / 1e3)
    return {k: (stat(v), min(v)) for k, v in per.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--stacks", nargs="+", default=list(STACKS), choices=list(STACKS))
    ap.add_argument("--blocks", type=int, default=15)
    ap.add_argument("--budget-ms", type=float, default=60.0, help="time per block per provider (sets reps)")
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--csv", default=None)
    args = ap.parse_args(argv)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(__file__)).stdout.strip()
    except OSError:
        commit = "?"
    from rlmodule_fast import _C

    print(f"# conv_stacks: {platform.processor() or platform.machine()}, isa {_C.isa()}, torch {torch.__version__}, "
          f"commit {commit}, image {IMAGE}, head Linear(flat, {ACTIONS}); median us per call")
    rows = []
    hdr = (f"{'stack':8} {'MMAC':>6} {'B':>3} {'T':>2} {'fused':>9} {'torch':>9} {'ort':>9} {'x torch':>8} {'x ort':>7}"
           "  load")  # the 1-minute load average when the row was measured
    print(hdr)
    for name in args.stacks:
        model, layers, macs = build(STACKS[name])
        plan = PolicyPlan(layers, backend="cpp")
        for T in args.threads:
            torch.set_num_threads(T)
            sess = {}
            for B in args.batch:
                rng = np.random.default_rng(B)
                obs = rng.random((B, int(np.prod(IMAGE))), dtype=np.float32)
                obs_t = torch.from_numpy(obs.reshape(B, *IMAGE))
                # same numbers from every provider (fused logits vs torch)
                with torch.no_grad():
                    want = model(obs_t).numpy()
                got = plan.step(obs, deterministic=True)["action_dist_inputs"]
                np.testing.assert_allclose(np.asarray(got), want, rtol=1e-3, atol=1e-3 * max(1.0, np.abs(want).max()))
                fns = {"fused": lambda: plan.step_flat(obs, False)}

                def torch_fn():
                    with torch.no_grad():
                        return model(obs_t)
                fns["torch"] = torch_fn
                if not args.no_ort:
                    if T not in sess:
                        sess[T] = ort_session(model, B, T)
                    s = sess[T]
                    ort_in = {"obs": obs.reshape(B, *IMAGE)}
                    fns["ort"] = lambda: s.run(None, ort_in)
                t1 = measure({"fused": fns["fused"]}, 3, 3)["fused"][0]
                reps = max(1, int(args.budget_ms * 1e3 / max(t1, 1.0)))
                res = measure(fns, reps, args.blocks, settle=T > 1 and len(fns) > 1)
                r = {k: v[0] for k, v in res.items()}
                best = {k: v[1] for k, v in res.items()}
                ort_us = r.get("ort", float("nan"))
                row = dict(stack=name, mmac=macs / 1e6, B=B, threads=T, fused_us=r["fused"], torch_us=r["torch"],
                           ort_us=ort_us, x_torch=r["torch"] / r["fused"], x_ort=ort_us / r["fused"],
                           fused_min_us=best["fused"], torch_min_us=best["torch"],
                           ort_min_us=best.get("ort", float("nan")), load1=os.getloadavg()[0], commit=commit)
                rows.append(row)
                print(f"{name:8} {macs / 1e6:6.1f} {B:3d} {T:2d} {r['fused']:9.0f} {r['torch']:9.0f} {ort_us:9.0f} "
                      f"{row['x_torch']:8.2f} {row['x_ort']:7.2f}  {row['load1']:4.2f}", flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return rows


if __name__ == "__main__":
    main()
