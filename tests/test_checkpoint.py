"""Checkpoints: round trips, metadata, and loading that never executes code from the files."""
from __future__ import annotations

import hashlib
import json
import pathlib
import pickle
import re

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast import Columns, MultiRLModule, RLModule
from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

# 1-D: a 2-D Box is RLlib's ValueError (issue 14); image checkpoints: tests/test_cnn_model.py
OBS = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


def build(obs=OBS, act=ACT, inference_only=False, seed=0, **mc):
    mc.setdefault("fcnet_hiddens", [5, 4])
    torch.manual_seed(seed)
    m = PPOTorchRLModule(observation_space=obs, action_space=act, model_config=mc, catalog_class=PPOCatalog,
                         inference_only=inference_only)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def obs_batch(space, *lead, seed=0):
    g = torch.Generator().manual_seed(seed)
    if isinstance(space, gym.spaces.Discrete):
        return torch.randint(0, int(space.n), lead, generator=g)
    return torch.rand(*lead, *space.shape, generator=g)


def assert_same_weights(a, b):
    sa, sb = a.get_state(), b.get_state()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


CASES = {
    "ff-box": dict(),
    "ff-separate-head": dict(vf_share_layers=False, head_fcnet_hiddens=[3], fcnet_activation="relu"),
    "lstm-separate": dict(use_lstm=True, lstm_cell_size=4, vf_share_layers=False),
    "gru-discrete": dict(use_gru=True, lstm_cell_size=3, obs=gym.spaces.Discrete(4), act=gym.spaces.MultiDiscrete([2, 3])),
    "free-log-std": dict(free_log_std=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_single(case, tmp_path):
    kw = dict(CASES[case])
    m = build(**kw)
    path = m.save_to_path(tmp_path / "ck")
    assert pathlib.Path(path) == tmp_path / "ck"
    files = {p.name for p in (tmp_path / "ck").iterdir()}
    assert {RLModule.STATE_FILE_NAME, RLModule.METADATA_FILE_NAME, RLModule.CLASS_AND_CTOR_ARGS_FILE_NAME} <= files
    for loader in (RLModule.from_checkpoint, PPOTorchRLModule.from_checkpoint):
        r = loader(path)
        assert type(r) is PPOTorchRLModule
        assert r.observation_space == m.observation_space and r.action_space == m.action_space
        assert r.model_config == m.model_config
        assert r.inference_only == m.inference_only
        assert_same_weights(r, m)
        B = 3
        if m.is_stateful():
            init = m.get_initial_state()

            def batched(s):
                return {k: batched(v) if isinstance(v, dict) else v.expand(B, *v.shape).clone() + 0.1 for k, v in s.items()}
            batch = {Columns.OBS: obs_batch(m.observation_space, B, 2), Columns.STATE_IN: batched(init)}
        else:
            batch = {Columns.OBS: obs_batch(m.observation_space, B)}
        o1, o2 = m.forward_train(batch), r.forward_train(batch)
        for k in (Columns.ACTION_DIST_INPUTS, Columns.VF_PREDS):
            assert torch.equal(o1[k], o2[k]), k


def test_restore_from_path_into_existing_module(tmp_path):
    m = build()
    m.save_to_path(tmp_path)
    other = build(seed=1)
    other.restore_from_path(tmp_path)
    assert_same_weights(other, m)


def test_inference_only_round_trip(tmp_path):
    m = build(inference_only=True, vf_share_layers=False)
    m.save_to_path(tmp_path)
    r = RLModule.from_checkpoint(tmp_path)
    assert r.inference_only
    assert_same_weights(r, m)


def test_save_to_path_none_makes_temp_dir():
    m = build()
    path = m.save_to_path()
    try:
        assert (pathlib.Path(path) / RLModule.STATE_FILE_NAME).is_file()
        assert_same_weights(RLModule.from_checkpoint(path), m)
    finally:
        import shutil
        shutil.rmtree(path, ignore_errors=True)


def test_metadata_json_content(tmp_path):
    m = build()
    m.save_to_path(tmp_path)
    meta = json.loads((tmp_path / RLModule.METADATA_FILE_NAME).read_text())
    assert "PPOTorchRLModule" in meta["class"]
    assert meta["rlmodule_fast_version"] == rf.__version__
    assert meta["torch_version"] == torch.__version__
    assert "checkpoint_version" in meta
    state_sha = meta.pop("state_sha256")
    assert state_sha == hashlib.sha256((tmp_path / RLModule.STATE_FILE_NAME).read_bytes()).hexdigest()
    assert meta == m.get_metadata()
    ctor = json.loads((tmp_path / RLModule.CLASS_AND_CTOR_ARGS_FILE_NAME).read_text())
    assert "PPOTorchRLModule" in ctor["class"]


def test_state_file_is_not_a_pickle(tmp_path):
    build().save_to_path(tmp_path)
    head = (tmp_path / RLModule.STATE_FILE_NAME).read_bytes()[:2]
    assert head != b"\x80\x04" and head[:1] != b"\x80" and head[:2] != b"PK"  # neither pickle nor torch zip


def test_state_file_holds_plain_tensors_and_ctor_file_plain_json(tmp_path):
    from safetensors.torch import load_file

    m = build()
    m.save_to_path(tmp_path)
    tensors = load_file(str(tmp_path / RLModule.STATE_FILE_NAME))
    assert set(tensors) == set(m.get_state())
    json.loads((tmp_path / RLModule.CLASS_AND_CTOR_ARGS_FILE_NAME).read_text())


# ---------------------------------------------------------------------------------------------
# Malicious / broken checkpoints: clear errors naming the file, no code executed
# ---------------------------------------------------------------------------------------------
def _write_marker(path):
    pathlib.Path(path).write_text("pwned")
    return {}


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_write_marker, (str(self.marker),))


@pytest.mark.parametrize("fmt", ["pickle", "torch-save"])
@pytest.mark.parametrize("loader", ["from_checkpoint", "restore_from_path"])
def test_malicious_pickle_state_file_is_refused(tmp_path, fmt, loader):
    m = build()
    ck = tmp_path / "ck"
    m.save_to_path(ck)
    marker = tmp_path / "MARKER"
    state_file = ck / RLModule.STATE_FILE_NAME
    if fmt == "pickle":
        state_file.write_bytes(pickle.dumps(_Evil(marker)))
    else:
        torch.save({"x": _Evil(marker)}, str(state_file))
    before = {k: v.clone() for k, v in m.get_state().items()}
    with pytest.raises((ValueError, RuntimeError, OSError)) as e:
        if loader == "from_checkpoint":
            RLModule.from_checkpoint(ck)
        else:
            m.restore_from_path(ck)
    assert RLModule.STATE_FILE_NAME in str(e.value)
    assert not marker.exists(), "loading the checkpoint executed code from it"
    for k, v in m.get_state().items():
        assert torch.equal(v, before[k])


def test_truncated_state_file(tmp_path):
    build().save_to_path(tmp_path)
    f = tmp_path / RLModule.STATE_FILE_NAME
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(str(f))):
        RLModule.from_checkpoint(tmp_path)


