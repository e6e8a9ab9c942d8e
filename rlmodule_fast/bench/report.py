"""What ``rlmodule-fast-bench`` prints and writes: machine info, tables, JSON, CSV, PNG, progress.

Terminal output goes through :class:`Out`: ``rich`` tables and a rich progress bar when rich is
installed (the ``bench`` extra), plain text otherwise or with ``--plain``; lines are at most
``MAX_WIDTH`` (100) columns.

JSON schema (``SCHEMA``): {"schema", "started_utc", "elapsed_s", "argv", "machine": {...},
"versions": {...}, "commit": {...}, "backends": rf.backend_info(), "clocks": {clock: "ok" | "n/a:
reason"}, "providers": {provider: "ok" | "n/a: reason"}, "checkpoint": null | {"path", "kind",
"module_id", "module"}, "ops": [row, ...], "sampling": [row, ...]}.
An op row: {"case", "op", "config", "batch", "provider", "clock", "median_us", "min_us", "q1_us",
"q3_us", "calls_per_block", "blocks", "speedup_vs_eager", "speedup_vs_ort", "note"} or, instead
of the timings, {"na": reason}; ``speedup_vs_ort`` is against ``ort-sampling`` where that applies
(policy step), else ``ort`` (None when neither ran). A sampling row: {"env", "num_envs",
"driver", "steps_per_s", "all", "goal", "policy_us_per_iter", "env_us_per_iter"} or {"na":
reason}. The CSV has one line per op or sampling row with the machine columns repeated.
"""
from __future__ import annotations

import csv
import datetime as _dt
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from typing import Optional

SCHEMA = "rlmodule_fast.bench/1"

