"""RLModuleConfig / RLModuleSpec, input/output spec checks and model-config validation."""
from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast import Columns, RLModuleConfig, RLModuleSpec, TensorSpec
from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

OBS = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
IMG = gym.spaces.Box(-1.0, 1.0, (10, 10, 1), np.float32)  # an image: RLlib's default 10x10 CNN
ACT = gym.spaces.Discrete(3)


def spec(**kw):
    kw.setdefault("module_class", PPOTorchRLModule)
    kw.setdefault("observation_space", OBS)
    kw.setdefault("action_space", ACT)
    kw.setdefault("catalog_class", PPOCatalog)
    if "model_config" not in kw:
        kw.setdefault("model_config_dict", {"fcnet_hiddens": [8, 8]})
    return RLModuleSpec(**kw)


def layer_shapes(m):
    return {k: tuple(v.shape) for k, v in m.get_state().items()}


# ---------------------------------------------------------------------------------------------
# RLModuleSpec / RLModuleConfig
# ---------------------------------------------------------------------------------------------
def test_spec_build_documented_form():
    m = RLModuleSpec(module_class=PPOTorchRLModule, observation_space=OBS, action_space=ACT,
                     model_config_dict={"fcnet_hiddens": [8, 8]}, catalog_class=PPOCatalog).build()
    assert isinstance(m, PPOTorchRLModule)
    assert m.observation_space == OBS and m.action_space == ACT
    assert layer_shapes(m)["encoder.encoder.net.mlp.0.weight"] == (8, 4)
    out = m.forward_inference({Columns.OBS: torch.zeros(2, 4)})
    assert out[Columns.ACTION_DIST_INPUTS].shape == (2, 3)


def test_spec_build_without_catalog_class_uses_ppo_catalog():
    m = spec(catalog_class=None).build()
    assert isinstance(m.catalog, PPOCatalog)


def test_spec_model_config_alias():
    s = spec(model_config={"fcnet_hiddens": [5]})
    assert s.model_config_dict == {"fcnet_hiddens": [5]}
    assert layer_shapes(s.build())["encoder.encoder.net.mlp.0.weight"] == (5, 4)


def test_spec_model_config_and_model_config_dict_both_is_value_error():
    with pytest.raises(ValueError, match="model_config"):
        RLModuleSpec(module_class=PPOTorchRLModule, observation_space=OBS, action_space=ACT,
                     model_config_dict={"fcnet_hiddens": [5]}, model_config={"fcnet_hiddens": [6]})


def test_module_keyword_ctor_both_model_configs_is_value_error():
    with pytest.raises(ValueError, match="model_config"):
        PPOTorchRLModule(observation_space=OBS, action_space=ACT, model_config={"fcnet_hiddens": [5]},
                         model_config_dict={"fcnet_hiddens": [6]})


def test_newer_rllib_keyword_constructor():
    m = PPOTorchRLModule(observation_space=OBS, action_space=ACT, model_config={"fcnet_hiddens": [6]},
                         catalog_class=PPOCatalog)
    assert isinstance(m.config, RLModuleConfig)
    assert m.model_config["fcnet_hiddens"] == [6]
    assert layer_shapes(m)["encoder.encoder.net.mlp.0.weight"] == (6, 4)
    mi = PPOTorchRLModule(observation_space=OBS, action_space=ACT, inference_only=True,
                          model_config={"fcnet_hiddens": [6]}, catalog_class=PPOCatalog)
    assert mi.inference_only and not any(k.startswith("vf.") for k in mi.get_state())


def test_config_and_keywords_together_is_value_error():
    cfg = RLModuleConfig(observation_space=OBS, action_space=ACT, model_config_dict={"fcnet_hiddens": [4]})
    with pytest.raises(ValueError):
        PPOTorchRLModule(cfg, observation_space=OBS)


def test_config_of_wrong_type_is_type_error():
    with pytest.raises(TypeError, match="config"):
        PPOTorchRLModule({"observation_space": OBS})


@pytest.mark.parametrize("missing", ["module_class", "observation_space", "action_space"])
def test_spec_build_missing_field_is_value_error(missing):
    s = spec(**{missing: None})
    with pytest.raises(ValueError, match=missing if missing == "module_class" else "observation_space|action_space"):
        s.build()


def test_spec_module_class_not_rl_module_is_value_error():
    with pytest.raises(ValueError, match="module_class"):
        spec(module_class=dict).build()


