"""Hostile pickles against the restricted RLlib loader (``rlmodule_fast/rllib/_pickle.py``).

Every payload names only globals the loader admits; it is hostile through its shape: nesting a
million levels deep, re-using memoized objects so that a few hundred bytes describe 10^10 nodes
("billion laughs"), filling a list after it was used, colliding hashes, lengths beyond the file,
or a numpy dtype whose ``__setstate__`` gives it a subarray / fields. Each must be refused
promptly (seconds) with a ValueError naming the file: never a segfault, a hang, a MemoryError,
a TypeError / OverflowError / RecursionError, nor a message that repeats the payload.

The payloads are assembled from raw opcodes (below) and loaded in one child process that runs
under ``RLIMIT_AS`` (its size after imports + 1.5 GiB) and a per-payload watchdog in this
process: a regression shows up as a failed case ("killed by SIGSEGV", "no answer in 8 s",
"MemoryError ...") instead of a dead or hung test run. No ray needed.
"""
from __future__ import annotations

import json
import os
import pathlib
import pickle as P
import selectors
import signal
import struct
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses RLIMIT_AS and /proc")

CASE_TIMEOUT_S = 8.0  # the watchdog: a case with no answer by then is a hang
PROMPT_S = 4.0  # what each case may take (all take well under a second when the loader is right)


# ---- a tiny pickle assembler ----------------------------------------------------------------------
def u(s: str) -> bytes:
    b = s.encode()
    return (P.SHORT_BINUNICODE + bytes([len(b)]) if len(b) < 256 else P.BINUNICODE + struct.pack("<I", len(b))) + b


def raw(b: bytes) -> bytes:
    return P.SHORT_BINBYTES + bytes([len(b)]) + b if len(b) < 256 else P.BINBYTES + struct.pack("<I", len(b)) + b


def i(n: int) -> bytes:
    if 0 <= n < 256:
        return P.BININT1 + bytes([n])
    if -(2**31) <= n < 2**31:
        return P.BININT + struct.pack("<i", n)
    b = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return P.LONG1 + bytes([len(b)]) + b


def put(k: int) -> bytes:
    return P.LONG_BINPUT + struct.pack("<I", k)


def get(k: int) -> bytes:
    return P.LONG_BINGET + struct.pack("<I", k)


def g(module: str, name: str) -> bytes:
    return u(module) + u(name) + P.STACK_GLOBAL


def tup(*items: bytes) -> bytes:
    return P.MARK + b"".join(items) + P.TUPLE


def dict_(*pairs: tuple[bytes, bytes]) -> bytes:
    return P.EMPTY_DICT + P.MARK + b"".join(k + v for k, v in pairs) + P.SETITEMS


def pkl(*parts: bytes) -> bytes:
    return P.PROTO + b"\x04" + b"".join(parts) + P.STOP


def laughs(levels: int, fanout: int, leaf: bytes = P.NONE, kind: str = "tuple", base: int = 10_000) -> bytes:
    """Pushes one object of ``fanout ** levels`` leaves: each level holds ``fanout`` memo
    references to the level below (about 6 * fanout * levels bytes)."""
    out = leaf + put(base) + P.POP
    for lv in range(1, levels + 1):
        refs = get(base + lv - 1) * fanout
        if kind == "tuple":
            out += P.MARK + refs + P.TUPLE + put(base + lv) + P.POP
        else:
            out += P.EMPTY_LIST + put(base + lv) + P.MARK + refs + P.APPENDS + P.POP
    return out + get(base + levels)


def dtype(spec: str = "f8", sub: bytes = P.NONE, names: bytes = P.NONE, fields: bytes = P.NONE,
          elsize: int = -1, align: int = -1) -> bytes:
    """A ``numpy.dtype`` as numpy pickles it (REDUCE, then BUILD with its state), state forged at will."""
    state = tup(i(3), u("<"), sub, names, fields, i(elsize), i(align), i(0))
    return g("numpy", "dtype") + u(spec) + P.NEWFALSE + P.NEWTRUE + P.TUPLE3 + P.REDUCE + state + P.BUILD


SUBARRAY_F8 = dtype(sub=tup(dtype(), i(2**31) + P.TUPLE1))  # f8 "holding" 2**31 f8: 16 GiB per element
FIELDS_F8 = dtype(names=u("a") + P.TUPLE1, fields=P.EMPTY_DICT + u("a") + tup(dtype(), i(0)) + P.SETITEM,
                  elsize=8, align=1)


def reconstruct(dt: bytes, shape: tuple = (1,), data: bytes = bytes(8)) -> bytes:
    """An array as protocol 2-4 pickle it: ``_reconstruct(ndarray, (0,), b'b')`` + BUILD state."""
    return (g("numpy.core.multiarray", "_reconstruct") + g("numpy", "ndarray") + i(0) + P.TUPLE1 + raw(b"b")
            + P.TUPLE3 + P.REDUCE + tup(i(1), tup(*map(i, shape)), dt, P.NEWFALSE, raw(data)) + P.BUILD)


