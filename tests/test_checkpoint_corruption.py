"""Corrupt checkpoints (rlmodule_fast/core/checkpoint.py format) give clear errors that name the
file -- never a crash, never a silently wrong module.

A checkpoint directory holds ``module_state.safetensors`` (8-byte little-endian header length,
JSON header, raw tensor bytes), ``class_and_ctor_args.json`` and ``metadata.json``. Each test
corrupts one file of a good checkpoint (truncation at many lengths, bit flips at seeded random
positions, oversized headers and files, wrong dtypes / shapes / keys, malformed JSON values) and
loads it with ``RLModule.from_checkpoint`` and ``module.restore_from_path``. The outcome must be

- a ``ValueError`` / ``FileNotFoundError`` whose message contains the corrupted file's path, or
- a module whose state equals the original's (the corruption did not change anything loaded,
  e.g. a float64 copy of the same float32 values).

Flipped bits inside the tensor bytes are caught by the SHA-256 of the state file that
``metadata.json`` records (safetensors itself has no checksum).
"""
from __future__ import annotations

import json
import pathlib
import shutil
import struct

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.core import checkpoint as ckpt
from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

STATE, META, CTOR = ckpt.STATE_FILE_NAME, ckpt.METADATA_FILE_NAME, ckpt.CLASS_AND_CTOR_ARGS_FILE_NAME


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    torch.manual_seed(0)
    mod = rf.RLModuleSpec(module_class=PPOTorchRLModule, observation_space=gym.spaces.Box(-1, 1, (4,)),
                          action_space=gym.spaces.Discrete(3), model_config_dict={"fcnet_hiddens": [8]},
                          catalog_class=PPOCatalog).build()
    path = pathlib.Path(mod.save_to_path(tmp_path_factory.mktemp("ckpt") / "good"))
    return mod, path


def _copy(good, tmp_path) -> pathlib.Path:
    d = tmp_path / "ckpt"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(good[1], d)
    return d


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _load_both(good, d: pathlib.Path, file: pathlib.Path, allow_same=True, ctor_only=False):
    """from_checkpoint and restore_from_path on d: each raises naming ``file`` or loads the original."""
    mod = good[0]
    outcomes = []
    for how in ("from_checkpoint", "restore_from_path"):
        target = None
        try:
            if how == "from_checkpoint":
                target = rf.RLModule.from_checkpoint(d)
            else:
                target = rf.RLModuleSpec(module_class=PPOTorchRLModule, observation_space=mod.observation_space,
                                         action_space=mod.action_space, model_config_dict={"fcnet_hiddens": [8]},
                                         catalog_class=PPOCatalog).build()
                if file.name == CTOR or ctor_only:
                    continue  # restore_from_path reads only the state file and the metadata
                target.restore_from_path(d)
        except (ValueError, FileNotFoundError) as e:
            assert str(file) in str(e) or file.name in str(e), f"{how}: error does not name {file}: {e!r}"
            outcomes.append("error")
            continue
        except Exception as e:  # noqa: BLE001 -- any other type is not a "clear error"
            pytest.fail(f"{how}: {type(e).__name__} (expected ValueError/FileNotFoundError naming {file.name}): {e}")
        assert allow_same and _same(mod, target), f"{how}: loaded a module that differs from the saved one"
        outcomes.append("same")
    return outcomes


def _header(raw: bytes):
    n = struct.unpack("<Q", raw[:8])[0]
    return n, json.loads(raw[8:8 + n])


# ------------------------------------------------------------------------------- state file

def test_good_checkpoint_loads(good, tmp_path):
    d = _copy(good, tmp_path)
    assert _load_both(good, d, d / STATE) == ["same", "same"]


