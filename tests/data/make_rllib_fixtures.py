"""Generate tests/data/rllib_ppo_state_shapes.json from RLlib's DefaultPPOTorchRLModule.

Run with the RLlib venv (ray[rllib] 2.60, torch CPU), from the repository root:

    /work/venv-ray/bin/python tests/data/make_rllib_fixtures.py

The JSON holds, per case (spaces + model config, RLlib's model-config names):

- ``"shapes"``: every entry of RLlib's ``module.get_state()`` -> its shape (default sizes);
- ``"shapes_inference_only"``: the same for RLlib's module built with ``inference_only=True``,
  and ``"keys_get_state_inference_only"``: the keys of a full module's
  ``get_state(inference_only=True)``;
- ``"initial_state"``: the shapes of ``get_initial_state()`` (nested dict);
- ``"golden"`` (small sizes so the file stays small): RLlib's state under a fixed seed (float32
  values as JSON lists), an input batch, and RLlib's ``forward_train`` (``action_dist_inputs``,
  ``embeddings``, ``state_out``), ``compute_values`` and ``forward_inference`` outputs on it.

Nothing here is imported by the tests: they read only the JSON (plain data).
"""
from __future__ import annotations

import json
import pathlib
import re
import sys

import gymnasium as gym
import numpy as np
import torch

import ray
from ray.rllib.algorithms.ppo.ppo_catalog import PPOCatalog
from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule

OUT = pathlib.Path(__file__).with_name("rllib_ppo_state_shapes.json")

OBS = {"type": "Box", "low": -1.0, "high": 1.0, "shape": [4]}
DISCRETE = {"type": "Discrete", "n": 2}
BOX = {"type": "Box", "low": -2.0, "high": 2.0, "shape": [2]}
MULTI = {"type": "MultiDiscrete", "nvec": [3, 4]}

# name -> (obs space, action space, model config for the shapes, model config for the golden run)
SMALL = {"fcnet_hiddens": [7, 5]}
CASES = {
    "discrete-mlp-shared": (OBS, DISCRETE, {}, SMALL),
    "discrete-mlp-separate": (OBS, DISCRETE, {"vf_share_layers": False}, {**SMALL, "vf_share_layers": False}),
    "box-mlp": (OBS, BOX, {}, SMALL),
    "box-free-log-std": (OBS, BOX, {"free_log_std": True}, {**SMALL, "free_log_std": True}),
    "discrete-head5": (OBS, DISCRETE, {"head_fcnet_hiddens": [5]}, {**SMALL, "head_fcnet_hiddens": [3]}),
    "box-head5-separate": (
        OBS, BOX, {"head_fcnet_hiddens": [5], "vf_share_layers": False},
        {**SMALL, "head_fcnet_hiddens": [3], "vf_share_layers": False},
    ),
    "discrete-lstm-shared": (OBS, DISCRETE, {"use_lstm": True}, {**SMALL, "use_lstm": True, "lstm_cell_size": 6}),
    "discrete-lstm-separate": (
        OBS, DISCRETE, {"use_lstm": True, "vf_share_layers": False},
        {**SMALL, "use_lstm": True, "lstm_cell_size": 6, "vf_share_layers": False},
    ),
    "box-lstm-shared": (OBS, BOX, {"use_lstm": True, "lstm_cell_size": 32}, {**SMALL, "use_lstm": True, "lstm_cell_size": 6}),
    "multidiscrete-mlp": (OBS, MULTI, {}, SMALL),
    "discrete-relu-headtanh": (
        OBS, DISCRETE, {"fcnet_activation": "relu", "head_fcnet_hiddens": [5], "head_fcnet_activation": "tanh"},
        {**SMALL, "fcnet_activation": "relu", "head_fcnet_hiddens": [3], "head_fcnet_activation": "tanh"},
    ),
    "discrete-elu-headlinear": (
        OBS, DISCRETE, {"fcnet_activation": "elu", "head_fcnet_hiddens": [4], "head_fcnet_activation": "linear"},
        {**SMALL, "fcnet_activation": "elu", "head_fcnet_hiddens": [4], "head_fcnet_activation": "linear"},
    ),
    # log_std_clip_param small enough that the clamp is active on the golden batch.
    "box-swish-logstd-clip": (
        OBS, BOX, {"fcnet_activation": "swish", "log_std_clip_param": 0.05},
        {**SMALL, "fcnet_activation": "swish", "log_std_clip_param": 0.05},
    ),
    "box-free-log-std-clip": (
        OBS, BOX, {"free_log_std": True, "log_std_clip_param": 0.05},
        {**SMALL, "free_log_std": True, "log_std_clip_param": 0.05},
    ),
}