def frombuffer(dt: bytes, shape: tuple = (1,), data: bytes = bytes(8)) -> bytes:
    return g("numpy._core.numeric", "_frombuffer") + tup(raw(data), dt, tup(*map(i, shape)), u("C")) + P.REDUCE


def record(module: str, name: str, *state: tuple[bytes, bytes]) -> bytes:
    """A gymnasium space / model config as pickle writes it: NEWOBJ(cls) + BUILD(state dict)."""
    return g(module, name) + P.EMPTY_TUPLE + P.NEWOBJ + dict_(*state) + P.BUILD


def box(*state: tuple[bytes, bytes]) -> bytes:
    return record("gymnasium.spaces.box", "Box", *state)


def f32_array(values: list[float]) -> bytes:
    return frombuffer(dtype("f4"), (len(values),), struct.pack(f"<{len(values)}f", *values))


GOOD_BOX = box((u("dtype"), dtype("f4")), (u("_shape"), i(3) + P.TUPLE1), (u("low"), f32_array([-1.0] * 3)),
               (u("high"), f32_array([1.0] * 3)))
GOOD_DISCRETE = record("gymnasium.spaces.discrete", "Discrete", (u("n"), i(2)), (u("start"), i(0)))


def ctor(obs: bytes = GOOD_BOX, act: bytes = GOOD_DISCRETE, args: bytes = P.EMPTY_TUPLE) -> bytes:
    """RLlib's class_and_ctor_args.pkl: {'class': ..., 'ctor_args_and_kwargs': (args, kwargs)}."""
    kwargs = dict_((u("observation_space"), obs), (u("action_space"), act), (u("inference_only"), P.NEWFALSE),
                   (u("model_config"), dict_((u("fcnet_hiddens"), P.EMPTY_LIST + i(4) + P.APPEND))),
                   (u("catalog_class"), g("ray.rllib.algorithms.ppo.ppo_catalog", "PPOCatalog")))
    cls = g("ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module", "DefaultPPOTorchRLModule")
    return pkl(dict_((u("class"), cls), (u("ctor_args_and_kwargs"), args + kwargs + P.TUPLE2)))


P61 = 2**61 - 1  # ints k * P61 + 1 all hash to 1

# id -> (what is loaded, payload): "file" = restricted_load(file), "ckpt" = load_rllib_checkpoint(dir)
# holding the payload as class_and_ctor_args.pkl (and an empty module_state.pkl)
CASES: dict[str, tuple[str, bytes]] = {
    # nesting depth: hash() of a 10^6-deep tuple overflows the C stack (segfault)
    "deep-tuple-dict-key": ("file", pkl(P.EMPTY_DICT, P.EMPTY_TUPLE + P.TUPLE1 * 10**6, P.NONE, P.SETITEM)),
    "deep-tuple-frozenset": ("file", pkl(P.MARK, P.EMPTY_TUPLE + P.TUPLE1 * 10**6, P.FROZENSET)),
    "deep-list": ("file", pkl(P.EMPTY_LIST * 100_000 + P.APPEND * 99_999)),
    # memo fan-out ("billion laughs"): 10^10 nodes from a few hundred bytes
    "laughs-dict-key": ("file", pkl(P.EMPTY_DICT, laughs(10, 10), P.NONE, P.SETITEM)),
    "laughs-frozenset-call": ("file", pkl(g("builtins", "frozenset"), P.MARK, laughs(9, 10), P.LIST, P.TUPLE1,
                                          P.REDUCE)),
    "laughs-persistent-id": ("file", pkl(laughs(10, 10), P.BINPERSID)),
    "laughs-ctor-args-repr": ("ckpt", ctor(args=laughs(10, 10, kind="list"))),
    "laughs-box-low-asarray": ("ckpt", ctor(obs=box((u("dtype"), dtype("f4")), (u("_shape"), i(10) + P.TUPLE1),
                                                    (u("low"), laughs(9, 10, leaf=P.BINFLOAT + bytes(8), kind="list")),
                                                    (u("high"), f32_array([1.0] * 10))))),
    # within the size limit, but hashed 20000 times (tuples do not cache their hash)
    "same-key-rehashed": ("file", pkl(laughs(5, 10) + put(1) + P.POP, P.EMPTY_DICT,
                                      (P.MARK + (get(1) + P.NONE) * 1000 + P.SETITEMS) * 20)),
    # a list referenced 10^5 times while empty, filled afterwards: its users' recorded size goes stale
    "filled-after-use": ("ckpt", ctor(args=P.EMPTY_LIST + put(1) + P.POP + laughs(5, 10, leaf=get(1))
                                      + get(1) + P.MARK + P.NONE * 1000 + P.APPENDS + P.POP)),
    # colliding int hashes: quadratic dict insertion
    "hash-flood-ints": ("file", pkl(dict_(*[(i(k * P61 + 1), P.NONE) for k in range(1, 80_001)]))),
    # more opcodes (objects) than any RLlib file has
    "object-count": ("file", pkl(P.MARK, P.NONE * 300_000, P.LIST)),
    # a declared length far beyond the file (the base unpickler allocates it first)
    "bytearray8-1TiB": ("file", pkl(P.BYTEARRAY8 + struct.pack("<Q", 2**40))),
    # numpy dtype __setstate__: a float dtype with a subarray / fields passes a kind/flags check
    "dtype-subarray-reconstruct": ("file", pkl(reconstruct(SUBARRAY_F8))),
    "dtype-subarray-frombuffer": ("file", pkl(frombuffer(SUBARRAY_F8, (1, 2**31)))),  # a 16 GiB view of 8 bytes
    "dtype-subarray-scalar": ("file", pkl(g("numpy._core.multiarray", "scalar") + SUBARRAY_F8 + raw(bytes(8))
                                          + P.TUPLE2 + P.REDUCE)),
    "dtype-fields-array": ("file", pkl(reconstruct(FIELDS_F8))),
    "dtype-fields-space": ("ckpt", ctor(obs=box((u("dtype"), FIELDS_F8), (u("_shape"), i(3) + P.TUPLE1),
                                                (u("low"), f32_array([-1.0] * 3)), (u("high"), f32_array([1.0] * 3))))),
    # a space whose constructor overflows
    "discrete-n-2**100": ("ckpt", ctor(act=record("gymnasium.spaces.discrete", "Discrete", (u("n"), i(2**100))))),
    # messages must not repeat the payload
    "long-global-name": ("file", pkl(u("x" * 10**6), u("y"), P.STACK_GLOBAL)),
}

