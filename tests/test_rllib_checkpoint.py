"""RLlib checkpoints -> rlmodule_fast (``rf.rllib.load_rllib_checkpoint``), and back.

- With ray[rllib]: RLlib builds a ``DefaultPPOTorchRLModule`` (MLP / LSTM, shared / separate value
  encoder, Discrete / Box actions, free log-std, head layers, dict or DefaultModelConfig), gives
  it random weights and saves it with its own ``save_to_path``; we load the directory and
  compare every output with RLlib's on the same batch (float32, same torch ops: rtol=atol=1e-5).
- Without ray too: the restricted unpickler refuses pickles naming foreign globals (``os.system``,
  ``builtins.eval``, object arrays, a float dtype flagged as holding objects) and runs nothing.
"""
from __future__ import annotations

import os
import pathlib
import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlmodule_fast.rllib as rr
from rlmodule_fast.rllib._pickle import restricted_load

RTOL = ATOL = 1e-5
OBS = gym.spaces.Box(-1.0, 1.0, (5,), np.float32)
DISCRETE = gym.spaces.Discrete(3)
BOX = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
MULTI = gym.spaces.MultiDiscrete([3, 2])
SMALL = {"fcnet_hiddens": [7, 6]}

# id -> (action space, RLlib model config)
CASES = {
    "mlp-shared-discrete": (DISCRETE, SMALL),
    "mlp-separate-discrete": (DISCRETE, {**SMALL, "vf_share_layers": False}),
    "mlp-shared-box": (BOX, SMALL),
    "mlp-separate-box-freestd": (BOX, {**SMALL, "vf_share_layers": False, "free_log_std": True}),
    "mlp-head3-relu-discrete": (DISCRETE, {**SMALL, "fcnet_activation": "relu", "head_fcnet_hiddens": [3]}),
    "lstm-shared-discrete": (DISCRETE, {**SMALL, "use_lstm": True, "lstm_cell_size": 8}),
    "lstm-separate-discrete": (DISCRETE, {**SMALL, "use_lstm": True, "lstm_cell_size": 8, "vf_share_layers": False}),
    "lstm-shared-box": (BOX, {**SMALL, "use_lstm": True, "lstm_cell_size": 8}),
    "mlp-separate-multidiscrete": (MULTI, {**SMALL, "vf_share_layers": False}),
}


def nested(fn, d):
    return {k: nested(fn, v) if isinstance(v, dict) else fn(v) for k, v in d.items()}


def close(got, want, what: str) -> None:
    if isinstance(want, dict):
        assert sorted(got) == sorted(want), f"{what}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            close(got[k], want[k], f"{what}[{k!r}]")
        return
    got, want = torch.as_tensor(got).detach().float(), torch.as_tensor(want).detach().float()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != RLlib's {tuple(want.shape)}"
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL, msg=lambda m: f"{what}: {m}")


def rllib_module(act_space, cfg, *, dataclass_cfg=False, inference_only=False):
    pytest.importorskip("ray.rllib")
    from ray.rllib.algorithms.ppo.ppo_catalog import PPOCatalog
    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    m = DefaultPPOTorchRLModule(
        observation_space=OBS, action_space=act_space, inference_only=inference_only,
        model_config=DefaultModelConfig(**cfg) if dataclass_cfg else dict(cfg), catalog_class=PPOCatalog,
    )
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # random weights (not the initializer's), incl. biases and log-std
        for name, p in m.named_parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=gen))
    m.eval()
    return m


def batches(m, recurrent: bool, B: int = 4, T: int = 3):
    gen = torch.Generator().manual_seed(5)
    train = {"obs": torch.randn((B, T, 5) if recurrent else (B, 5), generator=gen)}
    step = {"obs": train["obs"][:, :1] if recurrent else train["obs"]}
    if recurrent:
        state = nested(lambda s: 0.5 * torch.randn((B, *s.shape), generator=gen), m.get_initial_state())
        train["state_in"] = step["state_in"] = state
    return train, step


