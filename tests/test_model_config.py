"""DefaultModelConfig, every RLlib model-config key, initializers, catalog hooks, learner_only.

Against RLlib 2.60 itself where ray is installed: the same fields and defaults, the same
parameter names and (for the same seed) the same initial weights as RLlib's
DefaultPPOTorchRLModule built with the same config.
"""
import dataclasses
import functools
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.models.config import DEFAULTS, resolve_model_config
from rlmodule_fast.models.configs import MLPEncoderConfig
from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

OBS = gym.spaces.Box(-1.0, 1.0, (5,), np.float32)
DISC = gym.spaces.Discrete(3)
BOX = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


def _rllib_config_cls():
    pytest.importorskip("ray.rllib")
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    return DefaultModelConfig


def _defaults(cls) -> dict:
    return {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
            for f in dataclasses.fields(cls)}


# ----------------------------------------------------------------------------- the dataclass

def test_default_model_config_has_rllibs_fields_and_defaults():
    theirs = _defaults(_rllib_config_cls())
    ours = _defaults(rf.DefaultModelConfig)
    assert ours == theirs
    assert [f.name for f in dataclasses.fields(rf.DefaultModelConfig)] == list(theirs)


def test_every_rllib_key_is_known_and_default_resolves_to_defaults():
    cfg = resolve_model_config(dataclasses.asdict(_rllib_config_cls()()))
    for key, value in _defaults(rf.DefaultModelConfig).items():
        assert cfg[key] == value, key


def test_rllib_model_defaults_dict_is_accepted():
    pytest.importorskip("ray.rllib")
    from ray.rllib.models import MODEL_DEFAULTS

    cfg = resolve_model_config(MODEL_DEFAULTS.copy())
    assert cfg["fcnet_hiddens"] == [256, 256] and cfg["head_fcnet_hiddens"] == []
    with pytest.raises(ValueError, match="custom_model"):
        resolve_model_config(dict(MODEL_DEFAULTS, custom_model="mine"))


@pytest.mark.parametrize("how", ["ours", "rllib", "dict"])
def test_model_config_forms_build_the_same_module(how):
    kw = dict(fcnet_hiddens=[7, 6], head_fcnet_hiddens=[4], fcnet_use_layernorm=True)
    cfg = {"ours": lambda: rf.DefaultModelConfig(**kw), "rllib": lambda: _rllib_config_cls()(**kw),
           "dict": lambda: dict(kw)}[how]()
    for build in (lambda: PPOTorchRLModule(observation_space=OBS, action_space=DISC, model_config=cfg),
                  lambda: rf.RLModuleSpec(module_class=PPOTorchRLModule, observation_space=OBS, action_space=DISC,
                                          model_config=cfg).build(),
                  lambda: rf.RLModuleSpec(module_class=PPOTorchRLModule, observation_space=OBS, action_space=DISC,
                                          model_config_dict=cfg).build()):
        m = build()
        shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
        assert shapes["encoder.encoder.net.mlp.0.weight"] == (7, 5)
        assert shapes["encoder.encoder.net.mlp.1.weight"] == (7,)  # LayerNorm after layer 0
        assert shapes["pi.net.mlp.0.weight"] == (4, 6)
        assert isinstance(m.model_config, dict) and m.model_config["fcnet_hiddens"] == [7, 6]


@pytest.mark.parametrize("cfg, key", [
    ({"fcnet_kernel_initializer": "xavier_uniform"}, "fcnet_kernel_initializer"),   # not in-place
    ({"lstm_bias_initializer": "no_such_init_"}, "lstm_bias_initializer"),
    ({"conv_kernel_initializer": 3}, "conv_kernel_initializer"),
    ({"head_fcnet_bias_initializer_kwargs": [1]}, "head_fcnet_bias_initializer_kwargs"),
    ({"fcnet_use_layernorm": 1}, "fcnet_use_layernorm"),
    ({"lstm_use_prev_action": "yes"}, "lstm_use_prev_action"),
    ({"conv_activation": "gelu"}, "conv_activation"),
    ({"fusionnet_hiddens": [0]}, "fusionnet_hiddens"),
    ({"conv_filters": 16}, "conv_filters"),
    ({"fcnet_hidden": [4]}, "fcnet_hidden"),  # a typo is unknown
    ({"use_attention": True}, "use_attention"),
])
def test_bad_values_name_the_key(cfg, key):
    with pytest.raises(ValueError, match=key):
        resolve_model_config(cfg)