@pytest.mark.parametrize("obs_name,obs,act", [
    ("Box4-Discrete", OBS, ACT),
    ("Box10x10x1-Box2", IMG, gym.spaces.Box(-2.0, np.array([1.0, np.inf], np.float32), (2,), np.float32)),
    ("Discrete5-MultiDiscrete", gym.spaces.Discrete(5, start=1), gym.spaces.MultiDiscrete([2, 3])),
], ids=lambda x: x if isinstance(x, str) else "")
def test_spec_to_dict_from_dict_round_trip(obs_name, obs, act):
    import json

    s = spec(observation_space=obs, action_space=act, model_config_dict={"fcnet_hiddens": [4], "use_lstm": True,
                                                                          "lstm_cell_size": 3},
             inference_only=True, load_state_path=None)
    d = s.to_dict()
    text = json.dumps(d)  # plain data only
    s2 = RLModuleSpec.from_dict(json.loads(text))
    assert s2.module_class is PPOTorchRLModule
    assert s2.catalog_class is PPOCatalog
    assert s2.observation_space == obs and s2.action_space == act
    assert s2.model_config_dict == s.model_config_dict
    assert s2.inference_only is True
    assert layer_shapes(s2.build()) == layer_shapes(s.build())


def test_config_to_dict_from_dict_round_trip():
    import json

    cfg = RLModuleConfig(observation_space=IMG, action_space=ACT, model_config_dict={"fcnet_hiddens": [3]},
                         catalog_class=PPOCatalog, inference_only=True)
    cfg2 = RLModuleConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert cfg2.observation_space == IMG and cfg2.action_space == ACT
    assert cfg2.model_config_dict == {"fcnet_hiddens": [3]}
    assert cfg2.catalog_class is PPOCatalog and cfg2.inference_only is True
    m = PPOTorchRLModule(cfg2)
    assert m.inference_only


@pytest.mark.parametrize("bad", ["os:system", "builtins:eval", "builtins.dict", "no_such_module_xyz:Foo"])
def test_spec_from_dict_rejects_non_module_class(bad):
    d = spec().to_dict()
    d["module_class"] = bad
    with pytest.raises(ValueError, match=re.escape(bad)):
        RLModuleSpec.from_dict(d)


def test_spec_load_state_path(tmp_path):
    src = spec().build()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))
    src.save_to_path(tmp_path / "ckpt")
    m = spec(load_state_path=str(tmp_path / "ckpt")).build()
    for k, v in src.get_state().items():
        assert torch.equal(m.get_state()[k], v), k


def test_spec_load_state_path_missing_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope"))):
        spec(load_state_path=str(tmp_path / "nope")).build()


def test_spec_update():
    a = spec(model_config_dict={"fcnet_hiddens": [3]})
    b = RLModuleSpec(observation_space=IMG)
    a.update(b)
    assert a.observation_space == IMG and a.action_space == ACT
    assert a.model_config_dict == {"fcnet_hiddens": [3]}


# ---------------------------------------------------------------------------------------------
# Input spec checks: ValueError naming the key, expected and received shapes
# ---------------------------------------------------------------------------------------------
def _module(obs=OBS, **mc):
    mc.setdefault("fcnet_hiddens", [4])
    return PPOTorchRLModule(observation_space=obs, action_space=ACT, model_config=mc)


BAD_INPUTS = {
    "wrong-trailing": (OBS, torch.zeros(5, 3), r"'obs'.*\(5, 3\).*\(B, 4\)"),
    "wrong-rank-1d": (OBS, torch.zeros(5), r"'obs'.*\(5,\).*\(B, 4\)"),
    "wrong-rank-3d": (OBS, torch.zeros(5, 1, 4), r"'obs'.*\(5, 1, 4\).*\(B, 4\)"),
    "wrong-trailing-image": (IMG, torch.zeros(5, 10, 1, 10), r"'obs'.*\(5, 10, 1, 10\).*\(B, 10, 10, 1\)"),
    "flattened-image": (IMG, torch.zeros(5, 100), r"'obs'.*\(5, 100\).*\(B, 10, 10, 1\)"),
    "numpy-wrong-trailing": (OBS, np.zeros((2, 7), np.float32), r"'obs'.*\(2, 7\).*\(B, 4\)"),
}


