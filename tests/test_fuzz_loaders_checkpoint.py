"""A few seconds of the checkpoint-loader fuzzer (tests/fuzz/fuzz_checkpoint_loader.py) in CI.

The harness mutates valid checkpoint directories (JSON values, keys, text, spaces, model
configs, safetensors headers and bytes, consistent-but-wrong states, links / FIFOs / devices /
sparse files in place of files, multi-module ids, nesting and link loops) and runs every loader
on each, in a child process under RLIMIT_AS with a per-input timeout. Only ValueError /
FileNotFoundError naming a file of the checkpoint may escape. The longer run and its figures are
in the README's Reliability section.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

HARNESS = os.path.join(os.path.dirname(__file__), "fuzz", "fuzz_checkpoint_loader.py")


def test_fuzz_checkpoint_loaders_short(tmp_path):
    out = tmp_path / "fuzz.json"
    p = subprocess.run([sys.executable, HARNESS, "--seconds", "6", "--budget", "100000", "--seed", "1",
                        "--input-timeout", "30", "--timeout", "150", "--json", str(out)],
                       capture_output=True, text=True, timeout=240)
    assert out.exists(), f"fuzz harness failed (exit {p.returncode}):\n{p.stderr[-3000:]}"
    s = json.loads(out.read_text())
    bad = {f: {"unclean": v["unclean"], "unnamed": v["unnamed"]} for f, v in s["per_family"].items()
           if v["unclean"] or v["unnamed"]}
    assert s["unclean"] == 0 and s["unnamed"] == 0, json.dumps(bad, indent=1)[:6000]
    assert s["crashes"] == 0 and s["hangs"] == 0, json.dumps(s["crash_list"] + s["hang_list"], indent=1)[:4000]
    assert not s["timed_out"]
    families = s["families"]
    assert set(s["per_family"]) == set(families), sorted(s["per_family"])  # every mutation family ran
    assert s["total_inputs"] >= 2 * len(families), s["total_inputs"]
    assert s["peak_rss_growth_mb"] < 200, s["peak_reached_at"]
    assert p.returncode == 0
