"""A user-written TorchRLModule, as RLlib's RLModule documentation describes it.

The classes are defined at module level so that ``from_checkpoint`` can import them by path.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import rlmodule_fast as rf
from rlmodule_fast import Columns, MultiRLModule, RLModule, RLModuleSpec, TensorSpec, TorchRLModule

OBS = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
ACT = gym.spaces.Discrete(3)


class DiscreteBCTorchModule(TorchRLModule):
    """RLlib's doc example: a one-hidden-layer policy; specs as lists of keys."""

    def setup(self):
        hidden = self.model_config.get("hidden_dim", 8)
        self.policy = nn.Sequential(
            nn.Linear(self.observation_space.shape[0], hidden), nn.ReLU(),
            nn.Linear(hidden, self.action_space.n),
        )

    def get_train_action_dist_cls(self):
        return rf.distributions.TorchCategorical

    get_exploration_action_dist_cls = get_train_action_dist_cls
    get_inference_action_dist_cls = get_train_action_dist_cls

    def input_specs_exploration(self):
        return [Columns.OBS]

    def input_specs_inference(self):
        return [Columns.OBS]

    def input_specs_train(self):
        return [Columns.OBS]

    def output_specs_exploration(self):
        return [Columns.ACTION_DIST_INPUTS]

    def output_specs_inference(self):
        return [Columns.ACTION_DIST_INPUTS]

    def output_specs_train(self):
        return [Columns.ACTION_DIST_INPUTS]

    def _forward_inference(self, batch, **kwargs):
        with torch.no_grad():
            return self._forward_train(batch)

    def _forward_exploration(self, batch, **kwargs):
        with torch.no_grad():
            return self._forward_train(batch)

    def _forward_train(self, batch, **kwargs):
        return {Columns.ACTION_DIST_INPUTS: self.policy(batch[Columns.OBS])}


class SpecdTorchModule(DiscreteBCTorchModule):
    """Same network with dict-of-TensorSpec specs (shape-checked inputs and outputs)."""

    def _in(self):
        return {Columns.OBS: TensorSpec(("B", self.observation_space.shape[0]), dtype_kind="float")}

    def _out(self):
        return {Columns.ACTION_DIST_INPUTS: TensorSpec(("B", int(self.action_space.n)))}

    input_specs_train = input_specs_exploration = input_specs_inference = _in
    output_specs_train = output_specs_exploration = output_specs_inference = _out


class BrokenOutputModule(SpecdTorchModule):
    """Returns logits of the wrong width: the output spec must catch it."""

    def _forward_train(self, batch, **kwargs):
        return {Columns.ACTION_DIST_INPUTS: self.policy(batch[Columns.OBS])[:, :2]}


class KeywordStyleModule(TorchRLModule):
    """Newer-RLlib style: __init__ takes keywords only (no config)."""

    def __init__(self, *, observation_space=None, action_space=None, inference_only=False,
                 model_config=None, catalog_class=None, **kwargs):
        super().__init__(observation_space=observation_space, action_space=action_space,
                         inference_only=inference_only, model_config=model_config, catalog_class=catalog_class)

    def setup(self):
        self.net = nn.Linear(self.observation_space.shape[0], self.action_space.n)

    def _forward_inference(self, batch, **kwargs):
        return self._forward_train(batch)

    def _forward_exploration(self, batch, **kwargs):
        return self._forward_train(batch)

    def _forward_train(self, batch, **kwargs):
        return {Columns.ACTION_DIST_INPUTS: self.net(batch[Columns.OBS])}


class MissingTrain(TorchRLModule):
    def setup(self):
        self.net = nn.Linear(4, 3)

    def _forward_inference(self, batch, **kwargs):
        return {}

    def _forward_exploration(self, batch, **kwargs):
        return {}


CLASSES = {"list-specs": DiscreteBCTorchModule, "tensorspec-specs": SpecdTorchModule}


def make(cls, hidden=8, seed=0):
    torch.manual_seed(seed)
    return RLModuleSpec(module_class=cls, observation_space=OBS, action_space=ACT,
                        model_config_dict={"hidden_dim": hidden}).build()


@pytest.fixture(params=list(CLASSES), ids=list(CLASSES))
def cls(request):
    return CLASSES[request.param]


