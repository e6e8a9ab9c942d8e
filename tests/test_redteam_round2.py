"""Red-team round 2: initializer names / kwargs in model configs (checkpoints included).

A model config may come from a checkpoint file: an initializer string must name a public
``torch.nn.init`` function (never a dunder / private attribute of the module, e.g. ``__class__``
-> ``types.ModuleType``, ``__eq__`` -> a silent no-op), and kwargs the initializer refuses are a
ValueError naming the key, from the constructor and from ``from_checkpoint`` alike.
"""
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.models.initializers import get_initializer_fn
from rlmodule_fast.ppo import PPOTorchRLModule
from rlmodule_fast.sac import SACTorchRLModule

BOX4 = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)


@pytest.mark.parametrize("name", ["__class__", "__eq__", "__init__", "__dir__", "_no_grad_fill_", "__getattribute__"])
def test_initializer_name_must_be_a_public_nn_init_function(name):
    with pytest.raises(ValueError, match="fcnet_kernel_initializer"):
        get_initializer_fn(name, what="fcnet_kernel_initializer")
    with pytest.raises(ValueError, match="fcnet_kernel_initializer"):
        PPOTorchRLModule(observation_space=BOX4, action_space=gym.spaces.Discrete(2),
                         model_config={"fcnet_hiddens": [4], "fcnet_kernel_initializer": name})


def test_public_initializers_still_resolve():
    assert get_initializer_fn("Orthogonal_") is torch.nn.init.orthogonal_
    assert get_initializer_fn(torch.nn.init.zeros_) is torch.nn.init.zeros_


@pytest.mark.parametrize("stack,kwargs", [
    ("fcnet", {"gain": "x"}),
    ("fcnet", {"gain": [1.0] * 4}),
    ("fcnet", {"tensor": 1}),
])
def test_bad_initializer_kwargs_are_a_value_error_naming_the_key(stack, kwargs):
    mc = {"fcnet_hiddens": [4], f"{stack}_kernel_initializer": "orthogonal_",
          f"{stack}_kernel_initializer_kwargs": kwargs}
    with pytest.raises(ValueError, match=f"{stack}_kernel_initializer"):
        PPOTorchRLModule(observation_space=BOX4, action_space=gym.spaces.Discrete(2), model_config=mc)


def test_bad_initializer_kwargs_sac_fusionnet_and_conv():
    with pytest.raises(ValueError, match="fusionnet_kernel_initializer"):
        SACTorchRLModule(observation_space=BOX4, action_space=gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
                         model_config={"fcnet_hiddens": [4], "fusionnet_hiddens": [4],
                                       "fusionnet_kernel_initializer": "xavier_uniform_",
                                       "fusionnet_kernel_initializer_kwargs": {"gain": "x"}})
    with pytest.raises(ValueError, match="conv_kernel_initializer"):
        PPOTorchRLModule(observation_space=gym.spaces.Box(0, 255, (8, 8, 3), np.uint8),
                         action_space=gym.spaces.Discrete(2),
                         model_config={"conv_filters": [[4, 3, 2]], "fcnet_hiddens": [4],
                                       "conv_kernel_initializer": "dirac_",
                                       "conv_kernel_initializer_kwargs": {"groups": 0}})
    with pytest.raises(ValueError, match="lstm_kernel_initializer"):
        PPOTorchRLModule(observation_space=BOX4, action_space=gym.spaces.Discrete(2),
                         model_config={"fcnet_hiddens": [4], "use_lstm": True, "lstm_cell_size": 4,
                                       "lstm_kernel_initializer": "orthogonal_",
                                       "lstm_kernel_initializer_kwargs": {"gain": "x"}})


@pytest.mark.parametrize("patch", [
    {"fcnet_kernel_initializer": "__class__"},
    {"fcnet_kernel_initializer": "__eq__", "fcnet_kernel_initializer_kwargs": None},
    {"fcnet_kernel_initializer_kwargs": {"gain": "x"}},
    {"fcnet_kernel_initializer": "kaiming_uniform_", "fcnet_kernel_initializer_kwargs": {"a": 1e308}},
])
def test_hostile_initializer_in_sac_checkpoint_names_file_and_key(tmp_path, patch):
    m = SACTorchRLModule(observation_space=BOX4, action_space=gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
                         model_config={"fcnet_hiddens": [4], "fusionnet_hiddens": [4],
                                       "fcnet_kernel_initializer": "orthogonal_",
                                       "fcnet_kernel_initializer_kwargs": {"gain": 1.0}})
    m.save_to_path(tmp_path / "ck")
    f = tmp_path / "ck" / "class_and_ctor_args.json"
    data = json.loads(f.read_text())
    data["ctor_kwargs"]["config"]["model_config_dict"].update(patch)
    f.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="class_and_ctor_args.json") as e:
        rf.RLModule.from_checkpoint(tmp_path / "ck")
    assert "fcnet_kernel_initializer" in str(e.value)


