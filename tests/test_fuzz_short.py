"""A short budget of the binding fuzzer (tests/fuzz/fuzz_bindings.py) in CI: zero crashes.

The harness runs its fuzzing in a child process and survives the child's death, so a segfault,
an abort or a sanitizer report shows up here as a listed crash (with a replay command) rather
than taking pytest down. The full run (10^4 inputs per target) is
``python tests/fuzz/fuzz_bindings.py --budget 10000``; its figures are in the README.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import rlmodule_fast as rf

CPP = rf.backend_info()["cpp"]
pytestmark = pytest.mark.skipif(not CPP["available"], reason=f"cpp backend unavailable: {CPP['reason']}")

HARNESS = os.path.join(os.path.dirname(__file__), "fuzz", "fuzz_bindings.py")


def _fuzz(tmp_path, *args) -> dict:
    out = tmp_path / "fuzz.json"
    p = subprocess.run([sys.executable, HARNESS, "--json", str(out), *args], capture_output=True, text=True,
                       timeout=240)
    assert out.exists(), f"fuzz harness failed (exit {p.returncode}):\n{p.stderr[-3000:]}"
    return json.loads(out.read_text())


def _crash_report(s: dict) -> str:
    lines = [f"{c['class']}: {c['how']} -- replay: {c['replay']}\n{c['stderr_tail'][-400:]}" for c in s["crash_list"]]
    wrong = [f"{t}: {w}" for t, v in s["targets"].items() for w in v["wrong"]]
    return "\n".join(lines + wrong)


def test_fuzz_valid_arguments_short(tmp_path):
    """Contract-respecting pointers, random sizes/strides/flags/data: never a crash or a wrong
    result, every binding and adapter exercised."""
    s = _fuzz(tmp_path, "--budget", "250", "--mode", "valid", "--seed", "1")
    assert s["crashes"] == 0 and s["wrong"] == 0, _crash_report(s)
    tried = {t: v["tried"] for t, v in s["targets"].items()}
    assert all(n >= 200 for n in tried.values()) and len(tried) >= 18, tried
    # the adapters answer bad Python objects with ValueError/TypeError only
    assert s["unclean"] == 0, json.dumps({t: v["unclean"] for t, v in s["targets"].items() if v["unclean"]})


def test_fuzz_invalid_arguments_short(tmp_path):
    """Checkable bad arguments to the raw bindings (null pointers, negative sizes, leading
    dimensions below the width, bad codes, int overflow): an exception, never a crash."""
    s = _fuzz(tmp_path, "--budget", "150", "--mode", "invalid", "--seed", "2", "--max-crashes", "40")
    assert s["crashes"] == 0, f"{s['crashes']} crash classes:\n" + _crash_report(s)
