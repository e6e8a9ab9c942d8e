"""A short budget of the RLlib pickle loader fuzzer (tests/fuzz/fuzz_pickle_loader.py) in CI.

Mutated RLlib checkpoint pickles (bit flips, byte / length-field overwrites, opcode splices,
random opcode streams) through ``restricted_load`` and ``space_from_record``, and (``--checkpoint``)
half of the mutated seeds as whole checkpoint directories through ``load_rllib_checkpoint``
(spaces and model config -> module built on the meta device -> weights checked -> real build):
each returns or raises a ValueError naming the file, with a bounded message, within the
harness's time and memory limits per input (a child process under RLIMIT_AS, watched by the
parent: a crash or hang is listed, not fatal here). The longer run is
``python tests/fuzz/fuzz_pickle_loader.py --checkpoint --seconds 600``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses RLIMIT_AS and /proc")

HARNESS = os.path.join(os.path.dirname(__file__), "fuzz", "fuzz_pickle_loader.py")


def test_fuzz_pickle_loader_short(tmp_path):
    out = tmp_path / "fuzz.json"
    p = subprocess.run([sys.executable, HARNESS, "--seconds", "3", "--seed", "1", "--checkpoint", "--json", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert out.exists(), f"fuzz harness failed (exit {p.returncode}):\n{p.stderr[-3000:]}"
    s = json.loads(out.read_text())
    report = "\n".join(f"{f['kind']} {f.get('mutator', '')}/{f.get('target', '')}: {f['detail'][:400]}\n"
                       f"  replay: {f.get('replay', '')}\n{f.get('tb', '')[-600:]}" for f in s["failure_list"])
    assert s["failures"] == 0 and p.returncode == 0, report
    seen = {k.split("/")[0] for k in s["by_mutator_and_target"]}
    assert s["inputs"] >= 200 and seen == {"bitflip", "bytes", "splice", "opstream"}, s["by_mutator_and_target"]
    assert any(k.endswith("/checkpoint") for k in s["by_mutator_and_target"]), s["by_mutator_and_target"]
    assert s["slowest_input"]["seconds"] < 2.0, s["slowest_input"]