CSV_FIELDS = ["kind", "case", "op", "config", "batch", "provider", "clock", "median_us", "min_us", "q1_us",
              "q3_us", "speedup_vs_eager", "speedup_vs_ort", "env", "num_envs", "driver", "steps_per_s",
              "policy_us_per_iter", "env_us_per_iter", "na", "note",
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
    for name in ("gymnasium", "triton", "ray", "onnxruntime", "onnx", "rich"):
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
# terminal output: rich when installed (tables, progress bar), plain text otherwise
# --------------------------------------------------------------------------------------------
#: the widest line the CLI prints (a terminal narrower than this gets its own width)
MAX_WIDTH = 100


def rich_status() -> tuple:
    """(usable, reason): rich importable (``pip install rich``, or ``rlmodule_fast[bench]``)."""
    if importlib.util.find_spec("rich") is None:
        return False, "rich not installed (pip install rich, or pip install 'rlmodule_fast[bench]')"
    return True, ""


def _encodable(stream, text: str) -> bool:
    enc = getattr(stream, "encoding", None) or "utf-8"
    try:
        text.encode(enc)
        return True
    except (UnicodeEncodeError, LookupError):
        return False


@dataclass
class Table:
    """A table to print: ``columns`` are (header, "left" | "right"); ``rows`` lists of cells;
    ``sections``: row indices that start a new group (a rule is drawn above them)."""

    title: str
    columns: list
    rows: list = field(default_factory=list)
    sections: set = field(default_factory=set)

    def add(self, cells: list, new_section: bool = False) -> None:
        if new_section and self.rows:
            self.sections.add(len(self.rows))
        self.rows.append([str(c) for c in cells])


class Out:
    """Where the CLI prints: a ``rich`` console (tables with rules, colour on a terminal, plain
    characters in a pipe) when rich is installed and ``plain`` is False, else plain text.
    Lines are at most ``MAX_WIDTH`` columns (or the terminal's width, if narrower)."""

    def __init__(self, stream=None, plain: bool = False, width: Optional[int] = None):
        self._stream = stream
        self.rich = not plain and rich_status()[0]
        self._console = None
        if width is None:
            width = MAX_WIDTH
            if self.tty:
                width = min(MAX_WIDTH, shutil.get_terminal_size((MAX_WIDTH, 24)).columns)
        self.width = max(40, width)
        self.mu = "µ" if _encodable(self.stream, "µ") else "u"

    @property
    def stream(self):
        return self._stream if self._stream is not None else sys.stdout  # pytest swaps sys.stdout

    @property
    def tty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def _rich_console(self):
        from rich.console import Console

        if self._console is None or self._console.file is not self.stream:
            self._console = Console(file=self.stream, width=self.width, markup=False, emoji=False,
                                    highlight=False, soft_wrap=True, force_terminal=self.tty or None)
        return self._console

    def line(self, text: str = "", indent: int = 0, hang: int = 0) -> None:
        """``text`` wrapped to the width; continuation lines indented by ``indent + hang``."""
        if not text:
            self._write("")
            return
        lines = textwrap.wrap(text, width=self.width, initial_indent=" " * indent,
                              subsequent_indent=" " * (indent + hang), break_long_words=True,
                              break_on_hyphens=False) or [""]
        for ln in lines:
            self._write(ln)

    def _write(self, text: str) -> None:
        if self.rich:
            self._rich_console().print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            self.stream.write(text + "\n")

    def table(self, t: Table) -> None:
        if self.rich:
            self._rich_console().print(rich_table(t))
        else:
            self.stream.write(plain_table(t, self.width) + "\n")
        self.stream.flush()


def _rich_box():
    from rich.box import Box

    # rich's SIMPLE_HEAD with a rule between sections too (SIMPLE_HEAD leaves a blank line)
    return Box("    \n    \n ── \n    \n ╌╌ \n    \n    \n    \n")


def rich_table(t: Table):
    from rich.table import Table as RTable
    from rich.text import Text

    rt = RTable(title=Text(t.title, style="bold"), title_justify="left", box=_rich_box(),
                show_edge=False, pad_edge=False, header_style="bold")
    for head, justify in t.columns:
        rt.add_column(Text(head), justify=justify, overflow="fold")
    for i, row in enumerate(t.rows):
        if i in t.sections:
            rt.add_section()
        rt.add_row(*[Text(c) for c in row])
    return rt


def plain_table(t: Table, width: int = MAX_WIDTH) -> str:
    """The table as text: title, header, a rule, rows (a blank line between sections); cells
    wider than the width allows are cut with "~"."""
    heads = [h.split("\n") for h, _ in t.columns]
    nh = max(len(h) for h in heads)
    heads = [[""] * (nh - len(h)) + h for h in heads]
    ws = [max([len(x) for x in heads[j]] + [len(r[j]) for r in t.rows]) for j in range(len(t.columns))]
    while sum(ws) + 2 * (len(ws) - 1) > width and max(ws) > 8:
        j = ws.index(max(ws))
        ws[j] -= 1

    def fit(s: str, w: int, justify: str) -> str:
        s = s if len(s) <= w else s[:w - 1] + "~"
        return s.rjust(w) if justify == "right" else s.ljust(w)

    lines = textwrap.wrap(t.title, width=width) or [""]
    for k in range(nh):
        lines.append("  ".join(fit(heads[j][k], ws[j], t.columns[j][1]) for j in range(len(ws))).rstrip())
    lines.append("-" * min(width, sum(ws) + 2 * (len(ws) - 1)))
    for i, r in enumerate(t.rows):
        if i in t.sections:
            lines.append("")
        lines.append("  ".join(fit(r[j], ws[j], t.columns[j][1]) for j in range(len(ws))).rstrip())
    return "\n".join(lines)


class Progress:
    """Progress on ``stream`` (stderr): a rich progress bar on a terminal (when rich is
    installed), one line per step ("[3/12] label") elsewhere (pipes, CI logs); silent when
    disabled."""

    def __init__(self, total: int, enabled: bool = True, stream=None, plain: bool = False):
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and getattr(self.stream, "isatty", lambda: False)()
        self._bar = None
        if self.tty and not plain and rich_status()[0]:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RProgress, TextColumn,
                                       TimeElapsedColumn)

            con = Console(file=self.stream, width=min(MAX_WIDTH, shutil.get_terminal_size((MAX_WIDTH, 24)).columns),
                          force_terminal=True)
            # auto_refresh=False: no refresh thread waking up while the providers are timed;
            # the bar is redrawn at each step instead
            self._bar = RProgress(BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn(),
                                  TextColumn("{task.description}", markup=False), console=con, transient=True,
                                  auto_refresh=False, redirect_stdout=False, redirect_stderr=False)
            self._task = self._bar.add_task("", total=self.total)
            self._bar.start()
            self._bar.refresh()

    def step(self, label: str) -> None:
        self.done = min(self.done + 1, self.total)
        self._show(label, advance=True)

    def note(self, label: str) -> None:
        self._show(label, advance=False)

    def _show(self, label: str, advance: bool) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, description=label[:60], refresh=True)
            return
        if self.tty:  # a terminal without rich: one line rewritten in place
            w = 24
            k = int(w * self.done / self.total)
            self.stream.write(f"\r[{'#' * k}{'.' * (w - k)}] {self.done}/{self.total} {label[:60]:<60s}")
        else:
            self.stream.write(f"[{self.done}/{self.total}] {label}\n")
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self.enabled and self.tty:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()


