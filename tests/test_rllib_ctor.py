"""``convert.read_rllib_ctor``: the one reader of RLlib's ``class_and_ctor_args.pkl`` behind
``load_rllib_checkpoint``, ``load_rllib_appo_checkpoint``, ``load_rllib_dqn_checkpoint`` and
``load_rllib_sac_checkpoint``.

Each fault of the file gets the same ValueError from all four loaders (naming the file, what was
expected and what the file holds, by type and size); the module class picks the kind (and so the
catalog and the model-config conversion); the caller's ``inference_only`` is checked as an
argument, not blamed on the file. Checkpoints are written without ray (helpers of
test_rllib_checkpoint_bounds.py).
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import rlmodule_fast.rllib as rr
from rlmodule_fast.rllib.appo_convert import APPO_KIND
from rlmodule_fast.rllib.convert import CTOR_FILE, PPO_KIND, read_rllib_ctor
from rlmodule_fast.rllib.dqn_convert import DQN_KIND
from rlmodule_fast.rllib.sac_convert import SAC_KIND
from test_rllib_checkpoint_bounds import ACT, CATALOG_CLS, MODULE_CLS, OBS, SMALL, _ref, ctor_dict, dumps, write

DQN_CLS = _ref("ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module.DefaultDQNTorchRLModule")
DQN_CAT = _ref("ray.rllib.algorithms.dqn.dqn_catalog.DQNCatalog")
SAC_CLS = _ref("ray.rllib.algorithms.sac.torch.default_sac_torch_rl_module.DefaultSACTorchRLModule")
SAC_CAT = _ref("ray.rllib.algorithms.sac.sac_catalog.SACCatalog")
APPO_CLS = _ref("ray.rllib.algorithms.appo.torch.default_appo_torch_rl_module.DefaultAPPOTorchRLModule")
# kind -> (module class, catalog class, the loader for it)
KINDS = {
    "PPO": (MODULE_CLS, CATALOG_CLS, rr.load_rllib_checkpoint),
    "APPO": (APPO_CLS, CATALOG_CLS, rr.load_rllib_appo_checkpoint),  # APPO builds with PPO's catalog
    "DQN": (DQN_CLS, DQN_CAT, rr.load_rllib_dqn_checkpoint),
    "SAC": (SAC_CLS, SAC_CAT, rr.load_rllib_sac_checkpoint),
}


def _broken(kind: str, fault: str):
    cls, cat, _ = KINDS[kind]
    good = ctor_dict(cls=cls, catalog=cat)
    if fault == "not-a-dict":
        return [1, 2]
    if fault == "ctor-args-not-a-pair":
        return {"class": cls, "ctor_args_and_kwargs": 5}
    if fault == "positional-args":
        return ctor_dict(cls=cls, catalog=cat, args=(OBS,))
    if fault == "inference-only-not-bool":
        return ctor_dict(cls=cls, catalog=cat, inference_only=2)
    if fault == "observation-space-not-a-space":
        good["ctor_args_and_kwargs"][1]["observation_space"] = "box"
        return good
    raise AssertionError(fault)


# fault -> the message after "<file>: " (the same whichever loader reads it)
FAULTS = {
    "not-a-dict": "expected RLlib's {'class', 'ctor_args_and_kwargs'} dict, got a list of 2",
    "ctor-args-not-a-pair": "'ctor_args_and_kwargs' must be (args, kwargs), got 5",
    "positional-args": "expected keyword constructor arguments only, got args=a tuple of 1, kwargs=a dict of 6",
    "inference-only-not-bool": "inference_only must be a bool, got 2",
    "observation-space-not-a-space": "observation_space",
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_loader_gives_the_same_message_naming_the_file(tmp_path, kind, fault):
    d = write(tmp_path / "ck", _broken(kind, fault), {})
    with pytest.raises(ValueError) as e:
        KINDS[kind][2](d)
    msg = str(e.value)
    assert msg.startswith(f"{d / CTOR_FILE}: {FAULTS[fault]}"), msg


# kind -> another kind (classes the unpickler admits as names, so these reach the reader's own checks)
OTHER = {"PPO": "SAC", "APPO": "SAC", "DQN": "PPO", "SAC": "DQN"}
# kind -> its catalog's name in messages
CATALOG_NAME = {"PPO": "PPOCatalog", "APPO": "PPOCatalog", "DQN": "DQNCatalog", "SAC": "SACCatalog"}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_another_kinds_module_class_or_catalog_is_named(tmp_path, kind):
    cls, cat, load = KINDS[kind]
    other_cls, other_cat, _ = KINDS[OTHER[kind]]
    if kind != "PPO":  # load_rllib_checkpoint takes every kind: its refusals are the catalogs'
        d = write(tmp_path / "cls", ctor_dict(cls=other_cls, catalog=cat), {})
        want = f"{d / CTOR_FILE}: module class ClassRef('{other_cls._rllib_path}') is not a {kind}"
        with pytest.raises(ValueError, match=re.escape(want)):
            load(d)
    d = write(tmp_path / "cat", ctor_dict(cls=cls, catalog=other_cat), {})
    want = f"{d / CTOR_FILE}: catalog class ClassRef('{other_cat._rllib_path}') is not RLlib's {CATALOG_NAME[kind]}"
    with pytest.raises(ValueError, match=re.escape(want)):
        load(d)


def test_load_rllib_checkpoint_takes_appo_dqn_and_sac_files_with_their_catalogs_only(tmp_path):
    # a DQN class is a DQN kind: the catalog must be DQN's, PPO's is refused
    d = write(tmp_path / "ck", ctor_dict(cls=DQN_CLS, catalog=CATALOG_CLS), {})
    with pytest.raises(ValueError, match="is not RLlib's DQNCatalog"):
        rr.load_rllib_checkpoint(d)
    d = write(tmp_path / "sac", ctor_dict(cls=SAC_CLS, catalog=CATALOG_CLS), {})
    with pytest.raises(ValueError, match="is not RLlib's SACCatalog"):
        rr.load_rllib_checkpoint(d)  # a SAC class is the SAC kind: its catalog must be SAC's
    d = write(tmp_path / "appo", ctor_dict(cls=APPO_CLS, catalog=DQN_CAT), {})
    with pytest.raises(ValueError, match="is not RLlib's PPOCatalog"):
        rr.load_rllib_checkpoint(d)  # an APPO class is the APPO kind: its catalog is PPO's


@pytest.mark.parametrize("kind", [PPO_KIND, APPO_KIND, DQN_KIND, SAC_KIND], ids=lambda k: k.name)
def test_reader_returns_spaces_config_and_inference_only(tmp_path, kind):
    cls, cat, _ = KINDS[kind.name]
    f = write(tmp_path / "ck", ctor_dict(cls=cls, catalog=cat, inference_only=None), {}) / CTOR_FILE
    ctor = read_rllib_ctor(f, (kind,))
    assert ctor.kind is kind and ctor.source == str(f)
    assert ctor.class_path == cls._rllib_path
    assert ctor.observation_space == OBS and ctor.action_space == ACT
    assert ctor.model_config["fcnet_hiddens"] == SMALL["fcnet_hiddens"]
    assert ctor.inference_only is False  # RLlib writes None for "not given"
    assert read_rllib_ctor(f, (kind,), inference_only=np.bool_(True)).inference_only is True


def test_callers_inference_only_is_checked_as_an_argument(tmp_path):
    f = write(tmp_path / "ck", ctor_dict(inference_only="garbled"), {}) / CTOR_FILE
    with pytest.raises(ValueError, match=r"^inference_only: expected a bool or None, got 1$"):
        read_rllib_ctor(f, (PPO_KIND,), inference_only=1)
    # the caller's value replaces the file's: its garbled one is not read
    assert read_rllib_ctor(f, (PPO_KIND,), inference_only=False).inference_only is False
    with pytest.raises(ValueError, match=re.escape(f"{f}: inference_only must be a bool, got 'garbled'")):
        read_rllib_ctor(f, (PPO_KIND,))


def test_msgpack_checkpoints_are_refused_alike(tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    (d / CTOR_FILE).write_bytes(dumps(ctor_dict()))
    (d / "module_state.msgpack").write_bytes(b"\x80")
    for _, _, load in KINDS.values():
        with pytest.raises(ValueError, match=re.escape(f"{d / 'module_state.msgpack'}: msgpack module checkpoints "
                                                       "are not supported; save the module with RLlib's default")):
            load(d)