# the crafted checkpoint without a hostile part: parsed fully, refused only for its missing weights
BASELINE = ("ckpt", ctor())

CHILD = r"""
import json, resource, sys, time, traceback
from rlmodule_fast.rllib import load_rllib_checkpoint
from rlmodule_fast.rllib._pickle import restricted_load
import gymnasium  # noqa: F401 -- imported before the limit, as the loader imports it late
vm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:")][0]
resource.setrlimit(resource.RLIMIT_AS, (vm + (3 << 29), resource.RLIM_INFINITY))
for line in sys.stdin:
    cid, kind, path = json.loads(line)
    print(json.dumps({"start": cid}), flush=True)
    t = time.perf_counter()
    r = {"case": cid}
    try:
        (load_rllib_checkpoint if kind == "ckpt" else restricted_load)(path)
        r["raised"] = None
    except BaseException as e:
        msg = str(e)
        r.update(raised=type(e).__name__, value_error=isinstance(e, ValueError), msg=msg[:3000], msg_len=len(msg),
                 tb=traceback.format_exc()[-1500:])
    r["seconds"] = time.perf_counter() - t
    print(json.dumps(r), flush=True)
"""


def _run_child(jobs: list[tuple[str, str, str]]) -> dict[str, dict]:
    """Run the jobs in child processes; a case that kills or hangs its child is recorded and
    the rest run in a fresh child."""
    results: dict[str, dict] = {}
    todo = list(jobs)
    while todo:
        proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        proc.stdin.write("".join(json.dumps(j) + "\n" for j in todo))
        proc.stdin.close()
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        current, deadline = None, time.monotonic() + 60  # imports first
        while True:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                proc.kill()
                break
            line = proc.stdout.readline()
            if not line:
                break
            msg = json.loads(line)
            if "start" in msg:
                current, deadline = msg["start"], time.monotonic() + CASE_TIMEOUT_S
            else:
                results[msg["case"]] = msg
                current = None
        proc.wait()
        stderr = proc.stderr.read()[-1500:]
        done = {j[0] for j in todo if j[0] in results}
        if current is not None:  # killed or crashed in the middle of a case
            rc = proc.returncode
            how = (f"no answer in {CASE_TIMEOUT_S:.0f} s (hang)" if rc == -signal.SIGKILL
                   else f"child died: {signal.Signals(-rc).name if rc < 0 else f'exit {rc}'}")
            results[current] = {"case": current, "died": how, "stderr": stderr}
            done.add(current)
        elif not done:
            raise RuntimeError(f"the loader child failed before any case (exit {proc.returncode}):\n{stderr}")
        todo = [j for j in todo if j[0] not in done]
    return results


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("hostile")
    state = P.dumps({})
    jobs = []
    for cid, (kind, payload) in {**CASES, "baseline": BASELINE}.items():
        if kind == "file":
            path = root / f"{cid}.pkl"
            path.write_bytes(payload)
        else:
            path = root / cid
            path.mkdir()
            (path / "class_and_ctor_args.pkl").write_bytes(payload)
            (path / "module_state.pkl").write_bytes(state)
        jobs.append((cid, kind, str(path)))
    return _run_child(jobs)


