"""Graph-replay clock of the policy step: ``fastpath.CudaGraphStep`` against the eager Triton step.

    python bench/graph_replay.py --json out.json                   # on a GPU
    TRITON_INTERPRET=1 python bench/graph_replay.py --emulate ...  # CPU dry run (no timings that mean anything)

Per model (CartPole 4->[256,256]->2 categorical, Pendulum 3->[256,256]->2 gaussian, CartPole
LSTM 256) and batch size (default 1, 256), providers measured interleaved by
``rlmodule_fast.bench.timing.measure`` (median of blocks; host clock: a block of calls then one
``torch.cuda.synchronize()``, divided by the calls; device clock: CUDA events around the block):

- ``triton-eager``: ``module.forward_exploration({"obs": obs})`` (the checked fused step: one
  4-byte device->host read per call for the NaN check);
- ``graph``: ``CudaGraphStep(module, B)`` called with the same batch (copy in, replay, fresh
  outputs: one clone);
- ``graph-static``: ``CudaGraphStep(..., return_static=True, errors="manual")`` called with its
  own static input buffer (no copy in, no clone, no flag copy: the replay alone).

Rows carry device, versions and commit; nothing is asserted. ``--emulate`` (CPU, Triton's
interpreter, ``EmulatedGraph``) only exercises the script end to end for the dry run of
bench/gpu_check.sh: its rows are marked ``"emulated": true``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True, help="where to write the rows")
    ap.add_argument("--batches", default="1,256", help="comma-separated batch sizes")
    ap.add_argument("--budget", type=float, default=0.3, help="seconds per provider and clock")
    ap.add_argument("--models", default="cartpole,pendulum,lstm")
    ap.add_argument("--emulate", action="store_true",
                    help="CPU dry run: EmulatedGraph under TRITON_INTERPRET=1 (timings meaningless)")
    args = ap.parse_args(argv)
    if args.emulate:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        os.environ["RLMODULE_FAST_BACKEND"] = "triton"
    import torch

    from rlmodule_fast.bench import report as R
    from rlmodule_fast.bench.cases import ppo_module
    from rlmodule_fast.bench.timing import Bench, measure
    from rlmodule_fast.fastpath import CudaGraphStep
    from rlmodule_fast.fastpath.cuda_graph import EmulatedGraph

    cuda = torch.cuda.is_available() and not args.emulate
    if not cuda and not args.emulate:
        print("no CUDA device: run on a GPU, or --emulate for a CPU dry run", file=sys.stderr)
        return 2
    dev = torch.device("cuda" if cuda else "cpu")
    kw = {} if cuda else {"_graph": EmulatedGraph}
    models = {"cartpole": ("CartPole-v1", {}), "pendulum": ("Pendulum-v1", {}),
              "lstm": ("CartPole-v1", {"use_lstm": True, "lstm_cell_size": 256})}
    rows = []
    t0 = time.time()
    for name in args.models.split(","):
        env_id, extra = models[name]
        m = ppo_module(env_id, **extra).to(dev)
        for B in [int(b) for b in args.batches.split(",")]:
            obs = torch.randn(B, *m.observation_space.shape, device=dev)
            batch = {"obs": obs}
            if m.is_stateful():
                batch["state_in"] = {k: torch.zeros(B, 1, v.shape[-1], device=dev)
                                     for k, v in m.get_initial_state().items()}
            g = CudaGraphStep(m, B, **kw)
            gs = CudaGraphStep(m, B, return_static=True, errors="manual", **kw)
            gs.static_inputs["obs"].copy_(obs)
            static_batch = dict(gs.static_inputs)
            benches = {
                "triton-eager": Bench(lambda: m.forward_exploration(batch), cuda=cuda),
                "graph": Bench(lambda: g(batch), cuda=cuda),
                "graph-static": Bench(lambda: gs(static_batch), cuda=cuda),
            }
            clocks = ("host", "device") if cuda else ("host",)
            res = measure(benches, budget_s=args.budget if cuda else 0.0, blocks=7 if cuda else 1,
                          warmup=3 if cuda else 1, clocks=clocks)
            g.raise_if_error()
            for prov, per in res.items():
                for clock, r in per.items():
                    rows.append({"model": name, "batch": B, "provider": prov, "clock": clock,
                                 "emulated": not cuda, **r})
                    line = r.get("median_us")
                    print(f"{name:9s} B={B:<6d} {prov:13s} {clock:7s} "
                          + (f"{line:9.2f} us" if line is not None else f"n/a: {r.get('na')}"))
            g.close()
            gs.close()
    out = {"schema": "rlmodule_fast.bench.graph_replay/1", "elapsed_s": round(time.time() - t0, 1),
           "device": torch.cuda.get_device_name() if cuda else "cpu (emulated graph, Triton interpreter)",
           "versions": R.versions(), "commit": R.git_commit(), "rows": rows}
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1, default=str)
    print(f"wrote {len(rows)} rows to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