# --------------------------------------------------------------------------------------------
# the op tables
# --------------------------------------------------------------------------------------------
def _us(v: float) -> str:
    """Microseconds, about 3 significant digits, thousands separated (never switching unit)."""
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _ratio(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}x" if v < 0.995 else f"{v:.1f}x"


def ort_reference(providers) -> Optional[str]:
    """The ONNX Runtime row the "vs ORT" ratios of a case compare with: ``ort-sampling`` (the
    whole policy step) where it applies, else ``ort`` (logits / MLP only), else None."""
    for p in ("ort-sampling", "ort"):
        if p in providers:
            return p
    return None


def ops_tables(rows: list, providers: list, clock: str = "host", mu: str = "µ") -> list:
    """One Table per (op, config) for ``clock``: a row per batch size and provider with the
    median per-call time, its spread and the ratios vs torch-eager and vs ONNX Runtime."""
    groups: dict = {}
    for r in rows:
        if r["clock"] == clock:
            groups.setdefault((r["op"], r["config"]), []).append(r)
    out = []
    for (op, cfg), rs in groups.items():
        present = [p for p in providers if any(r["provider"] == p for r in rs)]
        ref = ort_reference(present)
        with_ort = ref is not None and any(r["provider"] == ref and "na" not in r for r in rs)
        cols = [("B", "right"), ("provider", "left"), (f"{mu}s/call", "right"), ("spread", "right"),
                ("vs torch-eager", "right")]
        if with_ort:
            cols.append((f"vs {ref}", "right"))
        t = Table(f"{op}: {cfg}" + ("" if clock == "host" else f" ({clock} clock)"), cols)
        batches = []
        for r in rs:
            if r["batch"] not in batches:
                batches.append(r["batch"])
        for b in batches:
            first = True
            for p in present:
                r = next((x for x in rs if x["batch"] == b and x["provider"] == p), None)
                if r is None:
                    continue
                if "na" in r:
                    cells = [b, p, "n/a", "", "-"] + (["-"] if with_ort else [])
                else:
                    med = r["median_us"]
                    spread = "-"
                    if r.get("q1_us") is not None and r.get("q3_us") is not None and med > 0:
                        spread = f"±{50 * (r['q3_us'] - r['q1_us']) / med:.0f}%"
                    cells = [b, p, _us(med), spread, _ratio(r.get("speedup_vs_eager"))]
                    if with_ort:
                        cells.append(_ratio(r.get("speedup_vs_ort")))
                t.add(cells if first else [""] + cells[1:], new_section=first)
                first = False
        out.append(t)
    return out


def ops_legend(mu: str = "µ", ort_ref: bool = True) -> list:
    """(term, explanation) pairs printed under the op tables."""
    items = [
        ("B", "batch size: observations (rows) per call"),
        ("provider", "what computes the same thing on the same weights (see 'providers' above; "
                     "rlmodule-fast-bench --help lists them)"),
        (f"{mu}s/call", "median host latency of one call in microseconds: the whole Python call, numpy "
                        "in and out for policy_step and for the ort rows, torch tensors otherwise "
                        "(median over timed blocks; each block's figure is its mean per call)"),
        ("spread", "half the interquartile range of the blocks, relative to the median: how noisy "
                   "that figure is"),
        ("vs torch-eager", "torch-eager's time / this row's time: 2.0x = twice as fast as plain torch "
                           "(nn.Sequential + torch.distributions), 0.50x = half as fast"),
    ]
    if ort_ref:
        items.append(("vs ort-sampling / vs ort", "the same ratio against ONNX Runtime: ort-sampling "
                      "(ORT logits + numpy sampling, the whole policy step) where it applies, "
                      "else ort (the MLP / logits only)"))
    items += [
        ("n/a", "the provider applies here but cannot run on this machine; the reason is listed "
                "under 'n/a'"),
        ("-", "no figure: the ratio's reference is n/a or not part of this run"),
        ("(row absent)", "the provider does not apply to this op (e.g. rllib times the policy step only)"),
    ]
    return items


def na_reasons(rows: list) -> list:
    """Distinct (provider, reason) pairs of the n/a op rows, for the footnotes."""
    seen, out = set(), []
    for r in rows:
        if "na" in r and (r["provider"], r["na"]) not in seen:
            seen.add((r["provider"], r["na"]))
            out.append((r["provider"], r["na"]))
    return out


