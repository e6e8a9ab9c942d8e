"""Loading our own checkpoints is safe and bounded; saving never writes through links.

1. A checkpoint (or spec dict) can only name classes this process already knows: registered
   RLModule / Catalog subclasses, ``module_class=`` / ``trusted_classes=``, or an installed
   ``rlmodule_fast.modules`` entry point. Nothing named by a file is imported.
2. A load allocates no more than the state file holds (the module is built on the meta device and
   compared with the safetensors header first); every malformed checkpoint is a ValueError or
   FileNotFoundError naming the file; JSON files, spaces, module ids and nesting are bounded.
3. ``save_to_path`` writes a fresh directory and renames it into place.

Checks that could execute code or allocate gigabytes on a broken implementation run in a child
interpreter (under RLIMIT_AS for the memory ones), so a regression fails the test instead of
damaging the test process.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast import MultiRLModule, RLModule, RLModuleConfig, RLModuleSpec
from rlmodule_fast.core import checkpoint as ckpt
from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

STATE, META, CTOR = ckpt.STATE_FILE_NAME, ckpt.METADATA_FILE_NAME, ckpt.CLASS_AND_CTOR_ARGS_FILE_NAME
OBS = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
ACT = gym.spaces.Discrete(3)
ROOT = pathlib.Path(__file__).resolve().parent.parent


def build(seed=0, cls=PPOTorchRLModule, **mc):
    mc.setdefault("fcnet_hiddens", [8])
    torch.manual_seed(seed)
    return cls(observation_space=mc.pop("obs", OBS), action_space=mc.pop("act", ACT), model_config=mc,
               catalog_class=PPOCatalog)


def edit_ctor(d: pathlib.Path, fn) -> pathlib.Path:
    f = d / CTOR
    data = json.loads(f.read_text())
    out = fn(data)
    f.write_text(out if isinstance(out, str) else json.dumps(data))
    return f


def same_weights(a, b) -> bool:
    sa, sb = a.get_state(), b.get_state()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def run_child(code: str, *, cwd, env_extra=None, timeout=240) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line last."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(env_extra or {})
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=timeout)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    assert lines, f"child failed (exit {p.returncode}):\nstdout: {p.stdout[-2000:]}\nstderr: {p.stderr[-3000:]}"
    out = json.loads(lines[-1])
    out["_stdout"] = p.stdout
    return out


# =============================================================================================
# 1. loading never executes code


@pytest.fixture(scope="module")
def no_import_results(tmp_path_factory):
    """One child interpreter tries every refused name; reports the outcome and whether the named
    module got imported / printed / wrote its marker."""
    work = tmp_path_factory.mktemp("noimport")
    (work / "empty").mkdir()
    code = f"""
        import json, sys, pathlib, io, contextlib
        import gymnasium as gym, numpy as np, torch
        import rlmodule_fast as rf
        from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule
        work = pathlib.Path({str(work)!r})
        good = work / "good"
        PPOTorchRLModule(observation_space=gym.spaces.Box(-1, 1, (4,), np.float32), action_space=gym.spaces.Discrete(3),
                         model_config={{"fcnet_hiddens": [8]}}, catalog_class=PPOCatalog).save_to_path(good)
        # a payload inside a checkpoint directory, its parent and itself on sys.path
        evil = work / "evilckpt"
        import shutil; shutil.copytree(good, evil)
        (evil / "payload.py").write_text("import pathlib; pathlib.Path({str(work / 'MARKER')!r}).write_text('ran')\\n"
                                          "import rlmodule_fast\\nclass Evil(rlmodule_fast.ppo.PPOTorchRLModule): pass\\n")
        sys.path[:0] = [str(work), str(evil)]
        cases = {{
            "class:this": ("class", "this:Zen", "this"),
            "class:antigravity": ("class", "antigravity:Fly", "antigravity"),
            "class:unittest.__main__": ("class", "unittest.__main__:main", "unittest.__main__"),
            "class:payload": ("class", "payload:Evil", "payload"),
            "class:pkg.payload": ("class", "evilckpt.payload:Evil", "evilckpt.payload"),
            "class:dotted-payload": ("class", "payload.Evil", "payload"),
            "catalog:this": ("catalog", "this:Zen", "this"),
            "catalog:payload": ("catalog", "payload:Evil", "payload"),
            "spec:this": ("spec", "this:Zen", "this"),
            "spec-catalog:payload": ("spec-catalog", "payload:Evil", "payload"),
            "config-catalog:this": ("config-catalog", "this:Zen", "this"),
        }}
        results = {{}}
        for case, (where, name, mod) in cases.items():
            d = work / "case"
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(good, d)
            f = d / "class_and_ctor_args.json"
            data = json.loads(f.read_text())
            if where == "class":
                data["class"] = name
            elif where == "catalog":
                data["ctor_kwargs"]["config"]["catalog_class"] = name
            f.write_text(json.dumps(data))
            buf = io.StringIO()
            try:
                with contextlib.redirect_stdout(buf):
                    if where in ("class", "catalog"):
                        rf.RLModule.from_checkpoint(d)
                    elif where == "spec":
                        rf.RLModuleSpec.from_dict({{"module_class": name}})
                    elif where == "spec-catalog":
                        rf.RLModuleSpec.from_dict({{"catalog_class": name}})
                    else:
                        rf.RLModuleConfig.from_dict({{"catalog_class": name}})
                outcome = "loaded"
            except BaseException as e:
                outcome = f"{{type(e).__name__}}: {{e}}"
            results[case] = {{"outcome": outcome, "imported": mod in sys.modules, "printed": buf.getvalue()[:200],
                             "marker": (work / "MARKER").exists(), "name": name}}
        print(json.dumps(results))
    """
    return run_child(code, cwd=work / "empty", env_extra={"BROWSER": "true"})


NO_IMPORT_CASES = ["class:this", "class:antigravity", "class:unittest.__main__", "class:payload", "class:pkg.payload",
                   "class:dotted-payload", "catalog:this", "catalog:payload", "spec:this", "spec-catalog:payload",
                   "config-catalog:this"]


@pytest.mark.parametrize("case", NO_IMPORT_CASES)
def test_named_module_is_never_imported(no_import_results, case):
    r = no_import_results[case]
    assert not r["imported"], f"{case}: loading imported {r['name']!r} ({r['outcome'][:200]})"
    assert not r["marker"] and not r["printed"], f"{case}: code from the named module ran"
    assert r["outcome"].startswith("ValueError: "), r["outcome"][:300]
    assert r["name"] in r["outcome"]
    if case.startswith(("class:", "catalog:")):
        assert CTOR in r["outcome"]


def test_refusal_says_how_to_allow(tmp_path):
    build().save_to_path(tmp_path / "ck")
    edit_ctor(tmp_path / "ck", lambda d: d.__setitem__("class", "my_pkg.models:MyModule"))
    with pytest.raises(ValueError) as e:
        RLModule.from_checkpoint(tmp_path / "ck")
    msg = str(e.value)
    for needle in (str(tmp_path / "ck" / CTOR), "'my_pkg.models:MyModule'", "module_class=", "trusted_classes=",
                   "import the module", ckpt.ENTRY_POINT_GROUP):
        assert needle in msg, (needle, msg)


def test_local_subclass_resolves_because_it_registered(tmp_path):
    """A class defined anywhere (here: inside a function) is known once defined; no import by path."""
    class LocalPPO(PPOTorchRLModule):
        pass

    m = build(cls=LocalPPO)
    m.save_to_path(tmp_path / "ck")
    assert "<locals>.LocalPPO" in json.loads((tmp_path / "ck" / CTOR).read_text())["class"]
    r = RLModule.from_checkpoint(tmp_path / "ck")
    assert type(r) is LocalPPO and same_weights(r, m)
    assert ckpt.registered_classes()[ckpt.class_path(LocalPPO)] is LocalPPO


def test_module_class_and_trusted_classes_allow_a_renamed_class(tmp_path):
    m = build()
    m.save_to_path(tmp_path / "ck")
    edit_ctor(tmp_path / "ck", lambda d: (d.__setitem__("class", "old_project.models:OldPPO"),
                                          d["ctor_kwargs"]["config"].__setitem__("catalog_class", "old_project:OldCat")))
    with pytest.raises(ValueError, match="old_project"):
        RLModule.from_checkpoint(tmp_path / "ck")
    with pytest.raises(ValueError, match="old_project:OldCat"):  # the module class alone is not enough
        RLModule.from_checkpoint(tmp_path / "ck", module_class=PPOTorchRLModule)
    r = RLModule.from_checkpoint(tmp_path / "ck", module_class=PPOTorchRLModule,
                                 trusted_classes={"old_project:OldCat": PPOCatalog})
    assert type(r) is PPOTorchRLModule and r.config.catalog_class is PPOCatalog and same_weights(r, m)
    r = PPOTorchRLModule.from_checkpoint(tmp_path / "ck", trusted_classes={"old_project.models.OldPPO": PPOTorchRLModule,
                                                                            "old_project:OldCat": PPOCatalog})
    assert type(r) is PPOTorchRLModule and same_weights(r, m)


def test_module_class_must_be_an_rlmodule_subclass(tmp_path):
    build().save_to_path(tmp_path / "ck")
    with pytest.raises(TypeError, match="module_class"):
        RLModule.from_checkpoint(tmp_path / "ck", module_class=dict)
    with pytest.raises(TypeError, match="trusted_classes"):
        RLModule.from_checkpoint(tmp_path / "ck", trusted_classes=["os:system"])


def test_alias_through_an_already_loaded_module_resolves():
    """``rlmodule_fast.ppo:PPOTorchRLModule`` names the registered class through a module already
    in sys.modules (plain dictionary look-ups, no import)."""
    assert ckpt.resolve_class("rlmodule_fast.ppo:PPOTorchRLModule", RLModule, source="t") is PPOTorchRLModule
    assert ckpt.resolve_class("rlmodule_fast.ppo.PPOTorchRLModule", RLModule, source="t") is PPOTorchRLModule
    assert ckpt.resolve_class("rlmodule_fast:Catalog", rf.Catalog, source="t") is rf.Catalog
    with pytest.raises(ValueError, match="not a subclass"):
        ckpt.resolve_class("rlmodule_fast.ppo:PPOCatalog", RLModule, source="t")
    with pytest.raises(ValueError, match="not a known"):  # importable, loaded, but not an RLModule class
        ckpt.resolve_class("collections:OrderedDict", RLModule, source="t")


def test_spec_and_config_from_dict_take_trusted_classes():
    d = RLModuleSpec(module_class=PPOTorchRLModule, observation_space=OBS, action_space=ACT,
                     catalog_class=PPOCatalog).to_dict()
    d["module_class"], d["catalog_class"] = "gone:Mod", "gone:Cat"
    with pytest.raises(ValueError, match="gone:Mod"):
        RLModuleSpec.from_dict(d)
    s = RLModuleSpec.from_dict(d, trusted_classes={"gone:Mod": PPOTorchRLModule, "gone:Cat": PPOCatalog})
    assert s.module_class is PPOTorchRLModule and s.catalog_class is PPOCatalog
    c = RLModuleConfig.from_dict({"catalog_class": "gone:Cat"}, trusted_classes={"gone:Cat": PPOCatalog})
    assert c.catalog_class is PPOCatalog
    for bad in ([1], "x", 3):
        with pytest.raises(ValueError):
            RLModuleConfig.from_dict({"model_config_dict": bad} if bad != 3 else {"inference_only": "yes"})


def test_entry_point_allows_an_installed_package(tmp_path):
    """A class declared by an installed distribution under ``rlmodule_fast.modules`` resolves
    (its module imported through the entry point); without the entry point it is refused and its
    module never imported."""
    site = tmp_path / "site"
    (site / "rf_ep_demo").mkdir(parents=True)
    (site / "rf_ep_demo" / "__init__.py").write_text(
        "from rlmodule_fast.ppo import PPOTorchRLModule\nclass DemoModule(PPOTorchRLModule):\n    pass\n")
    dist = site / "rf_ep_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rf-ep-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{ckpt.ENTRY_POINT_GROUP}]\ndemo = rf_ep_demo:DemoModule\n")
    save = f"""
        import json, sys, gymnasium as gym, numpy as np
        sys.path.insert(0, {str(site)!r})
        import rf_ep_demo
        from rlmodule_fast.ppo import PPOCatalog
        rf_ep_demo.DemoModule(observation_space=gym.spaces.Box(-1, 1, (4,), np.float32),
                              action_space=gym.spaces.Discrete(3), model_config={{"fcnet_hiddens": [8]}},
                              catalog_class=PPOCatalog).save_to_path({str(tmp_path / 'ck')!r})
        print(json.dumps({{}}))
    """
    run_child(save, cwd=tmp_path)
    load = f"""
        import json, sys
        sys.path.insert(0, {str(site)!r})
        import rlmodule_fast as rf
        try:
            m = rf.RLModule.from_checkpoint({str(tmp_path / 'ck')!r})
            out = type(m).__module__ + ":" + type(m).__qualname__
        except Exception as e:
            out = f"{{type(e).__name__}}: {{e}}"
        print(json.dumps({{"outcome": out, "imported": "rf_ep_demo" in sys.modules}}))
    """
    r = run_child(load, cwd=tmp_path)
    assert r["outcome"] == "rf_ep_demo:DemoModule", r["outcome"]
    (dist / "entry_points.txt").unlink()
    r = run_child(load, cwd=tmp_path)
    assert r["outcome"].startswith("ValueError") and "rf_ep_demo:DemoModule" in r["outcome"], r["outcome"]
    assert not r["imported"]


# =============================================================================================
# 2. bounded loads, only ValueError / FileNotFoundError


HOSTILE = {
    "fcnet_hiddens=[12000,12000]": ("mc", "fcnet_hiddens", [12000, 12000]),
    "fcnet_hiddens=[1e5,1e5]": ("mc", "fcnet_hiddens", [10**5, 10**5]),
    "lstm_cell_size=1e6": ("mc", "use_lstm", True, "lstm_cell_size", 10**6),
    "obs Discrete(1e9)": ("obs", {"type": "Discrete", "n": 10**9, "start": 0}),
    "obs Box dtype (250000000,)f8": ("obs_dtype", "(250000000,)f8"),
    "obs Box shape [1e6,1e6]": ("obs", {"type": "Box", "low": 0.0, "high": 1.0, "shape": [10**6, 10**6],
                                        "dtype": "float32"}),
    "obs Box shape [2048,2048] f8 (at the bound)": ("obs", {"type": "Box", "low": "-inf", "high": "inf",
                                                            "shape": [2048, 2048], "dtype": "float64"}),
    "obs Box shape [2049,2048] (over the bound)": ("obs", {"type": "Box", "low": 0, "high": 1,
                                                           "shape": [2049, 2048], "dtype": "float32"}),
    "act MultiDiscrete nvec 1e9": ("act", {"type": "MultiDiscrete", "nvec": [10**9], "dtype": "int64"}),
    "head_fcnet_hiddens [1e5]": ("mc", "head_fcnet_hiddens", [10**5]),
    "64 layers of 1e4": ("mc", "fcnet_hiddens", [10**4] * 64),
    "1e5 layers": ("mc", "fcnet_hiddens", [1] * 10**5),
    "Dict of 2e5 spaces": ("obs", {"type": "Dict", "spaces": {str(i): {"type": "Discrete", "n": 2} for i in range(200_000)}}),
}


@pytest.fixture(scope="module")
def hostile_results(tmp_path_factory):
    """Each hostile checkpoint loaded in a child under RLIMIT_AS (post-import address space +
    1 GiB): outcome and peak-RSS growth per case."""
    work = tmp_path_factory.mktemp("hostile")
    (work / "cases.json").write_text(json.dumps(HOSTILE))
    code = f"""
        import json, resource, shutil, sys, time, pathlib
        import gymnasium as gym, numpy as np, torch
        import rlmodule_fast as rf
        from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule
        work = pathlib.Path({str(work)!r})
        good = work / "good"
        PPOTorchRLModule(observation_space=gym.spaces.Box(-1, 1, (4,), np.float32), action_space=gym.spaces.Discrete(3),
                         model_config={{"fcnet_hiddens": [8]}}, catalog_class=PPOCatalog).save_to_path(good)
        vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), vm + (1 << 30)))
        cases = json.loads((work / "cases.json").read_text())
        results = {{}}
        for name, spec in cases.items():
            d = work / "case"
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(good, d)
            f = d / "class_and_ctor_args.json"
            data = json.loads(f.read_text())
            cfg = data["ctor_kwargs"]["config"]
            if spec[0] == "mc":
                for k, v in zip(spec[1::2], spec[2::2]):
                    cfg["model_config_dict"][k] = v
            elif spec[0] == "obs":
                cfg["observation_space"] = spec[1]
            elif spec[0] == "act":
                cfg["action_space"] = spec[1]
            else:
                cfg["observation_space"]["dtype"] = spec[1]
            f.write_text(json.dumps(data))
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t = time.perf_counter()
            try:
                rf.RLModule.from_checkpoint(d)
                out = "loaded"
            except BaseException as e:
                out = f"{{type(e).__name__}}: {{str(e)[:600]}}"
            grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
            results[name] = {{"outcome": out, "rss_growth_mb": grew / 1024, "seconds": time.perf_counter() - t}}
        print(json.dumps(results))
    """
    return run_child(code, cwd=work)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_ctor_args_are_refused_before_allocating(hostile_results, case):
    r = hostile_results[case]
    assert r["outcome"].startswith("ValueError: "), r["outcome"]
    assert CTOR in r["outcome"] or STATE in r["outcome"], r["outcome"]
    # the module is never built for real: growth is the JSON, the space bounds, and the meta build
    limit = 90 if "at the bound" in case else 40
    assert r["rss_growth_mb"] < limit, r
    assert r["seconds"] < 20, r


@pytest.mark.parametrize("dtype", ["(2,)f8", "(1,f8", "O", "V8", "i4,f8", ">f4", "U10", "M8[s]", "complex128",
                                   "float128", "", 5, None, "f" * 100])
def test_box_dtype_validated_by_value(tmp_path, dtype):
    build().save_to_path(tmp_path)
    edit_ctor(tmp_path, lambda d: d["ctor_kwargs"]["config"]["observation_space"].__setitem__("dtype", dtype))
    with pytest.raises(ValueError, match=re.escape(CTOR)):
        RLModule.from_checkpoint(tmp_path)


CTOR_TYPE_CASES = {
    "discrete-n-1e30": lambda c: c.__setitem__("observation_space", {"type": "Discrete", "n": 10**30}),
    "discrete-n-float": lambda c: c.__setitem__("observation_space", {"type": "Discrete", "n": 4.5}),
    "discrete-n-bool": lambda c: c.__setitem__("action_space", {"type": "Discrete", "n": True}),
    "box-low-1e400": lambda c: c["observation_space"].__setitem__("low", [10**400, 0, 0, 0]),
    "box-low-dicts": lambda c: c["observation_space"].__setitem__("low", [{}, {}, {}, {}]),
    "box-low-ragged": lambda c: c["observation_space"].__setitem__("low", [[1], 2, 3, 4]),
    "box-shape-bools": lambda c: c["observation_space"].__setitem__("shape", [True]),
    "box-shape-negative": lambda c: c["observation_space"].__setitem__("shape", [-4]),
    "box-low-word": lambda c: c["observation_space"].__setitem__("low", "lots"),
    "multidiscrete-float": lambda c: c.__setitem__("action_space", {"type": "MultiDiscrete", "nvec": [2.5]}),
    "multidiscrete-huge": lambda c: c.__setitem__("action_space", {"type": "MultiDiscrete", "nvec": [10**30]}),
    "multibinary-neg": lambda c: c.__setitem__("action_space", {"type": "MultiBinary", "n": -1}),
    "tuple-deep": lambda c: c.__setitem__("observation_space", _deep_tuple(40)),
    "dict-not-object": lambda c: c.__setitem__("observation_space", {"type": "Dict", "spaces": [1]}),
    "tuple-members-bad": lambda c: c.__setitem__("observation_space", {"type": "Tuple", "spaces": [5, "x"]}),
    "space-not-object": lambda c: c.__setitem__("observation_space", [1, 2]),
    "mc-clip-1e400": lambda c: c["model_config_dict"].__setitem__("log_std_clip_param", 10**400),
    "mc-size-1e30": lambda c: c["model_config_dict"].__setitem__("fcnet_hiddens", [10**30]),
    "mc-nested-list": lambda c: c["model_config_dict"].__setitem__("fcnet_hiddens", [[8]]),
    "mc-activation-list": lambda c: c["model_config_dict"].__setitem__("fcnet_activation", ["tanh"]),
    "inference-only-str": lambda c: c.__setitem__("inference_only", "no"),
    "catalog-int": lambda c: c.__setitem__("catalog_class", 7),
    "catalog-long-name": lambda c: c.__setitem__("catalog_class", "a" * 5000),
    "config-list": lambda c: c.__setitem__("model_config_dict", [["fcnet_hiddens", [8]]]),
}


def _deep_tuple(n):
    s = {"type": "Discrete", "n": 2}
    for _ in range(n):
        s = {"type": "Tuple", "spaces": [s]}
    return s


@pytest.mark.parametrize("case", sorted(CTOR_TYPE_CASES))
def test_malformed_ctor_values_are_value_errors(tmp_path, case):
    build().save_to_path(tmp_path)
    edit_ctor(tmp_path, lambda d: CTOR_TYPE_CASES[case](d["ctor_kwargs"]["config"]))
    with pytest.raises(ValueError, match=re.escape(CTOR)):
        RLModule.from_checkpoint(tmp_path)


@pytest.mark.parametrize("what", ["ctor-nesting", "meta-nesting", "ctor-long-int", "ctor-nan-literal",
                                  "header-nesting"])
def test_json_recursion_and_literals_are_value_errors(tmp_path, what):
    """RecursionError / the int-digits limit / NaN literals become a ValueError naming the file."""
    build().save_to_path(tmp_path)
    if what == "ctor-nesting":
        f = edit_ctor(tmp_path, lambda d: json.dumps(d)[:-1] + ', "x": ' + "[" * 200_000 + "]" * 200_000 + "}")
    elif what == "meta-nesting":
        f = tmp_path / META
        f.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    elif what == "ctor-long-int":
        f = edit_ctor(tmp_path, lambda d: json.dumps(d)[:-1] + ', "x": ' + "9" * 10_000 + "}")
    elif what == "ctor-nan-literal":
        f = edit_ctor(tmp_path, lambda d: json.dumps(d)[:-1] + ', "x": NaN}')
    else:
        f = tmp_path / STATE
        raw = f.read_bytes()
        hdr = b'{"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
        f.write_bytes(len(hdr).to_bytes(8, "little") + hdr)
    with pytest.raises(ValueError, match=re.escape(f.name)):
        RLModule.from_checkpoint(tmp_path)


def test_duplicate_json_keys_are_refused(tmp_path):
    m = build()
    m.save_to_path(tmp_path)
    text = (tmp_path / CTOR).read_text()
    (tmp_path / CTOR).write_text(text.replace('"class":', '"class": "this:Zen", "class":', 1))
    with pytest.raises(ValueError, match="duplicate key 'class'"):
        RLModule.from_checkpoint(tmp_path)


@pytest.mark.parametrize("name,limit", [(CTOR, ckpt.MAX_JSON_BYTES), (META, ckpt.MAX_METADATA_BYTES)])
def test_oversized_json_files_are_refused(tmp_path, name, limit):
    build().save_to_path(tmp_path)
    f = tmp_path / name
    text = f.read_text()
    f.write_text(text[:-1] + " " * (limit + 1) + "}")  # still valid JSON
    with pytest.raises(ValueError, match=re.escape(str(f)) + ".*larger than"):
        RLModule.from_checkpoint(tmp_path)


@pytest.mark.parametrize("name", [CTOR, META, STATE])
def test_fifo_in_place_of_a_file_does_not_block(tmp_path, name):
    build().save_to_path(tmp_path)
    (tmp_path / name).unlink()
    os.mkfifo(tmp_path / name)
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(name)):
        RLModule.from_checkpoint(tmp_path)


def test_state_header_checked_before_reading(tmp_path):
    m = build()
    m.save_to_path(tmp_path)
    h = ckpt.read_state_header(tmp_path / STATE)
    assert set(h.tensors) == set(m.get_state())
    for k, v in m.get_state().items():
        assert h.tensors[k].shape == tuple(v.shape) and h.tensors[k].dtype == "F32"
    assert h.data_bytes == sum(v.numel() * 4 for v in m.get_state().values())


def test_state_lacking_many_tensors_is_refused_before_building(tmp_path):
    """A state file that holds a fraction of the tensors the config implies (renamed keys) is
    refused by the meta preflight, not after a real build."""
    from safetensors.torch import save_file

    build().save_to_path(tmp_path)
    edit_ctor(tmp_path, lambda d: d["ctor_kwargs"]["config"]["model_config_dict"].__setitem__("fcnet_hiddens",
                                                                                               [3000, 3000]))
    save_file({"x": torch.zeros(4)}, str(tmp_path / STATE))
    meta = json.loads((tmp_path / META).read_text())
    meta.pop("state_sha256")
    (tmp_path / META).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="lacks"):
        RLModule.from_checkpoint(tmp_path)


def test_inference_only_state_into_full_module_still_loads(tmp_path):
    """Tensors the state file lacks but the module may leave unset (the value function of a
    checkpoint saved inference-only) stay within the preflight's slack."""
    full = build(vf_share_layers=False)
    inf = build(vf_share_layers=False)
    full.save_to_path(tmp_path, state=inf.get_state(inference_only=True))
    r = RLModule.from_checkpoint(tmp_path)
    for k, v in inf.get_state(inference_only=True).items():
        assert torch.equal(r.get_state()[k], v)


