"""What ``rlmodule-fast-bench`` prints and writes: machine info, tables, JSON, CSV, PNG, progress.

JSON schema (``SCHEMA``): {"schema", "started_utc", "elapsed_s", "argv", "machine": {...},
"versions": {...}, "commit": {...}, "backends": rf.backend_info(), "clocks": {clock: "ok" | "n/a:
reason"}, "providers": {provider: "ok" | "n/a: reason"}, "ops": [row, ...], "sampling": [row, ...]}.
An op row: {"case", "op", "config", "batch", "provider", "clock", "median_us", "min_us", "q1_us",
"q3_us", "calls_per_block", "blocks", "speedup_vs_eager", "note"} or, instead of the timings,
{"na": reason}. A sampling row: {"env", "num_envs", "driver", "steps_per_s", "all", "goal",
"policy_us_per_iter", "env_us_per_iter"} or {"na": reason}. The CSV has one line per op or sampling row with the machine columns repeated.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import time
from typing import Optional

SCHEMA = "rlmodule_fast.bench/1"

CSV_FIELDS = ["kind", "case", "op", "config", "batch", "provider", "clock", "median_us", "min_us", "q1_us",
              "q3_us", "speedup_vs_eager", "env", "num_envs", "driver", "steps_per_s", "policy_us_per_iter",
              "env_us_per_iter", "na", "note",
              "device", "cpu_model", "torch", "rlmodule_fast", "commit", "threads", "started_utc"]


# --------------------------------------------------------------------------------------------
# machine
# --------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> Optional[list]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


class CpuShare:
    """How much of the machine's CPU time went to OTHER processes between start and stop:
    (busy jiffies of all CPUs from /proc/stat - this process's own CPU time) / (wall x cpus).
    A truer figure than the load average, which lags (1-minute decay) and counts waiting
    threads. None where /proc/stat is missing."""

    def __init__(self):
        self._t0 = self._read()

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                parts = f.readline().split()
            vals = [int(v) for v in parts[1:]]
            busy = sum(vals) - vals[3] - (vals[4] if len(vals) > 4 else 0)  # minus idle and iowait
            tick = os.sysconf("SC_CLK_TCK")
            t = os.times()
            return busy / tick, t.user + t.system + t.children_user + t.children_system, time.monotonic()
        except (OSError, ValueError, IndexError, AttributeError):
            return None

    def others(self) -> Optional[float]:
        """Fraction (0..1) of all CPUs used by other processes since construction."""
        t1 = self._read()
        if self._t0 is None or t1 is None or t1[2] - self._t0[2] < 0.05:
            return None
        busy = t1[0] - self._t0[0]
        own = t1[1] - self._t0[1]
        share = (busy - own) / ((t1[2] - self._t0[2]) * (os.cpu_count() or 1))
        return round(min(max(share, 0.0), 1.0), 3)


def git_commit() -> dict:
    """{"sha", "dirty"} of the checkout holding this package, or {"sha": None, "why"}."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, check=False, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return {"sha": None, "why": "not a git checkout"}
        st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, check=False,
                            capture_output=True, text=True, timeout=5)
        return {"sha": sha.stdout.strip(), "dirty": bool(st.stdout.strip())}
    except (OSError, subprocess.SubprocessError) as e:
        return {"sha": None, "why": f"git unavailable: {type(e).__name__}"}


def versions() -> dict:
    import numpy
    import torch

    from .. import __version__

    v = {"python": platform.python_version(), "rlmodule_fast": __version__, "torch": torch.__version__,
         "numpy": numpy.__version__}
    for name in ("gymnasium", "triton", "ray"):
        try:
            from importlib.metadata import version

            v[name] = version(name)
        except Exception:
            v[name] = None
    return v


