"""APPO interop with RLlib: RLlib's ``DefaultAPPOTorchRLModule`` checkpoints (with and without the
``_old_encoder`` / ``_old_pi`` target networks, inference-only both ways, an APPO Algorithm
checkpoint) -> our ``APPOTorchRLModule`` through the one loader ``load_rllib_checkpoint``, with the
same weights and the same ``forward_train`` / ``forward_target`` / ``compute_values`` outputs; live
modules both ways (``from_rllib_module``, ``to_rllib_module`` / ``to_rllib_state``).

The first tests write RLlib-layout pickles without ray (helpers of test_rllib_checkpoint_bounds.py);
the rest need ray[rllib].
"""
from __future__ import annotations

import collections

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast.rllib as rr
from rlmodule_fast.apis import TARGET_NETWORK_ACTION_DIST_INPUTS
from rlmodule_fast.appo import APPOTorchRLModule
from rlmodule_fast.ppo import PPOTorchRLModule
from rlmodule_fast.rllib.convert import STATE_FILE, to_rllib_state
from test_rllib_checkpoint_bounds import ctor_dict, write
from test_rllib_ctor import APPO_CLS

OBS = gym.spaces.Box(-1.0, 1.0, (5,), np.float32)
DISC = gym.spaces.Discrete(3)
BOX = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
SEPARATE = {"fcnet_hiddens": [8, 7], "vf_share_layers": False}
SHARED = {"fcnet_hiddens": [6], "vf_share_layers": True}


def _perturb_targets(m) -> None:
    """Move the target networks away from the main ones, so that forward_target tells them apart."""
    with torch.no_grad():
        for _, tgt in m.get_target_network_pairs():
            for p in tgt.parameters():
                p.add_(0.3)


def _ours_with_targets(act=DISC, cfg=SEPARATE) -> APPOTorchRLModule:
    torch.manual_seed(0)
    m = APPOTorchRLModule(observation_space=OBS, action_space=act, model_config=dict(cfg))
    m.make_target_networks()
    _perturb_targets(m)
    return m