# ---- multi-module checkpoints


def two(seed=0):
    return MultiRLModule(modules={"p0": build(seed), "p1": build(seed + 1, fcnet_hiddens=[5])})


def test_duplicate_module_ids_refused(tmp_path):
    two().save_to_path(tmp_path)
    edit_ctor(tmp_path, lambda d: d.__setitem__("module_ids", ["p0", "p1", "p0"]))
    with pytest.raises(ValueError, match=re.escape(CTOR) + ".*more than once"):
        MultiRLModule.from_checkpoint(tmp_path)


def test_duplicate_module_id_keys_in_json_refused(tmp_path):
    two().save_to_path(tmp_path)
    text = (tmp_path / CTOR).read_text()
    (tmp_path / CTOR).write_text(text.replace('"module_ids":', '"module_ids": ["p0"], "module_ids":', 1))
    with pytest.raises(ValueError, match="duplicate key 'module_ids'"):
        MultiRLModule.from_checkpoint(tmp_path)


@pytest.mark.parametrize("mid", ["a" * 5000, "\ud800", "m" * 256])
def test_unusable_module_ids_are_value_errors(tmp_path, mid):
    """An id no directory can have (too long, unencodable) is a ValueError naming the file,
    not an OSError / UnicodeEncodeError from the file system."""
    two().save_to_path(tmp_path)
    edit_ctor(tmp_path, lambda d: d.__setitem__("module_ids", ["p0", mid]))
    with pytest.raises(ValueError, match=re.escape(CTOR)):
        MultiRLModule.from_checkpoint(tmp_path)