def test_empty_state_file(tmp_path):
    build().save_to_path(tmp_path)
    f = tmp_path / RLModule.STATE_FILE_NAME
    f.write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape(str(f))):
        RLModule.from_checkpoint(tmp_path)


@pytest.mark.parametrize("name", [RLModule.STATE_FILE_NAME, RLModule.METADATA_FILE_NAME,
                                  RLModule.CLASS_AND_CTOR_ARGS_FILE_NAME],
                         ids=["state", "metadata", "ctor-args"])
def test_missing_file_names_it(tmp_path, name):
    build().save_to_path(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(name)):
        RLModule.from_checkpoint(tmp_path)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope"))):
        RLModule.from_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        build().restore_from_path(tmp_path / "nope")


@pytest.mark.parametrize("name", [RLModule.METADATA_FILE_NAME, RLModule.CLASS_AND_CTOR_ARGS_FILE_NAME],
                         ids=["metadata", "ctor-args"])
@pytest.mark.parametrize("content", ['{"class": ', "\xff\xfe garbage", "[1, 2]", ""],
                         ids=["truncated-json", "binary", "not-an-object", "empty"])
def test_corrupt_json_names_file(tmp_path, name, content):
    build().save_to_path(tmp_path)
    (tmp_path / name).write_text(content, encoding="latin-1")
    with pytest.raises(ValueError, match=re.escape(name)):
        RLModule.from_checkpoint(tmp_path)


def test_unsupported_checkpoint_version(tmp_path):
    build().save_to_path(tmp_path)
    f = tmp_path / RLModule.METADATA_FILE_NAME
    meta = json.loads(f.read_text())
    meta["checkpoint_version"] = "999"
    f.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=re.escape(RLModule.METADATA_FILE_NAME)):
        RLModule.from_checkpoint(tmp_path)


@pytest.mark.parametrize("class_path", ["os:system", "builtins:eval", "os.system", "subprocess:Popen",
                                        "builtins:object", "rlmodule_fast:MultiRLModule",
                                        "no_such_module_abc:Thing", "rlmodule_fast.ppo:NoSuchClass", "", None, 42],
                         ids=lambda c: f"class-{c}")
