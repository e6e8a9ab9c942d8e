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
HAVE_RICH = importlib.util.find_spec("rich") is not None


def assert_readable(out: str) -> None:
    """Every printed line fits 100 columns, and the legend explains the columns."""
    wide = [ln for ln in out.splitlines() if len(ln) > R.MAX_WIDTH]
    assert not wide, wide
    assert "How to read the tables above" in out
    for term in ("s/call", "spread", "vs torch-eager", "n/a ", "no figure"):
        assert term in out, term


def hide(monkeypatch, *names):
    """Make the named top-level packages look absent (find_spec None, import fails)."""
    real = importlib.util.find_spec

    def find_spec(name, *a, **k):
        if name.split(".")[0] in names:
            return None
        return real(name, *a, **k)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    for n in names:
        monkeypatch.setitem(sys.modules, n, None)


def small_module(env_id="CartPole-v1", **cfg):
    return C.ppo_module(env_id, hiddens=(16, 16), seed=0, **cfg)


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
    assert all("rllib" not in c.providers for c in full if c.op not in ("policy_step", "dqn_step"))


def test_registry_rejects_bad_filters():
    with pytest.raises(ValueError, match="ops"):
        C.cases(ops=["nope"])
    with pytest.raises(ValueError, match="batches"):
        C.cases(batches=[0])


@pytest.mark.parametrize("case_id", ["fused_mlp-4x256x256x2-B3", "sample_categorical-A6-B3",
                                     "sample_diag_gaussian-A6-B3", "lstm_step-I64H256-B3",
                                     "gru_step-I64H256-B3", "policy_step-CartPole-B3", "dqn_step-CartPoleDQN-B3"])
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
    assert "vs torch-eager" in out and "load average" in out
    assert "policy_step: CartPole" in out and "sampling loop: CartPole-v1" in out
    assert "device clock: n/a" in out  # CPU run
    assert "goal" not in out and "NOT met" not in out  # ratios, not the project's internal targets
    assert_readable(out)

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


@pytest.mark.parametrize("plain", [False, True], ids=["rich-or-fallback", "plain"])
def test_output_fits_100_columns_and_has_legends(plain, capsys):
    argv = ["--quick", "--ops", "fused_mlp,policy_step", "--batches", "1,2", "--envs", "CartPole-v1",
            "--num-envs", "1", "--drivers", "env-alone,torch-eager,rf-fast,ort-sampling,rllib-runner",
            *TINY, *TINY_SAMPLING] + (["--plain"] if plain else [])
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert_readable(out)
    assert "Columns:" in out and "env s/it" in out.replace("µ", "") and "% of env alone" in out
    assert "torch-compile  n/a: skipped under --quick" in out  # provider status, with the reason


def test_plain_text_without_rich(monkeypatch, capsys):
    hide(monkeypatch, "rich")
    assert not R.rich_status()[0]
    assert not R.Out().rich
    assert main(["--quick", "--ops", "sample_categorical", "--batches", "1", "--no-sampling", *TINY]) == 0
    out = capsys.readouterr().out
    assert_readable(out)
    assert "sample_categorical: A=6" in out and "─" not in out  # the plain formatter's rule is "-"


@pytest.mark.skipif(not HAVE_RICH, reason="rich not installed")
def test_rich_progress_bar_on_a_terminal():
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True
    s = Tty()
    p = R.Progress(3, enabled=True, stream=s)
    assert p._bar is not None  # rich's bar on a terminal
    p.step("a")
    p.note("building")
    p.step("b")
    p.close()
    p2 = R.Progress(2, enabled=True, stream=Tty(), plain=True)
    assert p2._bar is None
    p2.step("a")
    p2.close()


def test_plain_table_cuts_to_width():
    t = R.Table("title", [("a", "left"), ("b\nheader", "right")])
    t.add(["x" * 150, "1"])
    t.add(["y", "2"], new_section=True)
    text = R.plain_table(t, width=60)
    assert all(len(ln) <= 60 for ln in text.splitlines())
    assert "~" in text and "header" in text and "\n\n" in text  # cut cell, 2-line header, section gap


# ---- --checkpoint: the user's own policy ------------------------------------------------------
def test_checkpoint_ours(tmp_path, capsys):
    d = small_module().save_to_path(tmp_path / "my_policy")
    js = tmp_path / "r.json"
    provs = "torch-eager,rf-torch,cpp,ort,ort-sampling,rllib"
    argv = ["--checkpoint", str(d), "--batches", "1,3", "--providers", provs, "--json", str(js), *TINY]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "my_policy (rlmodule_fast)" in out and "PPOTorchRLModule Box(4,)->[16, 16]->Discrete(2)" in out
    assert "sampling loop" not in out  # the policy step only
    assert_readable(out)
    res = json.loads(js.read_text())
    assert res["checkpoint"]["kind"] == "rlmodule_fast" and res["checkpoint"]["path"].endswith("my_policy")
    assert res["sampling"] == []
    ops = res["ops"]
    assert {r["case"] for r in ops} == {"policy_step-checkpoint-B1", "policy_step-checkpoint-B3"}
    assert {r["provider"] for r in ops} == set(provs.split(","))
    allowed_na = {"rllib": C.ray_status()[0], "ort": C.ort_status()[0], "ort-sampling": C.ort_status()[0]}
    for r in ops:
        if "na" in r:  # only for something missing on this machine, never for the module itself
            assert r["provider"] in allowed_na and not allowed_na[r["provider"]], r
        else:
            assert r["median_us"] > 0