def compare(rl, ours, recurrent: bool, name: str) -> None:
    train, step = batches(rl, recurrent)
    with torch.no_grad():
        r = rl.forward_train(dict(train))
        r_vf = rl.compute_values(dict(train))
        r_inf = rl.forward_inference(dict(step))
    o = ours.forward_train(dict(train))
    close(o["action_dist_inputs"], r["action_dist_inputs"], f"{name} train action_dist_inputs")
    close(o["embeddings"], r["embeddings"], f"{name} train embeddings")
    close(o["vf_preds"], r_vf, f"{name} vf_preds")
    close(ours.compute_values(dict(train)), r_vf, f"{name} compute_values")
    if recurrent:
        close(o["state_out"], r["state_out"], f"{name} train state_out")
    with torch.no_grad():
        o_inf = ours.forward_inference(dict(step))
        o_exp = ours.forward_exploration(dict(step))
    for key in ("action_dist_inputs", "state_out") if recurrent else ("action_dist_inputs",):
        close(o_inf[key], r_inf[key], f"{name} inference {key}")
        close(o_exp[key], r_inf[key], f"{name} exploration {key}")
    if "actions" in o_inf:  # fused path: the deterministic action of RLlib's inputs
        dist = rl.get_inference_action_dist_cls().from_logits(r_inf["action_dist_inputs"]).to_deterministic()
        close(o_inf["actions"], dist.sample(), f"{name} inference actions")


# --------------------------------------------------------------------------------------------
# RLlib-built checkpoints (need ray)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CASES))
def test_rllib_checkpoint_matches_rllib(name, tmp_path):
    act, cfg = CASES[name]
    rl = rllib_module(act, cfg)
    path = rl.save_to_path(tmp_path / "module")
    ours = rr.load_rllib_checkpoint(path)
    assert ours.is_stateful() == bool(cfg.get("use_lstm"))
    assert sorted(ours.get_state()) == sorted(rl.get_state())
    compare(rl, ours, bool(cfg.get("use_lstm")), name)


@pytest.mark.parametrize("name", ["mlp-separate-box-freestd", "lstm-separate-discrete"])
def test_rllib_checkpoint_with_default_model_config_dataclass(name, tmp_path):
    act, cfg = CASES[name]
    rl = rllib_module(act, cfg, dataclass_cfg=True)
    ours = rr.load_rllib_checkpoint(rl.save_to_path(tmp_path / "m"))
    compare(rl, ours, bool(cfg.get("use_lstm")), name)


@pytest.mark.parametrize("name", ["mlp-separate-discrete", "mlp-shared-box"])
def test_rllib_inference_only_checkpoint(name, tmp_path):
    """An env runner's module (inference_only: no value function) loads as inference-only."""
    act, cfg = CASES[name]
    rl = rllib_module(act, cfg, inference_only=True)
    ours = rr.load_rllib_checkpoint(rl.save_to_path(tmp_path / "m"))
    assert ours.inference_only
    _, step = batches(rl, False)
    with torch.no_grad():
        close(ours.forward_inference(dict(step))["action_dist_inputs"],
              rl.forward_inference(dict(step))["action_dist_inputs"], f"{name} inference-only")


def test_inference_only_override(tmp_path):
    """A learner's full checkpoint loaded for serving only: no value function is built."""
    act, cfg = CASES["mlp-separate-discrete"]
    rl = rllib_module(act, cfg)
    ours = rr.load_rllib_checkpoint(rl.save_to_path(tmp_path / "m"), inference_only=True)
    assert ours.inference_only and not any(k.startswith(("vf.", "encoder.critic_encoder.")) for k in ours.get_state())
    _, step = batches(rl, False)
    with torch.no_grad():
        close(ours.forward_inference(dict(step))["action_dist_inputs"],
              rl.forward_inference(dict(step))["action_dist_inputs"], "inference_only=True")
    with pytest.raises(RuntimeError):
        ours.forward_train(dict(step))


def test_multi_module_directory_and_module_id(tmp_path):
    act, cfg = CASES["mlp-shared-discrete"]
    rl = rllib_module(act, cfg)
    multi = rl.as_multi_rl_module()  # a new module from rl's spec: copy rl's weights in
    multi["default_policy"].set_state(rl.get_state())
    multi.save_to_path(tmp_path / "multi")
    ours = rr.load_rllib_checkpoint(tmp_path / "multi")  # finds default_policy/ inside
    compare(rl, ours, False, "multi")
    with pytest.raises(FileNotFoundError, match="other_policy"):
        rr.load_rllib_checkpoint(tmp_path / "multi", module_id="other_policy")