def test_keys_are_stored():
    cfg = resolve_model_config({"conv_filters": [(16, 4, 2), [32, 4, 2]], "conv_activation": "Swish",
                                "fusionnet_hiddens": (8,), "conv_kernel_initializer": "orthogonal_",
                                "conv_kernel_initializer_kwargs": {"gain": 2.0}})
    assert cfg["conv_filters"] == [[16, 4, 2], [32, 4, 2]]
    assert cfg["conv_activation"] == "silu" and cfg["fusionnet_hiddens"] == [8]
    assert cfg["conv_kernel_initializer_kwargs"] == {"gain": 2.0}
    assert set(DEFAULTS) >= set(_defaults(rf.DefaultModelConfig))


def test_prev_action_reward_keys_warn_and_keep_rllibs_layout():
    with pytest.warns(UserWarning, match="PrevActionsPrevRewards"):
        m = PPOTorchRLModule(observation_space=OBS, action_space=DISC,
                             model_config={"use_lstm": True, "lstm_cell_size": 4, "fcnet_hiddens": [3],
                                           "lstm_use_prev_action": True, "lstm_use_prev_reward": True})
    assert m.state_dict()["encoder.encoder.tokenizer.net.mlp.0.weight"].shape == (3, 5)


# ----------------------------------------------------------------------------- initializers

INIT_CONFIGS = {
    "fcnet": dict(fcnet_hiddens=[8, 7], fcnet_kernel_initializer="orthogonal_",
                  fcnet_kernel_initializer_kwargs={"gain": 0.5}, fcnet_bias_initializer="Normal_",
                  fcnet_bias_initializer_kwargs={"std": 0.1}, head_fcnet_hiddens=[6], vf_share_layers=False),
    "callable": dict(fcnet_hiddens=[5], fcnet_kernel_initializer=torch.nn.init.xavier_normal_,
                     fcnet_bias_initializer=torch.nn.init.ones_),
    "layernorm": dict(fcnet_hiddens=[8, 7], fcnet_use_layernorm=True, head_fcnet_hiddens=[6, 3],
                      head_fcnet_use_layernorm=True, head_fcnet_kernel_initializer="zeros_"),
    "lstm": dict(use_lstm=True, lstm_cell_size=5, fcnet_hiddens=[4], fcnet_use_layernorm=True,
                 lstm_kernel_initializer="xavier_uniform_", lstm_bias_initializer="normal_",
                 fcnet_kernel_initializer="kaiming_uniform_", vf_share_layers=False),
}


@pytest.mark.parametrize("action_space", [DISC, BOX], ids=["discrete", "box"])
@pytest.mark.parametrize("case", list(INIT_CONFIGS))
def test_same_seed_same_weights_as_rllib(case, action_space):
    """Initializers go to the layers RLlib gives them to, in RLlib's order: with the same seed
    our module's state dict equals RLlib's DefaultPPOTorchRLModule's, key for key, bit for bit."""
    cls = _rllib_config_cls()
    from ray.rllib.algorithms.ppo.ppo_catalog import PPOCatalog as RLlibPPOCatalog
    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule

    kw = INIT_CONFIGS[case]
    torch.manual_seed(3)
    theirs = DefaultPPOTorchRLModule(observation_space=OBS, action_space=action_space, model_config=cls(**kw),
                                     catalog_class=RLlibPPOCatalog).state_dict()
    torch.manual_seed(3)
    ours = PPOTorchRLModule(observation_space=OBS, action_space=action_space, model_config=cls(**kw)).state_dict()
    assert list(ours) == list(theirs)
    for k in theirs:
        assert torch.equal(ours[k], theirs[k]), k


def test_initializer_callables_in_checkpoints(tmp_path):
    cfg = {"fcnet_hiddens": [4], "fcnet_kernel_initializer": torch.nn.init.orthogonal_}
    m = PPOTorchRLModule(observation_space=OBS, action_space=DISC, model_config=cfg)
    m.save_to_path(tmp_path / "ok")
    back = rf.RLModule.from_checkpoint(tmp_path / "ok")
    assert back.model_config["fcnet_kernel_initializer"] == "orthogonal_"
    for k, v in m.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
    bad = PPOTorchRLModule(observation_space=OBS, action_space=DISC,
                           model_config={"fcnet_hiddens": [4], "fcnet_bias_initializer": lambda t: t.zero_()})
    with pytest.raises(ValueError, match="fcnet_bias_initializer"):
        bad.save_to_path(tmp_path / "bad")


