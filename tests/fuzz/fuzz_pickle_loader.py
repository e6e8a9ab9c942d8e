"""Fuzz the restricted RLlib checkpoint loader (``rlmodule_fast/rllib/_pickle.py``) with mutated pickles.

Run as a script (the CI runs a few seconds of it through tests/test_fuzz_loaders_pickle.py)::

    python tests/fuzz/fuzz_pickle_loader.py --budget 20000               # 20000 inputs
    python tests/fuzz/fuzz_pickle_loader.py --seconds 60 --json out.json  # or a time budget
    python tests/fuzz/fuzz_pickle_loader.py --seeds DIR                   # + checkpoints under DIR
    python tests/fuzz/fuzz_pickle_loader.py --rllib-seeds                 # + real ones written by ray[rllib]
    python tests/fuzz/fuzz_pickle_loader.py --replay 1234 --save /tmp/case.pkl

Seeds. tests/data holds no pickles (only JSON), so the harness writes RLlib-layout seeds itself,
with the opcodes RLlib's ``save_to_path`` writes for these objects (cloudpickle pickles
importable classes by reference, as pickle does): ``class_and_ctor_args.pkl`` dicts naming
``DefaultPPOTorchRLModule`` or ``DefaultAPPOTorchRLModule`` and ``PPOCatalog`` (placeholder
classes that pickle under RLlib's names; ray is not imported) with gymnasium Box / Discrete /
MultiDiscrete spaces (one seeded, so its numpy Generator is pickled), a dict or
``DefaultModelConfig`` model config; and matching ``module_state.pkl`` OrderedDicts of float32
arrays (names and shapes of the module that config builds; an APPO learner's ``_old_encoder`` /
``_old_pi`` target networks in one APPO seed), in protocols 5 (RLlib's), 4 and 2. ``--seeds DIR`` adds the real pairs found in
directories under DIR, ``--rllib-seeds`` writes some with ray[rllib] first.

Mutators, one per input (a pure function of ``--seed`` and the input index, so ``--replay I``
regenerates input I):

- ``bitflip``: 1-8 random bits flipped;
- ``bytes``: 1-4 bytes set to boundary values, or a 4/8-byte field set to a huge length;
- ``splice``: opcode-aligned ranges (via ``pickletools.genops``, frames stripped) of two seeds
  inserted, replaced, deleted or repeated up to 10^4 times (memo fan-out);
- ``opstream``: a random opcode stream (a rough stack model picks opcodes whose operands are
  there): pushes, marks, containers, memo puts and gets, fan-out and deep-nesting runs, admitted
  and foreign globals, REDUCE / NEWOBJ / BUILD / persistent ids.

Targets: each input is read with ``restricted_load`` (target ``load``); a class_and_ctor_args
input (and every opcode stream) then has each space record found in it rebuilt with
``space_from_record`` (target ``spaces``): all of ``_pickle.py``. With ``--checkpoint``, half of
the seed-derived inputs are also loaded as a checkpoint directory (the mutated file next to its
seed partner) with ``load_rllib_checkpoint`` (target ``checkpoint``), which also builds the
module from the file's spaces and config (``convert.py``, the model code).

Contract: the loader returns, or raises ValueError naming the file (UnsafeCheckpointError is
one). The child runs under ``RLIMIT_AS`` (its size after imports + ``--mem-mb``) and the parent
kills it when one input takes more than ``--input-timeout`` seconds; the child is restarted
after the input that killed it. Failures: *crash* (killed by a signal), *hang* (timeout),
*memory* (a MemoryError, raw or inside the loader's message), *unclean* (any other exception
type, a ValueError not naming the file, or one longer than ``MAX_MESSAGE_CHARS``: messages
describe file data, never repeat it), *slow* (an input over ``--slow`` seconds), *seed
refused* (an unmutated seed does not load: checked first), *harness* (a bug here).
Output: one JSON summary (also ``--json PATH``) with counts per mutator and target, the slowest
input, the largest RSS growth, and each failure with its replay command. Exit status 1 if any
failure.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback

HARNESS_ERROR = 3
MAX_MESSAGE_CHARS = 4000  # a longer error message repeats the file's data (its repr): a failure
SEED_REFUSED = 4  # child exit status: an unmutated seed did not load (a loader regression)
MUTATORS = ["bitflip", "bytes", "splice", "opstream"]
MODULE_REF = "ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module.DefaultPPOTorchRLModule"
APPO_REF = "ray.rllib.algorithms.appo.torch.default_appo_torch_rl_module.DefaultAPPOTorchRLModule"
CATALOG_REF = "ray.rllib.algorithms.ppo.ppo_catalog.PPOCatalog"
CONFIG_REF = "ray.rllib.core.rl_module.default_model_config.DefaultModelConfig"
CTOR, STATE = "class_and_ctor_args.pkl", "module_state.pkl"


# =============================================================================================
# seeds
def _seed_pickler():
    import pickle

    class SeedPickler(pickle._Pickler):  # type: ignore[name-defined]
        """Pickles a class carrying ``_rllib_path`` under that name (without importing it)."""

        def save_global(self, obj, name=None):
            path = getattr(obj, "_rllib_path", None)
            if path is None:
                return super().save_global(obj, name)
            module, _, qual = path.rpartition(".")
            if self.proto >= 4:
                self.save(module)
                self.save(qual)
                self.write(pickle.STACK_GLOBAL)
            else:
                self.write(pickle.GLOBAL + f"{module}\n{qual}\n".encode())
            self.memoize(obj)

    return SeedPickler


def _ref(path: str) -> type:
    return type(path.rpartition(".")[2], (), {"_rllib_path": path})


def synthetic_seeds() -> list[tuple[str, str, bytes, bytes]]:
    """[(name, kind, file bytes, partner bytes)]: kind 'ctor' (partner: its module_state) or
    'state' (partner: its class_and_ctor_args)."""
    import collections
    import io
    import warnings

    import gymnasium as gym
    import numpy as np

    from rlmodule_fast.appo import APPOTorchRLModule
    from rlmodule_fast.ppo import PPOTorchRLModule
    from rlmodule_fast.rllib.convert import _build_ours, rllib_model_config, to_rllib_state

    Pickler = _seed_pickler()

    def dumps(obj, protocol):
        f = io.BytesIO()
        Pickler(f, protocol=protocol).dump(obj)
        return f.getvalue()

    seeded = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    seeded.seed(7)
    obs = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    # name -> (obs, action space, model config, config as DefaultModelConfig?[, module ref, targets])
    layouts = {
        "discrete-mlp": (obs, gym.spaces.Discrete(3), {"fcnet_hiddens": [8, 6]}, False),
        "box-separate": (obs, gym.spaces.Box(-2.0, 2.0, (2,), np.float32),
                         {"fcnet_hiddens": [5], "vf_share_layers": False, "free_log_std": True}, False),
        "multidiscrete-seeded-dataclass": (seeded, gym.spaces.MultiDiscrete([3, 2]),
                                           {"fcnet_hiddens": [6], "fcnet_activation": "relu"}, True),
        "discrete-lstm": (obs, gym.spaces.Discrete(2), {"fcnet_hiddens": [4], "use_lstm": True, "lstm_cell_size": 3},
                          False),
        # APPO: a learner's module (target networks in the state) and one without them
        "appo-discrete-targets": (obs, gym.spaces.Discrete(3), {"fcnet_hiddens": [6, 5], "vf_share_layers": False},
                                  False, APPO_REF, True),
        "appo-box-shared": (obs, gym.spaces.Box(-1.0, 1.0, (2,), np.float32), {"fcnet_hiddens": [5]}, True,
                            APPO_REF, False),
    }
    catalog_cls, config_cls = _ref(CATALOG_REF), _ref(CONFIG_REF)
    out = []
    for name, (o, a, cfg, dataclass_cfg, *appo) in layouts.items():
        ref, targets = appo or (MODULE_REF, False)
        module_cls = _ref(ref)
        if dataclass_cfg:
            model_config = config_cls.__new__(config_cls)
            model_config.__dict__.update(cfg)
        else:
            model_config = dict(cfg)
        ctor = {"class": module_cls, "ctor_args_and_kwargs": ((), {
            "observation_space": o, "action_space": a, "inference_only": False, "learner_only": False,
            "model_config": model_config, "catalog_class": catalog_cls})}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = _build_ours(o, a, rllib_model_config(cfg), False, name, targets=targets,
                                 module_class=APPOTorchRLModule if ref == APPO_REF else PPOTorchRLModule)
        state = collections.OrderedDict(to_rllib_state(module))
        for protocol in (5, 4, 2):
            c, s = dumps(ctor, protocol), dumps(state, protocol)
            out.append((f"{name}-p{protocol}-ctor", "ctor", c, s))
            out.append((f"{name}-p{protocol}-state", "state", s, c))
    return out


def dir_seeds(root: str) -> list[tuple[str, str, bytes, bytes]]:
    """Real checkpoint pickles under ``root`` (pairs found by directory)."""
    out = []
    for d, _, files in sorted(os.walk(root)):
        if "class_and_ctor_args.pkl" in files and "module_state.pkl" in files:
            with open(os.path.join(d, "class_and_ctor_args.pkl"), "rb") as f:
                c = f.read()
            with open(os.path.join(d, "module_state.pkl"), "rb") as f:
                s = f.read()
            rel = os.path.relpath(d, root)
            out += [(f"{rel}-ctor", "ctor", c, s), (f"{rel}-state", "state", s, c)]
    return out


def rllib_seed_dir() -> str:
    """Real RLlib checkpoints (needs ray[rllib]) written to a temporary directory, which is kept
    (listed in the summary's ``seed_dirs``): the replay commands name it."""
    import gymnasium as gym
    import numpy as np
    from ray.rllib.algorithms.ppo.ppo_catalog import PPOCatalog
    from ray.rllib.algorithms.appo.torch.default_appo_torch_rl_module import DefaultAPPOTorchRLModule
    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    root = tempfile.mkdtemp(prefix="rf_fuzz_rllib_seeds_")
    obs = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    for name, act, cfg in [("discrete", gym.spaces.Discrete(3), {"fcnet_hiddens": [8]}),
                           ("box-lstm", gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
                            DefaultModelConfig(fcnet_hiddens=[4], use_lstm=True, lstm_cell_size=3)),
                           ("multidiscrete", gym.spaces.MultiDiscrete([3, 2]), {"vf_share_layers": False})]:
        DefaultPPOTorchRLModule(observation_space=obs, action_space=act, model_config=cfg,
                                catalog_class=PPOCatalog).save_to_path(os.path.join(root, name))
    # APPO: a learner's module (with target networks) and an env runner's (inference-only)
    for name, inference_only in [("appo-learner", False), ("appo-runner", True)]:
        m = DefaultAPPOTorchRLModule(observation_space=obs, action_space=gym.spaces.Discrete(3),
                                     model_config={"fcnet_hiddens": [6], "vf_share_layers": False},
                                     catalog_class=PPOCatalog, inference_only=inference_only)
        if not inference_only:
            m.make_target_networks()
        m.save_to_path(os.path.join(root, name))
    return root


# =============================================================================================
def rllib_load(rr, d: str):
    """``load_rllib_sac_checkpoint`` when the ctor file names a SAC class, else
    ``load_rllib_checkpoint`` (so SAC seeds, e.g. ``--seeds`` of RLlib SAC checkpoints, are fuzzed;
    an APPO file goes to ``load_rllib_checkpoint``, which picks the APPO loader by its class)."""
    try:
        with open(os.path.join(d, CTOR), "rb") as f:
            head = f.read(1 << 20)
    except OSError:
        head = b""
    if b"SACTorchRLModule" in head or b"SACCatalog" in head:
        return rr.load_rllib_sac_checkpoint(d)
    return rr.load_rllib_checkpoint(d)


# mutators: (rng, seed bytes, other seed bytes) -> bytes
def _boundaries(data: bytes) -> list[int]:
    import pickletools

    pos = []
    try:
        for op, _, p in pickletools.genops(data):
            pos.append(p)
    except Exception:  # noqa: BLE001 -- a seed is valid; only a mutated one fails to parse
        pass
    return pos + [len(data)]


def deframe(data: bytes) -> bytes:
    """The pickle without its FRAME opcodes (still valid), so that splices do not break frames."""
    import pickletools

    out, last = bytearray(), 0
    for op, _, p in pickletools.genops(data):
        if op.name == "FRAME":
            out += data[last:p]
            last = p + 9
    return bytes(out + data[last:])


def m_bitflip(rng: random.Random, data: bytes, other: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def m_bytes(rng: random.Random, data: bytes, other: bytes) -> bytes:
    b = bytearray(data)
    if rng.random() < 0.3:  # a length / index field
        width = rng.choice([4, 8])
        i = rng.randrange(max(1, len(b) - width))
        v = rng.choice([2**31 - 1, 2**32 - 1, 2**40, 2**63 - 1, 0, len(b), len(b) * 2])
        b[i:i + width] = (v % 2 ** (8 * width)).to_bytes(width, "little")
    else:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256),
                                                   ord(rng.choice("()tule]}\x85\x86\x87\x93\x94Rbhjqr0."))])
    return bytes(b)