def test_forward_wrappers(cls):
    m = make(cls)
    assert m.framework == "torch"
    x = torch.randn(5, 4)
    for fwd in (m.forward_inference, m.forward_exploration, m.forward_train, m):
        out = fwd({Columns.OBS: x})
        assert out[Columns.ACTION_DIST_INPUTS].shape == (5, 3)
        torch.testing.assert_close(out[Columns.ACTION_DIST_INPUTS], m.policy(x))
    assert not m.is_stateful()
    dist = m.get_train_action_dist_cls().from_logits(m.forward_train({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS])
    assert dist.sample().shape == (5,)


def test_forward_train_differentiable(cls):
    m = make(cls)
    out = m.forward_train({Columns.OBS: torch.randn(5, 4)})
    out[Columns.ACTION_DIST_INPUTS].sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_missing_key_is_value_error(cls):
    m = make(cls)
    with pytest.raises(ValueError, match="obs"):
        m.forward_inference({"observation": torch.randn(2, 4)})


def test_tensorspec_shape_error_names_key_and_shapes():
    m = make(SpecdTorchModule)
    with pytest.raises(ValueError, match=r"'obs'.*\(2, 5\).*\(B, 4\)"):
        m.forward_train({Columns.OBS: torch.randn(2, 5)})
    with pytest.raises(ValueError, match=r"'obs'.*dtype"):
        m.forward_train({Columns.OBS: torch.zeros(2, 4, dtype=torch.long)})


def test_output_spec_violation_is_value_error():
    m = make(BrokenOutputModule)
    with pytest.raises(ValueError, match=r"action_dist_inputs.*\(2, 2\).*\(B, 3\)"):
        m.forward_inference({Columns.OBS: torch.randn(2, 4)})


def test_numpy_input(cls):
    m = make(cls)
    x = np.random.default_rng(0).uniform(size=(3, 4)).astype(np.float32)
    out = m.forward_inference({Columns.OBS: x})
    torch.testing.assert_close(out[Columns.ACTION_DIST_INPUTS], m.policy(torch.from_numpy(x)))


def test_get_set_state(cls):
    a, b = make(cls, seed=0), make(cls, seed=1)
    state = a.get_state()
    assert set(state) == {"policy.0.weight", "policy.0.bias", "policy.2.weight", "policy.2.bias"}
    b.set_state(state)
    x = torch.randn(3, 4)
    assert torch.equal(a.forward_inference({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS],
                       b.forward_inference({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS])
    assert set(a.get_state(components="policy")) == set(state)
    assert a.get_state(not_components="policy") == {}


def test_checkpoint_round_trip(cls, tmp_path):
    m = make(cls, hidden=6)
    m.save_to_path(tmp_path)
    for loader in (RLModule.from_checkpoint, cls.from_checkpoint):
        r = loader(tmp_path)
        assert type(r) is cls
        assert r.model_config == {"hidden_dim": 6}
        assert r.observation_space == OBS and r.action_space == ACT
        x = torch.randn(3, 4)
        assert torch.equal(m.forward_inference({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS],
                           r.forward_inference({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS])


def test_keyword_style_module_build_and_checkpoint(tmp_path):
    m = RLModuleSpec(module_class=KeywordStyleModule, observation_space=OBS, action_space=ACT).build()
    assert isinstance(m, KeywordStyleModule)
    m.save_to_path(tmp_path)
    r = RLModule.from_checkpoint(tmp_path)
    assert type(r) is KeywordStyleModule
    x = torch.randn(2, 4)
    assert torch.equal(m.forward_train({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS],
                       r.forward_train({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS])


def test_in_multi_rl_module(tmp_path):
    mm = MultiRLModule(rl_module_specs={
        "bc": RLModuleSpec(module_class=DiscreteBCTorchModule, observation_space=OBS, action_space=ACT,
                           model_config_dict={"hidden_dim": 5}),
        "specd": RLModuleSpec(module_class=SpecdTorchModule, observation_space=OBS, action_space=ACT),
    })
    x = torch.randn(4, 4)
    out = mm.forward_train({"bc": {Columns.OBS: x}, "specd": {Columns.OBS: x}})
    assert out["bc"][Columns.ACTION_DIST_INPUTS].shape == (4, 3)
    assert out["specd"][Columns.ACTION_DIST_INPUTS].shape == (4, 3)
    mm.save_to_path(tmp_path)
    r = MultiRLModule.from_checkpoint(tmp_path)
    assert type(r["bc"]) is DiscreteBCTorchModule and type(r["specd"]) is SpecdTorchModule
    out2 = r.forward_train({"bc": {Columns.OBS: x}, "specd": {Columns.OBS: x}})
    for mid in ("bc", "specd"):
        assert torch.equal(out[mid][Columns.ACTION_DIST_INPUTS], out2[mid][Columns.ACTION_DIST_INPUTS])


def test_as_multi_rl_module(cls):
    m = make(cls)
    mm = m.as_multi_rl_module()
    assert mm[rf.DEFAULT_MODULE_ID] is m


def test_missing_abstract_method_is_type_error():
    with pytest.raises(TypeError):
        MissingTrain(rf.RLModuleConfig(observation_space=OBS, action_space=ACT))
    with pytest.raises(TypeError):
        RLModuleSpec(module_class=MissingTrain, observation_space=OBS, action_space=ACT).build()


def test_setup_called_once_by_constructor():
    class Counting(DiscreteBCTorchModule):
        calls = 0

        def setup(self):
            type(self).calls += 1
            super().setup()

    Counting(rf.RLModuleConfig(observation_space=OBS, action_space=ACT))
    assert Counting.calls == 1