@pytest.mark.parametrize("name", ["mlp-separate-box-freestd", "lstm-separate-discrete"])
def test_from_rllib_module_and_back(name):
    act, cfg = CASES[name]
    rl = rllib_module(act, cfg)
    ours = rr.from_rllib_module(rl)
    compare(rl, ours, bool(cfg.get("use_lstm")), name)
    # the reverse: our weights into a fresh RLlib module, names unchanged
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.05)
    state = rr.to_rllib_state(ours)
    assert all(isinstance(v, np.ndarray) for v in state.values())
    back = rr.to_rllib_module(ours)
    assert type(back).__name__ == "DefaultPPOTorchRLModule"
    for k, v in back.get_state().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)
    back.eval()
    compare(back, ours, bool(cfg.get("use_lstm")), f"{name} to_rllib_module")
    from rlmodule_fast.rllib import FastPPOTorchRLModule

    fast = rr.to_rllib_module(ours, module_class=FastPPOTorchRLModule)
    fast.eval()
    compare(fast, ours, bool(cfg.get("use_lstm")), f"{name} to_rllib_module(FastPPOTorchRLModule)")


def test_from_rllib_module_refuses_other_classes():
    with pytest.raises(ValueError, match="not RLlib's DefaultPPOTorchRLModule"):
        rr.from_rllib_module(torch.nn.Linear(2, 2))


def test_unsupported_model_config_is_named(tmp_path):
    act, cfg = CASES["mlp-shared-discrete"]
    rl = rllib_module(act, {**cfg, "use_attention": True})  # RLlib's new stack ignores it; we refuse it
    path = rl.save_to_path(tmp_path / "m")
    with pytest.raises(ValueError, match="use_attention"):
        rr.load_rllib_checkpoint(path)


@pytest.mark.parametrize("name", ["mlp-separate-box-freestd", "lstm-separate-discrete"])
def test_rllib_checkpoint_with_layernorm(name, tmp_path):
    """Layer norms (fcnet_use_layernorm / head_fcnet_use_layernorm) load and match RLlib."""
    act, cfg = CASES[name]
    cfg = {**cfg, "fcnet_use_layernorm": True, "head_fcnet_use_layernorm": True,
           "head_fcnet_hiddens": cfg.get("head_fcnet_hiddens") or [6]}
    rl = rllib_module(act, cfg, dataclass_cfg=True)
    ours = rr.load_rllib_checkpoint(rl.save_to_path(tmp_path / "m"))
    assert sorted(ours.get_state()) == sorted(rl.get_state())
    assert any("LayerNorm" in type(x).__name__ for x in ours.modules())
    compare(rl, ours, bool(cfg.get("use_lstm")), name)


def test_mismatched_state_names_file(tmp_path):
    act, cfg = CASES["mlp-shared-discrete"]
    rl = rllib_module(act, cfg)
    path = pathlib.Path(rl.save_to_path(tmp_path / "m"))
    state = rl.get_state()
    state["pi.net.mlp.0.weight"] = np.zeros((9, 9), np.float32)
    (path / "module_state.pkl").write_bytes(pickle.dumps(state))
    with pytest.raises(ValueError, match="module_state.pkl.*pi.net.mlp.0.weight"):
        rr.load_rllib_checkpoint(path)
    (path / "module_state.pkl").write_bytes(pickle.dumps(rl.get_state())[:100])  # truncated
    with pytest.raises(ValueError, match="module_state.pkl"):
        rr.load_rllib_checkpoint(path)


# --------------------------------------------------------------------------------------------
# hostile pickles (no ray needed)
# --------------------------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').getpid()",))


def _write_checkpoint(d: pathlib.Path, ctor: bytes, state: bytes) -> pathlib.Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "class_and_ctor_args.pkl").write_bytes(ctor)
    (d / "module_state.pkl").write_bytes(state)
    return d