def _explain(r: dict) -> str:
    return json.dumps({k: (v[:600] if isinstance(v, str) else v) for k, v in r.items()}, indent=1)


@pytest.mark.parametrize("cid", list(CASES))
def test_hostile_pickle_is_refused_promptly_with_value_error(cid, outcomes):
    r = outcomes[cid]
    assert "died" not in r, f"{cid}: {r['died']}\n{r.get('stderr', '')}"
    assert r["raised"] is not None, f"{cid}: the hostile pickle loaded without error"
    assert r["value_error"], f"{cid}: raised {r['raised']}, not a ValueError:\n{_explain(r)}"
    name = f"{cid}.pkl" if CASES[cid][0] == "file" else "class_and_ctor_args.pkl"
    assert name in r["msg"], f"{cid}: the message does not name the file:\n{_explain(r)}"
    for bad in ("MemoryError", "RecursionError", "OverflowError"):
        assert bad not in r["msg"], f"{cid}: {bad} reached the loader (the limit came too late):\n{_explain(r)}"
    assert r["msg_len"] < 2000, f"{cid}: a message of {r['msg_len']} characters (repeats the payload)"
    assert r["seconds"] < PROMPT_S, f"{cid}: took {r['seconds']:.1f} s"


def test_crafted_checkpoint_baseline_parses(outcomes):
    """The assembler's checkpoint without a hostile part gets past the pickles (only the empty
    weights file is refused): the refusals above come from the hostile parts."""
    r = outcomes["baseline"]
    assert r.get("value_error") and "module_state.pkl" in r["msg"] and "missing" in r["msg"], _explain(r)


def test_payloads_are_small():
    """The attacks are cheap: the hang/blow-up ones are a few hundred bytes to a few KB."""
    for cid in ("laughs-dict-key", "laughs-persistent-id", "laughs-ctor-args-repr", "laughs-box-low-asarray"):
        assert len(CASES[cid][1]) < 3000, (cid, len(CASES[cid][1]))
    assert len(CASES["laughs-dict-key"][1]) < 700


def test_limits_do_not_refuse_large_plain_state(tmp_path):
    """A legitimate state file of tens of MB (budget: 8 MiB + 16 x file size) still loads."""
    import numpy as np

    from rlmodule_fast.rllib._pickle import restricted_load

    state = {f"layer{k}.weight": np.full((1024, 1024), k, np.float32) for k in range(6)}
    for protocol in (2, 5):
        f = tmp_path / f"module_state{protocol}.pkl"
        f.write_bytes(P.dumps(state, protocol=protocol))
        back = restricted_load(f)
        assert sorted(back) == sorted(state) and all(np.array_equal(back[k], v) for k, v in state.items())


# numpy accepts each of these states for a float64 dtype (its kind stays 'f', its flags may stay 0)
FORGED_DTYPE_STATES = {
    "subarray": lambda f8: (3, "<", (f8, (2**31,)), None, None, -1, -1, 0),
    "fields": lambda f8: (3, "<", None, ("a",), {"a": (f8, 0)}, 8, 1, 0),
    "object-flags": lambda f8: (3, "<", None, None, None, -1, -1, 63),
    "metadata": lambda f8: (4, "<", None, None, None, -1, -1, 0, {"m": 1}),
}


@pytest.mark.parametrize("name", list(FORGED_DTYPE_STATES))
def test_forged_dtype_state_is_refused_by_value(name):
    """The loader's dtype check looks at the dtype's value (fields, subdtype, flags, metadata,
    itemsize), not at its kind alone. In-process: no array is ever made with these dtypes."""
    import numpy as np

    from rlmodule_fast.rllib._pickle import _check_plain

    forged = np.dtype("f8", False, True)  # a private copy, as the loader makes
    forged.__setstate__(FORGED_DTYPE_STATES[name](np.dtype("f8")))  # what a pickle's BUILD does
    with pytest.raises(P.UnpicklingError, match="dtype"):
        _check_plain(forged, "numpy dtype")


def test_plain_dtypes_pass_and_others_do_not():
    import numpy as np

    from rlmodule_fast.rllib._pickle import _check_plain

    for spec in ("?", "i1", "u2", "i4", "u8", "f2", "f4", "f8", "c8", "c16", ">f4", "<i8"):
        _check_plain(np.dtype(spec), spec)
    for spec in ("g", "G", "O", "V8", "S3", "U2", "M8[s]", "m8", "f8,f8", "(2,)f4"):
        with pytest.raises(P.UnpicklingError):
            _check_plain(np.dtype(spec), spec)