def machine(device: str, threads: int) -> dict:
    import torch

    m = {"device": device, "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
         "hostname": platform.node(), "os": platform.platform(), "torch_threads": threads,
         "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None}
    m["tag"] = machine_tag(m)
    return m


def machine_tag(m: dict) -> str:
    """A file-name-safe machine name: cpu model words + core count (+ GPU name)."""
    words = re.sub(r"\(.*?\)|processor|\d+-core|cpu", " ", m["cpu_model"], flags=re.IGNORECASE)
    slug = re.sub(r"[^a-z0-9]+", "-", words.lower()).strip("-") or "cpu"
    tag = f"{slug}-{m['cpu_count']}cpu"
    if m.get("gpu"):
        tag += "-" + re.sub(r"[^a-z0-9]+", "-", m["gpu"].lower()).strip("-")
    return tag


# --------------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------------
class Progress:
    """A one-line progress bar on a terminal (stderr), one line per step elsewhere; silent
    when disabled."""

    def __init__(self, total: int, enabled: bool = True, stream=None):
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and getattr(self.stream, "isatty", lambda: False)()

    def step(self, label: str) -> None:
        self.done = min(self.done + 1, self.total)
        self._show(label)

    def note(self, label: str) -> None:
        self._show(label)

    def _show(self, label: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            w = 24
            k = int(w * self.done / self.total)
            self.stream.write(f"\r[{'#' * k}{'.' * (w - k)}] {self.done}/{self.total} {label[:60]:<60s}")
        else:
            self.stream.write(f"[{self.done}/{self.total}] {label}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------
def _us(v: float) -> str:
    if v >= 10_000:
        return f"{v / 1000:.1f}ms"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}"


def ops_table(rows: list, providers: list, clock: str = "host") -> str:
    """The op rows of one clock as a text table: median per call (microseconds) and, in
    parentheses, the speed-up over torch-eager in the same run (2.0x = twice as fast)."""
    keys, cells = [], {}
    for r in rows:
        if r["clock"] != clock:
            continue
        k = (r["op"], r["config"], r["batch"])
        if k not in cells:
            keys.append(k)
            cells[k] = {}
        cells[k][r["provider"]] = r
    provs = [p for p in providers if any(p in c for c in cells.values())]
    if not keys:
        return ""
    w0 = max(len(f"{op} {cfg}") for op, cfg, _ in keys)
    head = f"{'op / config':<{w0}s} {'B':>5s} " + " ".join(f"{p:>15s}" for p in provs)
    lines = [head, "-" * len(head)]
    for k in keys:
        op, cfg, b = k
        out = []
        for p in provs:
            r = cells[k].get(p)
            if r is None:
                s = "-"
            elif "na" in r:
                s = "n/a"
            else:
                s = _us(r["median_us"])
                if r.get("speedup_vs_eager") is not None and p != "torch-eager":
                    s += f" ({r['speedup_vs_eager']:.1f}x)"
            out.append(f"{s:>15s}")
        lines.append(f"{op + ' ' + cfg:<{w0}s} {b:>5d} " + " ".join(out))
    return "\n".join(lines)


def na_reasons(rows: list) -> list:
    """Distinct (provider, reason) pairs of the n/a op rows, for the footnotes."""
    seen, out = set(), []
    for r in rows:
        if "na" in r and (r["provider"], r["na"]) not in seen:
            seen.add((r["provider"], r["na"]))
            out.append((r["provider"], r["na"]))
    return out


def sampling_table(rows: list) -> str:
    if not rows:
        return ""
    base = {(r["env"], r["num_envs"]): r.get("steps_per_s") for r in rows if r["driver"] == "env-alone"}
    eager = {(r["env"], r["num_envs"]): r.get("steps_per_s") for r in rows if r["driver"] == "torch-eager"}
    head = (f"{'env':<12s} {'envs':>4s} {'driver':<18s} {'steps/s':>10s} {'% of env alone':>14s} "
            f"{'vs torch-eager':>14s} {'policy us/it':>12s} {'env us/it':>9s}  goal")
    lines = [head, "-" * len(head)]
    for r in rows:
        k = (r["env"], r["num_envs"])
        if "na" in r:
            lines.append(f"{r['env']:<12s} {r['num_envs']:>4d} {r['driver']:<18s} {'n/a':>10s}  {r['na']}")
            continue
        v = r["steps_per_s"]
        pct = f"{100 * v / base[k]:.0f}%" if base.get(k) else "-"
        vs = f"{v / eager[k]:.1f}x" if eager.get(k) and r["driver"] not in ("torch-eager", "env-alone") else "-"
        pol = f"{r['policy_us_per_iter']:.1f}" if r.get("policy_us_per_iter") is not None else "-"
        envt = f"{r['env_us_per_iter']:.1f}" if r.get("env_us_per_iter") is not None else "-"
        goal = ""
        if r.get("goal"):
            goal = f">= {r['goal'] / 1000:.0f}k: {'met' if v >= r['goal'] else 'NOT met'}"
        lines.append(f"{r['env']:<12s} {r['num_envs']:>4d} {r['driver']:<18s} {v:>10,.0f} {pct:>14s} {vs:>14s} {pol:>12s} {envt:>9s}  {goal}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def write_json(path: str, result: dict) -> None:
    _mkdir(path)
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=str)
        f.write("\n")


def write_csv(path: str, result: dict) -> None:
    _mkdir(path)
    m, v = result["machine"], result["versions"]
    common = {"device": m["device"], "cpu_model": m["cpu_model"], "torch": v["torch"],
              "rlmodule_fast": v["rlmodule_fast"], "commit": result["commit"].get("sha"),
              "threads": m["torch_threads"], "started_utc": result["started_utc"]}
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in result["ops"]:
            w.writerow({"kind": "op", **r, **common})
        for r in result["sampling"]:
            w.writerow({"kind": "sampling", **{k: v for k, v in r.items() if k != "all"}, **common})


def write_png(path: str, result: dict) -> Optional[str]:
    """Latency vs batch per provider (one panel per op/config, host clock, log-log) and the
    sampling-loop rates. Returns None when written, else why not (matplotlib missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        return f"matplotlib not installed ({type(e).__name__}); pip install matplotlib for the plot"
    rows = [r for r in result["ops"] if r["clock"] == "host" and "na" not in r]
    panels = []
    for r in rows:
        k = (r["op"], r["config"])
        if k not in panels:
            panels.append(k)
    samp = [r for r in result["sampling"] if "na" not in r]
    if not panels and not samp:
        return "nothing measured to plot"
    cols = max(1, min(3, len(panels)))
    prow = (len(panels) + cols - 1) // cols
    nrows = prow + (1 if samp else 0)
    fig = plt.figure(figsize=(5.4 * max(cols, 2), 3.8 * nrows))
    gs = fig.add_gridspec(nrows, max(cols, 1))
    providers = result.get("provider_order") or sorted({r["provider"] for r in rows})
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {p: palette[i % len(palette)] for i, p in enumerate(providers)}
    for i, (op, cfg) in enumerate(panels):
        ax = fig.add_subplot(gs[i // cols, i % cols])
        batches = set()
        for p in providers:
            pts = sorted((r["batch"], r["median_us"]) for r in rows if (r["op"], r["config"], r["provider"]) == (op, cfg, p))
            if pts:
                batches.update(b for b, _ in pts)
                ax.plot([b for b, _ in pts], [t for _, t in pts], marker="o", label=p, color=color[p])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted(batches))
        ax.set_xticklabels([str(b) for b in sorted(batches)])
        ax.set_title(f"{op}: {cfg}", fontsize=9)
        ax.set_xlabel("batch")
        ax.set_ylabel("us / call (median, host)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if samp:
        ax = fig.add_subplot(gs[prow, :])
        groups = []
        for r in samp:
            g = (r["env"], r["num_envs"])
            if g not in groups:
                groups.append(g)
        drivers = []
        for r in samp:
            if r["driver"] not in drivers:
                drivers.append(r["driver"])
        width = 0.8 / max(len(drivers), 1)
        for j, d in enumerate(drivers):
            xs, ys = [], []
            for gi, g in enumerate(groups):
                v = [r["steps_per_s"] for r in samp if (r["env"], r["num_envs"]) == g and r["driver"] == d]
                if v:
                    xs.append(gi + (j - (len(drivers) - 1) / 2) * width)
                    ys.append(v[0] / 1000)
            ax.bar(xs, ys, width=width, label=d, color=palette[j % len(palette)])
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([f"{e} x{n} envs" for e, n in groups], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("env steps/s (thousands, median)")
        ax.set_title("sampling loop: gymnasium vector env driven by the policy (env-alone = random actions)", fontsize=9)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=len(drivers))
    m = result["machine"]
    fig.suptitle(f"rlmodule-fast-bench | {m['cpu_model']} ({m['cpu_count']} cpu) | {m['device']} | "
                 f"torch threads {m['torch_threads']} | commit {(result['commit'].get('sha') or '?')[:10]}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    _mkdir(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _mkdir(path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
