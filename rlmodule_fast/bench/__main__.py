"""``rlmodule-fast-bench`` / ``python -m rlmodule_fast.bench``: what rlmodule_fast buys on this
machine. Every provider available here side by side in one run (torch eager, torch.compile,
rlmodule_fast's torch reference, the cpp backend, the triton backend on CUDA, RLlib's own module
when ray is installed, ONNX Runtime when onnxruntime is installed), over the hot-path ops and the
whole policy step, at several batch sizes: medians of per-call latency and the ratios vs torch
eager and vs ONNX Runtime; then the sampling loop (env steps/s of a gymnasium vector env driven
by the module, vs the env alone and vs RLlib's env runner). ``--checkpoint DIR`` times the
policy step of your own saved module instead.

    rlmodule-fast-bench --quick                       # < 1 min on 2 cores, prints the tables
    rlmodule-fast-bench                               # full run, writes JSON, CSV and PNG
    rlmodule-fast-bench --ops fused_mlp --batches 1,64 --providers torch-eager,cpp,ort --no-sampling
    rlmodule-fast-bench --checkpoint path/to/checkpoint --batches 1,256
"""
from __future__ import annotations

import argparse
import os
import re
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


PROVIDER_HELP = """providers (--providers; each computes the same thing on the same weights):
  torch-eager    plain torch: nn.Sequential / nn.LSTMCell + torch.distributions sample, log_prob
                 (the baseline of the "vs torch-eager" ratios)
  torch-compile  torch.compile of torch-eager (skipped by --quick: each shape compiles for seconds)
  rf-torch       rlmodule_fast's torch reference (policy step: RLMODULE_FAST_BACKEND=torch)
  cpp            rlmodule_fast's C++ backend (policy step: one fused forward_exploration call)
  triton         rlmodule_fast's Triton backend (CUDA only)
  rllib          RLlib's own DefaultPPOTorchRLModule, same weights (policy step only; needs ray)
  ort            ONNX Runtime, the layers exported with torch.onnx.export, one intra-op thread
                 (--threads): the logits only (policy step) or the MLP (fused_mlp); needs
                 onnxruntime and onnx
  ort-sampling   ort logits + action and log-prob sampled in numpy: the whole policy step on
                 ONNX Runtime (the reference of the "vs ort-sampling" ratios)
  ort-exported   module.export_onnx(explore=True) in ONNX Runtime: sampling and logp inside the
                 graph, one sess.run per step (policy step only; also needs onnxscript)

sampling drivers (--drivers): env-alone (random actions: the ceiling), torch-eager, rf-torch,
  rf-fast (cpp; n/a while the module's step is not fused), ort-sampling, rllib-module (RLlib's
  DefaultPPOTorchRLModule, same weights, in the same loop), rllib-runner / rllib-runner-fast
  (RLlib's SingleAgentEnvRunner with its own module / with FastPPOTorchRLModule),
  rllib-fast-env-runner (rlmodule_fast's FastEnvRunner), rllib-runner-lstm /
  rllib-fast-env-runner-lstm (the same with use_lstm=True)

vision (issue 14): policy_step cases on RLlib's Atari observation (84x84x4, CNN stacks: tuned
  Atari, Nature, RLlib's 84x84 default) at batches 1,32 in a full run; --envs ALE/Pong-v5 adds
  Pong env steps/s (RLlib's Atari wrappers, needs ale-py and opencv-python-headless)

--checkpoint DIR: an rlmodule_fast checkpoint (RLModule.save_to_path: class_and_ctor_args.json)
  or an RLlib one (module_state.pkl, or an Algorithm / MultiRLModule checkpoint holding one);
  times that module's policy step (forward_exploration on observations sampled from its
  observation space) for every provider at --batches; no sampling loop.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlmodule-fast-bench", description=__doc__.split("\n\n")[0],
                                epilog=PROVIDER_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--configs", type=_list(str, C.config_ids()), default=None,
                   help=f"only the cases of these model configs (ids as in --list), comma list from "
                        f"{','.join(C.config_ids())}")
    p.add_argument("--batches", type=_list(int), default=None,
                   help=f"comma list of batch sizes (default {','.join(map(str, C.FULL_BATCHES))}; "
                        f"--quick: {','.join(map(str, C.QUICK_BATCHES))})")
    p.add_argument("--budget", type=_positive_float, default=None,
                   help="seconds per provider, case and clock (default 0.5; --quick 0.1)")
    p.add_argument("--blocks", type=_positive_int, default=None, help="timed blocks per measurement (median over them)")
    p.add_argument("--no-ops", action="store_true", help="skip the op table (sampling loop only)")
    p.add_argument("--no-sampling", action="store_true", help="skip the sampling-loop benchmark")
    p.add_argument("--envs", type=_list(str, S.ENVS + S.ATARI_ENVS), default=None,
                   help=f"comma list from {','.join(S.ENVS + S.ATARI_ENVS)} (default {','.join(S.ENVS)}; "
                        f"{','.join(S.ATARI_ENVS)}: RLlib's Atari wrappers and CNN, needs ale-py)")
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
    p.add_argument("--checkpoint", metavar="DIR", default=None,
                   help="time the policy step of this saved module (rlmodule_fast or RLlib checkpoint, "
                        "detected by its files) instead of the built-in cases; no sampling loop")
    p.add_argument("--module-id", default=None,
                   help="with --checkpoint: the module of a multi-module checkpoint (default: its only "
                        "module, else default_policy)")
    p.add_argument("--plain", action="store_true", help="plain-text tables and progress even when rich is installed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--list", action="store_true", help="list the cases and providers, then exit")
    return p


def _provider_status(providers, device: str, quick: bool, threads: int = 1) -> dict:
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
        elif p in ("ort", "ort-sampling", "ort-exported"):
            ok, why = C.ort_status()
            if ok:
                from .ort import ort_version

                st[p] = (f"ok (onnxruntime {ort_version()}, CPU, {threads} intra-op thread"
                         f"{'s' if threads > 1 else ''}{'; policy_step only' if p != 'ort' else ''})")
            else:
                st[p] = f"n/a: {why}"
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
        ort_ref = R.ort_reference([p for p in providers if p in case.providers])
        for clock in clocks:
            base = res.get(C.BASELINE, {}).get(clock, {}).get("median_us")
            oref = res.get(ort_ref, {}).get(clock, {}).get("median_us") if ort_ref else None
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
                        row["speedup_vs_ort"] = round(oref / r["median_us"], 3) if oref else None
                        for k in ("median_us", "min_us", "q1_us", "q3_us"):
                            row[k] = round(row[k], 3)
                    if benches[p].note:
                        row["note"] = benches[p].note
                rows.append(row)
    return rows


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "checkpoint"


def main(argv: Optional[list] = None) -> int:
    args = parser().parse_args(argv)
    q = args.quick
    out = R.Out(plain=args.plain)
    ckpt = None
    if args.module_id is not None and args.checkpoint is None:
        print("rlmodule-fast-bench: error: --module-id needs --checkpoint", file=sys.stderr)
        return 2
    if args.checkpoint is not None:
        try:
            module, kind, mid = C.load_checkpoint(args.checkpoint, args.module_id)
        except Exception as e:  # every loader problem is the user's file: say so, no traceback
            print(f"rlmodule-fast-bench: error: --checkpoint {args.checkpoint}: {type(e).__name__}: {e}",
                  file=sys.stderr)
            return 2
        label = f"{os.path.basename(os.path.normpath(args.checkpoint))} ({kind}): {C.describe_module(module)}"
        ckpt = {"path": os.path.abspath(args.checkpoint), "kind": kind, "module_id": mid,
                "module": C.describe_module(module)}
    if args.list:
        if ckpt is not None:
            case_list = C.checkpoint_cases(module, label, args.batches or (C.QUICK_BATCHES if q else C.FULL_BATCHES))
        else:
            case_list = C.cases(args.ops, args.batches, quick=q, configs=args.configs)
        for c in case_list:
            out.line(f"{c.id}  {c.op} {c.config} B={c.batch}  providers: {','.join(c.providers)}", hang=4)
        out.line(f"sampling drivers: {','.join(S.DRIVERS)}; envs: {','.join(S.ENVS)}", hang=4)
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
    if ckpt is not None:
        case_list = C.checkpoint_cases(module, label, args.batches or (C.QUICK_BATCHES if q else C.FULL_BATCHES),
                                       seed=args.seed)
    else:
        case_list = [] if args.no_ops else C.cases(args.ops, args.batches, quick=q, configs=args.configs)
    budget = args.budget or (0.1 if q else 0.5)
    blocks = args.blocks or (5 if q else 9)
    clocks = ("host", "device", "graph") if device == "cuda" else ("host",)
    clock_status = {c: ("ok" if c in clocks else "n/a: CUDA only (CPU run)") for c in CLOCKS}
    env_ids = args.envs or list(S.ENVS)
    num_envs = args.num_envs or ([1, 16] if q else [1, 16, 64])
    drivers = args.drivers or list(S.DRIVERS)
    s_time = args.sampling_time or (0.25 if q else 1.0)
    repeats = args.repeats or (3 if q else 5)
    sampling = not args.no_sampling and ckpt is None

    from .. import backend_info

    mach = R.machine(device, args.threads)
    vers = R.versions()
    commit = R.git_commit()
    load0 = R.load_average()
    share = R.CpuShare()
    pstat = _provider_status(providers, device, q, args.threads)
    sha = (commit.get("sha") or "n/a")[:10] + (" (dirty)" if commit.get("dirty") else "")
    out.line(f"rlmodule-fast-bench{' --quick' if q else ''}: rlmodule_fast {vers['rlmodule_fast']} | "
             f"torch {vers['torch']} | python {vers['python']} | commit {sha}", hang=2)
    out.line(f"machine: {mach['cpu_model']} | {mach['cpu_count']} cpu | device {device}"
             f"{' (' + mach['gpu'] + ')' if mach['gpu'] else ''} | torch threads {args.threads}", hang=2)
    busy = bool(load0 and mach["cpu_count"] and load0[0] > 0.75 * mach["cpu_count"])
    out.line(f"load average: {' '.join(map(str, load0)) if load0 else 'n/a'}"
             + (f" (busy for {mach['cpu_count']} cpus: expect noisy numbers)" if busy else ""), hang=2)
    if ckpt is not None:
        out.line(f"checkpoint: {ckpt['path']} ({kind}{', module ' + mid if mid else ''})", hang=2)
        out.line(f"module: {ckpt['module']}", hang=2)
    out.line("providers:")
    w = max(len(p) for p in providers)
    for p in providers:
        out.line(f"{p:<{w}s}  {pstat[p]}", indent=2, hang=w + 2)
    out.line("clocks: " + " | ".join(f"{c} {s}" for c, s in clock_status.items()), hang=2)

    n_samp = S.count_steps(env_ids, num_envs, drivers, repeats) if sampling else 0
    progress = R.Progress(len(case_list) + n_samp, enabled=not args.no_progress, plain=args.plain)
    ctx = C.Context(device=device, quick=q, seed=args.seed)
    try:
        op_rows = run_ops(case_list, providers, ctx, budget=budget, blocks=blocks, clocks=clocks,
                          progress=progress)
        samp_rows = []
        if sampling:
            samp_rows = S.run(env_ids, num_envs, drivers, time_s=s_time, repeats=repeats, seed=args.seed,
                              progress=progress)
    finally:
        progress.close()
    load1 = R.load_average()
    others = share.others()

    if op_rows:
        for clock in clocks:
            for t in R.ops_tables(op_rows, providers, clock, mu=out.mu):
                out.line()
                out.table(t)
        for c in CLOCKS:
            if c not in clocks:
                out.line(f"{c} clock: {clock_status[c]}")
        reasons = R.na_reasons(op_rows)
        if reasons:
            out.line()
            out.line("n/a (cannot run here):")
            for p, why in reasons:
                out.line(f"{p}: {why}", indent=2, hang=2)
        out.line()
        has_ort = any(r.get("speedup_vs_ort") is not None for r in op_rows)
        R.print_legend(out, "How to read the tables above (one table per op and model; numpy in/out for "
                            f"policy_step; torch threads {args.threads}):", R.ops_legend(out.mu, has_ort))
    if samp_rows:
        for t in R.sampling_tables(samp_rows, mu=out.mu):
            out.line()
            out.table(t)
        na_s = [(r["driver"], r["na"]) for r in samp_rows if "na" in r]
        if na_s:
            out.line()
            out.line("n/a (cannot run here):")
            for d, why in dict(na_s).items():
                out.line(f"{d}: {why}", indent=2, hang=2)
        out.line()
        out.line(f"The sampling loop: gym.make_vec(env, num_envs, vectorization_mode='sync') stepped with "
                 f"the actions of a PPO policy (fcnet_hiddens [256, 256]; Atari: RLlib's CNN "
                 f"[[16,4,2],[32,4,2],[64,4,2],[128,4,2]] on 84x84x4 frames) on torch threads {args.threads}.")
        has_ort = any(r["driver"] == "ort-sampling" and "na" not in r for r in samp_rows)
        R.print_legend(out, "Columns:", R.sampling_legend(out.mu, repeats, s_time, has_ort))
    elapsed = time.perf_counter() - t_start
    out.line()
    out.line(f"load average at the end: {' '.join(map(str, load1)) if load1 else 'n/a'}; other processes used "
             f"{'n/a' if others is None else f'{100 * others:.0f}%'} of the CPUs during the run", hang=2)
    out.line(f"elapsed: {elapsed:.1f} s")
    if others is not None and others > 0.15:
        out.line("note: other processes shared the cores during this run: rerun on a quiet machine before "
                 "comparing", indent=2, hang=2)

    result = {
        "schema": R.SCHEMA, "started_utc": R.utc_now(), "elapsed_s": round(elapsed, 2),
        "argv": list(sys.argv[1:] if argv is None else argv), "quick": q,
        "machine": {**mach, "load_average_start": load0, "load_average_end": load1,
                    "cpu_share_of_other_processes": others},
        "versions": vers, "commit": commit, "backends": backend_info(),
        "clocks": clock_status, "providers": pstat, "provider_order": providers, "checkpoint": ckpt,
        "settings": {"budget_s": budget, "blocks": blocks, "sampling_time_s": s_time, "repeats": repeats,
                     "num_envs": num_envs, "envs": env_ids if sampling else [], "threads": args.threads,
                     "seed": args.seed},
        "ops": op_rows, "sampling": samp_rows,
    }
    folder = args.out if args.out is not None else (None if q else "rlmodule-fast-bench-results")
    paths = {"json": args.json, "csv": args.csv, "png": args.png}
    if folder:
        stem = mach["tag"] + (f"-checkpoint-{_slug(os.path.basename(os.path.normpath(args.checkpoint)))}"
                              if ckpt is not None else "") + ("-quick" if q else "")
        for ext in paths:
            if paths[ext] is None and not (ext == "png" and args.no_plot):
                paths[ext] = os.path.join(folder, f"{stem}.{ext}")
    if paths["json"]:
        R.write_json(paths["json"], result)
        out.line(f"wrote {paths['json']}")
    if paths["csv"]:
        R.write_csv(paths["csv"], result)
        out.line(f"wrote {paths['csv']}")
    if paths["png"]:
        why = R.write_png(paths["png"], result)
        out.line(f"wrote {paths['png']}" if why is None else f"no plot: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
