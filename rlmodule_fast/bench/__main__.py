"""``rlmodule-fast-bench`` / ``python -m rlmodule_fast.bench``: what rlmodule_fast buys on this
machine. Every provider available here side by side in one run (torch eager, torch.compile,
rlmodule_fast's torch reference, the cpp backend, the triton backend on CUDA, RLlib's own module
when ray is installed), over the hot-path ops and the whole policy step, at several batch sizes:
medians of per-call latency and the speed-up over torch eager; then the sampling loop (env
steps/s of a gymnasium vector env driven by the module, vs the env alone and vs RLlib's env
runner).

    rlmodule-fast-bench --quick                       # < 1 min on 2 cores, prints the tables
    rlmodule-fast-bench                               # full run, writes JSON, CSV and PNG
    rlmodule-fast-bench --ops fused_mlp --batches 1,64 --providers torch-eager,cpp --no-sampling
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional

import torch

from . import cases as C
from . import report as R
from . import sampling_loop as S
from .timing import CLOCKS, measure


def _list(kind, allowed=None):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        if kind is int:
            try:
                vals = [int(t) for t in items]
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected integers, got {text!r}")
            if min(vals) < 1:
                raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
            return vals
        if allowed is not None:
            bad = [t for t in items if t not in allowed]
            if bad:
                raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {','.join(allowed)}")
        return items
    return parse


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlmodule-fast-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"short run (< 1 min on 2 cores): batches {','.join(map(str, C.QUICK_BATCHES))}, one config "
                        "per op, no torch.compile, short sampling stretches")
    p.add_argument("--threads", type=_positive_int, default=1,
                   help="torch intra-op threads (default 1, as in RLlib's env-runner actors; the cpp backend follows)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="device of the torch providers and triton (auto: cuda when available); cpp is always CPU")
    p.add_argument("--ops", type=_list(str, C.OPS), default=None, help=f"comma list from {','.join(C.OPS)}")
    p.add_argument("--providers", type=_list(str, C.PROVIDERS), default=None,
                   help=f"comma list from {','.join(C.PROVIDERS)} (default: all)")
    p.add_argument("--batches", type=_list(int), default=None,
                   help=f"comma list of batch sizes (default {','.join(map(str, C.FULL_BATCHES))}; "
                        f"--quick: {','.join(map(str, C.QUICK_BATCHES))})")
    p.add_argument("--budget", type=_positive_float, default=None,
                   help="seconds per provider, case and clock (default 0.5; --quick 0.1)")
    p.add_argument("--blocks", type=_positive_int, default=None, help="timed blocks per measurement (median over them)")
    p.add_argument("--no-ops", action="store_true", help="skip the op table (sampling loop only)")
    p.add_argument("--no-sampling", action="store_true", help="skip the sampling-loop benchmark")
    p.add_argument("--envs", type=_list(str, S.ENVS), default=None, help=f"comma list from {','.join(S.ENVS)}")
    p.add_argument("--num-envs", type=_list(int), default=None,
                   help="comma list of vector-env sizes (default 1,16,64; --quick 1,16)")
    p.add_argument("--drivers", type=_list(str, S.DRIVERS), default=None,
                   help=f"sampling drivers, comma list from {','.join(S.DRIVERS)}")
    p.add_argument("--sampling-time", type=_positive_float, default=None,
                   help="seconds per timed sampling stretch (default 1.0; --quick 0.25)")
    p.add_argument("--repeats", type=_positive_int, default=None, help="sampling stretches per driver (default 5; --quick 3)")
    p.add_argument("--out", default=None,
                   help="folder for <machine>.json/.csv/.png (default: rlmodule-fast-bench-results for a full run, "
                        "none for --quick)")
    p.add_argument("--json", default=None, help="write the JSON here (overrides --out's name)")
    p.add_argument("--csv", default=None, help="write the CSV here")
    p.add_argument("--png", default=None, help="write the plot here (needs matplotlib)")
    p.add_argument("--no-plot", action="store_true", help="no PNG even with --out")
    p.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--list", action="store_true", help="list the cases and providers, then exit")
    return p


def _provider_status(providers, device: str, quick: bool) -> dict:
    from .. import backend_info

    info = backend_info()
    st = {}
    for p in providers:
        if p == "torch-compile" and quick:
            st[p] = "n/a: skipped under --quick (inductor compiles each shape for seconds)"
        elif p == "cpp":
            st[p] = "ok" if info["cpp"]["available"] else f"n/a: {info['cpp']['reason']}"
        elif p == "triton":
            if device != "cuda":
                st[p] = "n/a: CUDA only (no CUDA device here)"
            else:
                st[p] = "ok" if info["triton"]["available"] else f"n/a: {info['triton']['reason']}"
        elif p == "rllib":
            ok, why = C.ray_status()
            st[p] = "ok (policy_step only)" if ok else f"n/a: {why}"
        else:
            st[p] = "ok"
    return st


def run_ops(case_list, providers, ctx, *, budget, blocks, clocks, progress) -> list:
    rows = []
    for case in case_list:
        progress.step(f"{case.id}")
        benches, na = {}, {}
        for p in providers:
            if p not in case.providers:
                continue
            try:
                benches[p] = case.build(p, ctx)
            except C.Unavailable as e:
                na[p] = str(e)
            except Exception as e:  # a broken provider is reported, the run goes on
                na[p] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"
        res = measure(benches, budget_s=budget, blocks=blocks, clocks=clocks)
        for clock in clocks:
            base = res.get(C.BASELINE, {}).get(clock, {}).get("median_us")
            for p in providers:
                if p not in case.providers:
                    continue
                row = {"case": case.id, "op": case.op, "config": case.config, "batch": case.batch,
                       "provider": p, "clock": clock}
                if p in na:
                    row["na"] = na[p]
                else:
                    r = res[p][clock]
                    row.update(r)
                    if "na" not in r:
                        row["speedup_vs_eager"] = round(base / r["median_us"], 3) if base else None
                        for k in ("median_us", "min_us", "q1_us", "q3_us"):
                            row[k] = round(row[k], 3)
                    if benches[p].note:
                        row["note"] = benches[p].note
                rows.append(row)
    return rows


def main(argv: Optional[list] = None) -> int:
    args = parser().parse_args(argv)
    q = args.quick
    if args.list:
        for c in C.cases(args.ops, args.batches, quick=q):
            print(f"{c.id:44s} {c.op} {c.config} B={c.batch}  providers: {','.join(c.providers)}")
        print(f"sampling drivers: {','.join(S.DRIVERS)}; envs: {','.join(S.ENVS)}")
        return 0
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("rlmodule-fast-bench: error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    providers = list(args.providers or C.PROVIDERS)
    if C.BASELINE not in providers:
        providers.insert(0, C.BASELINE)  # ratios need it
    case_list = [] if args.no_ops else C.cases(args.ops, args.batches, quick=q)
    budget = args.budget or (0.1 if q else 0.5)
    blocks = args.blocks or (5 if q else 9)
    clocks = ("host", "device", "graph") if device == "cuda" else ("host",)
    clock_status = {c: ("ok" if c in clocks else "n/a: CUDA only (CPU run)") for c in CLOCKS}
    env_ids = args.envs or list(S.ENVS)
    num_envs = args.num_envs or ([1, 16] if q else [1, 16, 64])
    drivers = args.drivers or list(S.DRIVERS)
    s_time = args.sampling_time or (0.25 if q else 1.0)
    repeats = args.repeats or (3 if q else 5)
    sampling = not args.no_sampling

    from .. import backend_info

    mach = R.machine(device, args.threads)
    vers = R.versions()
    commit = R.git_commit()
    load0 = R.load_average()
    share = R.CpuShare()
    pstat = _provider_status(providers, device, q)
    print(f"rlmodule-fast-bench{' --quick' if q else ''} | rlmodule_fast {vers['rlmodule_fast']} | torch {vers['torch']}"
          f" | python {vers['python']} | commit {(commit.get('sha') or 'n/a')[:10]}{' (dirty)' if commit.get('dirty') else ''}")
    print(f"machine: {mach['cpu_model']} | {mach['cpu_count']} cpu | device {device}"
          f"{' (' + mach['gpu'] + ')' if mach['gpu'] else ''} | torch threads {args.threads}"
          f" | load average {' '.join(map(str, load0)) if load0 else 'n/a'}")
    if load0 and mach["cpu_count"] and load0[0] > 0.75 * mach["cpu_count"]:
        print(f"  note: the machine is busy (1-min load {load0[0]} on {mach['cpu_count']} cpus): expect noisy numbers")
    for p in providers:
        print(f"  {p:14s} {pstat[p]}")
    print("  clocks: " + ", ".join(f"{c} {s}" for c, s in clock_status.items()))

    n_samp = S.count_steps(env_ids, num_envs, drivers, repeats) if sampling else 0
    progress = R.Progress(len(case_list) + n_samp, enabled=not args.no_progress)
    ctx = C.Context(device=device, quick=q, seed=args.seed)
    op_rows = run_ops(case_list, providers, ctx, budget=budget, blocks=blocks, clocks=clocks, progress=progress)
    samp_rows = []
    if sampling:
        samp_rows = S.run(env_ids, num_envs, drivers, time_s=s_time, repeats=repeats, seed=args.seed, progress=progress)
    progress.close()
    load1 = R.load_average()
    others = share.others()

    if op_rows:
        for clock in clocks:
            print(f"\n{clock} clock: median microseconds per call; (Nx) = speed-up over torch-eager in this run"
                  + (" (whole Python call, numpy in/out for policy_step)" if clock == "host" else ""))
            print(R.ops_table(op_rows, providers, clock))
        for c in CLOCKS:
            if c not in clocks:
                print(f"{c} clock: {clock_status[c]}")
        reasons = R.na_reasons(op_rows)
        if reasons:
            print("n/a:")
            for p, why in reasons:
                print(f"  {p}: {why}")
    if samp_rows:
        print(f"\nsampling loop: env steps/s (median of {repeats} x {s_time:g} s), PPOTorchRLModule "
              f"fcnet_hiddens [256, 256], gym.make_vec(..., vectorization_mode='sync'), torch threads {args.threads}")
        print(R.sampling_table(samp_rows))
    elapsed = time.perf_counter() - t_start
    print(f"\nload average at the end: {' '.join(map(str, load1)) if load1 else 'n/a'} | other processes used "
          f"{'n/a' if others is None else f'{100 * others:.0f}%'} of the CPUs during the run | {elapsed:.1f} s")
    if others is not None and others > 0.15:
        print("  note: other processes shared the cores during this run: rerun on a quiet machine before comparing")

    result = {
        "schema": R.SCHEMA, "started_utc": R.utc_now(), "elapsed_s": round(elapsed, 2),
        "argv": list(sys.argv[1:] if argv is None else argv), "quick": q,
        "machine": {**mach, "load_average_start": load0, "load_average_end": load1,
                    "cpu_share_of_other_processes": others},
        "versions": vers, "commit": commit, "backends": backend_info(),
        "clocks": clock_status, "providers": pstat, "provider_order": providers,
        "settings": {"budget_s": budget, "blocks": blocks, "sampling_time_s": s_time, "repeats": repeats,
                     "num_envs": num_envs, "envs": env_ids if sampling else [], "threads": args.threads,
                     "seed": args.seed},
        "ops": op_rows, "sampling": samp_rows,
    }
    out = args.out if args.out is not None else (None if q else "rlmodule-fast-bench-results")
    paths = {"json": args.json, "csv": args.csv, "png": args.png}
    if out:
        for ext in paths:
            if paths[ext] is None and not (ext == "png" and args.no_plot):
                paths[ext] = os.path.join(out, f"{mach['tag']}{'-quick' if q else ''}.{ext}")
    if paths["json"]:
        R.write_json(paths["json"], result)
        print(f"wrote {paths['json']}")
    if paths["csv"]:
        R.write_csv(paths["csv"], result)
        print(f"wrote {paths['csv']}")
    if paths["png"]:
        why = R.write_png(paths["png"], result)
        print(f"wrote {paths['png']}" if why is None else f"no plot: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