# ----------------------------------------------------------------------------- catalog hooks

def test_get_encoder_config_override_is_built():
    class WideCatalog(PPOCatalog):
        @classmethod
        def _get_encoder_config(cls, observation_space, model_config_dict, action_space=None):
            return MLPEncoderConfig(input_dims=(5,), hidden_layer_dims=[9], hidden_layer_activation="relu",
                                    output_layer_dim=11, output_layer_activation="relu")

    m = PPOTorchRLModule(observation_space=OBS, action_space=DISC, model_config={}, catalog_class=WideCatalog)
    assert m.catalog.latent_dims == (11,)
    assert m.state_dict()["encoder.encoder.net.mlp.2.weight"].shape == (11, 9)
    assert m.state_dict()["pi.net.mlp.0.weight"].shape == (3, 11)
    if rf.backend_info()["cpp"]["available"]:
        assert m.fast_path_info()["active"], m.fast_path_info()  # still layers the fused step runs
    obs = torch.randn(2, 5)
    out = m.forward_inference({"obs": obs})
    torch.testing.assert_close(out["action_dist_inputs"], m.forward_train({"obs": obs})["action_dist_inputs"],
                               atol=1e-5, rtol=1e-5)


def test_determine_components_hook_override():
    class HookCatalog(PPOCatalog):
        def _determine_components_hook(self):
            super()._determine_components_hook()
            self._encoder_config = dataclasses.replace(self._encoder_config, output_layer_dim=6)
            self.latent_dims = (6,)

    m = PPOTorchRLModule(observation_space=OBS, action_space=BOX, model_config={"fcnet_hiddens": [8, 4]},
                         catalog_class=HookCatalog)
    assert m.state_dict()["pi.net.mlp.0.weight"].shape == (4, 6)


def test_tokenizer_config_override_for_lstm():
    class TokCatalog(PPOCatalog):
        @classmethod
        def get_tokenizer_config(cls, observation_space, model_config_dict, **kwargs):
            return MLPEncoderConfig(input_dims=(5,), hidden_layer_dims=[], hidden_layer_activation="tanh",
                                    output_layer_dim=3, output_layer_activation="tanh")

    m = PPOTorchRLModule(observation_space=OBS, action_space=DISC, catalog_class=TokCatalog,
                         model_config={"use_lstm": True, "lstm_cell_size": 4, "fcnet_hiddens": [7]})
    sd = m.state_dict()
    assert sd["encoder.encoder.tokenizer.net.mlp.0.weight"].shape == (3, 5)
    assert sd["encoder.encoder.lstm.weight_ih_l0"].shape == (16, 3)


def test_custom_dist_cls_from_action_space_runs_the_torch_path():
    class HotCategorical(rf.distributions.TorchCategorical):
        @classmethod
        def from_logits(cls, logits, **kw):
            return super().from_logits(logits * 2.0, **kw)

    class DistCatalog(PPOCatalog):
        @classmethod
        def _get_dist_cls_from_action_space(cls, action_space, *, framework=None):
            return HotCategorical if framework else None

    m = PPOTorchRLModule(observation_space=OBS, action_space=DISC, model_config={"fcnet_hiddens": [4]},
                         catalog_class=DistCatalog)
    assert m.get_exploration_action_dist_cls() is HotCategorical
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = m.forward_exploration({"obs": torch.zeros(3, 5)})
    info = m.fast_path_info()
    assert not info["active"] and "action_dist_cls" in info["reason"], info
    assert out["actions"].shape == (3,)


def test_dist_cls_from_action_space_framework_none():
    assert rf.Catalog._get_dist_cls_from_action_space(DISC) is None
    part = rf.Catalog._get_dist_cls_from_action_space(gym.spaces.MultiDiscrete([2, 3]), framework="torch")
    assert part.required_input_dim(gym.spaces.MultiDiscrete([2, 3])) == 5
    with pytest.raises(ValueError, match="int"):
        rf.Catalog._get_dist_cls_from_action_space(gym.spaces.Box(0, 3, (2,), np.int64), framework="torch")