def _nested(levels):
    m = two()
    for _ in range(levels - 1):
        m = MultiRLModule(modules={"inner": m})
    return m


def test_nesting_depth_bounded(tmp_path):
    _nested(ckpt.MAX_NESTING).save_to_path(tmp_path / "ok")
    r = RLModule.from_checkpoint(tmp_path / "ok")
    for _ in range(ckpt.MAX_NESTING - 1):
        r = r["inner"]
    assert set(r.keys()) == {"p0", "p1"}
    _nested(ckpt.MAX_NESTING + 1).save_to_path(tmp_path / "deep")
    with pytest.raises(ValueError, match="nest more than"):
        MultiRLModule.from_checkpoint(tmp_path / "deep")


@pytest.mark.parametrize("how", ["loop-to-self", "loop-to-parent", "shared-subdir"])
def test_link_loops_and_shared_subdirs_refused(tmp_path, how):
    ck = tmp_path / "ck"
    if how == "loop-to-parent":
        MultiRLModule(modules={"inner": two()}).save_to_path(ck)
        shutil.rmtree(ck / "inner" / "p1")
        os.symlink("..", ck / "inner" / "p1")
        edit_ctor(ck, lambda d: None)
    else:
        two().save_to_path(ck)
        shutil.rmtree(ck / "p1")
        os.symlink("." if how == "loop-to-self" else "p0", ck / "p1")
    with pytest.raises(ValueError, match="appears twice|nest more than|does not match"):
        MultiRLModule.from_checkpoint(ck)


