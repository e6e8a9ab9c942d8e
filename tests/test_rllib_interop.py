"""RLlib interop of PPOTorchRLModule: same parameter names and shapes as RLlib's
DefaultPPOTorchRLModule, and the same outputs for the same weights.

Two layers of checks:

- always (no ray needed): against ``tests/data/rllib_ppo_state_shapes.json``, generated with
  RLlib 2.60 by ``tests/data/make_rllib_fixtures.py`` -- parameter names/shapes, initial-state
  shapes, and RLlib's outputs for fixed weights on a fixed batch ("golden" outputs);
- when ``ray.rllib`` is importable: live, RLlib's module built here, its state moved into ours
  with get_state/set_state (and ours back into RLlib's), outputs compared on the same batch.

To run the live part here (RLlib 2.60 lives in its own venv; rlmodule_fast's built extension is
picked up from the source tree, pytest was installed into that venv):

    PYTHONPATH=$PWD /work/venv-ray/bin/python -m pytest tests/test_rllib_interop.py -p no:cacheprovider

Regenerate the fixture (only when RLlib's layout changes) with
``/work/venv-ray/bin/python tests/data/make_rllib_fixtures.py``; its output is deterministic.

Tolerances: same torch build, same float32 ops in the same order where the implementations
agree, so the difference is rounding only (LSTMs may reorder the gate GEMMs): rtol=atol=1e-5.
"""
from __future__ import annotations

import json
import pathlib

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

FIXTURE = pathlib.Path(__file__).parent / "data" / "rllib_ppo_state_shapes.json"
DATA = json.loads(FIXTURE.read_text())
CASES = DATA["cases"]
RTOL = ATOL = 1e-5

# Backends for the exploration/inference forward ("auto" takes the fused fast path when one is
# usable here; "torch" forces the reference). Forcing is per test (monkeypatch), never global.
STEP_BACKENDS = ["torch", "auto"]


def make_space(d: dict) -> gym.Space:
    if d["type"] == "Discrete":
        return gym.spaces.Discrete(d["n"])
    if d["type"] == "MultiDiscrete":
        return gym.spaces.MultiDiscrete(d["nvec"])
    return gym.spaces.Box(d["low"], d["high"], tuple(d["shape"]), np.float32)


def build_ours(case: dict, model_config: dict, inference_only: bool = False) -> PPOTorchRLModule:
    return rf.RLModuleSpec(
        module_class=PPOTorchRLModule,
        observation_space=make_space(case["observation_space"]),
        action_space=make_space(case["action_space"]),
        model_config_dict=dict(model_config),
        catalog_class=PPOCatalog,
        inference_only=inference_only,
    ).build()


def nested(fn, d):
    return {k: nested(fn, v) if isinstance(v, dict) else fn(v) for k, v in d.items()}


def t32(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def assert_close(got, want, what: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{what}: expected a dict, got {type(got).__name__}"
        assert sorted(got) == sorted(want), f"{what}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            assert_close(got[k], want[k], f"{what}[{k!r}]")
        return
    got = torch.as_tensor(got).detach().float()
    want = torch.as_tensor(want).detach().float()
    assert tuple(got.shape) == tuple(want.shape), f"{what}: shape {tuple(got.shape)} != RLlib's {tuple(want.shape)}"
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=lambda m: f"{what}: {m}")


def set_backend(monkeypatch, backend: str) -> None:
    if backend == "auto":
        monkeypatch.delenv("RLMODULE_FAST_BACKEND", raising=False)
    else:
        monkeypatch.setenv("RLMODULE_FAST_BACKEND", backend)


def test_fixture_is_from_rllib():
    assert DATA["module_class"].endswith("DefaultPPOTorchRLModule")
    assert DATA["ray_version"].startswith("2.")
    assert len(CASES) >= 8


# --------------------------------------------------------------------------------------------
# (a) names and shapes, without ray
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CASES))
def test_state_names_and_shapes_match_rllib(name):
    case = CASES[name]
    module = build_ours(case, case["model_config"])
    ours = {k: list(v.shape) for k, v in module.get_state().items()}
    want = case["shapes"]
    assert sorted(ours) == sorted(want), (
        f"{name}: only ours {sorted(set(ours) - set(want))}, only RLlib's {sorted(set(want) - set(ours))}"
    )
    bad = {k: (ours[k], want[k]) for k in want if ours[k] != want[k]}
    assert not bad, f"{name}: shapes differ (ours, RLlib's): {bad}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_inference_only_state_matches_rllib(name):
    """What a Learner's full module hands an EnvRunner's (inference-only) module."""
    case = CASES[name]
    full = build_ours(case, case["model_config"])
    assert sorted(full.get_state(inference_only=True)) == case["keys_get_state_inference_only"]
    small = build_ours(case, case["model_config"], inference_only=True)
    keys = set(small.get_state())
    # RLlib 2.60 drops vf (and the critic encoder) from inference-only MLP modules but keeps them
    # in stateful ones; ours must at least hold what get_state(inference_only=True) gives and
    # nothing RLlib's inference-only module lacks.
    assert set(case["keys_get_state_inference_only"]) <= keys <= set(case["shapes_inference_only"])
    if not case["initial_state"]:
        assert keys == set(case["shapes_inference_only"])
    else:
        # RLlib: "If we have a stateful model, states for the critic need to be collected during
        # sampling" -> a stateful module keeps its whole encoder (critic LSTM included).
        encoder = {k for k in case["shapes_inference_only"] if k.startswith("encoder.")}
        assert encoder <= keys, f"{name}: inference-only stateful module lacks {sorted(encoder - keys)}"
        init = full.get_initial_state()
        assert nested(lambda s: list(s.shape), small.get_initial_state()) == nested(lambda s: list(s.shape), init)
    want = case["shapes_inference_only"]
    assert {k: list(v.shape) for k, v in small.get_state().items()} == {k: want[k] for k in keys}