B, T = 3, 4


def make_space(d: dict) -> gym.Space:
    if d["type"] == "Discrete":
        return gym.spaces.Discrete(d["n"])
    if d["type"] == "MultiDiscrete":
        return gym.spaces.MultiDiscrete(d["nvec"])
    return gym.spaces.Box(d["low"], d["high"], tuple(d["shape"]), np.float32)


def build(obs: dict, act: dict, cfg: dict, inference_only: bool = False) -> DefaultPPOTorchRLModule:
    return DefaultPPOTorchRLModule(
        observation_space=make_space(obs), action_space=make_space(act),
        model_config=dict(cfg), catalog_class=PPOCatalog, inference_only=inference_only,
    )


def tolist(x) -> list:
    return np.asarray(x.detach().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32).tolist()


def nested(fn, d):
    return {k: nested(fn, v) if isinstance(v, dict) else fn(v) for k, v in d.items()}


def golden(obs: dict, act: dict, cfg: dict, seed: int) -> dict:
    torch.manual_seed(seed)
    module = build(obs, act, cfg)
    state = module.get_state()
    # Make every parameter non-trivial (biases start at zero in RLlib; log_std too).
    gen = torch.Generator().manual_seed(seed + 1)
    sd = {}
    for k, v in state.items():
        v = torch.as_tensor(np.asarray(v))
        if k.endswith("log_std_clip_param_const"):
            sd[k] = v
        else:
            sd[k] = v + 0.1 * torch.randn(v.shape, generator=gen, dtype=v.dtype)
    module.set_state(sd)
    recurrent = bool(cfg.get("use_lstm"))
    x = torch.randn((B, T, 4) if recurrent else (B, 4), generator=gen)
    batch = {"obs": x}
    if recurrent:
        init = module.get_initial_state()
        batch["state_in"] = nested(
            lambda s: 0.5 * torch.randn((B, *s.shape), generator=gen), init
        )
    module.eval()
    with torch.no_grad():
        train = module.forward_train(dict(batch))
        values = module.compute_values(dict(batch), embeddings=train["embeddings"])
        if recurrent:  # one env step: obs [B, 1, ...] from the state at the start of the sequence
            step = {"obs": x[:, :1], "state_in": batch["state_in"]}
        else:
            step = {"obs": x}
        inf = module.forward_inference(dict(step))
    g = {
        "model_config": cfg,
        "seed": seed,
        "state": {k: tolist(v) for k, v in module.get_state().items()},
        "batch": {"obs": tolist(x)},
        "train": {
            "action_dist_inputs": tolist(train["action_dist_inputs"]),
            "embeddings": tolist(train["embeddings"]),
            "vf_preds": tolist(values),
        },
        "inference": {"action_dist_inputs": tolist(inf["action_dist_inputs"])},
    }
    if recurrent:
        g["batch"]["state_in"] = nested(tolist, batch["state_in"])
        g["train"]["state_out"] = nested(tolist, train["state_out"])
        g["inference"]["state_out"] = nested(tolist, inf["state_out"])
    return g


def main() -> None:
    data = {
        "generator": "tests/data/make_rllib_fixtures.py",
        "ray_version": ray.__version__,
        "torch_version": torch.__version__,
        "python": sys.version.split()[0],
        "module_class": "ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module.DefaultPPOTorchRLModule",
        "batch_layout": {"B": B, "T": T},
        "cases": {},
    }
    for i, (name, (obs, act, cfg, small)) in enumerate(CASES.items()):
        module = build(obs, act, cfg)
        data["cases"][name] = {
            "observation_space": obs,
            "action_space": act,
            "model_config": cfg,
            "shapes": {k: list(np.asarray(v).shape) for k, v in module.get_state().items()},
            # the state an EnvRunner's module holds: RLlib built with inference_only=True
            "shapes_inference_only": {
                k: list(np.asarray(v).shape) for k, v in build(obs, act, cfg, inference_only=True).get_state().items()
            },
            # what a full module hands to it: get_state(inference_only=True)
            "keys_get_state_inference_only": sorted(module.get_state(inference_only=True)),
            "initial_state": nested(lambda s: list(s.shape), module.get_initial_state()),
            "golden": golden(obs, act, small, seed=100 + i),
        }
    text = json.dumps(data, indent=1)
    # One line per innermost list of numbers: readable diffs, a small file.
    text = re.sub(r"\[[-0-9.e,\s]*\]", lambda m: re.sub(r"\s+", "", m.group(0)), text)
    OUT.write_text(text + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(CASES)} cases)")


if __name__ == "__main__":
    main()