@pytest.mark.parametrize("where", ["0", "1", "7", "8", "9", "mid_header", "end_header", "mid_data", "minus1"])
def test_truncated_state_file(good, tmp_path, where):
    d = _copy(good, tmp_path)
    f = d / STATE
    raw = f.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    cut = {"0": 0, "1": 1, "7": 7, "8": 8, "9": 9, "mid_header": 8 + n // 2, "end_header": 8 + n,
           "mid_data": (8 + n + len(raw)) // 2, "minus1": len(raw) - 1}[where]
    f.write_bytes(raw[:cut])
    assert _load_both(good, d, f, allow_same=False) == ["error", "error"]


def test_bit_flips_in_header(good, tmp_path):
    """Seeded random single-bit flips in the length field and the JSON header."""
    raw = (good[1] / STATE).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    rng = np.random.default_rng(0)
    positions = list(range(8)) + sorted(rng.choice(np.arange(8, 8 + n), size=48, replace=False).tolist())
    results = {}
    for pos in positions:
        d = _copy(good, tmp_path)
        b = bytearray(raw)
        b[pos] ^= 1 << int(rng.integers(0, 8))
        (d / STATE).write_bytes(bytes(b))
        results[pos] = _load_both(good, d, d / STATE)
    assert results  # every flip: an error naming the file, or (e.g. in the padding) the same module


def test_bit_flip_in_tensor_data_detected(good, tmp_path):
    raw = (good[1] / STATE).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    d = _copy(good, tmp_path)
    b = bytearray(raw)
    b[8 + n + (len(raw) - 8 - n) // 2] ^= 0x10
    (d / STATE).write_bytes(bytes(b))
    assert _load_both(good, d, d / STATE) == ["error", "error"]


@pytest.mark.parametrize("how", ["trailing_bytes", "header_len_huge", "header_len_past_eof", "tensor_past_eof",
                                 "huge_shape", "overlapping_offsets"])
def test_oversized_or_inconsistent_state_file(good, tmp_path, how):
    d = _copy(good, tmp_path)
    f = d / STATE
    raw = f.read_bytes()
    n, hdr = _header(raw)
    body = raw[8 + n:]
    key = next(k for k in hdr if k != "__metadata__")
    if how == "trailing_bytes":
        out = raw + b"\0" * 4096
    elif how == "header_len_huge":
        out = struct.pack("<Q", 2**63 - 1) + raw[8:]
    elif how == "header_len_past_eof":
        out = struct.pack("<Q", len(raw)) + raw[8:]
    else:
        if how == "tensor_past_eof":
            s, e = hdr[key]["data_offsets"]
            hdr[key]["data_offsets"] = [s, e + 10**9]
        elif how == "huge_shape":
            hdr[key]["shape"] = [2**40, 2**20]
        else:
            other = next(k for k in hdr if k not in ("__metadata__", key))
            hdr[key]["data_offsets"] = hdr[other]["data_offsets"]
        h = json.dumps(hdr).encode()
        h += b" " * (-len(h) % 8)
        out = struct.pack("<Q", len(h)) + h + body
    f.write_bytes(out)
    assert _load_both(good, d, f, allow_same=False) == ["error", "error"]


def _rewrite(f: pathlib.Path, fn):
    """Rewrite the state file as a consistent producer would: new tensors and the matching
    checksum in metadata.json (so the checks under test are the dtype/shape/value ones)."""
    import hashlib
    import json

    from safetensors.torch import load_file, save_file

    tensors = load_file(str(f))
    save_file(fn(tensors), str(f))
    meta_file = f.parent / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["state_sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
    meta_file.write_text(json.dumps(meta))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_wrong_dtype_state(good, tmp_path, dtype):
    d = _copy(good, tmp_path)
    _rewrite(d / STATE, lambda ts: {k: (v * 4).to(dtype) for k, v in ts.items()})
    assert _load_both(good, d, d / STATE, allow_same=False) == ["error", "error"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_other_float_dtype_state_loads_faithfully(good, tmp_path, dtype):
    """A float64/float16 state is converted on load: exactly the stored values, never garbage."""
    d = _copy(good, tmp_path)
    _rewrite(d / STATE, lambda ts: {k: v.to(dtype) for k, v in ts.items()})
    m = rf.RLModule.from_checkpoint(d)
    for k, v in good[0].state_dict().items():
        assert m.state_dict()[k].dtype == v.dtype
        torch.testing.assert_close(m.state_dict()[k], v.to(dtype).to(v.dtype), rtol=0, atol=0)


@pytest.mark.parametrize("how", ["shape", "missing_key", "extra_key", "renamed_key", "scalar", "empty_file_dict"])
def test_mismatched_state(good, tmp_path, how):
    d = _copy(good, tmp_path)

    def fn(ts):
        k = sorted(ts)[0]
        if how == "shape":
            ts[k] = torch.zeros(*(s + 1 for s in ts[k].shape))
        elif how == "missing_key":
            del ts[k]
        elif how == "extra_key":
            ts["encoder.encoder.net.mlp.9.weight"] = torch.zeros(2, 2)
        elif how == "renamed_key":
            ts[k + "_x"] = ts.pop(k)
        elif how == "scalar":
            ts[k] = torch.tensor(1.0)
        else:
            ts = {}
        return ts

    _rewrite(d / STATE, fn)
    assert _load_both(good, d, d / STATE, allow_same=False) == ["error", "error"]


def test_nonfinite_weights_round_trip_faithfully(good, tmp_path):
    """A state holding NaN/inf loads as exactly that (what was saved), and stepping it is then a
    ValueError (NaN logits are an error), never a crash."""
    d = _copy(good, tmp_path)
    _rewrite(d / STATE, lambda ts: {k: (v.fill_(float("nan")) if "pi" in k and k.endswith("bias") else v)
                                    for k, v in ts.items()})
    m = rf.RLModule.from_checkpoint(d)
    with pytest.raises(ValueError, match="NaN"):
        m.forward_exploration({"obs": torch.zeros(2, 4)})


@pytest.mark.parametrize("what", [STATE, META, CTOR])
def test_missing_or_directory_file(good, tmp_path, what):
    d = _copy(good, tmp_path)
    (d / what).unlink()
    assert _load_both(good, d, d / what, allow_same=False) == ["error"] * (1 if what == CTOR else 2)
    (d / what).mkdir()
    assert _load_both(good, d, d / what, allow_same=False) == ["error"] * (1 if what == CTOR else 2)


# ------------------------------------------------------------------------------- JSON files

def _json_mut(f: pathlib.Path, fn):
    data = json.loads(f.read_text())
    out = fn(data)
    f.write_text(out if isinstance(out, str) else json.dumps(data if out is None else out))


META_CASES = {
    "truncated": lambda d: json.dumps(d)[:15],
    "not_object": lambda d: [1, 2],
    "version": lambda d: d.__setitem__("checkpoint_version", "999"),
    "version_type": lambda d: d.__setitem__("checkpoint_version", 1),
    "binary": lambda d: "\udcff\x00\x01",
    "kind": lambda d: d.__setitem__("kind", "multi"),
}


@pytest.mark.parametrize("case", sorted(META_CASES))
def test_corrupt_metadata(good, tmp_path, case):
    d = _copy(good, tmp_path)
    f = d / META
    if case == "binary":
        f.write_bytes(b"\xff\xfe\x00garbage")
    else:
        _json_mut(f, META_CASES[case])
    outcomes = _load_both(good, d, f, allow_same=case == "kind")
    assert "error" in outcomes


CTOR_CASES = {
    "truncated": lambda d: json.dumps(d)[:40],
    "not_object": lambda d: "[]",
    "class_os_system": lambda d: d.__setitem__("class", "os:system"),
    "class_missing": lambda d: d.pop("class"),
    "class_not_module": lambda d: d.__setitem__("class", "torch.nn:Linear"),
    "class_unknown": lambda d: d.__setitem__("class", "no.such.module:Thing"),
    "ctor_kwargs_str": lambda d: d.__setitem__("ctor_kwargs", "x"),
    "config_int": lambda d: d["ctor_kwargs"].__setitem__("config", 5),
    "config_missing": lambda d: d["ctor_kwargs"].pop("config"),
    "obs_space_bad_type": lambda d: d["ctor_kwargs"]["config"].__setitem__("observation_space", {"type": "Nope"}),
    "obs_space_bad_shape": lambda d: d["ctor_kwargs"]["config"]["observation_space"].__setitem__("shape", "x"),
    "obs_space_shape_mismatch": lambda d: d["ctor_kwargs"]["config"]["observation_space"].update(
        shape=[5], low=[-1.0] * 5, high=[1.0] * 5),
    "action_space_n_negative": lambda d: d["ctor_kwargs"]["config"]["action_space"].__setitem__("n", -3),
    "model_config_unknown_key": lambda d: d["ctor_kwargs"]["config"]["model_config_dict"].__setitem__("bogus", 1),
    "model_config_bad_value": lambda d: d["ctor_kwargs"]["config"]["model_config_dict"].__setitem__(
        "fcnet_hiddens", "big"),
    "model_config_list": lambda d: d["ctor_kwargs"]["config"].__setitem__("model_config_dict", [1]),
    "catalog_os_system": lambda d: d["ctor_kwargs"]["config"].__setitem__("catalog_class", "os:system"),
}


@pytest.mark.parametrize("case", sorted(CTOR_CASES))
def test_corrupt_class_and_ctor_args(good, tmp_path, case):
    d = _copy(good, tmp_path)
    f = d / CTOR
    _json_mut(f, CTOR_CASES[case])
    # a consistent but different observation space builds a module that the state file then does
    # not fit: the error names the state file (the two files disagree; either is a fair culprit)
    named = d / STATE if case == "obs_space_shape_mismatch" else f
    outcomes = _load_both(good, d, named, allow_same=False, ctor_only=True)
    assert outcomes == ["error"]
