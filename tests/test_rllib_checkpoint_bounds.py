"""``load_rllib_checkpoint`` stays bounded by the files it reads (no ray needed).

RLlib-layout checkpoints are written here without ray: gymnasium spaces pickled as they are,
RLlib's module / catalog / DefaultModelConfig classes as placeholders that pickle under RLlib's
names (as in tests/fuzz/fuzz_pickle_loader.py), the weights as ``to_rllib_state`` gives them.

- Sizes from ``class_and_ctor_args.pkl`` (a flipped ``Discrete.n``, hidden or LSTM size) that
  do not fit ``module_state.pkl``: refused with a ValueError naming the file, promptly, before
  the module is built for real. Run in a child process under ``RLIMIT_AS`` (its size after
  imports + 1 GiB), its peak RSS reset before each case: the growth must stay far below what
  the sizes ask for (never a RuntimeError / MemoryError / OverflowError from torch).
- Error messages describe file data by type and size: a ~10 KB file whose values repr to
  megabytes gives a message of at most a few hundred characters.
- Big-endian arrays in ``module_state.pkl`` load (converted to native byte order).
- ``read_rllib_metadata`` reads a bounded amount and turns over-deep JSON into a ValueError.
"""
from __future__ import annotations

import collections
import io
import json
import pathlib
import pickle
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast.rllib as rr
from rlmodule_fast.rllib.convert import _build_ours, read_rllib_metadata, rllib_model_config, to_rllib_state

CTOR, STATE = "class_and_ctor_args.pkl", "module_state.pkl"
MODULE_REF = "ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module.DefaultPPOTorchRLModule"
CATALOG_REF = "ray.rllib.algorithms.ppo.ppo_catalog.PPOCatalog"
CONFIG_REF = "ray.rllib.core.rl_module.default_model_config.DefaultModelConfig"

OBS = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
ACT = gym.spaces.Discrete(3)
SMALL = {"fcnet_hiddens": [8]}
MAX_MSG = 2000  # characters an error message may have (RLlib's own: well under 1000)


# ---- writing RLlib-layout checkpoints without ray --------------------------------------------------
class _Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pickles a class carrying ``_rllib_path`` under that name (without importing it)."""

    def save_global(self, obj, name=None):
        path = getattr(obj, "_rllib_path", None)
        if path is None:
            return super().save_global(obj, name)
        module, _, qual = path.rpartition(".")
        self.save(module)
        self.save(qual)
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)


def _ref(path: str) -> type:
    return type(path.rpartition(".")[2], (), {"_rllib_path": path})


MODULE_CLS, CATALOG_CLS, CONFIG_CLS = _ref(MODULE_REF), _ref(CATALOG_REF), _ref(CONFIG_REF)


def dumps(obj, protocol: int = 5) -> bytes:
    f = io.BytesIO()
    _Pickler(f, protocol=protocol).dump(obj)
    return f.getvalue()


def ours(obs=OBS, act=ACT, cfg=SMALL, inference_only=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _build_ours(obs, act, rllib_model_config(cfg), inference_only, "test")


def state_of(obs=OBS, act=ACT, cfg=SMALL, inference_only=False) -> dict:
    torch.manual_seed(0)
    return collections.OrderedDict(to_rllib_state(ours(obs, act, cfg, inference_only), inference_only=inference_only))


def ctor_dict(obs=OBS, act=ACT, cfg=SMALL, *, inference_only=False, args=(), cls=MODULE_CLS, catalog=CATALOG_CLS):
    return {"class": cls, "ctor_args_and_kwargs": (args, {
        "observation_space": obs, "action_space": act, "inference_only": inference_only, "learner_only": False,
        "model_config": cfg, "catalog_class": catalog})}


def write(d: pathlib.Path, ctor: dict, state) -> pathlib.Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / CTOR).write_bytes(dumps(ctor))
    (d / STATE).write_bytes(state if isinstance(state, bytes) else dumps(state))
    return d


def dataclass_cfg(cfg: dict):
    c = CONFIG_CLS.__new__(CONFIG_CLS)
    c.__dict__.update(cfg)
    return c


# ---- hostile sizes: a child process under RLIMIT_AS ------------------------------------------------
# id -> (action space, model config, the file the message must name); the weights are always
# those of the small module (obs 4, Discrete(3), fcnet_hiddens [8]).
HUGE = {
    # torch: "Storage size calculation overflowed" (a RuntimeError) when built for real
    "discrete-n-2**60": (gym.spaces.Discrete(2**60), SMALL, None),
    # 32 GB for the pi head, 3-100 GB for these
    "discrete-n-1e9": (gym.spaces.Discrete(10**9), SMALL, STATE),
    "multidiscrete-nvec-1e9": (gym.spaces.MultiDiscrete([10**9, 3]), SMALL, STATE),
    "hiddens-2**24-x2": (ACT, {"fcnet_hiddens": [2**24, 2**24]}, None),
    "hiddens-1e5-x2": (ACT, {"fcnet_hiddens": [10**5, 10**5]}, STATE),
    "head-hiddens-1e5-x3": (ACT, {"fcnet_hiddens": [8], "head_fcnet_hiddens": [10**5] * 3}, STATE),
    "lstm-cell-2**24": (ACT, {"fcnet_hiddens": [8], "use_lstm": True, "lstm_cell_size": 2**24}, None),
    "separate-vf-dataclass-1e5": (ACT, dataclass_cfg({"fcnet_hiddens": [10**5, 10**5], "vf_share_layers": False}),
                                  STATE),
    # fits the memory limit (256 MiB of weights): built for real, then refused, on HEAD
    "hiddens-8192-x2": (ACT, {"fcnet_hiddens": [8192, 8192]}, STATE),
}
RSS_GROWTH_LIMIT_MB = 64
PROMPT_S = 10.0

CHILD = r"""
import json, resource, sys, time, traceback
import gymnasium, numpy, torch  # noqa: F401 -- imported before the limit
from rlmodule_fast.rllib import load_rllib_checkpoint
vm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:")][0]
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))