def test_multi_from_checkpoint_on_single_checkpoint_names_file(tmp_path):
    build().save_to_path(tmp_path)
    with pytest.raises(ValueError, match=re.escape(META)):
        MultiRLModule.from_checkpoint(tmp_path)


def test_multi_trusted_classes_reach_submodules(tmp_path):
    mm = two()
    mm.save_to_path(tmp_path)
    edit_ctor(tmp_path / "p1", lambda d: d.__setitem__("class", "renamed:PPO"))
    with pytest.raises(ValueError, match="renamed:PPO"):
        MultiRLModule.from_checkpoint(tmp_path)
    r = MultiRLModule.from_checkpoint(tmp_path, trusted_classes={"renamed:PPO": PPOTorchRLModule})
    assert same_weights(r["p1"], mm["p1"])


# =============================================================================================
# 3. saving never writes through a link


@pytest.mark.parametrize("name", [STATE, META, CTOR])
def test_save_does_not_write_through_file_links(tmp_path, name):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    ck = tmp_path / "ck"
    build().save_to_path(ck)
    (ck / name).unlink()
    os.symlink(outside, ck / name)
    m = build(seed=3)
    m.save_to_path(ck)
    assert outside.read_text() == "precious"
    assert not (ck / name).is_symlink() and (ck / name).is_file()
    assert same_weights(RLModule.from_checkpoint(ck), m)