@pytest.mark.parametrize("where", ["class_and_ctor_args", "module_state"])
def test_foreign_global_is_refused_and_nothing_runs(where, tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"class": _Evil(marker)} if where == "class_and_ctor_args" else {"w": _Evil(marker)})
    if where == "module_state":
        pytest.importorskip("ray.rllib")
        rl = rllib_module(*CASES["mlp-shared-discrete"])
        d = pathlib.Path(rl.save_to_path(tmp_path / "m"))
        (d / "module_state.pkl").write_bytes(evil)
    else:
        d = _write_checkpoint(tmp_path / "m", evil, pickle.dumps({}))
    with pytest.raises(rr.UnsafeCheckpointError) as err:
        rr.load_rllib_checkpoint(d)
    msg = str(err.value)
    assert f"{where}.pkl" in msg and "system" in msg, msg  # names the file and the global
    assert not marker.exists(), "the pickle's payload ran"


@pytest.mark.parametrize("payload", [
    pytest.param(lambda: pickle.dumps(_EvalEvil()), id="builtins-eval"),
    pytest.param(lambda: pickle.dumps(np.array([1, "a"], dtype=object)), id="object-array"),
    pytest.param(lambda: pickle.dumps(np.dtype("O")), id="object-dtype"),
    pytest.param(lambda: pickle.dumps(torch.zeros(2)), id="torch-tensor"),
    pytest.param(lambda: pickle.dumps(getattr), id="builtins-getattr"),
])
def test_other_foreign_payloads_are_refused(payload, tmp_path):
    f = tmp_path / "module_state.pkl"
    f.write_bytes(payload())
    with pytest.raises((rr.UnsafeCheckpointError, ValueError), match="module_state.pkl"):
        restricted_load(f)


def test_dtype_flag_forgery_is_refused(tmp_path):
    """A float dtype whose pickled state claims it holds Python objects (numpy accepts that state
    on its own) would let array bytes be read as pointers: refused before any array is built."""
    good = pickle.dumps(np.zeros(2, np.float64), protocol=2)
    # numpy writes the dtype state as (3, '<', None, None, None, -1, -1, 0); set flags to 63
    forged = good.replace(b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t", b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK?t")
    assert forged != good
    f = tmp_path / "module_state.pkl"
    f.write_bytes(forged)
    with pytest.raises(ValueError, match="module_state.pkl.*dtype"):
        restricted_load(f)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_plain_numpy_state_loads(protocol, tmp_path):
    state = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.float32(2.5), "c": [1, (2, 3)], "d": True}
    f = tmp_path / "module_state.pkl"
    f.write_bytes(pickle.dumps(state, protocol=protocol))
    back = restricted_load(f)
    np.testing.assert_array_equal(back["a"], state["a"])
    assert back["b"] == np.float32(2.5) and back["c"] == [1, (2, 3)] and back["d"] is True


def test_mutated_pickles_never_crash(tmp_path):
    """Random byte flips of a legitimate state pickle: each load either succeeds or raises a
    ValueError / UnsafeCheckpointError naming the file (a crash would end the test run)."""
    rng = np.random.default_rng(0)
    state = {"encoder.w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(3, np.float32), "k": [1, 2.5]}
    f = tmp_path / "module_state.pkl"
    for protocol in (2, 5):
        good = bytearray(pickle.dumps(state, protocol=protocol))
        for _ in range(150):
            bad = bytearray(good)
            for i in rng.integers(0, len(bad), size=int(rng.integers(1, 4))):
                bad[i] = int(rng.integers(0, 256))
            f.write_bytes(bytes(bad))
            try:
                restricted_load(f)
            except (ValueError, rr.UnsafeCheckpointError) as e:
                assert "module_state.pkl" in str(e)


def test_missing_and_truncated_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        rr.load_rllib_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="module_state.pkl"):
        rr.load_rllib_checkpoint(tmp_path / "empty")
    d = _write_checkpoint(tmp_path / "m", pickle.dumps({"class": 1})[:-3], pickle.dumps({}))
    with pytest.raises(ValueError, match="class_and_ctor_args.pkl"):
        rr.load_rllib_checkpoint(d)