# --------------------------------------------------------------------------------------------
# the sampling-loop table
# --------------------------------------------------------------------------------------------
def sampling_tables(rows: list, mu: str = "µ") -> list:
    """One Table per env id: a row per (number of envs, driver)."""
    envs = []
    for r in rows:
        if r["env"] not in envs:
            envs.append(r["env"])
    return [sampling_table([r for r in rows if r["env"] == e], mu, title=f"sampling loop: {e}") for e in envs]


def sampling_table(rows: list, mu: str = "µ", title: str = "sampling loop") -> Optional[Table]:
    if not rows:
        return None
    base = {(r["env"], r["num_envs"]): r.get("steps_per_s") for r in rows if r["driver"] == "env-alone"}
    eager = {(r["env"], r["num_envs"]): r.get("steps_per_s") for r in rows if r["driver"] == "torch-eager"}
    ort = {(r["env"], r["num_envs"]): r.get("steps_per_s") for r in rows if r["driver"] == "ort-sampling"}
    one_env = len({r["env"] for r in rows}) == 1
    cols = ([] if one_env else [("env", "left")]) + [
        ("envs", "right"), ("driver", "left"), ("steps/s", "right"), ("% of\nenv alone", "right"),
        ("vs\ntorch-eager", "right")]
    with_ort = any(v for v in ort.values())
    if with_ort:
        cols.append(("vs\nort-sampling", "right"))
    cols += [(f"policy\n{mu}s/it", "right"), (f"env\n{mu}s/it", "right")]
    t = Table(title, cols)
    last = None
    for r in rows:
        k = (r["env"], r["num_envs"])
        lead = ([] if one_env else [r["env"]]) + [r["num_envs"]]
        if k == last:
            lead = [""] * len(lead)
        if "na" in r:
            cells = lead + [r["driver"], "n/a", "", "-"] + (["-"] if with_ort else []) + ["", ""]
        else:
            v = r["steps_per_s"]
            pct = f"{100 * v / base[k]:.0f}%" if base.get(k) else "-"
            vs = _ratio(v / eager[k]) if eager.get(k) and r["driver"] != "env-alone" else "-"
            vo = _ratio(v / ort[k]) if ort.get(k) and r["driver"] != "env-alone" else "-"
            pol = f"{r['policy_us_per_iter']:.1f}" if r.get("policy_us_per_iter") is not None else "-"
            envt = f"{r['env_us_per_iter']:.1f}" if r.get("env_us_per_iter") is not None else "-"
            cells = lead + [r["driver"], f"{v:,.0f}", pct, vs] + ([vo] if with_ort else []) + [pol, envt]
        t.add(cells, new_section=k != last)
        last = k
    return t


def sampling_legend(mu: str = "µ", repeats: int = 0, seconds: float = 0.0, ort: bool = True) -> list:
    med = (f"median of {repeats} stretch{'es' if repeats != 1 else ''} of {seconds:g} s" if repeats
           else "median over the timed stretches")
    return [
        ("envs", "sub-environments in the vector env; one loop iteration steps all of them"),
        ("driver", "what picks the actions: env-alone = precomputed random actions (the env's own cost, "
                   "the ceiling); the others run the policy (see 'sampling drivers' in --help)"),
        ("steps/s", f"env steps per second = envs x loop iterations per second ({med})"),
        ("% of env alone", "steps/s as a share of env-alone's: how much of the ceiling is left "
                           "after the policy's cost"),
        ("vs torch-eager / vs ort-sampling" if ort else "vs torch-eager",
         "this driver's steps/s / that driver's (2.0x = twice as many steps per second)"),
        (f"policy {mu}s/it", "time per loop iteration in the policy call (observations of all envs -> "
                             "actions), median over the stretches"),
        (f"env {mu}s/it", "time per loop iteration in env.step of all envs"),
        ("-", "not measured for this driver (RLlib's env runners are timed as a whole) or the ratio's "
              "reference is n/a; n/a = cannot run here (reason in the row)"),
    ]


def print_legend(out: "Out", title: str, items: list) -> None:
    out.line(title)
    w = min(max(len(k) for k, _ in items), 18)
    for k, v in items:
        if len(k) > w:
            out.line(k, indent=2)
            out.line(v, indent=4 + w, hang=0)
        else:
            out.line(f"{k:<{w}s}  {v}", indent=2, hang=w + 2)


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
