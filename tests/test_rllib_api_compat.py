"""RLlib 2.40-2.60 API compatibility of the core classes (the "drop-in for today's RLlib code"
issue): ``_forward`` as the default of the three phases, default action distributions from the
action space, columns the specs do not name passed through, spec helpers (``from_module``,
``update``, ``as_multi_rl_module_spec``, ``module_specs=``), MultiRLModule subclasses that
override ``_forward_*``, and the error for an RLlib checkpoint given to ``from_checkpoint``.
RLlib's own tests, ported, are in tests/rllib_suite/."""
import copy
import pathlib
import pickle
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import rlmodule_fast as rf
from rlmodule_fast import Columns, MultiRLModule, MultiRLModuleSpec, RLModuleSpec, TorchRLModule
from rlmodule_fast.core.columns import ENCODER_OUT
from rlmodule_fast.distributions import TorchCategorical, TorchDiagGaussian
from rlmodule_fast.ppo import PPOTorchRLModule

OBS = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
ACT = gym.spaces.Discrete(3)
BOX_ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


class OnlyForward(TorchRLModule):
    """RLlib >= 2.40 style: one ``_forward`` for every phase."""

    def setup(self):
        out = self.action_space.n if isinstance(self.action_space, gym.spaces.Discrete) else 2 * self.action_space.shape[0]
        self.net = nn.Linear(self.observation_space.shape[0], out)

    def _forward(self, batch, **kwargs):
        return {Columns.ACTION_DIST_INPUTS: self.net(batch[Columns.OBS])}


class ForwardPlusTrain(OnlyForward):
    def _forward_train(self, batch, **kwargs):
        out = self._forward(batch)
        out["extra"] = out[Columns.ACTION_DIST_INPUTS].sum(-1)
        return out


class ThreeForwards(TorchRLModule):
    """RLlib 2.10-2.38 style: the three phases, no ``_forward``."""

    def setup(self):
        self.net = nn.Linear(4, 3)

    def _forward_inference(self, batch, **kwargs):
        return {Columns.ACTION_DIST_INPUTS: self.net(batch[Columns.OBS]) * 0}

    def _forward_exploration(self, batch, **kwargs):
        return {Columns.ACTION_DIST_INPUTS: self.net(batch[Columns.OBS])}

    def _forward_train(self, batch, **kwargs):
        return {Columns.ACTION_DIST_INPUTS: self.net(batch[Columns.OBS]) + 1}


class TwoOfThree(TorchRLModule):
    def setup(self):
        self.net = nn.Linear(4, 3)

    def _forward_inference(self, batch, **kwargs):
        return {}

    def _forward_exploration(self, batch, **kwargs):
        return {}


def _obs(b=5):
    return torch.randn(b, 4)


# ---------------------------------------------------------------------------------------------
# 1. _forward as the default of the three phases; default action distributions
# ---------------------------------------------------------------------------------------------
def test_only_forward_module_builds_and_runs_every_phase():
    m = RLModuleSpec(module_class=OnlyForward, observation_space=OBS, action_space=ACT).build()
    x = _obs()
    ref = m.net(x)
    for kind in ("inference", "exploration", "train"):
        out = getattr(m, f"forward_{kind}")({Columns.OBS: x})
        assert torch.allclose(out[Columns.ACTION_DIST_INPUTS], ref), kind