def test_cli_export_of_an_action_masking_checkpoint_verifies(tmp_path):
    """The CLI's ONNX Runtime check fed a Box(0, 1) action mask sampled as floats in [0, 1): the
    module refused it ("expected values 0 or 1") after the file was written, and the CLI failed."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from rlmodule_fast.cli import main

    obs = gym.spaces.Dict({"action_mask": gym.spaces.Box(0.0, 1.0, (3,), np.float32), "observations": BOX4})
    PPOTorchRLModule(observation_space=obs, action_space=gym.spaces.Discrete(3),
                     model_config={"fcnet_hiddens": [8]}).save_to_path(tmp_path / "ck")
    assert main(["export", str(tmp_path / "ck"), str(tmp_path / "m.onnx"), "--batch", "5"]) == 0
    assert main(["export", str(tmp_path / "ck"), str(tmp_path / "m2.onnx")]) == 0


def test_cli_export_of_a_multi_discrete_masking_checkpoint_verifies(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from rlmodule_fast.cli import main

    obs = gym.spaces.Dict({"action_mask": gym.spaces.Box(0.0, 1.0, (5,), np.float32), "observations": BOX4})
    PPOTorchRLModule(observation_space=obs, action_space=gym.spaces.MultiDiscrete([2, 3]),
                     model_config={"fcnet_hiddens": [8]}).save_to_path(tmp_path / "ck")
    assert main(["export", str(tmp_path / "ck"), str(tmp_path / "m.onnx"), "--batch", "7"]) == 0


def _onnx_run(path, inputs):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {i.name: t for i, t in zip(sess.get_inputs(), inputs)})))


def test_sac_export_logp_matches_the_module_when_actions_saturate(tmp_path):
    """SAC's ONNX graph took the deterministic action's logp through atanh(tanh(mean)) (clamped
    at 1 - 1e-6), the module from the mean itself: |mean| > ~9 (e.g. raw uint8 images) gave
    logps apart by ~100 and the CLI's check failed."""
    pytest.importorskip("onnx")
    m = SACTorchRLModule(observation_space=BOX4, action_space=gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
                         model_config={"fcnet_hiddens": [4], "fusionnet_hiddens": [4]})
    with torch.no_grad():
        m.pi.net.mlp[0].weight.zero_()
        m.pi.net.mlp[0].bias.copy_(torch.tensor([30.0, -12.0, 0.5, -1.0]))
    m.export_onnx(tmp_path / "m.onnx")
    obs = np.zeros((3, 4), np.float32)
    got = _onnx_run(tmp_path / "m.onnx", [obs])
    want = m.forward_inference({"obs": torch.as_tensor(obs)})
    np.testing.assert_allclose(got["actions"], want["actions"].numpy(), atol=1e-6)
    np.testing.assert_allclose(got["action_logp"], want["action_logp"].numpy(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("act", [gym.spaces.Tuple([gym.spaces.Discrete(2), gym.spaces.Discrete(3)]),
                                 gym.spaces.Tuple([gym.spaces.Discrete(2), gym.spaces.Box(-1.0, 1.0, (2,))]),
                                 gym.spaces.Dict({"a": gym.spaces.Discrete(2)})])
def test_export_refuses_structured_action_spaces(tmp_path, act):
    """The graph's outputs were shifted (actions = first sub-action, action_logp = the second,
    an extra 'squeeze' output): a wrong model written without a word. Refused by name now."""
    pytest.importorskip("onnx")
    m = PPOTorchRLModule(observation_space=BOX4, action_space=act, model_config={"fcnet_hiddens": [4]})
    with pytest.raises(ValueError, match="action_space"):
        m.export_onnx(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_of_a_masking_dqn_checkpoint_verifies(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    dqn = pytest.importorskip("rlmodule_fast.dqn")
    from rlmodule_fast.cli import main

    obs = gym.spaces.Dict({"action_mask": gym.spaces.Box(0.0, 1.0, (3,), np.float32), "observations": BOX4})
    dqn.DQNTorchRLModule(observation_space=obs, action_space=gym.spaces.Discrete(3),
                         model_config={"fcnet_hiddens": [8]}).save_to_path(tmp_path / "ck")
    assert main(["export", str(tmp_path / "ck"), str(tmp_path / "m.onnx"), "--batch", "6", "--no-value"]) == 0


def test_cli_export_of_dqn_goes_through_the_module(tmp_path):
    """The CLI called rlmodule_fast.export.export_onnx(module) directly: DQN's greedy-step forward
    (registered by its own export_onnx) was missing (KeyError 'new_obs' from _forward_train), and
    --explore bypassed DQN's refusal (softmax(Q) sampling instead of epsilon-greedy)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    dqn = pytest.importorskip("rlmodule_fast.dqn")
    from rlmodule_fast.cli import main

    dqn.DQNTorchRLModule(observation_space=BOX4, action_space=gym.spaces.Discrete(3),
                         model_config={"fcnet_hiddens": [8]}).save_to_path(tmp_path / "ck")
    assert main(["export", str(tmp_path / "ck"), str(tmp_path / "m.onnx")]) == 0
    assert main(["export", str(tmp_path / "ck"), str(tmp_path / "e.onnx"), "--explore"]) != 0
    assert not (tmp_path / "e.onnx").exists()