@pytest.mark.parametrize("name", sorted(CASES))
def test_initial_state_layout_matches_rllib(name):
    case = CASES[name]
    module = build_ours(case, case["model_config"])
    init = module.get_initial_state()
    assert nested(lambda s: list(s.shape), init) == case["initial_state"]
    assert module.is_stateful() == bool(case["initial_state"])


# --------------------------------------------------------------------------------------------
# (a') RLlib's outputs for fixed weights (golden), without ray
# --------------------------------------------------------------------------------------------
def golden_module(name: str) -> tuple[PPOTorchRLModule, dict]:
    case = CASES[name]
    g = case["golden"]
    module = build_ours(case, g["model_config"])
    module.set_state({k: t32(v) for k, v in g["state"].items()})
    module.eval()
    return module, g


def golden_batch(g: dict) -> dict:
    batch = {"obs": t32(g["batch"]["obs"])}
    if "state_in" in g["batch"]:
        batch["state_in"] = nested(t32, g["batch"]["state_in"])
    return batch


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_train_matches_rllib_golden(name):
    module, g = golden_module(name)
    out = module.forward_train(golden_batch(g))
    want = g["train"]
    assert_close(out["action_dist_inputs"], want["action_dist_inputs"], f"{name} action_dist_inputs")
    assert_close(out["vf_preds"], want["vf_preds"], f"{name} vf_preds")
    assert_close(out["embeddings"], want["embeddings"], f"{name} embeddings")
    assert_close(module.compute_values(golden_batch(g)), want["vf_preds"], f"{name} compute_values")
    if "state_out" in want:
        assert_close(out["state_out"], want["state_out"], f"{name} state_out")