def m_splice(rng: random.Random, data: bytes, other: bytes) -> bytes:
    a, b = deframe(data), deframe(other)
    pa, pb = _boundaries(a), _boundaries(b)
    i, j = sorted(rng.sample(pa, 2)) if len(pa) > 1 else (0, len(a))
    k, l = sorted(rng.sample(pb, 2)) if len(pb) > 1 else (0, len(b))
    piece = b[k:l]
    r = rng.random()
    if r < 0.3:  # insert a range of the other seed
        return a[:i] + piece + a[i:]
    if r < 0.55:  # replace a range with the other seed's
        return a[:i] + piece + a[j:]
    if r < 0.7:  # delete a range
        return a[:i] + a[j:]
    # repeat a short range many times (memo gets, marks, tuples: fan-out and depth)
    if l - k > 64:
        l = k + rng.randint(1, 64)
    return a[:i] + b[k:l] * rng.choice([2, 10, 100, 1000, 10_000]) + a[i:]


_ADMITTED_GLOBALS = [
    ("numpy", "dtype"), ("numpy", "ndarray"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict"),
    ("builtins", "set"), ("builtins", "frozenset"), ("_codecs", "encode"), ("gymnasium.spaces.box", "Box"),
    ("gymnasium.spaces.discrete", "Discrete"), ("gymnasium.spaces.multi_discrete", "MultiDiscrete"),
    ("gymnasium.spaces.multi_binary", "MultiBinary"), ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._pcg64", "PCG64"), tuple(MODULE_REF.rsplit(".", 1)), tuple(CATALOG_REF.rsplit(".", 1)),
    tuple(CONFIG_REF.rsplit(".", 1)),
    # the SAC names the reader admits as data since load_rllib_sac_checkpoint (and a Dict space it refuses)
    ("ray.rllib.algorithms.sac.torch.default_sac_torch_rl_module", "DefaultSACTorchRLModule"),
    ("ray.rllib.algorithms.sac.sac_catalog", "SACCatalog"), ("rlmodule_fast.rllib.sac_module", "FastSACTorchRLModule"),
    ("gymnasium.spaces.dict", "Dict"),
    # APPO's (load_rllib_checkpoint picks the APPO loader by them)
    tuple(APPO_REF.rsplit(".", 1)), ("ray.rllib.algorithms.appo.torch.appo_torch_rl_module", "APPOTorchRLModule"),
    ("rlmodule_fast.rllib.appo_module", "FastAPPOTorchRLModule"),
]
_FOREIGN_GLOBALS = [("os", "system"), ("builtins", "eval"), ("builtins", "getattr"),
                    ("torch._utils", "_rebuild_tensor"), ("copyreg", "_reconstructor")]


def m_opstream(rng: random.Random, data: bytes, other: bytes) -> bytes:
    """A random opcode stream. A rough model of the stack (items per mark frame) makes most
    opcodes find the operands they pop, so that streams get past the first few opcodes; the
    types of those operands stay random."""
    import pickle as P

    def s(text: str) -> bytes:
        b = text.encode()
        if len(b) < 256:
            return P.SHORT_BINUNICODE + bytes([len(b)]) + b
        return P.BINUNICODE + struct.pack("<I", len(b)) + b

    values = [P.NONE, P.NEWTRUE, P.EMPTY_TUPLE, P.EMPTY_LIST, P.EMPTY_LIST, P.EMPTY_DICT, P.EMPTY_DICT, P.EMPTY_SET,
              P.BININT1 + bytes([rng.randrange(256)]), P.BININT + struct.pack("<i", rng.randint(-9, 9)),
              P.LONG1 + b"\x09" + bytes(rng.randrange(256) for _ in range(9)),
              P.BINFLOAT + struct.pack(">d", rng.choice([0.0, -1.5, 1e308, float("nan")])),
              s(rng.choice(["low", "high", "_shape", "n", "dtype", "f4", "<", "C", "x" * 300])),
              P.SHORT_BINBYTES + b"\x08" + bytes(8), P.BYTEARRAY8 + struct.pack("<Q", 4) + bytes(4)]
    out = bytearray(P.PROTO + bytes([rng.choice([2, 4, 5])]))
    frames = [0]  # items above each mark
    memo = 0

    def emit(code: bytes, pops: int = 0, pushes: int = 1) -> None:
        out.extend(code)
        frames[-1] += pushes - pops

    for _ in range(rng.randint(1, 300)):
        r, have = rng.random(), frames[-1]
        if rng.random() < 0.03:  # any byte, whatever the stack
            out.append(rng.randrange(256))
        elif r < 0.25:
            emit(rng.choice(values))
        elif r < 0.33:
            out.extend(P.MARK)
            frames.append(0)
        elif r < 0.45 and len(frames) > 1:  # a container from the items above the mark
            out.extend(rng.choice([P.TUPLE, P.LIST, P.DICT, P.FROZENSET]))
            frames.pop()
            frames[-1] += 1
        elif r < 0.52 and len(frames) > 1 and frames[-2] >= 1:  # fill the object below the mark
            out.extend(rng.choice([P.APPENDS, P.SETITEMS, P.ADDITEMS]))
            frames.pop()
        elif r < 0.6 and have >= 1:
            n = rng.randint(1, min(3, have))
            emit([P.TUPLE1, P.TUPLE2, P.TUPLE3][n - 1], n)
        elif r < 0.64 and have >= 3:
            emit(rng.choice([P.APPEND + P.APPEND, P.SETITEM]), 3, 1)
        elif r < 0.72:  # memo
            if memo and rng.random() < 0.6:
                emit(P.BINGET + bytes([rng.randrange(min(memo, 256))]))
            elif have:
                out.extend(P.MEMOIZE)
                memo += 1
        elif r < 0.76:  # amplifiers: fan-out of the last memo entry, deep nesting
            if memo and rng.random() < 0.6:
                refs = (P.BINGET + bytes([(memo - 1) % 256])) * rng.choice([10, 100, 1000])
                emit(P.MARK + refs + P.TUPLE + P.MEMOIZE)
                memo += 1
            else:
                emit(P.EMPTY_TUPLE + P.TUPLE1 * rng.choice([10, 100, 1000, 100_000]))
        elif r < 0.84:  # a global
            module, name = rng.choice(_ADMITTED_GLOBALS if rng.random() < 0.9 else _FOREIGN_GLOBALS)
            emit(s(module) + s(name) + P.STACK_GLOBAL)
        elif have >= 2:
            emit(rng.choice([P.REDUCE, P.NEWOBJ, P.BUILD, P.BUILD]), 2, 1)
        elif have >= 1:
            op = rng.choice([P.DUP, P.POP, P.BINPERSID])
            emit(op, 1, 0 if op == P.POP else 1 + (op == P.DUP))
    while len(frames) > 1:
        out.extend(P.TUPLE)
        frames.pop()
    return bytes(out + (P.NONE if not frames[0] else b"") + P.STOP)


MUTATOR_FUNCS = {"bitflip": m_bitflip, "bytes": m_bytes, "splice": m_splice, "opstream": m_opstream}


def make_input(seeds: list, seed: int, index: int) -> tuple[str, str, str, bytes, bytes]:
    """(mutator, seed name, seed kind, mutated bytes, partner bytes) for input ``index``."""
    rng = random.Random(f"{seed}:{index}")
    mutator = MUTATORS[index % len(MUTATORS)]
    name, kind, data, partner = seeds[rng.randrange(len(seeds))]
    other = seeds[rng.randrange(len(seeds))][2]
    return mutator, name, kind, MUTATOR_FUNCS[mutator](rng, data, other), partner


# =============================================================================================
# the child: loads inputs [start, budget) under RLIMIT_AS, one JSON line per input
def limit_memory(mb: int) -> None:
    """RLIMIT_AS: this process's current size + ``mb`` MiB (a blow-up becomes a MemoryError)."""
    import resource

    with open("/proc/self/status") as f:
        vm = [int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:")][0]
    resource.setrlimit(resource.RLIMIT_AS, (vm + mb * 2**20, resource.RLIM_INFINITY))


def _child(args) -> int:
    import resource

    import numpy as np  # noqa: F401 -- imported before the limit

    import rlmodule_fast.rllib as rr
    from rlmodule_fast.rllib._pickle import restricted_load, space_from_record

    seeds = load_seeds(args)
    for name, kind, data, partner in seeds:  # unmutated, every seed loads: else the loader regressed
        d = tempfile.mkdtemp(prefix="rf_fuzz_seed_")
        for fname, blob in ((CTOR, data), (STATE, partner)) if kind == "ctor" else ((STATE, data), (CTOR, partner)):
            with open(os.path.join(d, fname), "wb") as f:
                f.write(blob)
        try:
            rllib_load(rr, d)
        except Exception:  # noqa: BLE001
            sys.stderr.write(f"seed {name} does not load:\n{traceback.format_exc()}")
            return SEED_REFUSED
        finally:
            shutil.rmtree(d)
    limit_memory(args.mem_mb)
    prog = os.open(args.progress, os.O_RDWR | os.O_CREAT, 0o644)
    work = os.path.join(os.path.dirname(args.progress), "work")  # the parent removes it, even after a crash
    os.makedirs(work, exist_ok=True)
    deadline = time.monotonic() + args.seconds if args.seconds else None
    with open(args.results, "a") as res:
        for index in range(args.start, args.budget):
            if deadline is not None and time.monotonic() > deadline:
                break
            os.pwrite(prog, struct.pack("<q", index), 0)
            mutator, name, kind, data, partner = make_input(seeds, args.seed, index)
            rng = random.Random(f"target:{args.seed}:{index}")
            ctor = kind == "ctor" or mutator == "opstream"
            targets = ["spaces" if ctor else "load"]
            if args.checkpoint and mutator != "opstream" and rng.random() < 0.5:
                targets.append("checkpoint")
            fname, pname = (CTOR, STATE) if ctor else (STATE, CTOR)
            for target in targets:
                d = os.path.join(work, f"i{index}-{target}")
                shutil.rmtree(d, ignore_errors=True)
                os.makedirs(d)
                path = os.path.join(d, fname)
                with open(path, "wb") as f:
                    f.write(data)
                with open(os.path.join(d, pname), "wb") as f:
                    f.write(partner)
                rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                t = time.perf_counter()
                r = {"index": index, "mutator": mutator, "seed": name, "target": target, "size": len(data)}
                try:
                    if target == "checkpoint":
                        rllib_load(rr, d)
                    else:
                        obj = restricted_load(path)
                        if target == "spaces":
                            for rec in space_records(obj):
                                space_from_record(rec, f"{path}: space")
                    r["outcome"] = "ok"
                except MemoryError as e:
                    r.update(outcome="memory", detail=f"MemoryError: {str(e)[:300]}")
                except ValueError as e:
                    msg = str(e)
                    if "MemoryError" in msg:
                        r.update(outcome="memory", detail=msg[:500])
                    elif not (path in msg if target != "checkpoint" else (fname in msg or pname in msg)):
                        r.update(outcome="unclean", detail=f"ValueError not naming the file: {msg[:500]}")
                    elif len(msg) > MAX_MESSAGE_CHARS:
                        r.update(outcome="unclean", detail=f"a message of {len(msg)} characters: {msg[:500]}")
                    else:
                        r["outcome"] = "unsafe" if isinstance(e, rr.UnsafeCheckpointError) else "value_error"
                except Exception as e:  # noqa: BLE001 -- the contract allows ValueError only
                    r.update(outcome="unclean", detail=f"{type(e).__name__}: {str(e)[:300]}",
                             tb=traceback.format_exc()[-1200:])
                r["seconds"] = round(time.perf_counter() - t, 4)
                r["rss_growth_mb"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024, 1)
                res.write(json.dumps(r) + "\n")
                res.flush()
                shutil.rmtree(d)
    os.pwrite(prog, struct.pack("<q", -1), 0)
    return 0


def space_records(obj, limit: int = 100_000) -> list:
    """The gymnasium space records anywhere in a loaded object (a bounded walk)."""
    from rlmodule_fast.rllib._pickle import ModelConfigRecord, Record, RngRecord

    found, todo, seen = [], [obj], 0
    while todo and seen < limit:
        x = todo.pop()
        seen += 1
        if isinstance(x, dict):
            todo.extend(x.values())
        elif isinstance(x, (list, tuple)):
            todo.extend(x)
        elif isinstance(x, Record) and not isinstance(x, (RngRecord, ModelConfigRecord)) and hasattr(x, "state"):
            found.append(x)
    return found


def load_seeds(args) -> list:
    seeds = synthetic_seeds()
    for root in args.seeds or []:
        seeds += dir_seeds(root)
    return seeds


# =============================================================================================
# the parent: runs children, survives their deaths and hangs
def _describe_rc(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def _replay_cmd(args, index: int) -> str:
    extra = "".join(f" --seeds {s}" for s in args.seeds or []) + (" --checkpoint" if args.checkpoint else "")
    return f"python {os.path.relpath(__file__)} --seed {args.seed}{extra} --replay {index}"


def run_parent(args) -> dict:
    tmp = tempfile.mkdtemp(prefix="rf_fuzz_pickle_run_")
    progress, results = os.path.join(tmp, "progress"), os.path.join(tmp, "results.jsonl")
    failures: list[dict] = []
    start, t0 = 0, time.monotonic()
    while start < args.budget:
        with open(progress, "wb") as f:
            f.write(struct.pack("<q", -2))
        left = args.seconds - (time.monotonic() - t0) if args.seconds else 0
        if args.seconds and left <= 0:
            break
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--progress", progress, "--results", results,
               "--budget", str(args.budget), "--start", str(start), "--seed", str(args.seed),
               "--mem-mb", str(args.mem_mb), "--seconds", str(left)] + (["--checkpoint"] if args.checkpoint else [])
        for s in args.seeds or []:
            cmd += ["--seeds", s]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        last, since, hung = -2, time.monotonic(), False
        while proc.poll() is None:
            time.sleep(0.02)
            with open(progress, "rb") as f:
                cur = struct.unpack("<q", f.read(8))[0]
            if cur != last:
                last, since = cur, time.monotonic()
            elif cur >= 0 and time.monotonic() - since > args.input_timeout:
                proc.kill()
                hung = True
        stderr = proc.communicate()[1][-2000:]
        with open(progress, "rb") as f:
            cur = struct.unpack("<q", f.read(8))[0]
        if proc.returncode == 0 and cur == -1:
            break
        if proc.returncode == SEED_REFUSED:
            failures.append({"kind": "seed refused", "detail": stderr})
            break
        if proc.returncode == HARNESS_ERROR or cur < 0:
            failures.append({"kind": "harness", "detail": f"{_describe_rc(proc.returncode)}:\n{stderr}"})
            break
        failures.append({"kind": "hang" if hung else "crash", "index": cur,
                         "detail": f"no progress in {args.input_timeout} s" if hung else _describe_rc(proc.returncode),
                         "stderr_tail": stderr[-800:], "replay": _replay_cmd(args, cur)})
        start = cur + 1
    per: dict = {}
    slowest, biggest, n = {"seconds": 0.0}, {"rss_growth_mb": 0.0}, 0
    if os.path.exists(results):
        with open(results) as f:
            for line in f:
                r = json.loads(line)
                n += 1
                c = per.setdefault(f"{r['mutator']}/{r['target']}", {})
                c[r["outcome"]] = c.get(r["outcome"], 0) + 1
                if r["seconds"] > slowest["seconds"]:
                    slowest = r
                if r["rss_growth_mb"] > biggest["rss_growth_mb"]:
                    biggest = r
                if r["outcome"] in ("unclean", "memory") or r["seconds"] > args.slow:
                    kind = r["outcome"] if r["outcome"] in ("unclean", "memory") else "slow"
                    failures.append({"kind": kind, "index": r["index"], "mutator": r["mutator"],
                                     "target": r["target"], "detail": r.get("detail", f"{r['seconds']} s"),
                                     "tb": r.get("tb", ""), "replay": _replay_cmd(args, r["index"])})
    summary = {
        "seed": args.seed, "seed_dirs": args.seeds or [], "inputs": n, "seconds": round(time.monotonic() - t0, 1),
        "mem_limit_mb_over_imports": args.mem_mb, "input_timeout_s": args.input_timeout,
        "failures": len(failures), "failure_kinds": sorted({f["kind"] for f in failures}),
        "by_mutator_and_target": per,
        "slowest_input": {k: slowest.get(k) for k in ("index", "mutator", "target", "seconds", "size")},
        "largest_rss_growth": {k: biggest.get(k) for k in ("index", "mutator", "target", "rss_growth_mb", "size")},
        "failure_list": failures[:50],
    }
    shutil.rmtree(tmp, ignore_errors=True)
    return summary


def run_replay(args) -> int:
    """Input ``--replay`` in this process (under the same memory limit), with its traceback;
    ``--save`` writes its bytes."""
    import rlmodule_fast.rllib as rr
    from rlmodule_fast.rllib._pickle import restricted_load, space_from_record

    mutator, name, kind, data, partner = make_input(load_seeds(args), args.seed, args.replay)
    limit_memory(args.mem_mb)
    print(f"input {args.replay}: {mutator} of {name} ({kind}), {len(data)} bytes")
    if args.save:
        with open(args.save, "wb") as f:
            f.write(data)
    d = tempfile.mkdtemp(prefix="rf_fuzz_replay_")
    ctor = kind == "ctor" or mutator == "opstream"
    fname, pname = (CTOR, STATE) if ctor else (STATE, CTOR)
    path = os.path.join(d, fname)
    with open(path, "wb") as f:
        f.write(data)
    with open(os.path.join(d, pname), "wb") as f:
        f.write(partner)

    def spaces():
        return [space_from_record(rec, f"{path}: space") for rec in space_records(restricted_load(path))]

    for what, fn in (("restricted_load + space_from_record", spaces),
                     ("load_rllib_checkpoint", lambda: rllib_load(rr, d))):
        t = time.perf_counter()
        try:
            fn()
            print(f"{what}: ok ({time.perf_counter() - t:.3f} s)")
        except Exception:  # noqa: BLE001
            print(f"{what} ({time.perf_counter() - t:.3f} s):\n{traceback.format_exc()[-3000:]}")
    shutil.rmtree(d)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=int, default=10**9, help="number of inputs (default: until --seconds)")
    ap.add_argument("--seconds", type=float, default=0.0, help="stop after this many seconds (0: no limit)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", action="append", help="a directory of real checkpoints (repeatable)")
    ap.add_argument("--rllib-seeds", action="store_true", help="also write real RLlib checkpoints as seeds (ray)")
    ap.add_argument("--checkpoint", action="store_true", help="also load inputs with load_rllib_checkpoint")
    ap.add_argument("--mem-mb", type=int, default=1024, help="RLIMIT_AS headroom over the child's size after imports")
    ap.add_argument("--input-timeout", type=float, default=10.0, help="seconds one input may take before a hang")
    ap.add_argument("--slow", type=float, default=2.0, help="an input slower than this is a failure")
    ap.add_argument("--json", help="also write the summary here")
    ap.add_argument("--replay", type=int, default=None, help="run input INDEX in this process, with its traceback")
    ap.add_argument("--save", help="with --replay: write the input's bytes here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--progress", help=argparse.SUPPRESS)
    ap.add_argument("--results", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child or args.replay is not None:
        import faulthandler

        faulthandler.enable()  # a crash prints the Python stack (into the stderr tail of the summary)
    if args.child:
        try:
            return _child(args)
        except BaseException:  # a harness error, not a failure of the loader
            traceback.print_exc()
            return HARNESS_ERROR
    if args.rllib_seeds:
        args.seeds = (args.seeds or []) + [rllib_seed_dir()]
    if args.replay is not None:
        return run_replay(args)
    if args.budget >= 10**9 and not args.seconds:
        ap.error("give --budget or --seconds")
    summary = run_parent(args)
    text = json.dumps(summary, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    print(text)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