@pytest.mark.parametrize("method", ["forward_train", "forward_exploration", "forward_inference"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_shape_is_value_error_with_key_and_shapes(method, case):
    space, obs, pattern = BAD_INPUTS[case]
    m = _module(space)
    with pytest.raises(ValueError, match=pattern):
        getattr(m, method)({Columns.OBS: obs})


@pytest.mark.parametrize("method", ["forward_train", "forward_exploration", "forward_inference"])
def test_missing_key_is_value_error_naming_it(method):
    m = _module()
    with pytest.raises(ValueError, match=r"missing key 'obs'.*\(B, 4\)"):
        getattr(m, method)({"observations": torch.zeros(2, 4)})


def test_non_dict_batch_is_value_error():
    with pytest.raises(ValueError):
        _module().forward_train(torch.zeros(2, 4))


def test_non_tensor_obs_is_value_error():
    with pytest.raises(ValueError, match="obs"):
        _module().forward_train({Columns.OBS: [[0.0] * 4]})


def test_spec_check_after_good_call_still_rejects_bad_shape():
    """The per-shape cache must not let a later bad shape through."""
    m = _module()
    m.forward_inference({Columns.OBS: torch.zeros(3, 4)})
    m.forward_inference({Columns.OBS: torch.zeros(3, 4)})
    with pytest.raises(ValueError, match=r"\(3, 5\)"):
        m.forward_inference({Columns.OBS: torch.zeros(3, 5)})


def test_state_in_shape_error_names_nested_key():
    m = _module(use_lstm=True, lstm_cell_size=3, vf_share_layers=False)
    s = {"actor": {"h": torch.zeros(2, 1, 3), "c": torch.zeros(2, 1, 3)},
         "critic": {"h": torch.zeros(2, 1, 3), "c": torch.zeros(2, 1, 4)}}
    with pytest.raises(ValueError, match=r"state_in/critic/c.*\(2, 1, 4\)"):
        m.forward_train({Columns.OBS: torch.zeros(2, 5, 4), Columns.STATE_IN: s})


def test_output_spec_is_checked():
    class BadOut(PPOTorchRLModule):
        def _forward_inference(self, batch, **kwargs):
            return {"logits": torch.zeros(1)}

    m = BadOut(observation_space=OBS, action_space=ACT, model_config={"fcnet_hiddens": [4]})
    with pytest.raises(ValueError, match="action_dist_inputs"):
        m.forward_inference({Columns.OBS: torch.zeros(1, 4)})


def test_tensor_spec_describe_and_match():
    s = TensorSpec(("B", 4), ("B", "T", 4))
    assert s.matches((2, 4)) and s.matches((2, 7, 4))
    assert not s.matches((2, 5)) and not s.matches((4,))
    assert "(B, 4)" in s.describe() and "(B, T, 4)" in s.describe()
    with pytest.raises(ValueError):
        TensorSpec()


# ---------------------------------------------------------------------------------------------
# Model config validation
# ---------------------------------------------------------------------------------------------
BAD_CONFIGS = {
    "unknown-key": ({"fcnet_hidden": [4]}, "fcnet_hidden"),
    "bad-activation": ({"fcnet_activation": "sigmoid"}, "fcnet_activation"),
    "bad-head-activation": ({"head_fcnet_activation": "gelu_x"}, "head_fcnet_activation"),
    "size-zero": ({"fcnet_hiddens": [4, 0]}, "fcnet_hiddens"),
    "size-negative": ({"fcnet_hiddens": [-3]}, "fcnet_hiddens"),
    "size-float": ({"fcnet_hiddens": [4.0]}, "fcnet_hiddens"),
    "size-str": ({"fcnet_hiddens": ["8"]}, "fcnet_hiddens"),
    "size-bool": ({"fcnet_hiddens": [True]}, "fcnet_hiddens"),
    "sizes-not-list": ({"fcnet_hiddens": 8}, "fcnet_hiddens"),
    "head-size-zero": ({"head_fcnet_hiddens": [0]}, "head_fcnet_hiddens"),
    "hidden-and-fcnet_hiddens": ({"hidden": [4], "fcnet_hiddens": [4]}, "hidden"),
    # (the same value under both names is RLlib's MODEL_DEFAULTS, accepted: tests/test_model_config.py)
    "post-and-head-hiddens": ({"post_fcnet_hiddens": [4], "head_fcnet_hiddens": [5]}, "post_fcnet_hiddens"),
    "vf_share_layers-int": ({"vf_share_layers": 1}, "vf_share_layers"),
    "use_lstm-str": ({"use_lstm": "yes"}, "use_lstm"),
    "lstm_cell_size-zero": ({"use_lstm": True, "lstm_cell_size": 0}, "lstm_cell_size"),
    "lstm_cell_size-float": ({"use_lstm": True, "lstm_cell_size": 4.5}, "lstm_cell_size"),
    "max_seq_len-negative": ({"max_seq_len": -1}, "max_seq_len"),
    "log_std_clip-negative": ({"log_std_clip_param": -1.0}, "log_std_clip_param"),
    "lstm-and-gru": ({"use_lstm": True, "use_gru": True}, "use_lstm"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_model_config_is_value_error_naming_key(case):
    cfg, key = BAD_CONFIGS[case]
    with pytest.raises(ValueError, match=re.escape(key)):
        PPOTorchRLModule(observation_space=OBS, action_space=ACT, model_config=cfg)


def test_bad_model_config_through_spec_build():
    with pytest.raises(ValueError, match="fcnet_activation"):
        spec(model_config_dict={"fcnet_activation": "sigmoid"}).build()


def test_free_log_std_on_discrete_is_value_error():
    with pytest.raises(ValueError, match="free_log_std"):
        PPOTorchRLModule(observation_space=OBS, action_space=ACT, model_config={"free_log_std": True})


@pytest.mark.parametrize("space,what", [
    (gym.spaces.Box(-1, 1, (2, 2), np.float32), "action_space"),
    (gym.spaces.MultiBinary(3), "action_space"),
], ids=["Box2x2-actions", "MultiBinary-actions"])
def test_unsupported_action_space_is_value_error(space, what):
    with pytest.raises(ValueError, match=what):
        PPOTorchRLModule(observation_space=OBS, action_space=space, model_config={"fcnet_hiddens": [4]})


@pytest.mark.parametrize("space", [gym.spaces.Tuple([OBS, gym.spaces.Text(5)]), gym.spaces.Sequence(OBS)],
                         ids=["Tuple-with-Text", "Sequence"])
def test_unsupported_observation_space_is_value_error(space):
    # (Dict / Tuple of Box, Discrete, MultiDiscrete, MultiBinary are flattened as RLlib does)
    with pytest.raises(ValueError, match="observation_space"):
        PPOTorchRLModule(observation_space=space, action_space=ACT, model_config={"fcnet_hiddens": [4]})


def test_hidden_alias():
    m = PPOTorchRLModule(observation_space=OBS, action_space=ACT, model_config={"hidden": [128, 128]})
    shapes = layer_shapes(m)
    assert shapes["encoder.encoder.net.mlp.0.weight"] == (128, 4)
    assert shapes["encoder.encoder.net.mlp.2.weight"] == (128, 128)
    assert "encoder.encoder.net.mlp.4.weight" not in shapes


def test_post_fcnet_aliases():
    m = PPOTorchRLModule(observation_space=OBS, action_space=ACT,
                         model_config={"fcnet_hiddens": [6], "post_fcnet_hiddens": [5], "post_fcnet_activation": "linear"})
    shapes = layer_shapes(m)
    assert shapes["pi.net.mlp.0.weight"] == (5, 6)
    assert shapes["pi.net.mlp.1.weight"] == (3, 5)  # linear activation: no activation module between
    assert shapes["vf.net.mlp.1.weight"] == (1, 5)


def test_defaults_are_rllibs():
    from rlmodule_fast.models.config import resolve_model_config

    cfg = resolve_model_config({})
    assert cfg["fcnet_hiddens"] == [256, 256] and cfg["fcnet_activation"] == "tanh"
    assert cfg["head_fcnet_hiddens"] == [] and cfg["head_fcnet_activation"] == "relu"
    assert cfg["vf_share_layers"] is True and cfg["free_log_std"] is False
    assert cfg["log_std_clip_param"] == 20.0 and cfg["use_lstm"] is False and cfg["use_gru"] is False
    assert cfg["lstm_cell_size"] == 256 and cfg["max_seq_len"] == 20
    m = PPOTorchRLModule(observation_space=OBS, action_space=ACT)
    assert layer_shapes(m)["encoder.encoder.net.mlp.2.weight"] == (256, 256)


def test_model_config_not_mutated():
    mc = {"hidden": [4], "post_fcnet_activation": "Tanh"}
    keep = {"hidden": [4], "post_fcnet_activation": "Tanh"}
    PPOTorchRLModule(observation_space=OBS, action_space=ACT, model_config=mc)
    assert mc == keep


@pytest.mark.parametrize("field", ["model_config", "model_config_dict"])
def test_spec_model_config_assigned_after_construction(field):
    """Newer RLlib code sets ``spec.model_config = {...}`` after building the spec; older code
    sets ``model_config_dict``. Either must reach build(), directly and via MultiRLModuleSpec."""
    s = RLModuleSpec(module_class=PPOTorchRLModule, observation_space=OBS, action_space=ACT,
                     model_config={"fcnet_hiddens": [5]})
    setattr(s, field, {"fcnet_hiddens": [3]})
    assert layer_shapes(s.build())["encoder.encoder.net.mlp.0.weight"] == (3, 4)
    mm = rf.MultiRLModuleSpec(rl_module_specs={"x": s}).build()
    assert layer_shapes(mm["x"])["encoder.encoder.net.mlp.0.weight"] == (3, 4)