def hwm_kb():
    return [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]

out = {}
for cid, path in json.loads(sys.argv[1]).items():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        base = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")][0]
    except OSError:  # no reset: growth beyond the peak so far
        base = hwm_kb()
    t = time.perf_counter()
    r = {}
    try:
        load_rllib_checkpoint(path)
        r["raised"] = None
    except BaseException as e:
        msg = str(e)
        r.update(raised=type(e).__name__, value_error=isinstance(e, ValueError), msg=msg[:3000], msg_len=len(msg),
                 tb=traceback.format_exc()[-1500:])
    r["seconds"] = time.perf_counter() - t
    r["rss_growth_mb"] = (hwm_kb() - base) / 1024
    out[cid] = r
print("RESULT " + json.dumps(out))
"""


def _explain(r: dict) -> str:
    return json.dumps({k: (v[:800] if isinstance(v, str) else v) for k, v in r.items()}, indent=1)


@pytest.fixture(scope="module")
def huge_outcomes(tmp_path_factory) -> dict:
    if not sys.platform.startswith("linux"):
        pytest.skip("uses RLIMIT_AS and /proc")
    root = tmp_path_factory.mktemp("huge")
    small = state_of()
    jobs = {}
    for cid, (act, cfg, _) in HUGE.items():
        jobs[cid] = str(write(root / cid, ctor_dict(act=act, cfg=cfg), small))
    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(jobs)], capture_output=True, text=True, timeout=300)
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"the loader child died (exit {p.returncode}):\n{p.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.parametrize("cid", list(HUGE))
def test_huge_sizes_refused_before_allocating(cid, huge_outcomes):
    r = huge_outcomes[cid]
    assert r["raised"] is not None, f"{cid}: loaded"
    assert r["value_error"], f"{cid}: raised {r['raised']}, not a ValueError:\n{_explain(r)}"
    must = HUGE[cid][2]
    named = [must] if must else [CTOR, STATE]
    assert any(f"{cid}/{n}" in r["msg"] for n in named), f"{cid}: the message does not name the file:\n{_explain(r)}"
    for bad in ("MemoryError", "can't allocate", "DefaultCPUAllocator"):
        assert bad not in r["msg"], f"{cid}: {bad} in the message (allocated before checking):\n{_explain(r)}"
    assert r["msg_len"] < MAX_MSG, f"{cid}: a message of {r['msg_len']} characters"
    assert r["seconds"] < PROMPT_S, f"{cid}: took {r['seconds']:.1f} s"
    assert r["rss_growth_mb"] < RSS_GROWTH_LIMIT_MB, f"{cid}: peak RSS grew by {r['rss_growth_mb']:.0f} MiB"


def test_crafted_checkpoints_load(tmp_path):
    """The layout written here loads (the refusals above come from the sizes): shared and separate
    encoders, LSTM, MultiDiscrete, a DefaultModelConfig record, an inference-only checkpoint."""
    cases = {
        "mlp": (ACT, SMALL, False),
        "separate-dataclass": (ACT, {"fcnet_hiddens": [6, 5], "vf_share_layers": False}, False),
        "lstm": (ACT, {"fcnet_hiddens": [4], "use_lstm": True, "lstm_cell_size": 3}, False),
        "multidiscrete-box-head": (gym.spaces.MultiDiscrete([3, 2]), {"fcnet_hiddens": [6], "head_fcnet_hiddens": [4]},
                                   False),
        "box-inference-only": (gym.spaces.Box(-1.0, 1.0, (2,), np.float32), {"fcnet_hiddens": [5],
                                                                            "vf_share_layers": False}, True),
    }
    for name, (act, cfg, inf) in cases.items():
        state = state_of(act=act, cfg=cfg)  # a learner's full state, also for the inference-only module
        c = dataclass_cfg(cfg) if "dataclass" in name else cfg
        m = rr.load_rllib_checkpoint(write(tmp_path / name, ctor_dict(act=act, cfg=c, inference_only=inf), state))
        got = m.get_state()
        assert bool(m.inference_only) == (inf and not cfg.get("use_lstm", False)), name
        for k, v in got.items():
            np.testing.assert_array_equal(v.numpy(), state[k], err_msg=f"{name}: {k}")
        if inf:
            assert set(got) < set(state), name


def test_state_fitting_another_config_is_refused_naming_the_file(tmp_path):
    """Same names, other shapes (the state of a wider module), and the reverse: one parameter
    short, one extra: refused with a ValueError naming module_state.pkl and the parameter."""
    d = write(tmp_path / "wider", ctor_dict(), state_of(cfg={"fcnet_hiddens": [9]}))
    with pytest.raises(ValueError, match=rf"{STATE}.*encoder.*shape"):
        rr.load_rllib_checkpoint(d)
    state = state_of()
    k = sorted(state)[0]
    short = {n: v for n, v in state.items() if n != k}
    with pytest.raises(ValueError, match=rf"{STATE}.*missing.*{k}"):
        rr.load_rllib_checkpoint(write(tmp_path / "short", ctor_dict(), short))
    extra = {**state, "not.a.parameter": np.zeros(2, np.float32)}
    with pytest.raises(ValueError, match=rf"{STATE}.*unexpected.*not\.a\.parameter"):
        rr.load_rllib_checkpoint(write(tmp_path / "extra", ctor_dict(), extra))
    ints = {n: v.astype(np.int32) if n == k else v for n, v in state.items()}
    with pytest.raises(ValueError, match=rf"{STATE}.*{k}.*dtype"):
        rr.load_rllib_checkpoint(write(tmp_path / "ints", ctor_dict(), ints))


# ---- bounded messages -----------------------------------------------------------------------------
BIG = "x" * 4000
# one list of 500 floats and 1000 memo references to it: a 6 KB pickle, a 12 MB repr (within the
# restricted loader's size budget: references are counted, not their repr)
INNER = [-1.2345678901234567e-300] * 500
FANOUT = [INNER] * 1000


def _message_cases() -> dict:
    """id -> (ctor dict, state): each file is 6-700 KB; the repr of what it holds is megabytes."""
    state = state_of()
    return {
        "ctor-args": (ctor_dict(args=(FANOUT,)), state),
        "module-class": (ctor_dict(cls=FANOUT), state),
        "catalog-class": (ctor_dict(catalog=FANOUT), state),
        "model-config-nonstr-key": (ctor_dict(cfg={(tuple(INNER),) * 1000: 1}), state),
        "model-config-unsupported-value": (ctor_dict(cfg={**SMALL, "fcnet_use_layernorm": FANOUT}), state),
        "model-config-bad-value": (ctor_dict(cfg={**SMALL, "vf_share_layers": FANOUT}), state),
        "model-config-bad-activation": (ctor_dict(cfg={**SMALL, "fcnet_activation": BIG * 50}), state),
        "state-not-a-dict": (ctor_dict(), FANOUT),
        "state-value-not-array": (ctor_dict(), {**state, BIG * 10: FANOUT}),
        "state-many-unexpected-keys": (ctor_dict(), {**state, **{f"{i:06d}" + "y" * 200: np.float32(0)
                                                                  for i in range(3000)}}),
        "state-many-missing-keys": (ctor_dict(cfg={"fcnet_hiddens": [1] * 60, "head_fcnet_hiddens": [1] * 60}),
                                    {"z" * 20000: np.zeros(1, np.float32)}),
        # values whose truth value numpy refuses (a ValueError of numpy's, naming no file)
        "ctor-args-array": (ctor_dict(args=np.arange(2)), state),
        "inference-only-array": (ctor_dict(inference_only=np.arange(2)), state),
        "model-config-unsupported-array": (ctor_dict(cfg={**SMALL, "fcnet_use_layernorm": np.arange(2)}), state),
    }


@pytest.mark.parametrize("cid", list(_message_cases()))
def test_error_messages_are_bounded(cid, tmp_path):
    ctor, state = _message_cases()[cid]
    d = write(tmp_path / cid, ctor, state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError) as err:
            rr.load_rllib_checkpoint(d)
    msg = str(err.value)
    assert CTOR in msg or STATE in msg, msg[:1000]
    assert len(msg) < MAX_MSG, f"{cid}: a message of {len(msg)} characters: {msg[:300]}..."


def test_ignored_model_config_keys_warning_is_bounded(tmp_path):
    cfg = {**SMALL, **{f"unknown_{i:05d}_" + "k" * 300: 0 for i in range(2000)}}
    d = write(tmp_path / "m", ctor_dict(cfg=cfg), state_of())
    with pytest.warns(UserWarning, match="ignoring model config keys") as rec:
        rr.load_rllib_checkpoint(d)
    msgs = [str(w.message) for w in rec if "ignoring model config keys" in str(w.message)]
    assert msgs and all(len(m) < MAX_MSG for m in msgs), [len(m) for m in msgs]
    assert "2000" in msgs[0], msgs[0]  # says how many


# ---- byte order -----------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", [2, 5])
def test_big_endian_weights_load(protocol, tmp_path):
    state = state_of(cfg={"fcnet_hiddens": [6], "vf_share_layers": False})
    swapped = collections.OrderedDict((k, v.astype(v.dtype.newbyteorder(">"))) for k, v in state.items())
    assert all(v.dtype.byteorder == ">" for v in swapped.values())
    d = tmp_path / "m"
    d.mkdir()
    (d / CTOR).write_bytes(dumps(ctor_dict(cfg={"fcnet_hiddens": [6], "vf_share_layers": False}), protocol))
    (d / STATE).write_bytes(dumps(swapped, protocol))
    m = rr.load_rllib_checkpoint(d)
    for k, v in m.get_state().items():
        np.testing.assert_array_equal(v.numpy(), state[k], err_msg=k)
    out = m.forward_inference({"obs": torch.zeros(2, 4)})
    assert torch.isfinite(out["action_dist_inputs"]).all()


# ---- metadata.json ----------------------------------------------------------------------------------
def test_read_rllib_metadata_is_bounded(tmp_path):
    (tmp_path / "metadata.json").write_text(json.dumps({"ray_version": "2.60.0"}))
    assert read_rllib_metadata(tmp_path) == {"ray_version": "2.60.0"}
    (tmp_path / "metadata.json").write_text("[" * 100_000)  # json's recursion limit: a RecursionError
    with pytest.raises(ValueError, match="metadata.json"):
        read_rllib_metadata(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"x": "y" * (2 << 20)}))
    with pytest.raises(ValueError, match="metadata.json.*larger than"):
        read_rllib_metadata(tmp_path)
