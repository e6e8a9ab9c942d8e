"""Fuzz the checkpoint loaders with mutated checkpoint directories.

Run as a script (CI runs a few seconds of it through tests/test_fuzz_loaders_checkpoint.py)::

    python tests/fuzz/fuzz_checkpoint_loader.py --budget 5000            # 5000 mutated checkpoints
    python tests/fuzz/fuzz_checkpoint_loader.py --seconds 60 --budget 100000
    python tests/fuzz/fuzz_checkpoint_loader.py --families st_header,fs --budget 500
    python tests/fuzz/fuzz_checkpoint_loader.py --start 17 --budget 18 --verbose   # replay input 17
    python tests/fuzz/fuzz_checkpoint_loader.py --list

Each input copies one of a few valid seed checkpoints (PPO MLP / LSTM / GRU modules, a custom
TorchRLModule, a MultiRLModule, a nested MultiRLModule), applies one mutation *family* (input
``i`` uses family ``i mod len(families)``, so every family is hit even by a short run) and runs
every loader on it: ``RLModule.from_checkpoint``, ``MultiRLModule.from_checkpoint``,
``restore_from_path`` into a fresh module of the seed's kind, and ``RLModuleSpec.from_dict`` /
``RLModuleConfig.from_dict`` on the (mutated) constructor arguments.

The contract checked: a loader returns, or raises ``ValueError`` / ``FileNotFoundError``.
Anything else escaping (TypeError, RecursionError, OverflowError, MemoryError, SystemExit, ...)
is *unclean* and fails the run. File loaders' errors that name no file of the case are counted
as *unnamed* (reported; they fail the run too).

Bounded in memory and time: the fuzzing runs in a child process whose address space is capped
(``RLIMIT_AS`` = its size after imports + ``--mem-mb``, default 1024), so an unbounded allocation
shows up as a MemoryError / RuntimeError (unclean) instead of swapping the machine; the parent
kills a child whose current input runs past ``--input-timeout`` (a *hang*) or that dies (a
*crash*), records the input and restarts from the next one; ``--timeout`` bounds the whole run.
Inputs are a pure function of (seed, index): ``--start I --budget I+1`` replays one.

Output: one JSON summary (also written to ``--json PATH``); exit status 1 on any unclean,
unnamed, crash or hang.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback

HARNESS_ERROR = 3
FAMILIES = ["ctor_value", "ctor_key", "ctor_text", "meta_value", "meta_text", "space", "model_config",
            "st_header", "st_bytes", "st_consistent", "fs", "multi", "combo"]
STATE, META, CTOR = "module_state.safetensors", "metadata.json", "class_and_ctor_args.json"
_PROG = struct.Struct("<qqd")  # input index, family index, start time (monotonic)


# =============================================================================================
# the child


def _child(args) -> int:  # noqa: C901 -- one closure-heavy generator, kept in one place
    import resource

    import gymnasium as gym
    import numpy as np
    import torch
    from torch import nn

    torch.set_num_threads(1)
    import rlmodule_fast as rf
    from rlmodule_fast import Columns
    from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

    class FuzzCustomModule(rf.TorchRLModule):
        """A user-style module (own model-config key) so non-PPO builds are fuzzed too."""

        def setup(self):
            h = self.model_config.get("hidden_dim", 6)
            self.net = nn.Sequential(nn.Linear(self.observation_space.shape[0], h), nn.Tanh(),
                                     nn.Linear(h, self.action_space.n))

        def _forward_inference(self, batch, **kw):
            return {Columns.ACTION_DIST_INPUTS: self.net(batch[Columns.OBS])}

        _forward_exploration = _forward_train = _forward_inference

    work = pathlib.Path(args.work)
    seeds_dir = work / "seeds"
    box4 = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)

    def ppo(obs, act, **mc):
        torch.manual_seed(0)
        return PPOTorchRLModule(observation_space=obs, action_space=act, model_config=mc, catalog_class=PPOCatalog)

    makers = {
        "mlp": lambda: ppo(box4, gym.spaces.Discrete(3), fcnet_hiddens=[8, 6]),
        # an image (CNN tokenizer -> LSTM): a 2-D Box is RLlib's ValueError since issue 14
        "lstm": lambda: ppo(gym.spaces.Box(-1.0, 1.0, (6, 5, 2), np.float32), gym.spaces.Box(-2.0, 2.0, (2,), np.float32),
                            use_lstm=True, lstm_cell_size=4, conv_filters=[[3, 3, 2]], vf_share_layers=False),
        "gru": lambda: ppo(gym.spaces.Discrete(5), gym.spaces.MultiDiscrete([2, 3]), use_gru=True, lstm_cell_size=3,
                           fcnet_hiddens=[4], head_fcnet_hiddens=[3]),
        "custom": lambda: FuzzCustomModule(observation_space=box4, action_space=gym.spaces.Discrete(2),
                                           model_config={"hidden_dim": 5}),
        "multi": lambda: rf.MultiRLModule(modules={"p0": makers["mlp"](), "p1": makers["gru"]()}),
        "nested": lambda: rf.MultiRLModule(modules={"outer": rf.MultiRLModule(modules={"a": makers["custom"]()}),
                                                    "b": makers["mlp"]()}),
    }
    seeds = {}
    for name, make in makers.items():
        d = seeds_dir / name
        if not (d / META).is_file():
            make().save_to_path(d)
        seeds[name] = d
    fresh = {name: make() for name, make in makers.items()}
    multi_seeds = ("multi", "nested")

    vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    cap = vm + (args.mem_mb << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    prog = os.open(args.progress, os.O_RDWR | os.O_CREAT, 0o644)
    results = open(args.results, "a")
    t_end = time.monotonic() + args.seconds if args.seconds else float("inf")
    families = [f for f in args.families.split(",") if f]

    # ------------------------------------------------------------------ value generators
    def pick(rng, seq):
        """One element of ``seq`` (never through numpy: big ints stay exact, paths stay paths)."""
        seq = list(seq)
        return seq[int(rng.integers(0, len(seq)))]

    def interesting(rng, depth=0):
        r = int(rng.integers(0, 32))
        table = [None, True, False, 0, -1, 1, 2**31, 2**63, 10**30, -(10**30), 1e308, -0.0, 0.5, "", "x", "nan",
                 "-inf", "(250000000,)f8", "O", "float128", "this:Zen", "os:system", "unittest.__main__:main",
                 "a" * 5000, "\ud800", "p0/../p1", [], {}]
        if r < len(table):
            return table[r]
        if r == 28:
            return [int(pick(rng, [1, 8, 10**5, 10**9, -3]))] * int(pick(rng, [1, 2, 3, 70]))
        if r == 29:
            v: object = 1
            for _ in range(int(pick(rng, [10, 100, 900]))):
                v = [v]
            return v
        if r == 30 and depth < 2:
            return {str(k): interesting(rng, depth + 1) for k in range(int(rng.integers(0, 4)))}
        return [interesting(rng, depth + 1) for _ in range(int(rng.integers(0, 3)))] if depth < 2 else 7

    def nodes(obj, out=None, depth=0):
        """(container, key) of every dict entry / list item (bounded)."""
        out = [] if out is None else out
        if depth > 12 or len(out) > 2000:
            return out
        if isinstance(obj, dict):
            for k in list(obj):
                out.append((obj, k))
                nodes(obj[k], out, depth + 1)
        elif isinstance(obj, list):
            for i in range(min(len(obj), 50)):
                out.append((obj, i))
                nodes(obj[i], out, depth + 1)
        return out

    def load_json(f):
        return json.loads(f.read_text())

    def mutate_value(data, rng):
        ns = nodes(data)
        if ns:
            c, k = ns[int(rng.integers(0, len(ns)))]
            c[k] = interesting(rng)
        return data

    def mutate_key(data, rng):
        ns = [(c, k) for c, k in nodes(data) if isinstance(c, dict)]
        if not ns:
            return data
        c, k = ns[int(rng.integers(0, len(ns)))]
        op = int(rng.integers(0, 3))
        if op == 0:
            del c[k]
        elif op == 1:
            c[str(interesting(rng))[:40] + "_extra"] = interesting(rng)
        else:
            c[k + "x"] = c.pop(k)
        return data

    def mutate_text(text, rng):
        b = bytearray(text.encode())
        op = int(rng.integers(0, 9))
        if op == 0 and b:
            return bytes(b[: int(rng.integers(0, len(b)))])
        if op == 1 and b:
            for _ in range(int(rng.integers(1, 6))):
                b[int(rng.integers(0, len(b)))] ^= 1 << int(rng.integers(0, 8))
            return bytes(b)
        if op == 2:
            i = text.find('"')
            return (text[:i] + '"class": "this:Zen", ' + text[i:]).encode() if i > 0 else b
        if op == 3:
            return text.replace("{", '{"d": ' + "[" * 5000 + "]" * 5000 + ", ", 1).encode()
        if op == 4:
            return text.replace("{", '{"big": ' + "9" * 6000 + ", ", 1).encode()
        if op == 5:
            return text.replace("{", '{"n": NaN, "i": -Infinity, ', 1).encode()
        if op == 6:
            return b"\xef\xbb\xbf" + bytes(b)
        if op == 7:
            return text.encode("utf-16")
        return bytes(rng.integers(0, 256, int(rng.integers(0, 64)), dtype=np.uint8))

    def hostile_space(rng, depth=0):
        k = int(rng.integers(0, 8))
        dtypes = ["float32", "float64", "int64", "uint8", "bool", "(250000000,)f8", "(3,)f4", "O", "V8", ">f4",
                  "float128", "complex64", "i4,f8", "M8", "U3", "(1,f8", 7, None]
        if k == 0:
            shape = [int(pick(rng, [0, 1, 4, 2048, 10**6, -1, 2**40])) for _ in range(int(rng.integers(0, 4)))]
            return {"type": "Box", "low": interesting(rng) if rng.random() < 0.3 else float(pick(rng, [-1, 0])),
                    "high": 1.0, "shape": shape, "dtype": dtypes[int(rng.integers(0, len(dtypes)))]}
        if k == 1:
            return {"type": "Box", "low": [-1.0] * 4, "high": [1.0] * 4, "shape": [4],
                    "dtype": dtypes[int(rng.integers(0, len(dtypes)))]}
        if k == 2:
            return {"type": "Discrete", "n": interesting(rng) if rng.random() < 0.5 else int(pick(rng, [1, 5, 10**9])),
                    "start": int(pick(rng, [0, -5, 2**63]))}
        if k == 3:
            return {"type": "MultiDiscrete", "nvec": interesting(rng) if rng.random() < 0.3 else [int(pick(rng, [2, 10**9, 0]))] * 3,
                    "dtype": dtypes[int(rng.integers(0, len(dtypes)))]}
        if k == 4:
            return {"type": "MultiBinary", "n": interesting(rng) if rng.random() < 0.5 else [3, 10**7]}
        if k == 5 and depth < 40:
            return {"type": "Tuple", "spaces": [hostile_space(rng, depth + 1) for _ in range(int(rng.integers(0, 3)))]}
        if k == 6 and depth < 40:
            if rng.random() < 0.2:
                return {"type": "Dict", "spaces": {str(i): {"type": "Discrete", "n": 2} for i in range(20000)}}
            return {"type": "Dict", "spaces": {"a": hostile_space(rng, depth + 1)}}
        return {"type": interesting(rng)}

    def ctor_config(data):
        try:
            return data["ctor_kwargs"]["config"]
        except (KeyError, TypeError):
            return None

    def set_sha(d):
        import hashlib

        m = load_json(d / META)
        m["state_sha256"] = hashlib.sha256((d / STATE).read_bytes()).hexdigest()
        (d / META).write_text(json.dumps(m))

    def leaf_dirs(d):
        """Single-module checkpoint directories under d (d itself for a single checkpoint)."""
        return sorted(p.parent for p in d.rglob(STATE)) or [d]

    # ------------------------------------------------------------------ families
    def f_ctor_value(d, rng):
        f = pick(rng, leaf_dirs(d) + [d]) / CTOR
        f.write_text(json.dumps(mutate_value(load_json(f), rng)))
        return f"value in {f.relative_to(d)}"

    def f_ctor_key(d, rng):
        f = pick(rng, leaf_dirs(d) + [d]) / CTOR
        f.write_text(json.dumps(mutate_key(load_json(f), rng)))
        return f"key in {f.relative_to(d)}"

    def f_ctor_text(d, rng):
        f = pick(rng, leaf_dirs(d)) / CTOR
        f.write_bytes(mutate_text(f.read_text(), rng))
        return f"text of {f.relative_to(d)}"

    def f_meta_value(d, rng):
        f = pick(rng, leaf_dirs(d) + [d]) / META
        data = load_json(f)
        key = str(pick(rng, ["checkpoint_version", "kind", "state_sha256", "class", "extra"]))
        data[key] = interesting(rng) if rng.random() < 0.7 else str(pick(rng, ["1", "multi", "module", "0" * 64]))
        f.write_text(json.dumps(data))
        return f"metadata {key}"

    def f_meta_text(d, rng):
        f = pick(rng, leaf_dirs(d) + [d]) / META
        f.write_bytes(mutate_text(f.read_text(), rng))
        return f"text of {f.relative_to(d)}"

    def f_space(d, rng):
        leaf = pick(rng, leaf_dirs(d))
        data = load_json(leaf / CTOR)
        cfg = ctor_config(data)
        which = str(pick(rng, ["observation_space", "action_space"]))
        if isinstance(cfg, dict):
            cfg[which] = hostile_space(rng)
        (leaf / CTOR).write_text(json.dumps(data))
        return f"{which}"

    def f_model_config(d, rng):
        leaf = pick(rng, leaf_dirs(d))
        data = load_json(leaf / CTOR)
        cfg = ctor_config(data)
        keys = ["fcnet_hiddens", "head_fcnet_hiddens", "lstm_cell_size", "use_lstm", "use_gru", "vf_share_layers",
                "free_log_std", "log_std_clip_param", "fcnet_activation", "max_seq_len", "hidden_dim", "hidden",
                "post_fcnet_hiddens", "bogus"]
        chosen = [str(pick(rng, keys)) for _ in range(int(rng.integers(1, 4)))]
        if isinstance(cfg, dict) and isinstance(cfg.get("model_config_dict"), dict):
            for k in chosen:
                big = [int(pick(rng, [12000, 10**5, 10**6, 2**24, 2**24 + 1]))] * int(pick(rng, [1, 2]))
                cfg["model_config_dict"][k] = (big if rng.random() < 0.4 and "hidden" in k else
                                               int(pick(rng, [10**6, 10**9])) if rng.random() < 0.3 else interesting(rng))
        (leaf / CTOR).write_text(json.dumps(data))
        return "model_config " + ",".join(chosen)

    def st_parts(f):
        raw = f.read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        return json.loads(raw[8:8 + n]), raw[8 + n:]

    def st_write(f, hdr, body, rng, hdr_text=None):
        h = (hdr_text if hdr_text is not None else json.dumps(hdr)).encode()
        h += b" " * (-len(h) % 8)
        n = len(h) if rng.random() < 0.85 else int(pick(rng, [0, 1, len(h) - 1, len(h) + 8, 2**63, 2**64 - 1]))
        f.write_bytes(struct.pack("<Q", n) + h + body)

    def f_st_header(d, rng):
        leaf = pick(rng, leaf_dirs(d))
        f = leaf / STATE
        hdr, body = st_parts(f)
        names = [k for k in hdr if k != "__metadata__"]
        k = str(pick(rng, names)) if names else "x"
        op = int(rng.integers(0, 10))
        e = hdr.setdefault(k, {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]})
        if op == 0:
            e["shape"] = [int(pick(rng, [0, 1, 2**20, 2**40, 2**62, -1])) for _ in range(int(rng.integers(0, 4)))]
        elif op == 1:
            e["dtype"] = str(pick(rng, ["F64", "F16", "BF16", "I64", "BOOL", "U8", "F128", "Q", "", "f32"]))
        elif op == 2:
            e["data_offsets"] = [int(pick(rng, [0, 4, 2**62, -4])), int(pick(rng, [0, 8, 2**63, 10**9]))]
        elif op == 3:
            e["data_offsets"] = interesting(rng)
        elif op == 4:
            del e[str(pick(rng, ["dtype", "shape", "data_offsets"]))]
        elif op == 5:
            hdr[k + "_renamed"] = hdr.pop(k)
        elif op == 6:
            hdr["__metadata__"] = interesting(rng)
        elif op == 7:
            e["extra"] = 1
        elif op == 8:
            hdr[k] = interesting(rng)
        else:
            st_write(f, hdr, body, rng, hdr_text=json.dumps(hdr).replace("{", '{"%s": {"dtype": "F32", "shape": [0], '
                                                                         '"data_offsets": [0, 0]}, ' % k, 1))
            return "header duplicate key"
        st_write(f, hdr, body, rng)
        if rng.random() < 0.5:
            set_sha(leaf)
        return f"header op {op}"

    def f_st_bytes(d, rng):
        leaf = pick(rng, leaf_dirs(d))
        f = leaf / STATE
        raw = bytearray(f.read_bytes())
        op = int(rng.integers(0, 6))
        if op == 0:
            raw = raw[: int(rng.integers(0, len(raw)))]
        elif op == 1:
            for _ in range(int(rng.integers(1, 8))):
                i = int(rng.integers(0, min(len(raw), 8 + 600)))
                raw[i] ^= 1 << int(rng.integers(0, 8))
        elif op == 2:
            raw[:8] = struct.pack("<Q", int(rng.integers(0, 2**63)))
        elif op == 3:
            raw += bytes(int(rng.integers(1, 4096)))
        elif op == 4:
            import pickle

            raw = bytearray(pickle.dumps({"x": 1}))
        else:
            raw = bytearray(b"PK\x03\x04" + bytes(60))
        f.write_bytes(bytes(raw))
        if rng.random() < 0.5:
            set_sha(leaf)
        return f"state bytes op {op}"

    def f_st_consistent(d, rng):
        from safetensors.torch import load_file, save_file

        leaf = pick(rng, leaf_dirs(d))
        f = leaf / STATE
        ts = load_file(str(f))
        k = str(pick(rng, sorted(ts)))
        op = int(rng.integers(0, 6))
        if op == 0:
            ts[k] = torch.zeros(*(s + 1 for s in ts[k].shape))
        elif op == 1:
            ts[k] = ts[k].to(pick(rng, [torch.int64, torch.uint8, torch.bool, torch.float16, torch.float64]))
        elif op == 2:
            del ts[k]
        elif op == 3:
            ts[k + ".extra"] = torch.zeros(3)
        elif op == 4:
            ts = {}
        else:
            ts[k] = torch.full_like(ts[k], float("nan"))
        save_file(ts, str(f))
        if rng.random() < 0.8:
            set_sha(leaf)
        return f"consistent state op {op}"

    def f_fs(d, rng):
        leaf = pick(rng, leaf_dirs(d) + [d])
        name = str(pick(rng, [STATE, META, CTOR]))
        f = leaf / name
        if not os.path.lexists(f):
            return "nothing to replace"
        f.unlink()
        op = int(rng.integers(0, 11))
        if op == 0:
            os.symlink("/dev/zero", f)
        elif op == 1:
            os.symlink("/dev/urandom", f)
        elif op == 2:
            os.symlink("/dev/null", f)
        elif op == 3:
            os.mkfifo(f)
        elif op == 4:
            f.mkdir()
        elif op == 5:
            os.symlink(leaf / "nope", f)
        elif op == 6:
            os.symlink(f.name, f)
        elif op == 7:
            os.symlink("/proc/self/status", f)
        elif op == 8:
            os.symlink(CTOR if name != CTOR else META, f)
        elif op == 9:
            with open(f, "wb") as h:
                h.truncate(int(pick(rng, [(16 << 20) + 1, 1 << 40])))  # sparse: costs nothing to write
        else:
            f.write_bytes(b"")
        return f"{f.relative_to(d)} replaced (op {op})"

    def f_multi(d, rng):
        if not (d / "p0").exists() and not (d / "outer").exists():
            return f_fs(d, rng)
        data = load_json(d / CTOR)
        ids = list(data.get("module_ids") or [])
        op = int(rng.integers(0, 9))
        if op == 0:
            data["module_ids"] = ids + ids[:1]
        elif op == 1:
            data["module_ids"] = [str(pick(rng, ["../seeds", "..", ".", "", "/etc", "a/b", "p0\0", "\ud800", "m" * 300]))]
        elif op == 2:
            data["module_ids"] = [f"m{i}" for i in range(int(pick(rng, [1000, 20000])))]
        elif op == 3:
            victim = d / ids[int(rng.integers(0, len(ids)))]
            shutil.rmtree(victim)
            os.symlink(str(pick(rng, [".", "..", str(seeds["mlp"]), "nope", ids[0] if ids[0] != victim.name else "."])),
                       victim)
        elif op == 4:  # nest the checkpoint in itself a few times
            for _ in range(int(rng.integers(1, 7))):
                inner = d.parent / (d.name + "_inner")
                shutil.copytree(d, inner, symlinks=True)
                shutil.rmtree(d / ids[0])
                shutil.move(str(inner), str(d / ids[0]))
        elif op == 5:
            victim = d / ids[int(rng.integers(0, len(ids)))]
            shutil.rmtree(victim)
            victim.write_text("{}")
        elif op == 6:
            data["module_ids"] = interesting(rng)
        elif op == 7:
            data["class"] = interesting(rng)
        else:
            (d / CTOR).write_text(json.dumps(data).replace('"module_ids"', '"module_ids": [], "module_ids"', 1))
            return "duplicate module_ids key"
        (d / CTOR).write_text(json.dumps(data))
        return f"multi op {op}"

    simple = [f_ctor_value, f_ctor_key, f_ctor_text, f_meta_value, f_meta_text, f_space, f_model_config, f_st_header,
              f_st_bytes, f_st_consistent, f_fs]

    def f_combo(d, rng):
        steps = [simple[int(rng.integers(0, len(simple)))] for _ in range(int(rng.integers(2, 4)))]
        steps.sort(key=lambda st: st is f_fs)  # a file replaced by /dev/zero etc. is not read again
        done = []
        for st in steps:
            try:
                done.append(st(d, rng))
            except Exception:  # noqa: BLE001 -- an earlier step left nothing this one can parse
                done.append(st.__name__ + " skipped")
        return " + ".join(done)

    table = {name: fn for name, fn in zip(FAMILIES, simple + [f_multi, f_combo])}

    # ------------------------------------------------------------------ loaders
    def loaders(seed, d):
        out = [("RLModule.from_checkpoint", lambda: rf.RLModule.from_checkpoint(d), True)]
        if seed in multi_seeds:
            out.append(("MultiRLModule.from_checkpoint", lambda: rf.MultiRLModule.from_checkpoint(d), True))
        out.append(("restore_from_path", lambda: fresh[seed].restore_from_path(d), True))
        leaf = leaf_dirs(d)[0]
        cfg, data = None, None
        f = leaf / CTOR
        if f.is_file() and not f.is_symlink() and f.stat().st_size < (1 << 20):  # never /dev/zero, a FIFO, ...
            try:
                data = json.loads(f.read_text())
                cfg = ctor_config(data)
            except Exception:  # noqa: BLE001 -- not parseable: the dict loaders have nothing to take
                pass
        if cfg is not None:
            spec = dict(cfg) if isinstance(cfg, dict) else cfg
            if isinstance(spec, dict) and isinstance(data, dict):
                spec["module_class"] = data.get("class")
            out.append(("RLModuleSpec.from_dict", lambda: rf.RLModuleSpec.from_dict(spec), False))
            out.append(("RLModuleConfig.from_dict", lambda: rf.RLModuleConfig.from_dict(cfg), False))
        return out

    scratch = work / "scratch"
    scratch.mkdir(exist_ok=True)
    for i in range(args.start, args.budget):
        if time.monotonic() > t_end:
            break
        fam = families[i % len(families)]
        os.pwrite(prog, _PROG.pack(i, FAMILIES.index(fam), time.monotonic()), 0)
        rng = np.random.default_rng([args.seed, i])
        seed = str(pick(rng, list(multi_seeds) if fam == "multi" else list(seeds)))
        d = scratch / f"case{i}"
        if os.path.lexists(d):
            shutil.rmtree(d)
        t0 = time.perf_counter()
        try:
            shutil.copytree(seeds[seed], d, symlinks=True)
            what = table[fam](d, rng)
            plan = loaders(seed, d)
        except Exception:  # noqa: BLE001 -- a bug of this harness, not of the loaders
            traceback.print_exc()
            return HARNESS_ERROR
        if args.verbose:
            print(f"input {i}: seed {seed}, family {fam}: {what}", file=sys.stderr, flush=True)
        outcomes = []
        for lname, fn, names_file in plan:
            if args.verbose:
                print(f"  {lname} ...", file=sys.stderr, flush=True)
            try:
                fn()
                outcomes.append([lname, "ok", ""])
            except (ValueError, FileNotFoundError) as e:
                msg = str(e)
                named = (not names_file) or str(d) in msg or any(n in msg for n in (STATE, META, CTOR))
                outcomes.append([lname, type(e).__name__ if named else "unnamed:" + type(e).__name__, msg[:300]])
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # noqa: BLE001 -- the contract violation being looked for
                tb = traceback.format_exc()
                outcomes.append([lname, "unclean:" + type(e).__name__, (str(e)[:300] + " | " + tb[-700:])])
        rec = {"i": i, "family": fam, "seed": seed, "what": str(what)[:200], "outcomes": outcomes,
               "seconds": round(time.perf_counter() - t0, 4),
               "rss_growth_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024, 1)}
        results.write(json.dumps(rec) + "\n")
        results.flush()
        if args.verbose:
            print(json.dumps(rec, indent=1), file=sys.stderr)
        shutil.rmtree(d, ignore_errors=True)
    os.pwrite(prog, _PROG.pack(-1, -1, time.monotonic()), 0)
    return 0


# =============================================================================================
# the parent


def _describe_rc(rc: int) -> str:
    if rc is None:
        return "killed"
    if rc < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit {rc}"


def run_parent(args) -> dict:
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="rf_ckpt_fuzz_"))
    progress, results, errlog = tmp / "progress", tmp / "results.jsonl", tmp / "stderr.log"
    crashes, hangs = [], []
    start = args.start
    t0 = time.monotonic()
    timed_out = False
    try:
        while start < args.budget:
            progress.write_bytes(_PROG.pack(-2, -2, 0.0))
            left = (args.seconds - (time.monotonic() - t0)) if args.seconds else 0
            if args.seconds and left <= 0:
                break
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--work", str(tmp), "--progress",
                   str(progress), "--results", str(results), "--budget", str(args.budget), "--start", str(start),
                   "--seed", str(args.seed), "--families", args.families, "--mem-mb", str(args.mem_mb),
                   "--seconds", str(max(left, 0.001) if args.seconds else 0)]
            if args.verbose:
                cmd.append("--verbose")
            with open(errlog, "ab") as err:
                p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
                last_i, since = None, time.monotonic()
                hung = False
                while p.poll() is None:
                    time.sleep(0.05)
                    i, _, _ = _PROG.unpack(progress.read_bytes()[:_PROG.size])
                    if i != last_i:
                        last_i, since = i, time.monotonic()
                    elif i >= 0 and time.monotonic() - since > args.input_timeout:
                        hung = True
                        p.kill()
                        p.wait()
                        break
                    if time.monotonic() - t0 > args.timeout:
                        p.kill()
                        p.wait()
                        timed_out = True
                        break
            i, fi, _ = _PROG.unpack(progress.read_bytes()[:_PROG.size])
            if timed_out:
                break
            if p.returncode == 0 and i == -1:
                break
            if p.returncode == HARNESS_ERROR:
                raise RuntimeError(f"fuzz harness error (not a finding) at input {i}:\n{errlog.read_text()[-3000:]}")
            if i < 0:
                raise RuntimeError(f"fuzz child failed before fuzzing ({_describe_rc(p.returncode)}):\n"
                                   f"{errlog.read_text()[-3000:]}")
            entry = {"input": i, "family": FAMILIES[fi], "how": _describe_rc(p.returncode),
                     "replay": f"python {os.path.relpath(__file__)} --start {i} --budget {i + 1} --seed {args.seed} "
                               f"--families {args.families} --verbose",
                     "stderr_tail": errlog.read_text(errors="replace")[-800:]}
            (hangs if hung else crashes).append(entry)
            start = i + 1
        per: dict = {}
        peak, peak_at, slowest = 0.0, None, {"seconds": 0.0}
        if results.exists():
            for line in results.read_text().splitlines():
                r = json.loads(line)
                a = per.setdefault(r["family"], {"tried": 0, "outcomes": {}, "unclean": {}, "unnamed": {}})
                a["tried"] += 1
                if r["rss_growth_mb"] > peak:
                    peak, peak_at = r["rss_growth_mb"], {"input": r["i"], "what": r["what"]}
                if r["seconds"] > slowest["seconds"]:
                    slowest = {"seconds": r["seconds"], "input": r["i"], "what": r["what"]}
                for lname, kind, msg in r["outcomes"]:
                    a["outcomes"][kind] = a["outcomes"].get(kind, 0) + 1
                    for bad in ("unclean", "unnamed"):
                        if kind.startswith(bad + ":"):
                            u = a[bad].setdefault(f"{lname} {kind[len(bad) + 1:]}", {"count": 0, "example": None})
                            u["count"] += 1
                            u["example"] = u["example"] or {"input": r["i"], "what": r["what"], "message": msg[:1200]}
        return {
            "budget": args.budget, "seed": args.seed, "families": args.families.split(","),
            "mem_cap_mb_over_imports": args.mem_mb, "input_timeout_s": args.input_timeout,
            "total_inputs": sum(v["tried"] for v in per.values()),
            "unclean": sum(u["count"] for v in per.values() for u in v["unclean"].values()),
            "unnamed": sum(u["count"] for v in per.values() for u in v["unnamed"].values()),
            "crashes": len(crashes), "hangs": len(hangs), "timed_out": timed_out,
            "peak_rss_growth_mb": peak, "peak_reached_at": peak_at, "slowest_input": slowest,
            "seconds": round(time.monotonic() - t0, 1),
            "per_family": per, "crash_list": crashes, "hang_list": hangs,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=int, default=2000, help="inputs (index range end; default 2000)")
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0: run the whole budget)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset of --list")
    ap.add_argument("--mem-mb", type=int, default=1024, help="address space the child may add after its imports")
    ap.add_argument("--input-timeout", type=float, default=30.0, help="seconds one input may take (else: a hang)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds for the whole run")
    ap.add_argument("--start", type=int, default=0, help="first input index (replay: --start I --budget I+1)")
    ap.add_argument("--json", help="also write the summary here")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--progress", help=argparse.SUPPRESS)
    ap.add_argument("--results", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(FAMILIES))
        return 0
    bad = [f for f in args.families.split(",") if f not in FAMILIES]
    if bad:
        ap.error(f"--families: unknown {bad}; see --list")
    if args.child:
        try:
            return _child(args)
        except MemoryError:
            traceback.print_exc()
            return 4  # the child itself ran out of its capped address space: a finding, not a harness bug
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            return HARNESS_ERROR
    summary = run_parent(args)
    text = json.dumps(summary, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    print(text)
    return 1 if (summary["unclean"] or summary["unnamed"] or summary["crashes"] or summary["hangs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
