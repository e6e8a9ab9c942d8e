"""Plumbing of ``rlmodule-fast-bench``: arguments, output files, JSON/CSV schema, the case
registry. Never timings (every run here uses a tiny budget)."""
from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from rlmodule_fast.bench import cases as C
from rlmodule_fast.bench import report as R
from rlmodule_fast.bench import sampling_loop as S
from rlmodule_fast.bench.__main__ import main, parser

TINY = ["--budget", "0.002", "--blocks", "2", "--no-progress"]
TINY_SAMPLING = ["--sampling-time", "0.01", "--repeats", "1"]


def test_registry_ids_unique_and_readable():
    full = C.cases()
    ids = [c.id for c in full]
    assert len(ids) == len(set(ids))
    assert "policy_step-CartPole-B1" in ids and "fused_mlp-4x256x256x2-B256" in ids
    assert {c.op for c in full} == set(C.OPS)
    quick = C.cases(quick=True)
    assert {c.batch for c in quick} == set(C.QUICK_BATCHES)
    assert {c.op for c in quick} == set(C.OPS)
    assert all(C.BASELINE in c.providers for c in full)
    assert all("rllib" not in c.providers for c in full if c.op != "policy_step")


def test_registry_rejects_bad_filters():
    with pytest.raises(ValueError, match="ops"):
        C.cases(ops=["nope"])
    with pytest.raises(ValueError, match="batches"):
        C.cases(batches=[0])


@pytest.mark.parametrize("case_id", ["fused_mlp-4x256x256x2-B3", "sample_categorical-A6-B3",
                                     "sample_diag_gaussian-A6-B3", "lstm_step-I64H256-B3",
                                     "gru_step-I64H256-B3", "policy_step-CartPole-B3"])
def test_every_provider_builds_or_says_why(case_id):
    ctx = C.Context(device="cpu", quick=True)
    case = next(c for c in C.cases(batches=[3]) if c.id == case_id)
    for p in case.providers:
        try:
            b = case.build(p, ctx)
        except C.Unavailable as e:
            assert str(e), p  # a reason, always
            continue
        with torch.no_grad(), b.ctx():  # the harness times every call under no_grad
            b.fn()  # runs once without error


def test_triton_is_na_on_cpu():
    case = C.cases(ops=["fused_mlp"], batches=[1])[0]
    with pytest.raises(C.Unavailable, match="CUDA"):
        case.build("triton", C.Context(device="cpu"))


@pytest.mark.parametrize("argv", [["--ops", "nope"], ["--batches", "0"], ["--batches", "a,b"],
                                  ["--providers", "numba"], ["--budget", "-1"], ["--threads", "0"],
                                  ["--envs", "Atari"], ["--drivers", "x"]],
                         ids=["ops", "batch0", "batch-str", "provider", "budget", "threads", "envs", "drivers"])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


def test_list(capsys):
    assert main(["--list", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "policy_step-CartPole-B1" in out and "sampling drivers" in out


def test_run_writes_json_csv_and_table(tmp_path, capsys):
    js, cs = tmp_path / "r.json", tmp_path / "r.csv"
    argv = ["--quick", "--ops", "fused_mlp,policy_step", "--batches", "2", "--envs", "CartPole-v1",
            "--num-envs", "1", "--drivers", "env-alone,rf-fast,rllib-runner", "--json", str(js), "--csv", str(cs),
            *TINY, *TINY_SAMPLING]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "speed-up over torch-eager" in out and "load average" in out
    assert "policy_step CartPole" in out and "sampling loop" in out
    assert "device clock: n/a" in out  # CPU run

    res = json.loads(js.read_text())
    assert res["schema"] == R.SCHEMA
    for key in ("started_utc", "elapsed_s", "argv", "machine", "versions", "commit", "backends", "clocks",
                "providers", "ops", "sampling", "settings"):
        assert key in res, key
    for key in ("device", "cpu_model", "cpu_count", "torch_threads", "tag", "load_average_start", "load_average_end",
                "cpu_share_of_other_processes"):
        assert key in res["machine"], key
    for key in ("python", "torch", "numpy", "rlmodule_fast", "gymnasium", "triton", "ray"):
        assert key in res["versions"], key
    assert "sha" in res["commit"]
    assert res["clocks"]["host"] == "ok" and res["clocks"]["graph"].startswith("n/a")
    assert res["providers"]["torch-compile"].startswith("n/a")  # --quick
    ops = res["ops"]
    assert {r["case"] for r in ops} == {"fused_mlp-4x256x256x2-B2", "policy_step-CartPole-B2"}
    for r in ops:
        assert r["clock"] == "host" and r["provider"] in C.PROVIDERS
        if "na" in r:
            assert isinstance(r["na"], str) and r["na"]
        else:
            assert r["median_us"] > 0 and r["min_us"] <= r["median_us"]
            assert r["blocks"] == 2 and r["calls_per_block"] >= 1
            assert "speedup_vs_eager" in r
    eager = [r for r in ops if r["provider"] == "torch-eager"]
    assert eager and all(r["speedup_vs_eager"] == 1.0 for r in eager)
    samp = {r["driver"]: r for r in res["sampling"]}
    assert set(samp) == {"env-alone", "rf-fast", "rllib-runner"}
    assert samp["env-alone"]["steps_per_s"] > 0 and len(samp["env-alone"]["all"]) == 1
    assert samp["rf-fast"]["goal"] == S.GOALS[("CartPole-v1", 1)]
    if not C.ray_status()[0]:
        assert "ray" in samp["rllib-runner"]["na"]

    with open(cs, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and set(rows[0]) == set(R.CSV_FIELDS)
    assert {r["kind"] for r in rows} == {"op", "sampling"}
    assert len(rows) == len(ops) + len(res["sampling"])
    assert all(r["cpu_model"] == res["machine"]["cpu_model"] for r in rows)


def test_out_folder_names_files_by_machine(tmp_path, capsys):
    argv = ["--ops", "sample_categorical", "--batches", "1", "--providers", "torch-eager,cpp", "--no-sampling",
            "--out", str(tmp_path), *TINY]
    assert main(argv) == 0
    out = capsys.readouterr().out
    tag = R.machine("cpu", 1)["tag"]
    assert (tmp_path / f"{tag}.json").exists() and (tmp_path / f"{tag}.csv").exists()
    png = tmp_path / f"{tag}.png"
    if importlib.util.find_spec("matplotlib") is None:
        assert "no plot: matplotlib not installed" in out and not png.exists()
    else:
        assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    res = json.loads((tmp_path / f"{tag}.json").read_text())
    assert res["sampling"] == [] and {r["provider"] for r in res["ops"]} == {"torch-eager", "cpp"}


def test_no_plot_and_quick_writes_nothing_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--quick", "--ops", "gru_step", "--batches", "1", "--no-sampling", *TINY]) == 0
    assert list(tmp_path.iterdir()) == []
    assert main(["--ops", "gru_step", "--batches", "1", "--no-sampling", "--no-plot", "--providers",
                 "torch-eager", "--out", "o", *TINY]) == 0
    assert sorted(p.suffix for p in (tmp_path / "o").iterdir()) == [".csv", ".json"]


def test_progress_lines_when_not_a_tty(capsys):
    p = R.Progress(2, enabled=True, stream=sys.stdout)
    p.step("a")
    p.step("b")
    p.close()
    assert capsys.readouterr().out == "[1/2] a\n[2/2] b\n"


def test_console_script_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "rlmodule_fast.bench", "--list"], check=False, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "fused_mlp" in r.stdout