def test_partial_dist_fn_and_latent_dims_like_rllib():
    cat = rf.Catalog(OBS, DISC, {"fcnet_hiddens": [6, 2]})
    assert cat.latent_dims == (2,)
    assert isinstance(cat._action_dist_class_fn, functools.partial)
    assert cat.get_action_dist_cls("torch") is rf.distributions.TorchCategorical
    assert isinstance(cat.build_encoder("torch"), torch.nn.Module)
    ppo = PPOCatalog(OBS, DISC, {"head_fcnet_hiddens": [4], "head_fcnet_activation": "tanh"})
    assert ppo.pi_and_vf_head_hiddens == [4] and ppo.pi_and_vf_head_activation == "tanh"


# ----------------------------------------------------------------------------- learner_only

def test_spec_learner_only():
    s = rf.RLModuleSpec(module_class=PPOTorchRLModule, observation_space=OBS, action_space=DISC,
                        model_config={"fcnet_hiddens": [4]}, learner_only=True)
    m = s.build()
    assert m.learner_only is True
    assert rf.RLModuleSpec.from_module(m).learner_only is True
    d = s.to_dict()
    assert d["learner_only"] is True and rf.RLModuleSpec.from_dict(d).learner_only is True
    other = rf.RLModuleSpec(learner_only=False)
    s.update(other)  # override: learner_only only if both are (RLlib's rule)
    assert s.learner_only is False
    s2 = rf.RLModuleSpec(learner_only=True)
    s2.update(rf.RLModuleSpec(learner_only=False), override=False)
    assert s2.learner_only is True
    assert rf.RLModuleSpec(module_class=PPOTorchRLModule, observation_space=OBS, action_space=DISC,
                           model_config={"fcnet_hiddens": [4]}).build().learner_only is False


def test_build_encoder_override_runs_the_torch_path():
    class OwnEncoderCatalog(PPOCatalog):
        def _determine_components_hook(self):
            super()._determine_components_hook()
            self.latent_dims = (8,)

        def build_encoder(self, framework="torch"):
            return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh())

    m = PPOTorchRLModule(observation_space=OBS, action_space=DISC, model_config={"vf_share_layers": False},
                         catalog_class=OwnEncoderCatalog)
    assert isinstance(m.encoder.actor_encoder, torch.nn.Sequential)
    assert m.state_dict()["encoder.critic_encoder.0.weight"].shape == (8, 5)
    obs = torch.randn(4, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = m.forward_inference({"obs": obs})
    info = m.fast_path_info()
    assert not info["active"] and "encoder" in info["reason"], info
    torch.testing.assert_close(out["action_dist_inputs"], m.forward_train({"obs": obs})["action_dist_inputs"])


def test_multi_spec_with_default_model_config():
    spec = rf.MultiRLModuleSpec(rl_module_specs={"a": rf.RLModuleSpec(module_class=PPOTorchRLModule)},
                                observation_space=OBS, action_space=DISC,
                                model_config=rf.DefaultModelConfig(fcnet_hiddens=[3]))
    m = spec.build()
    assert m["a"].state_dict()["encoder.encoder.net.mlp.0.weight"].shape == (3, 5)


@pytest.mark.parametrize("use_lstm", [False, True])
def test_conv_initializers_same_seed_same_weights_as_rllib(use_lstm):
    """conv_*_initializer go to each Conv2d right after it is built, as RLlib's TorchCNN."""
    cls = _rllib_config_cls()
    from ray.rllib.algorithms.ppo.ppo_catalog import PPOCatalog as RLlibPPOCatalog
    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule

    img = gym.spaces.Box(0.0, 1.0, (10, 10, 3), np.float32)
    kw = dict(conv_filters=[[4, 3, 2], [8, 3, 2]], conv_kernel_initializer="xavier_uniform_",
              conv_kernel_initializer_kwargs={"gain": 0.7}, conv_bias_initializer="normal_",
              use_lstm=use_lstm, lstm_cell_size=5, lstm_kernel_initializer="orthogonal_")
    torch.manual_seed(5)
    theirs = DefaultPPOTorchRLModule(observation_space=img, action_space=DISC, model_config=cls(**kw),
                                     catalog_class=RLlibPPOCatalog).state_dict()
    torch.manual_seed(5)
    ours = PPOTorchRLModule(observation_space=img, action_space=DISC, model_config=cls(**kw)).state_dict()
    assert list(ours) == list(theirs)
    for k in theirs:
        assert torch.equal(ours[k], theirs[k]), k
