"""MultiRLModule and MultiRLModuleSpec."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlmodule_fast import Columns, DEFAULT_MODULE_ID, MultiRLModule, MultiRLModuleSpec, RLModule, RLModuleSpec
from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

OBS = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
OBS2 = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)  # 1-D: a 2-D Box is RLlib's ValueError (issue 14)
ACT = gym.spaces.Discrete(3)
ACT2 = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


def mspec(obs=OBS, act=ACT, **mc):
    mc.setdefault("fcnet_hiddens", [6])
    return RLModuleSpec(module_class=PPOTorchRLModule, observation_space=obs, action_space=act,
                        model_config_dict=mc, catalog_class=PPOCatalog)


def two_modules():
    torch.manual_seed(0)
    return MultiRLModule(rl_module_specs={"a": mspec(), "b": mspec(OBS2, ACT2, vf_share_layers=False)})


def test_dict_like_access():
    mm = two_modules()
    assert len(mm) == 2
    assert set(mm) == {"a", "b"} and set(mm.keys()) == {"a", "b"}
    assert "a" in mm and "zzz" not in mm
    assert isinstance(mm["a"], PPOTorchRLModule)
    assert mm.get("zzz") is None and mm.get("a") is mm["a"]
    assert dict(mm.items())["b"] is mm["b"]
    assert list(mm.values()) == [mm["a"], mm["b"]]
    with pytest.raises(KeyError, match="zzz"):
        mm["zzz"]
    assert mm.unwrapped() is mm
    assert mm.as_multi_rl_module() is mm
    assert isinstance(mm, RLModule)


def test_add_and_remove_module():
    mm = two_modules()
    c = mspec(fcnet_hiddens=[3]).build()
    mm.add_module("c", c)
    assert mm["c"] is c and len(mm) == 3
    with pytest.raises(ValueError, match="'c'"):
        mm.add_module("c", mspec().build())
    c2 = mspec(fcnet_hiddens=[2]).build()
    mm.add_module("c", c2, override=True)
    assert mm["c"] is c2
    mm.remove_module("c")
    assert "c" not in mm and len(mm) == 2
    with pytest.raises(ValueError, match="'c'"):
        mm.remove_module("c")
    mm.remove_module("c", raise_err_if_not_found=False)
    with pytest.raises(ValueError):
        mm.add_module("d", object())


def test_forward_over_module_batches():
    mm = two_modules()
    xa, xb = torch.randn(5, 4), torch.randn(2, 6)
    for method in ("forward_train", "forward_exploration", "forward_inference"):
        out = getattr(mm, method)({"a": {Columns.OBS: xa}, "b": {Columns.OBS: xb}})
        assert set(out) == {"a", "b"}
        assert out["a"][Columns.ACTION_DIST_INPUTS].shape == (5, 3)
        assert out["b"][Columns.ACTION_DIST_INPUTS].shape == (2, 4)
        single = getattr(mm["a"], method)({Columns.OBS: xa})
        torch.testing.assert_close(out["a"][Columns.ACTION_DIST_INPUTS], single[Columns.ACTION_DIST_INPUTS])
    # a subset of the modules
    out = mm.forward_inference({"b": {Columns.OBS: xb}})
    assert set(out) == {"b"}
    train = mm.forward_train({"a": {Columns.OBS: xa}})
    assert train["a"][Columns.VF_PREDS].shape == (5,)


def test_forward_unknown_module_id_and_bad_sub_batch():
    mm = two_modules()
    with pytest.raises(ValueError, match="'zzz'"):
        mm.forward_inference({"zzz": {Columns.OBS: torch.randn(1, 4)}})
    with pytest.raises(ValueError, match=r"'obs'.*\(1, 5\)"):
        mm.forward_inference({"a": {Columns.OBS: torch.randn(1, 5)}})


def test_get_state_set_state_nested():
    mm = two_modules()
    state = mm.get_state()
    assert set(state) == {"a", "b"}
    assert set(state["a"]) == set(mm["a"].get_state())
    assert set(mm.get_state(components="a")) == {"a"}
    assert set(mm.get_state(not_components=["a"])) == {"b"}
    inf = mm.get_state(inference_only=True)
    assert not any(k.startswith("vf.") for k in inf["a"])
    assert not any(k.startswith("encoder.critic_encoder.") for k in inf["b"])
    other = two_modules()
    with torch.no_grad():
        for m in other.values():
            for p in m.parameters():
                p.add_(1.0)
    mm.set_state({mid: {k: v.clone() for k, v in s.items()} for mid, s in other.get_state().items()})
    for mid in ("a", "b"):
        for k, v in other[mid].get_state().items():
            assert torch.equal(mm[mid].get_state()[k], v), (mid, k)
    # partial: only "a"
    before_b = {k: v.clone() for k, v in mm["b"].get_state().items()}
    mm.set_state({"a": two_modules()["a"].get_state()})
    for k, v in mm["b"].get_state().items():
        assert torch.equal(v, before_b[k])
    with pytest.raises(ValueError, match="'zzz'"):
        mm.set_state({"zzz": {}})
    bad = {"a": {k: v.clone() for k, v in mm["a"].get_state().items()}}
    bad["a"]["pi.net.mlp.0.weight"] = torch.zeros(1, 1)
    with pytest.raises(ValueError, match=r"pi\.net\.mlp\.0\.weight"):
        mm.set_state(bad)


def test_checkpointable_components():
    mm = two_modules()
    comps = dict(mm.get_checkpointable_components())
    assert set(comps) == {"a", "b"} and comps["a"] is mm["a"]


def test_save_and_restore(tmp_path):
    mm = two_modules()
    mm.save_to_path(tmp_path)
    r = MultiRLModule.from_checkpoint(tmp_path)
    assert set(r.keys()) == {"a", "b"}
    for mid in ("a", "b"):
        for k, v in mm[mid].get_state().items():
            assert torch.equal(r[mid].get_state()[k], v)
        assert r[mid].model_config == mm[mid].model_config
    fresh = two_modules()
    with torch.no_grad():
        for p in fresh["a"].parameters():
            p.zero_()
    fresh.restore_from_path(tmp_path)
    for k, v in mm["a"].get_state().items():
        assert torch.equal(fresh["a"].get_state()[k], v)


def test_rl_module_from_checkpoint_on_multi_checkpoint(tmp_path):
    """RLlib's Checkpointable.from_checkpoint rebuilds whatever class the checkpoint holds."""
    mm = two_modules()
    mm.save_to_path(tmp_path)
    r = RLModule.from_checkpoint(tmp_path)
    assert isinstance(r, MultiRLModule) and set(r.keys()) == {"a", "b"}