def test_only_forward_no_grad_outside_train():
    m = OnlyForward(observation_space=OBS, action_space=ACT)
    x = _obs()
    assert not m.forward_inference({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS].requires_grad
    assert not m.forward_exploration({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS].requires_grad
    assert m.forward_train({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS].requires_grad


def test_forward_plus_one_phase_override():
    m = ForwardPlusTrain(observation_space=OBS, action_space=ACT)
    assert "extra" in m.forward_train({Columns.OBS: _obs()})
    assert "extra" not in m.forward_exploration({Columns.OBS: _obs()})


def test_three_forwards_style_still_works():
    m = ThreeForwards(observation_space=OBS, action_space=ACT)
    x = _obs()
    assert torch.equal(m.forward_inference({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS], torch.zeros(5, 3))
    assert torch.allclose(m.forward_train({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS], m.net(x) + 1)


def test_neither_forward_nor_three_is_type_error_naming_missing():
    with pytest.raises(TypeError, match="_forward_train"):
        TwoOfThree(observation_space=OBS, action_space=ACT)


@pytest.mark.parametrize("space, cls", [(ACT, TorchCategorical), (BOX_ACT, TorchDiagGaussian)],
                         ids=["discrete", "box"])
def test_default_action_dist_cls_from_action_space(space, cls):
    m = OnlyForward(observation_space=OBS, action_space=space)
    assert m.get_inference_action_dist_cls() is cls
    assert m.get_exploration_action_dist_cls() is cls
    assert m.get_train_action_dist_cls() is cls
    out = m.forward_train({Columns.OBS: _obs()})
    dist = cls.from_logits(out[Columns.ACTION_DIST_INPUTS])
    assert dist.logp(dist.sample()).shape == (5,)


def test_action_dist_cls_attribute_wins():
    class WithAttr(OnlyForward):
        def setup(self):
            super().setup()
            self.action_dist_cls = TorchDiagGaussian

    assert WithAttr(observation_space=OBS, action_space=ACT).get_train_action_dist_cls() is TorchDiagGaussian


def test_unsupported_action_space_is_value_error_naming_the_fix():
    m = ThreeForwards(observation_space=OBS, action_space=gym.spaces.MultiBinary(3))
    with pytest.raises(ValueError, match="action_dist_cls"):
        m.get_inference_action_dist_cls()


def test_ppo_keeps_catalog_distribution():
    m = PPOTorchRLModule(observation_space=OBS, action_space=BOX_ACT, model_config={"fcnet_hiddens": [8]})
    assert m.get_inference_action_dist_cls() is TorchDiagGaussian


# ---------------------------------------------------------------------------------------------
# 4. columns the specs do not name pass through
# ---------------------------------------------------------------------------------------------
EXTRA_COLUMNS = {
    "object-array": np.array([{"a": 1}] * 5, dtype=object),
    "string-array": np.array(["x"] * 5),
    "none": None,
    "string": "episode-7",
    "list-of-dicts": [{}] * 5,
}


@pytest.mark.parametrize("module", ["only-forward", "ppo"])
@pytest.mark.parametrize("kind", ["inference", "exploration", "train"])
@pytest.mark.parametrize("col", list(EXTRA_COLUMNS))
def test_unused_columns_pass_through(module, kind, col):
    if module == "ppo":
        m = PPOTorchRLModule(observation_space=OBS, action_space=ACT, model_config={"fcnet_hiddens": [8]})
    else:
        m = OnlyForward(observation_space=OBS, action_space=ACT)
    extra = EXTRA_COLUMNS[col]
    batch = {Columns.OBS: np.random.randn(5, 4).astype(np.float32), Columns.INFOS: extra}
    before = dict(batch)
    out = getattr(m, f"forward_{kind}")(batch)
    assert out[Columns.ACTION_DIST_INPUTS].shape == (5, 3)
    assert batch.keys() == before.keys() and all(batch[k] is before[k] for k in batch)


def test_unused_columns_reach_forward_unchanged_numeric_converted():
    seen = {}

    class Peek(OnlyForward):
        def _forward(self, batch, **kwargs):
            seen.update(batch)
            return super()._forward(batch)

    infos = np.array([{}] * 2, dtype=object)
    Peek(observation_space=OBS, action_space=ACT).forward_train(
        {Columns.OBS: np.zeros((2, 4), np.float32), Columns.INFOS: infos, Columns.REWARDS: np.ones(2)})
    assert seen[Columns.INFOS] is infos
    assert isinstance(seen[Columns.OBS], torch.Tensor) and isinstance(seen[Columns.REWARDS], torch.Tensor)


def test_spec_named_column_of_object_dtype_is_still_value_error():
    m = OnlyForward(observation_space=OBS, action_space=ACT)
    with pytest.raises(ValueError, match="'obs'"):
        m.forward_train({Columns.OBS: np.array([[1.0] * 4] * 2, dtype=object)})


# ---------------------------------------------------------------------------------------------
# 5. spec helpers
# ---------------------------------------------------------------------------------------------
def _spec(**kw):
    kw.setdefault("model_config", {"fcnet_hiddens": [8]})
    return RLModuleSpec(module_class=PPOTorchRLModule, observation_space=OBS, action_space=ACT, **kw)


def test_rl_module_spec_from_module_round_trip():
    s = _spec(inference_only=True)
    m = s.build()
    s2 = RLModuleSpec.from_module(m)
    assert s2 == s
    m2 = s2.build()
    assert m2.get_state().keys() == m.get_state().keys()
    with pytest.raises(ValueError, match="MultiRLModule"):
        RLModuleSpec.from_module(m.as_multi_rl_module())


def test_multi_spec_from_module_round_trip():
    s = MultiRLModuleSpec(rl_module_specs={"a": _spec(), "b": _spec(model_config={"fcnet_hiddens": [3]})})
    mm = s.build()
    s2 = MultiRLModuleSpec.from_module(mm)
    assert s2 == s
    assert set(s2.build().keys()) == {"a", "b"}


def test_as_multi_rl_module_spec():
    s = _spec(load_state_path=None)
    ms = s.as_multi_rl_module_spec()
    assert isinstance(ms, MultiRLModuleSpec) and ms.rl_module_specs == {rf.DEFAULT_MODULE_ID: s}
    assert ms.as_multi_rl_module_spec() is ms
    assert list(ms.build().keys()) == [rf.DEFAULT_MODULE_ID]


def test_module_specs_keyword_is_alias():
    a = MultiRLModuleSpec(module_specs={"a": _spec()})
    b = MultiRLModuleSpec(rl_module_specs={"a": _spec()})
    assert a == b and a.module_specs is a.rl_module_specs
    assert "a" in a and a["a"] == _spec()
    with pytest.raises(ValueError, match="module_specs"):
        MultiRLModuleSpec(module_specs={"a": _spec()}, rl_module_specs={"b": _spec()})


def test_multi_spec_update_with_rl_module_spec_fills_unset_fields():
    ms = MultiRLModuleSpec(rl_module_specs={"a": RLModuleSpec(module_class=PPOTorchRLModule)})
    ms.update(RLModuleSpec(observation_space=OBS, action_space=ACT, model_config={"fcnet_hiddens": [2]}))
    assert ms["a"].observation_space == OBS and ms["a"].model_config == {"fcnet_hiddens": [2]}
    assert ms.build()["a"].get_state()["encoder.encoder.net.mlp.0.weight"].shape == (2, 4)


def test_spec_non_dict_model_config_is_value_error_at_build():
    s = _spec(model_config="not a dict")
    assert s.model_config == "not a dict"
    with pytest.raises(ValueError, match="model_config"):
        s.build()


# ---------------------------------------------------------------------------------------------
# 6. MultiRLModule subclasses overriding _forward_* are called
# ---------------------------------------------------------------------------------------------
class Encoder(TorchRLModule):
    def setup(self):
        self.net = nn.Linear(4, 6)

    def _forward(self, batch, **kwargs):
        return {ENCODER_OUT: self.net(batch[Columns.OBS])}


class Head(TorchRLModule):
    def setup(self):
        self.net = nn.Linear(6, self.action_space.n)

    def _forward(self, batch, **kwargs):
        return {Columns.ACTION_DIST_INPUTS: self.net(batch[ENCODER_OUT])}


class SharedEncoderMulti(MultiRLModule):
    calls = []

    def _shared(self, batch, forward_type, **kwargs):
        type(self).calls.append(forward_type)
        out = {}
        for mid, sub in batch.items():
            sub[ENCODER_OUT] = self["enc"]._forward(sub)[ENCODER_OUT]
            out[mid] = getattr(self[mid], forward_type)(sub, **kwargs)
        return out

    def _forward_inference(self, batch, **kwargs):
        return self._shared(batch, "_forward_inference", **kwargs)

    def _forward_exploration(self, batch, **kwargs):
        return self._shared(batch, "_forward_exploration", **kwargs)

    def _forward_train(self, batch, **kwargs):
        return self._shared(batch, "_forward_train", **kwargs)


def _shared_multi():
    return MultiRLModuleSpec(multi_rl_module_class=SharedEncoderMulti, observation_space=OBS, action_space=ACT,
                             rl_module_specs={"enc": RLModuleSpec(module_class=Encoder),
                                              "p0": RLModuleSpec(module_class=Head),
                                              "p1": RLModuleSpec(module_class=Head)}).build()


@pytest.mark.parametrize("kind", ["inference", "exploration", "train"])
@pytest.mark.parametrize("as_numpy", [False, True], ids=["torch", "numpy"])
def test_multi_subclass_forward_overrides_are_called(kind, as_numpy):
    mm = _shared_multi()
    SharedEncoderMulti.calls.clear()
    x = {mid: np.random.randn(3, 4).astype(np.float32) for mid in ("p0", "p1")}
    batch = {mid: {Columns.OBS: v if as_numpy else torch.from_numpy(v)} for mid, v in x.items()}
    snapshot = {mid: dict(sub) for mid, sub in batch.items()}
    out = getattr(mm, f"forward_{kind}")(batch)
    assert SharedEncoderMulti.calls == [f"_forward_{kind}"]
    for mid in ("p0", "p1"):
        want = mm[mid].net(mm["enc"].net(torch.from_numpy(x[mid])))
        assert torch.allclose(out[mid][Columns.ACTION_DIST_INPUTS], want, atol=1e-6)
    assert batch == snapshot  # the caller's dicts are not modified (no ENCODER_OUT added)


def test_plain_multi_rl_module_still_checks_ids():
    mm = MultiRLModuleSpec(rl_module_specs={"a": _spec()}).build()
    with pytest.raises(ValueError, match="'zzz'"):
        mm.forward_inference({"zzz": {Columns.OBS: _obs()}})


def test_rllib_shared_encoder_example_ported():
    pytest.importorskip("ray.rllib")
    sys.path.insert(0, str(pathlib.Path(__file__).parent / "rllib_suite"))
    try:
        from rllib_example_classes.vpg_using_shared_encoder_rlm import (
            SHARED_ENCODER_ID, SharedEncoder, VPGMultiRLModuleWithSharedEncoder, VPGPolicyAfterSharedEncoder)
    finally:
        sys.path.pop(0)
    obs, act = gym.spaces.Box(-1.0, 1.0, (4,), np.float32), gym.spaces.Discrete(2)
    mm = MultiRLModuleSpec(
        multi_rl_module_class=VPGMultiRLModuleWithSharedEncoder,
        rl_module_specs={
            SHARED_ENCODER_ID: RLModuleSpec(module_class=SharedEncoder, observation_space=obs, action_space=act,
                                            model_config={"embedding_dim": 8}),
            "p0": RLModuleSpec(module_class=VPGPolicyAfterSharedEncoder, observation_space=obs, action_space=act,
                               model_config={"embedding_dim": 8, "hidden_dim": 16}),
        }).build()
    x = torch.randn(5, 4)
    for kind in ("inference", "exploration", "train"):
        out = getattr(mm, f"forward_{kind}")({"p0": {Columns.OBS: x}})
        assert out["p0"][Columns.ACTION_DIST_INPUTS].shape == (5, 2), kind


# ---------------------------------------------------------------------------------------------
# 8. RLlib checkpoints given to from_checkpoint; docstrings
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("files", [("module_state.pkl", "class_and_ctor_args.pkl", "metadata.json"),
                                   ("class_and_ctor_args.pkl",), ("rllib_checkpoint.json",)],
                         ids=["module", "ctor-only", "algorithm"])
def test_from_checkpoint_on_rllib_files_points_to_loader(tmp_path, files):
    for name in files:
        (tmp_path / name).write_bytes(b"{}" if name.endswith(".json") else pickle.dumps({}))
    for call in (lambda: rf.RLModule.from_checkpoint(tmp_path), lambda: MultiRLModule.from_checkpoint(tmp_path),
                 lambda: _spec().build().restore_from_path(tmp_path)):
        with pytest.raises(ValueError, match="load_rllib_checkpoint") as e:
            call()
        assert "RLlib" in str(e.value) and str(tmp_path) in str(e.value)


def test_from_checkpoint_on_real_rllib_checkpoint_points_to_loader(tmp_path):
    pytest.importorskip("ray.rllib")
    from ray.rllib.examples.rl_modules.classes.vpg_torch_rlm import VPGTorchRLModule

    VPGTorchRLModule(observation_space=OBS, action_space=ACT, model_config={"hidden_dim": 4}).save_to_path(tmp_path)
    with pytest.raises(ValueError, match="load_rllib_checkpoint"):
        rf.RLModule.from_checkpoint(tmp_path)


def test_missing_checkpoint_files_still_name_the_file(tmp_path):
    with pytest.raises((ValueError, FileNotFoundError), match="metadata.json"):
        rf.RLModule.from_checkpoint(tmp_path)


@pytest.mark.parametrize("name", ["forward_exploration", "forward_inference", "get_initial_state", "is_stateful"])
def test_docstrings_give_shapes(name):
    doc = getattr(rf.RLModule, name).__doc__
    assert doc and "[B" in doc and ("state_in" in doc or "obs" in doc), name