def test_save_replaces_a_link_to_a_directory_not_its_target(tmp_path):
    target = tmp_path / "real"
    build(seed=1).save_to_path(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    link = tmp_path / "latest"
    os.symlink(target, link)
    m = build(seed=2)
    assert m.save_to_path(link) == str(link)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert not link.is_symlink() and link.is_dir()
    assert same_weights(RLModule.from_checkpoint(link), m)


def test_multi_save_does_not_write_through_subdir_link(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    build(seed=7).save_to_path(elsewhere)
    before = {p.name: p.read_bytes() for p in elsewhere.iterdir()}
    ck = tmp_path / "ck"
    two().save_to_path(ck)
    shutil.rmtree(ck / "p0")
    os.symlink(elsewhere, ck / "p0")
    mm = two(seed=10)
    mm.save_to_path(ck)
    assert {p.name: p.read_bytes() for p in elsewhere.iterdir()} == before
    assert not (ck / "p0").is_symlink()
    r = MultiRLModule.from_checkpoint(ck)
    assert same_weights(r["p0"], mm["p0"])


def test_save_replaces_an_old_checkpoint_whole(tmp_path):
    ck = tmp_path / "ck"
    MultiRLModule(modules={"p0": build(), "old": build()}).save_to_path(ck)
    two().save_to_path(ck)
    assert sorted(p.name for p in ck.iterdir()) == sorted([CTOR, META, "p0", "p1"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary or old directory left


def test_save_into_empty_directory_keeps_it(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    ino = ck.stat().st_ino
    m = build()
    m.save_to_path(ck)
    assert ck.stat().st_ino == ino and same_weights(RLModule.from_checkpoint(ck), m)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_save_refuses_a_directory_that_is_not_a_checkpoint(tmp_path):
    d = tmp_path / "home"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        build().save_to_path(d)
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(FileExistsError):
        build().save_to_path(f)


def test_failed_save_leaves_old_checkpoint_and_no_temp_dir(tmp_path):
    ck = tmp_path / "ck"
    m = build()
    m.save_to_path(ck)
    with pytest.raises(Exception):
        build().save_to_path(ck, state={"w": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert same_weights(RLModule.from_checkpoint(ck), m)