def test_is_stateful_and_initial_state():
    mm = MultiRLModule(rl_module_specs={"ff": mspec(), "rnn": mspec(use_lstm=True, lstm_cell_size=3)})
    assert mm.is_stateful()
    init = mm.get_initial_state()
    assert init["ff"] == {} and set(init["rnn"]) == {"h", "c"}
    assert not two_modules().is_stateful()


def test_stateful_forward_in_multi():
    mm = MultiRLModule(rl_module_specs={"rnn": mspec(use_gru=True, lstm_cell_size=3)})
    out = mm.forward_exploration({"rnn": {Columns.OBS: torch.randn(2, 4), Columns.STATE_IN: {"h": torch.zeros(2, 1, 3)}}})
    assert out["rnn"][Columns.STATE_OUT]["h"].shape == (2, 1, 3)


# ---------------------------------------------------------------------------------------------
# MultiRLModuleSpec
# ---------------------------------------------------------------------------------------------
def test_spec_with_shared_spaces_and_model_config():
    base = RLModuleSpec(module_class=PPOTorchRLModule, catalog_class=PPOCatalog)
    s = MultiRLModuleSpec(observation_space=OBS, action_space=ACT, model_config={"fcnet_hiddens": [5]},
                          rl_module_specs={"p0": base, "p1": RLModuleSpec(module_class=PPOTorchRLModule)})
    mm = s.build()
    assert isinstance(mm, MultiRLModule) and set(mm.keys()) == {"p0", "p1"}
    for mid in ("p0", "p1"):
        assert mm[mid].observation_space == OBS and mm[mid].action_space == ACT
        assert mm[mid].get_state()["encoder.encoder.net.mlp.0.weight"].shape == (5, 4)
    # the sub-specs were not modified by build()
    assert base.observation_space is None and base.model_config_dict == {}


def test_spec_sub_spec_values_win():
    s = MultiRLModuleSpec(observation_space=OBS, action_space=ACT, model_config={"fcnet_hiddens": [5]},
                          rl_module_specs={"p0": mspec(OBS2, ACT2, fcnet_hiddens=[7])})
    m = s.build()["p0"]
    assert m.observation_space == OBS2 and m.action_space == ACT2
    assert m.get_state()["encoder.encoder.net.mlp.0.weight"].shape == (7, 6)


def test_spec_single_rl_module_spec_is_default_policy():
    mm = MultiRLModuleSpec(rl_module_specs=mspec()).build()
    assert list(mm.keys()) == [DEFAULT_MODULE_ID]


def test_spec_build_one_module_id():
    s = MultiRLModuleSpec(rl_module_specs={"a": mspec(), "b": mspec(OBS2, ACT2)})
    m = s.build(module_id="b")
    assert isinstance(m, PPOTorchRLModule) and m.observation_space == OBS2
    with pytest.raises(ValueError, match="'zzz'"):
        s.build(module_id="zzz")


def test_spec_inference_only_propagates():
    mm = MultiRLModuleSpec(inference_only=True, rl_module_specs={"a": mspec()}).build()
    assert mm["a"].inference_only
    assert not any(k.startswith("vf.") for k in mm["a"].get_state())


def test_spec_add_modules():
    s = MultiRLModuleSpec(rl_module_specs={"a": mspec()})
    s.add_modules({"b": mspec(OBS2, ACT2)})
    assert set(s.module_specs) == {"a", "b"}
    new_a = mspec(fcnet_hiddens=[2])
    s.add_modules({"a": new_a}, override=False)
    assert s.module_specs["a"] is not new_a
    s.add_modules({"a": new_a})
    assert s.module_specs["a"] is new_a


def test_spec_load_state_path(tmp_path):
    mm = two_modules()
    with torch.no_grad():
        for m in mm.values():
            for p in m.parameters():
                p.add_(0.5)
    mm.save_to_path(tmp_path)
    s = MultiRLModuleSpec(rl_module_specs={"a": mspec(), "b": mspec(OBS2, ACT2, vf_share_layers=False)},
                          load_state_path=str(tmp_path))
    r = s.build()
    for mid in ("a", "b"):
        for k, v in mm[mid].get_state().items():
            assert torch.equal(r[mid].get_state()[k], v)


def test_spec_missing_spaces_is_value_error():
    with pytest.raises(ValueError, match="observation_space|action_space"):
        MultiRLModuleSpec(rl_module_specs={"a": RLModuleSpec(module_class=PPOTorchRLModule)}).build()