@pytest.mark.parametrize("backend", STEP_BACKENDS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_inference_matches_rllib_golden(name, backend, monkeypatch):
    set_backend(monkeypatch, backend)
    module, g = golden_module(name)
    batch = golden_batch(g)
    if "state_in" in batch:  # one env step, RLlib's layout: obs [B, 1, ...], state [B, 1, cell]
        batch["obs"] = batch["obs"][:, :1]
    with torch.no_grad():
        out = module.forward_inference(batch)
    want = g["inference"]
    assert_close(out["action_dist_inputs"], want["action_dist_inputs"], f"{name} inference action_dist_inputs")
    if "state_out" in want:
        assert_close(out["state_out"], want["state_out"], f"{name} inference state_out")
    if "actions" in out:  # fast path: the deterministic action of those inputs
        dist = module.get_inference_action_dist_cls().from_logits(out["action_dist_inputs"])
        assert_close(out["actions"], dist.to_deterministic().sample(), f"{name} inference actions")


@pytest.mark.parametrize("backend", STEP_BACKENDS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_inference_only_module_matches_rllib_golden(name, backend, monkeypatch):
    """An inference-only module loaded from the full module's get_state(inference_only=True)."""
    set_backend(monkeypatch, backend)
    full, g = golden_module(name)
    module = build_ours(CASES[name], g["model_config"], inference_only=True)
    module.set_state(full.get_state(inference_only=True))  # what RLlib's Learner hands out: must load
    # RLlib 2.60 leaves the critic encoder out of get_state(inference_only=True) even for stateful
    # modules, whose inference-only form still runs it (for the critic state); so give it every
    # weight it holds, from the full state, to compare all outputs.
    own = set(module.get_state())
    module.set_state({k: v for k, v in full.get_state().items() if k in own})
    batch = golden_batch(g)
    if "state_in" in batch:
        batch["obs"] = batch["obs"][:, :1]
    with torch.no_grad():
        out = module.forward_inference(batch)
        expl = module.forward_exploration(batch)
    assert_close(out["action_dist_inputs"], g["inference"]["action_dist_inputs"], f"{name} inference action_dist_inputs")
    assert_close(expl["action_dist_inputs"], g["inference"]["action_dist_inputs"], f"{name} exploration action_dist_inputs")
    if "state_out" in g["inference"]:
        assert_close(out["state_out"], g["inference"]["state_out"], f"{name} inference state_out")
    if "state_in" not in batch:  # (RLlib turns inference_only off for stateful modules)
        with pytest.raises(RuntimeError):
            module.forward_train(golden_batch(g))


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_state_round_trips(name):
    module, g = golden_module(name)
    state = module.get_state()
    assert sorted(state) == sorted(g["state"])
    for k, v in g["state"].items():
        assert torch.equal(state[k].float(), t32(v)), k


# --------------------------------------------------------------------------------------------
# (b) live against RLlib (only where ray[rllib] is installed)
# --------------------------------------------------------------------------------------------
LIVE_CASES = sorted(CASES)


def build_rllib(case: dict, model_config: dict):
    pytest.importorskip("ray.rllib")
    from ray.rllib.algorithms.ppo.ppo_catalog import PPOCatalog as RLlibPPOCatalog
    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule

    return DefaultPPOTorchRLModule(
        observation_space=make_space(case["observation_space"]),
        action_space=make_space(case["action_space"]),
        model_config=dict(model_config),
        catalog_class=RLlibPPOCatalog,
    )


def random_batch(module, case: dict, recurrent: bool, gen: torch.Generator, B: int = 5, T: int = 3) -> dict:
    obs_dim = case["observation_space"]["shape"][0]
    batch = {"obs": torch.randn((B, T, obs_dim) if recurrent else (B, obs_dim), generator=gen)}
    if recurrent:
        batch["state_in"] = nested(
            lambda s: 0.5 * torch.randn((B, *torch.as_tensor(s).shape), generator=gen), module.get_initial_state()
        )
    return batch


def perturbed(state: dict, gen: torch.Generator) -> dict:
    out = {}
    for k, v in state.items():
        v = torch.as_tensor(np.asarray(v))
        out[k] = v if k.endswith("log_std_clip_param_const") else v + 0.1 * torch.randn(v.shape, generator=gen)
    return out


def compare_live(rllib_module, ours, case, name, gen) -> None:
    recurrent = bool(case["golden"]["model_config"].get("use_lstm"))
    batch = random_batch(ours, case, recurrent, gen)
    rllib_module.eval()
    ours.eval()
    with torch.no_grad():
        r = rllib_module.forward_train(dict(batch))
        r_vf = rllib_module.compute_values(dict(batch), embeddings=r["embeddings"])
    o = ours.forward_train(dict(batch))
    assert_close(o["action_dist_inputs"], r["action_dist_inputs"], f"{name} train action_dist_inputs")
    assert_close(o["vf_preds"], r_vf, f"{name} train vf_preds")
    assert_close(o["embeddings"], r["embeddings"], f"{name} train embeddings")
    if recurrent:
        assert_close(o["state_out"], r["state_out"], f"{name} train state_out")
    step = dict(batch)
    if recurrent:
        step["obs"] = batch["obs"][:, :1]
    with torch.no_grad():
        r = rllib_module.forward_inference(dict(step))
        o = ours.forward_inference(dict(step))
        re_ = rllib_module.forward_exploration(dict(step))
        oe = ours.forward_exploration(dict(step))
    assert_close(o["action_dist_inputs"], r["action_dist_inputs"], f"{name} inference action_dist_inputs")
    assert_close(oe["action_dist_inputs"], re_["action_dist_inputs"], f"{name} exploration action_dist_inputs")
    if recurrent:
        assert_close(o["state_out"], r["state_out"], f"{name} inference state_out")
        assert_close(oe["state_out"], re_["state_out"], f"{name} exploration state_out")


@pytest.mark.parametrize("backend", STEP_BACKENDS)
@pytest.mark.parametrize("name", LIVE_CASES)
def test_live_rllib_state_into_ours(name, backend, monkeypatch):
    case = CASES[name]
    cfg = case["golden"]["model_config"]
    rllib_module = build_rllib(case, cfg)
    set_backend(monkeypatch, backend)
    gen = torch.Generator().manual_seed(7)
    rllib_module.set_state(perturbed(rllib_module.get_state(), gen))
    ours = build_ours(case, cfg)
    ours.set_state(rllib_module.get_state())  # RLlib gives numpy arrays; names unchanged
    compare_live(rllib_module, ours, case, name, gen)


@pytest.mark.parametrize("name", LIVE_CASES)
def test_live_our_state_into_rllib(name):
    case = CASES[name]
    cfg = case["golden"]["model_config"]
    rllib_module = build_rllib(case, cfg)
    gen = torch.Generator().manual_seed(11)
    ours = build_ours(case, cfg)
    ours.set_state(perturbed(ours.get_state(), gen))
    rllib_module.set_state(ours.get_state())
    # Nothing lost or renamed on the way: RLlib's state equals ours, key for key.
    back = rllib_module.get_state()
    assert sorted(back) == sorted(ours.get_state())
    for k, v in ours.get_state().items():
        assert np.array_equal(np.asarray(back[k]), v.detach().numpy()), k
    compare_live(rllib_module, ours, case, name, gen)


@pytest.mark.parametrize("name", ["discrete-mlp-shared", "discrete-lstm-separate"])
def test_live_default_sizes_shapes(name):
    """RLlib built here with the default sizes: same state keys and shapes as ours."""
    case = CASES[name]
    rllib_module = build_rllib(case, case["model_config"])
    ours = build_ours(case, case["model_config"])
    want = {k: list(np.asarray(v).shape) for k, v in rllib_module.get_state().items()}
    assert {k: list(v.shape) for k, v in ours.get_state().items()} == want


@pytest.mark.parametrize("name", LIVE_CASES)
def test_live_inference_only_both_ways(name):
    """Learner -> EnvRunner weight sync across the two libraries: a full module's
    get_state(inference_only=True) loaded into the other library's inference-only module."""
    case = CASES[name]
    cfg = case["golden"]["model_config"]
    gen = torch.Generator().manual_seed(13)
    rllib_full = build_rllib(case, cfg)
    rllib_full.set_state(perturbed(rllib_full.get_state(), gen))
    ours_small = build_ours(case, cfg, inference_only=True)
    ours_small.set_state(rllib_full.get_state(inference_only=True))

    ours_full = build_ours(case, cfg)
    ours_full.set_state(perturbed(ours_full.get_state(), gen))
    rllib_small = build_rllib(case, cfg)
    rllib_small = type(rllib_small)(
        observation_space=rllib_small.observation_space, action_space=rllib_small.action_space,
        model_config=dict(cfg), catalog_class=type(rllib_small.catalog), inference_only=True,
    )
    rllib_small.set_state(ours_full.get_state(inference_only=True))
    # Stateful modules keep their critic encoder on the EnvRunner but RLlib's
    # get_state(inference_only=True) leaves it out: top up from the full state (see above).
    for src, dst in ((rllib_full, ours_small), (ours_full, rllib_small)):
        own = set(dst.get_state())
        dst.set_state({k: v for k, v in src.get_state().items() if k in own})

    recurrent = bool(cfg.get("use_lstm"))
    batch = random_batch(rllib_full, case, recurrent, gen, T=1)
    for src, dst in ((rllib_full, ours_small), (ours_full, rllib_small)):
        src.eval()
        dst.eval()
        with torch.no_grad():
            want = src.forward_inference(dict(batch))
            got = dst.forward_inference(dict(batch))
        assert_close(got["action_dist_inputs"], want["action_dist_inputs"], f"{name} {type(dst).__name__}")
        if recurrent:
            assert_close(got["state_out"], want["state_out"], f"{name} {type(dst).__name__} state_out")