def test_checkpoint_lstm_and_multidiscrete(tmp_path):
    import gymnasium as gym
    import numpy as np

    from rlmodule_fast import RLModuleSpec
    from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

    torch.manual_seed(0)
    box = gym.spaces.Box(-1, 1, (5,), np.float32)
    lstm = RLModuleSpec(module_class=PPOTorchRLModule, observation_space=box, action_space=gym.spaces.Discrete(3),
                        model_config_dict={"fcnet_hiddens": [8], "use_lstm": True, "lstm_cell_size": 8},
                        catalog_class=PPOCatalog).build()
    md = RLModuleSpec(module_class=PPOTorchRLModule, observation_space=box,
                      action_space=gym.spaces.MultiDiscrete([3, 2]), model_config_dict={"fcnet_hiddens": [8, 8]},
                      catalog_class=PPOCatalog).build()
    for name, m in (("lstm", lstm), ("md", md)):
        d = m.save_to_path(tmp_path / name)
        js = tmp_path / f"{name}.json"
        assert main(["--checkpoint", str(d), "--batches", "2", "--providers", "torch-eager,rf-torch,cpp,ort-sampling",
                     "--json", str(js), *TINY]) == 0
        rows = {r["provider"]: r for r in json.loads(js.read_text())["ops"]}
        for p in ("torch-eager", "rf-torch", "cpp"):
            assert "na" not in rows[p], (name, rows[p])
        assert ("na" in rows["ort-sampling"]) == (not C.ort_status()[0])


@pytest.mark.skipif(not C.ray_status()[0], reason="ray[rllib] not installed")
def test_checkpoint_rllib(tmp_path, capsys):
    from rlmodule_fast.rllib import to_rllib_module

    d = to_rllib_module(small_module("Pendulum-v1")).save_to_path(str(tmp_path / "rllib_policy"))
    assert C.checkpoint_kind(d) == "rllib"
    js = tmp_path / "r.json"
    assert main(["--checkpoint", str(d), "--batches", "2", "--providers", "cpp,rllib", "--json", str(js), *TINY]) == 0
    out = capsys.readouterr().out
    assert "rllib_policy (rllib)" in out and "Box(3,)->[16, 16]->Box(1,)" in out
    res = json.loads(js.read_text())
    assert res["checkpoint"]["kind"] == "rllib" and res["checkpoint"]["module_id"] == "default_policy"
    assert all("na" not in r for r in res["ops"] if r["provider"] in ("torch-eager", "cpp", "rllib"))


def test_checkpoint_errors_exit_2(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "nope"), *TINY]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--checkpoint", str(tmp_path / "empty"), *TINY]) == 2
    assert "neither an rlmodule_fast checkpoint" in capsys.readouterr().err
    assert main(["--module-id", "x", *TINY]) == 2
    d = small_module().save_to_path(tmp_path / "single")
    assert main(["--checkpoint", str(d), "--module-id", "other", *TINY]) == 2
    assert "single module" in capsys.readouterr().err


def test_checkpoint_list_and_default_file_names(tmp_path, monkeypatch, capsys):
    d = small_module().save_to_path(tmp_path / "My Policy")
    assert main(["--checkpoint", str(d), "--batches", "1,8", "--list"]) == 0
    out = capsys.readouterr().out
    assert "policy_step-checkpoint-B1" in out and "policy_step-checkpoint-B8" in out
    monkeypatch.chdir(tmp_path)
    assert main(["--checkpoint", str(d), "--batches", "1", "--providers", "cpp", "--no-plot", "--out", "o", *TINY]) == 0
    tag = R.machine("cpu", 1)["tag"]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [f"{tag}-checkpoint-my-policy.csv",
                                                                 f"{tag}-checkpoint-my-policy.json"]


def test_multi_module_checkpoint_picks_module(tmp_path):
    from rlmodule_fast import MultiRLModule

    mm = MultiRLModule(modules={"a": small_module(), "b": small_module("Pendulum-v1")})
    d = mm.save_to_path(tmp_path / "multi")
    m, kind, mid = C.load_checkpoint(d, "b")
    assert kind == "rlmodule_fast" and mid == "b" and m.action_space.shape == (1,)
    with pytest.raises(ValueError, match="--module-id"):
        C.load_checkpoint(d)  # two modules, none named default_policy


def test_sample_obs_follows_the_space():
    import gymnasium as gym
    import numpy as np

    sp = gym.spaces.Dict({"x": gym.spaces.Box(-1, 1, (3,), np.float32), "k": gym.spaces.Discrete(4)})
    obs = C.sample_obs(sp, 5, seed=1)
    assert obs["x"].shape == (5, 3) and obs["x"].dtype == np.float32 and obs["k"].shape == (5,)
    assert all(sp["x"].contains(o) for o in obs["x"])