def _equal_states(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ---------------------------------------------------------------------------------------------
# without ray: RLlib-layout files written here
def test_generic_loader_picks_appo_by_class_and_loads_targets(tmp_path):
    src = _ours_with_targets()
    state = collections.OrderedDict(to_rllib_state(src))
    assert any(k.startswith("_old_pi.") for k in state)
    d = write(tmp_path / "ck", ctor_dict(obs=OBS, act=DISC, cfg=dict(SEPARATE), cls=APPO_CLS), state)
    got = rr.load_rllib_checkpoint(d)
    assert type(got) is APPOTorchRLModule and not got.training
    _equal_states(got, src)
    batch = {"obs": torch.randn(4, 5)}
    with torch.no_grad():
        torch.testing.assert_close(got.forward_target(dict(batch))[TARGET_NETWORK_ACTION_DIST_INPUTS],
                                   src.forward_target(dict(batch))[TARGET_NETWORK_ACTION_DIST_INPUTS])
    _equal_states(rr.load_rllib_appo_checkpoint(d), src)
    inf = rr.load_rllib_checkpoint(d, inference_only=True)  # the learner's file, for an env runner
    assert type(inf) is APPOTorchRLModule and inf.inference_only
    assert not any(k.startswith(("_old_", "vf.")) for k in inf.state_dict())
    # the same file named as PPO's class: a PPO module has no place for the target networks
    d2 = write(tmp_path / "as-ppo", ctor_dict(obs=OBS, act=DISC, cfg=dict(SEPARATE)), state)
    with pytest.raises(ValueError, match=r"module_state\.pkl: the weights do not fit a PPOTorchRLModule .*"
                                         r"unexpected \['_old_encoder"):
        rr.load_rllib_checkpoint(d2)


@pytest.mark.parametrize("fault", ["only-old-pi", "old-pi-shape", "no-value-function"])
def test_appo_files_that_do_not_fit_name_the_state_file(tmp_path, fault):
    state = collections.OrderedDict(to_rllib_state(_ours_with_targets()))
    if fault == "only-old-pi":  # half of the target networks
        state = collections.OrderedDict((k, v) for k, v in state.items() if not k.startswith("_old_encoder."))
        want = r"missing \['_old_encoder\.actor_encoder"
    elif fault == "old-pi-shape":
        state["_old_pi.net.mlp.0.weight"] = np.zeros((3, 4), np.float32)
        want = r"'_old_pi\.net\.mlp\.0\.weight' has shape \(3, 4\) but the module built from .* expects \(3, 7\)"
    else:  # an inference-only module's weights, the learner's target networks with them
        state = collections.OrderedDict((k, v) for k, v in state.items() if not k.startswith("vf."))
        want = r"missing \['vf\."
    d = write(tmp_path / "ck", ctor_dict(obs=OBS, act=DISC, cfg=dict(SEPARATE), cls=APPO_CLS), state)
    with pytest.raises(ValueError, match=want) as e:
        rr.load_rllib_checkpoint(d)
    assert str(e.value).startswith(str(d / STATE_FILE)), str(e.value)


def test_appo_checkpoint_without_targets_loads_without_them(tmp_path):
    torch.manual_seed(1)
    src = APPOTorchRLModule(observation_space=OBS, action_space=BOX, model_config=dict(SHARED))
    d = write(tmp_path / "ck", ctor_dict(obs=OBS, act=BOX, cfg=dict(SHARED), cls=APPO_CLS),
              collections.OrderedDict(to_rllib_state(src)))
    got = rr.load_rllib_checkpoint(d)
    assert type(got) is APPOTorchRLModule and not hasattr(got, "_old_pi")
    _equal_states(got, src)
    with pytest.raises(RuntimeError, match="make_target_networks"):
        got.forward_target({"obs": torch.zeros(1, 5)})


# ---------------------------------------------------------------------------------------------
# with ray: RLlib's own modules, files and algorithm
def _rllib():
    pytest.importorskip("ray.rllib")
    from ray.rllib.algorithms.appo.torch.default_appo_torch_rl_module import DefaultAPPOTorchRLModule

    return DefaultAPPOTorchRLModule


def _theirs(act, cfg, *, targets: bool, inference_only: bool = False):
    cls = _rllib()
    torch.manual_seed(3)
    m = cls(observation_space=OBS, action_space=act, model_config=dict(cfg), inference_only=inference_only)
    if targets:
        m.make_target_networks()
        _perturb_targets(m)
    return m


def _train_batch(act, n=6):
    g = torch.Generator().manual_seed(5)
    return {"obs": torch.rand(n, 5, generator=g) * 2 - 1}


def _same_outputs(ours, theirs, act, *, targets: bool) -> None:
    """forward_train, compute_values and (with targets) forward_target equal on one batch."""
    batch = _train_batch(act)
    with torch.no_grad():
        want, got = theirs.forward_train(dict(batch)), ours.forward_train(dict(batch))
        for k in want:
            if isinstance(want[k], torch.Tensor):
                torch.testing.assert_close(got[k], want[k], msg=k)
        torch.testing.assert_close(ours.compute_values(dict(batch)), theirs.compute_values(dict(batch)))
        if targets:
            tw = theirs.forward_target(dict(batch))[TARGET_NETWORK_ACTION_DIST_INPUTS]
            torch.testing.assert_close(ours.forward_target(dict(batch))[TARGET_NETWORK_ACTION_DIST_INPUTS], tw)
            assert not torch.allclose(tw, want["action_dist_inputs"])  # the targets were moved


@pytest.mark.parametrize("targets", [True, False], ids=["targets", "no-targets"])
@pytest.mark.parametrize("act,cfg", [(DISC, SEPARATE), (BOX, SHARED)], ids=["discrete-separate", "box-shared"])
def test_load_rllib_appo_checkpoint(act, cfg, targets, tmp_path):
    """RLlib's own save_to_path of an APPO module -> ours through the one loader: same weights
    (target networks too), same forward_train / compute_values / forward_target; as
    inference-only: the actor alone, same forward_inference."""
    theirs = _theirs(act, cfg, targets=targets)
    theirs.save_to_path(tmp_path / "appo")
    ours = rr.load_rllib_checkpoint(tmp_path / "appo")
    assert type(ours) is APPOTorchRLModule and hasattr(ours, "_old_pi") == targets
    _equal_states(ours, theirs)
    _same_outputs(ours, theirs, act, targets=targets)
    _equal_states(rr.load_rllib_appo_checkpoint(tmp_path / "appo"), ours)
    inf = rr.load_rllib_checkpoint(tmp_path / "appo", inference_only=True)
    assert inf.inference_only and not any(k.startswith(("_old_", "vf.")) for k in inf.state_dict())
    obs = _train_batch(act)["obs"]
    with torch.no_grad():
        torch.testing.assert_close(inf.forward_inference({"obs": obs})["action_dist_inputs"],
                                   theirs.forward_inference({"obs": obs})["action_dist_inputs"], rtol=1e-5, atol=1e-5)


def test_load_inference_only_rllib_appo_checkpoint(tmp_path):
    """An env runner's (inference-only) APPO module file: loads inference-only with the same
    actor; asking for the full module names the file and the missing value function."""
    theirs = _theirs(DISC, SEPARATE, targets=False, inference_only=True)
    theirs.save_to_path(tmp_path / "runner")
    ours = rr.load_rllib_checkpoint(tmp_path / "runner")
    assert type(ours) is APPOTorchRLModule and ours.inference_only
    _equal_states(ours, theirs)
    obs = _train_batch(DISC)["obs"]
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_inference({"obs": obs})["action_dist_inputs"],
                                   theirs.forward_inference({"obs": obs})["action_dist_inputs"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"module_state\.pkl: the weights do not fit .* missing \[.*'vf\."):
        rr.load_rllib_checkpoint(tmp_path / "runner", inference_only=False)


def test_rllib_ppo_and_appo_loaders_refuse_each_other(tmp_path):
    _rllib()
    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule

    DefaultPPOTorchRLModule(observation_space=OBS, action_space=DISC, model_config={"fcnet_hiddens": [4]}
                            ).save_to_path(tmp_path / "ppo")
    with pytest.raises(ValueError, match="DefaultPPOTorchRLModule'\\) is not a APPO module"):
        rr.load_rllib_appo_checkpoint(tmp_path / "ppo")
    assert type(rr.load_rllib_checkpoint(tmp_path / "ppo")) is PPOTorchRLModule


@pytest.mark.parametrize("fast", [False, True], ids=["default", "fast"])
def test_live_appo_modules_both_ways(fast, tmp_path):
    """RLlib's APPO module (or FastAPPOTorchRLModule) -> ours -> RLlib's: the same weights and
    outputs at every step, target networks included; inference-only drops them. A
    FastAPPOTorchRLModule's own checkpoint (its class name in the file) loads too."""
    theirs = _theirs(DISC, SEPARATE, targets=True)
    if fast:
        from rlmodule_fast.rllib import FastAPPOTorchRLModule

        f = FastAPPOTorchRLModule(observation_space=OBS, action_space=DISC, model_config=dict(SEPARATE))
        f.make_target_networks()
        f.set_state(theirs.get_state())
        theirs = f
        f.save_to_path(tmp_path / "fast")
        loaded = rr.load_rllib_checkpoint(tmp_path / "fast")
        assert type(loaded) is APPOTorchRLModule and hasattr(loaded, "_old_pi")
        _equal_states(loaded, f)
    ours = rr.from_rllib_module(theirs)
    assert type(ours) is APPOTorchRLModule and hasattr(ours, "_old_pi") and ours.training == theirs.training
    _equal_states(ours, theirs)
    _same_outputs(ours, theirs, DISC, targets=True)
    assert type(rr.from_rllib_appo_module(theirs)) is APPOTorchRLModule
    assert sorted(rr.to_rllib_state(ours)) == sorted(theirs.get_state())
    back = rr.to_rllib_module(ours)
    assert type(back) is _rllib() and hasattr(back, "_old_pi")
    _equal_states(back, theirs)
    _same_outputs(ours, back, DISC, targets=True)
    from rlmodule_fast.rllib import FastAPPOTorchRLModule

    fast_back = rr.to_rllib_module(ours, FastAPPOTorchRLModule)
    assert type(fast_back) is FastAPPOTorchRLModule
    _equal_states(fast_back, ours)
    again = rr.from_rllib_module(back)
    _equal_states(again, ours)
    inf = rr.from_rllib_module(theirs, inference_only=True)
    assert inf.inference_only and not any(k.startswith(("_old_", "vf.")) for k in inf.state_dict())
    inf_back = rr.to_rllib_module(inf)
    assert inf_back.inference_only and not hasattr(inf_back, "_old_pi")
    _equal_states(inf_back, inf)


def test_live_appo_module_without_targets_and_refusals():
    theirs = _theirs(BOX, SHARED, targets=False)
    ours = rr.from_rllib_module(theirs)
    assert type(ours) is APPOTorchRLModule and not hasattr(ours, "_old_pi")
    _same_outputs(ours, theirs, BOX, targets=False)
    back = rr.to_rllib_module(ours)
    assert not hasattr(back, "_old_pi")
    _equal_states(back, theirs)
    with pytest.raises(ValueError, match="is not RLlib's DefaultAPPOTorchRLModule"):
        rr.from_rllib_appo_module(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="expected an APPOTorchRLModule, got PPOTorchRLModule"):
        rr.to_rllib_appo_module(PPOTorchRLModule(observation_space=OBS, action_space=DISC, model_config={}))


@pytest.fixture(scope="module")
def ray_session():
    pytest.importorskip("ray.rllib")
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_load_appo_algorithm_checkpoint(ray_session, tmp_path):
    """An APPOConfig Algorithm's own checkpoint (not trained: building is enough) -> the learner's
    module with its target networks; read inference-only, the actor alone."""
    from ray.rllib.algorithms.appo import APPOConfig

    config = (APPOConfig().environment("CartPole-v1")
              .env_runners(num_env_runners=0, num_envs_per_env_runner=1)
              .learners(num_learners=0)
              .rl_module(model_config={"fcnet_hiddens": [8]})
              .debugging(seed=0))
    algo = config.build_algo()
    try:
        learner_module = algo.learner_group._learner.module["default_policy"]
        _perturb_targets(learner_module)  # an untrained learner's targets equal its main nets
        path = algo.save_to_path(tmp_path / "algo")
    finally:
        algo.stop()
    ours = rr.load_rllib_checkpoint(path)
    assert type(ours) is APPOTorchRLModule and hasattr(ours, "_old_pi")
    _equal_states(ours, learner_module)
    batch = {"obs": torch.rand(5, 4) - 0.5}
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_target(dict(batch))[TARGET_NETWORK_ACTION_DIST_INPUTS],
                                   learner_module.forward_target(dict(batch))[TARGET_NETWORK_ACTION_DIST_INPUTS])
        torch.testing.assert_close(ours.forward_train(dict(batch))["action_dist_inputs"],
                                   learner_module.forward_train(dict(batch))["action_dist_inputs"])
    # the env runner's copy: the learner's file read inference-only (an algorithm with no remote
    # env runners does not save the local runner's module)
    runner = rr.load_rllib_checkpoint(path, inference_only=True)
    assert type(runner) is APPOTorchRLModule and runner.inference_only and not hasattr(runner, "_old_pi")
    with torch.no_grad():
        torch.testing.assert_close(runner.forward_inference(dict(batch))["action_dist_inputs"],
                                   learner_module.forward_inference(dict(batch))["action_dist_inputs"],
                                   rtol=1e-5, atol=1e-5)