def test_bad_class_path_is_refused(tmp_path, class_path):
    build().save_to_path(tmp_path)
    f = tmp_path / RLModule.CLASS_AND_CTOR_ARGS_FILE_NAME
    data = json.loads(f.read_text())
    data["class"] = class_path
    f.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(RLModule.CLASS_AND_CTOR_ARGS_FILE_NAME)):
        RLModule.from_checkpoint(tmp_path)


def test_catalog_class_path_must_be_a_catalog(tmp_path):
    build().save_to_path(tmp_path)
    f = tmp_path / RLModule.CLASS_AND_CTOR_ARGS_FILE_NAME
    data = json.loads(f.read_text())
    data["ctor_kwargs"]["config"]["catalog_class"] = "os:system"
    f.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="os:system"):
        RLModule.from_checkpoint(tmp_path)


def test_malformed_ctor_kwargs_names_file(tmp_path):
    build().save_to_path(tmp_path)
    f = tmp_path / RLModule.CLASS_AND_CTOR_ARGS_FILE_NAME
    data = json.loads(f.read_text())
    data["ctor_kwargs"] = {"nothing": 1}
    f.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(RLModule.CLASS_AND_CTOR_ARGS_FILE_NAME)):
        RLModule.from_checkpoint(tmp_path)


def test_malformed_space_in_ctor_file_names_file(tmp_path):
    build().save_to_path(tmp_path)
    f = tmp_path / RLModule.CLASS_AND_CTOR_ARGS_FILE_NAME
    data = json.loads(f.read_text())
    data["ctor_kwargs"]["config"]["observation_space"] = {"type": "Box", "low": "x"}
    f.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(RLModule.CLASS_AND_CTOR_ARGS_FILE_NAME)):
        RLModule.from_checkpoint(tmp_path)


def test_from_checkpoint_on_wrong_subclass_is_refused(tmp_path):
    class Other(PPOTorchRLModule):
        pass

    build().save_to_path(tmp_path)
    with pytest.raises(ValueError, match=re.escape(RLModule.CLASS_AND_CTOR_ARGS_FILE_NAME)):
        Other.from_checkpoint(tmp_path)


@pytest.mark.parametrize("other", ["wider-hidden", "box-vs-discrete-actions", "lstm-vs-mlp"])
def test_state_of_differently_shaped_module_names_file(tmp_path, other):
    src = {"wider-hidden": build(fcnet_hiddens=[7, 4]),
           "box-vs-discrete-actions": build(act=gym.spaces.Discrete(2)),
           "lstm-vs-mlp": build(use_lstm=True, lstm_cell_size=3)}[other]
    src.save_to_path(tmp_path)
    dst = build()
    before = {k: v.clone() for k, v in dst.get_state().items()}
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / RLModule.STATE_FILE_NAME))):
        dst.restore_from_path(tmp_path)
    for k, v in dst.get_state().items():
        assert torch.equal(v, before[k])


def test_state_file_swapped_between_checkpoints_names_file(tmp_path):
    build(fcnet_hiddens=[7]).save_to_path(tmp_path / "a")
    build().save_to_path(tmp_path / "b")
    (tmp_path / "b" / RLModule.STATE_FILE_NAME).write_bytes((tmp_path / "a" / RLModule.STATE_FILE_NAME).read_bytes())
    with pytest.raises(ValueError, match=re.escape(RLModule.STATE_FILE_NAME)):
        RLModule.from_checkpoint(tmp_path / "b")


# ---------------------------------------------------------------------------------------------
# Multi-module checkpoints
# ---------------------------------------------------------------------------------------------
def _multi():
    return MultiRLModule(modules={
        "p0": build(),
        "p1": build(obs=gym.spaces.Discrete(3), act=gym.spaces.Discrete(2), use_gru=True, lstm_cell_size=3, seed=1),
    })


def test_round_trip_multi(tmp_path):
    mm = _multi()
    mm.save_to_path(tmp_path)
    assert (tmp_path / RLModule.METADATA_FILE_NAME).is_file()
    assert (tmp_path / "p0" / RLModule.STATE_FILE_NAME).is_file()
    assert (tmp_path / "p1" / RLModule.STATE_FILE_NAME).is_file()
    r = MultiRLModule.from_checkpoint(tmp_path)
    assert isinstance(r, MultiRLModule)
    assert set(r.keys()) == {"p0", "p1"}
    for mid in ("p0", "p1"):
        assert type(r[mid]) is PPOTorchRLModule
        assert r[mid].observation_space == mm[mid].observation_space
        assert r[mid].model_config == mm[mid].model_config
        assert_same_weights(r[mid], mm[mid])
    x = obs_batch(OBS, 2)
    a = mm.forward_inference({"p0": {Columns.OBS: x}})["p0"][Columns.ACTION_DIST_INPUTS]
    b = r.forward_inference({"p0": {Columns.OBS: x}})["p0"][Columns.ACTION_DIST_INPUTS]
    assert torch.equal(a, b)


def test_multi_metadata_and_restore(tmp_path):
    mm = _multi()
    mm.save_to_path(tmp_path)
    meta = json.loads((tmp_path / RLModule.METADATA_FILE_NAME).read_text())
    assert "MultiRLModule" in meta["class"]
    fresh = MultiRLModule(modules={"p0": build(seed=5), "p1": build(obs=gym.spaces.Discrete(3), act=gym.spaces.Discrete(2),
                                                                    use_gru=True, lstm_cell_size=3, seed=6)})
    fresh.restore_from_path(tmp_path)
    for mid in ("p0", "p1"):
        assert_same_weights(fresh[mid], mm[mid])


def test_multi_missing_submodule_dir(tmp_path):
    import shutil

    _multi().save_to_path(tmp_path)
    shutil.rmtree(tmp_path / "p1")
    with pytest.raises(FileNotFoundError, match="p1"):
        MultiRLModule.from_checkpoint(tmp_path)


def test_multi_bad_class_path(tmp_path):
    _multi().save_to_path(tmp_path)
    f = tmp_path / RLModule.CLASS_AND_CTOR_ARGS_FILE_NAME
    data = json.loads(f.read_text())
    data["class"] = "rlmodule_fast.ppo:PPOTorchRLModule"
    f.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(RLModule.CLASS_AND_CTOR_ARGS_FILE_NAME)):
        MultiRLModule.from_checkpoint(tmp_path)


def test_multi_malicious_submodule_state(tmp_path):
    _multi().save_to_path(tmp_path)
    marker = tmp_path / "MARKER"
    (tmp_path / "p0" / RLModule.STATE_FILE_NAME).write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "p0" / RLModule.STATE_FILE_NAME))):
        MultiRLModule.from_checkpoint(tmp_path)
    assert not marker.exists()


def test_multi_module_ids_malformed(tmp_path):
    _multi().save_to_path(tmp_path)
    f = tmp_path / RLModule.CLASS_AND_CTOR_ARGS_FILE_NAME
    data = json.loads(f.read_text())
    data["module_ids"] = "p0"
    f.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="module_ids"):
        MultiRLModule.from_checkpoint(tmp_path)


def test_multi_module_id_path_traversal_refused(tmp_path):
    """A module id from the checkpoint must not point outside the checkpoint directory."""
    outside = tmp_path / "outside"
    build().save_to_path(outside)
    ck = tmp_path / "ck"
    _multi().save_to_path(ck)
    f = ck / RLModule.CLASS_AND_CTOR_ARGS_FILE_NAME
    data = json.loads(f.read_text())
    data["module_ids"] = ["../outside"]
    f.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="module_ids|\\.\\./outside"):
        MultiRLModule.from_checkpoint(ck)


def test_bad_model_config_in_ctor_file_names_file(tmp_path):
    build().save_to_path(tmp_path)
    f = tmp_path / RLModule.CLASS_AND_CTOR_ARGS_FILE_NAME
    data = json.loads(f.read_text())
    data["ctor_kwargs"]["config"]["model_config_dict"]["fcnet_activation"] = "sigmoid"
    f.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(RLModule.CLASS_AND_CTOR_ARGS_FILE_NAME)):
        RLModule.from_checkpoint(tmp_path)


def test_unbounded_and_float64_spaces_round_trip(tmp_path):
    obs = gym.spaces.Box(-np.inf, np.inf, (3,), np.float64)
    act = gym.spaces.Box(np.array([-1.0, -np.inf], np.float32), np.array([1.0, np.inf], np.float32))
    m = build(obs=obs, act=act)
    m.save_to_path(tmp_path)
    json.loads((tmp_path / RLModule.CLASS_AND_CTOR_ARGS_FILE_NAME).read_text())  # strict JSON, no NaN/Infinity
    r = RLModule.from_checkpoint(tmp_path)
    assert r.observation_space == obs and r.action_space == act
    assert r.observation_space.dtype == np.float64
    x = torch.randn(2, 3, dtype=torch.float64)
    assert torch.equal(m.forward_inference({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS],
                       r.forward_inference({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS])
