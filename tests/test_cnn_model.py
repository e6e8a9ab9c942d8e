"""Image observations: RLlib 2.60's CNN encoder (models/cnn.py) inside PPOTorchRLModule.

- without ray: conv_filters validation, RLlib's "same" padding split, default stacks, the
  obs-rank policy (rank 2 / 4 / 0 Box refused as RLlib refuses them), the CNN against a plain
  F.pad + F.conv2d reference, ``cnn_conv_layers`` (the fused conv stage's hand-off), uint8
  frames, checkpoints (the fused conv step against the torch layers: test_cnn_fused.py);
- with ``ray.rllib``: RLlib's ``DefaultPPOTorchRLModule`` built with the same config for every
  default stack and odd sizes (shared / separate value encoder, CNN -> LSTM): same parameter names
  and shapes, RLlib's weights into ours and ours back, same outputs; ``from_rllib_module``,
  ``load_rllib_checkpoint``, ``to_rllib_module``, ``FastPPOTorchRLModule``.

Tolerances: ours and RLlib's run the same torch ops in the same order (ZeroPad2d, Conv2d on a
channel-last view, permute, flatten), so outputs differ by rounding at most: rtol=atol=1e-5.
The F.conv2d reference may take another conv algorithm than nn.Conv2d on a permuted input: its
tolerance is 1e-4 relative (float32 sums of up to ~4k products).
"""
from __future__ import annotations


import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rlmodule_fast as rf
from rlmodule_fast.core.columns import Columns
from rlmodule_fast.models.catalog import Catalog, obs_encoder_kind
from rlmodule_fast.models.cnn import (
    TorchCNNEncoder, cnn_conv_layers, cnn_output_dim, default_conv_filters, is_cnn_encoder, same_padding,
    validate_conv_filters,
)
from rlmodule_fast.models.config import DEFAULTS, resolve_model_config
from rlmodule_fast.ops.reference import activation_fn
from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

RTOL = ATOL = 1e-5
DISC6 = gym.spaces.Discrete(6)

# name -> (obs shape, action space, model config): every RLlib default stack, odd sizes, both
# value-encoder layouts, CNN -> LSTM. Batches are small; the 84x84 default is ~123 MMAC a frame.
CASES = {
    "84x84x4-default-shared": ((84, 84, 4), DISC6, {}),
    "42x42x3-default-separate": ((42, 42, 3), DISC6, {"vf_share_layers": False}),
    "96x96x3-default-box": ((96, 96, 3), gym.spaces.Box(-1, 1, (2,), np.float32), {"head_fcnet_hiddens": [8]}),
    "64x64x3-default-separate": ((64, 64, 3), DISC6, {"vf_share_layers": False, "conv_activation": "elu"}),
    "10x10x1-default-shared": ((10, 10, 1), gym.spaces.MultiDiscrete([3, 2]), {}),
    "84x84x4-nature": ((84, 84, 4), DISC6, {"conv_filters": [[32, 8, 4], [64, 4, 2], [64, 3, 1]],
                                            "head_fcnet_hiddens": [16]}),
    "84x84x4-atari-tanh-separate": ((84, 84, 4), DISC6, {"conv_filters": [[16, 4, 2], [32, 4, 2], [64, 4, 2],
                                                                          [128, 4, 2]],
                                                         "conv_activation": "tanh", "vf_share_layers": False}),
    # non-square image, non-square kernel and stride, "valid" padding, kernel < stride (RLlib's
    # negative "same" total: a crop), no activation
    "13x9x2-odd-valid-linear": ((13, 9, 2), gym.spaces.Box(-1, 1, (3,), np.float32),
                                {"conv_filters": [[4, [3, 2], [2, 1]], [6, 3, 2, "valid"], (5, 1, 2)],
                                 "conv_activation": "linear", "free_log_std": True}),
    "10x10x1-lstm-shared": ((10, 10, 1), DISC6, {"use_lstm": True, "lstm_cell_size": 16}),
    "12x10x3-lstm-separate": ((12, 10, 3), gym.spaces.MultiDiscrete([2, 4]),
                              {"use_lstm": True, "vf_share_layers": False, "lstm_cell_size": 8,
                               "conv_filters": [[4, 3, 2], [8, [3, 2], 2]], "head_fcnet_hiddens": [5]}),
}
LIVE = ["84x84x4-default-shared", "42x42x3-default-separate", "96x96x3-default-box", "64x64x3-default-separate",
        "10x10x1-default-shared", "84x84x4-nature", "84x84x4-atari-tanh-separate", "13x9x2-odd-valid-linear",
        "10x10x1-lstm-shared", "12x10x3-lstm-separate"]


def obs_space(shape, dtype=np.float32) -> gym.spaces.Box:
    return gym.spaces.Box(0, 255, shape, np.uint8) if dtype == np.uint8 else gym.spaces.Box(-1.0, 1.0, shape, dtype)


def build_ours(name: str, inference_only: bool = False, dtype=np.float32) -> PPOTorchRLModule:
    shape, act, cfg = CASES[name]
    return PPOTorchRLModule(observation_space=obs_space(shape, dtype), action_space=act, model_config=dict(cfg),
                            catalog_class=PPOCatalog, inference_only=inference_only)


def recurrent(name: str) -> bool:
    return bool(CASES[name][2].get("use_lstm"))


def batch_for(module, name: str, B: int = 3, T: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    shape = CASES[name][0]
    if not recurrent(name):
        return {Columns.OBS: torch.rand(B, *shape, generator=g) * 2 - 1}
    return {Columns.OBS: torch.rand(B, T, *shape, generator=g) * 2 - 1,
            Columns.STATE_IN: nested(lambda s: 0.5 * torch.randn(B, *s.shape, generator=g),
                                     module.get_initial_state())}


def nested(fn, d):
    return {k: nested(fn, v) if isinstance(v, dict) else fn(v) for k, v in d.items()}


def close(got, want, what: str, rtol=RTOL, atol=ATOL) -> None:
    if isinstance(want, dict):
        assert sorted(got) == sorted(want), f"{what}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            close(got[k], want[k], f"{what}[{k!r}]", rtol, atol)
        return
    got, want = torch.as_tensor(got).detach().float(), torch.as_tensor(want).detach().float()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):  # conftest.one_torch_thread
    yield


# --------------------------------------------------------------------------------------------
# conv_filters, padding, default stacks, obs ranks (no ray)
# --------------------------------------------------------------------------------------------
def test_conv_keys_in_defaults_and_validated():
    assert DEFAULTS["conv_filters"] is None and DEFAULTS["conv_activation"] == "relu"
    cfg = resolve_model_config({"conv_filters": ((16, (8, 8), 4), [32, 4, [2, 1], "valid"]),
                                "conv_activation": "Swish"})
    assert cfg["conv_filters"] == [[16, [8, 8], 4], [32, 4, [2, 1], "valid"]]
    assert cfg["conv_activation"] == "silu"
    assert resolve_model_config({"conv_filters": []})["conv_filters"] is None  # RLlib: falsy -> default stack


@pytest.mark.parametrize("value,pattern", [
    ("16,4,2", r"conv_filters.*expected None or a list"),
    ([[16, 4]], r"conv_filters.*layer 0.*\[filters, kernel, stride\]"),
    ([[16, 4, 2, "same", 1]], r"conv_filters.*layer 0"),
    ([[0, 4, 2]], r"conv_filters.*layer 0.*filters must be an int"),
    ([[16.0, 4, 2]], r"conv_filters.*layer 0.*filters must be an int"),
    ([[16, 4, 2], [8, [3], 1]], r"conv_filters.*layer 1 kernel.*\[3\]"),
    ([[16, 4, True]], r"conv_filters.*layer 0 stride"),
    ([[16, 4, 0]], r"conv_filters.*layer 0 stride.*\[1, "),
    ([[16, 4, 2, "full"]], r"conv_filters.*layer 0.*padding.*'full'"),
    ([[1, 1, 1]] * 65, r"conv_filters.*at most 64"),
], ids=["str", "short", "long", "zero-filters", "float-filters", "kernel-len1", "bool-stride", "zero-stride",
        "bad-padding", "too-many"])
def test_bad_conv_filters_are_named(value, pattern):
    with pytest.raises(ValueError, match=pattern):
        validate_conv_filters(value)
    with pytest.raises(ValueError, match=pattern):
        PPOTorchRLModule(observation_space=obs_space((10, 10, 1)), action_space=DISC6,
                         model_config={"conv_filters": value})


def test_bad_conv_activation_is_named():
    with pytest.raises(ValueError, match="conv_activation.*'gelu'"):
        resolve_model_config({"conv_activation": "gelu"})


@pytest.mark.parametrize("size,k,s,pad,out", [
    ((84, 84), (8, 8), (4, 4), (2, 2, 2, 2), (21, 21)),
    ((11, 11), (11, 11), (1, 1), (5, 5, 5, 5), (11, 11)),
    ((10, 10), (5, 5), (2, 2), (1, 2, 1, 2), (5, 5)),      # odd total: the smaller half left / top
    ((13, 9), (3, 2), (2, 1), (0, 1, 1, 1), (7, 9)),        # height and width apart
    ((4, 4), (1, 1), (2, 2), (-1, 0, -1, 0), (2, 2)),      # kernel < stride: negative, as RLlib
])
def test_same_padding_split_as_rllib(size, k, s, pad, out):
    assert same_padding(size, k, s) == (pad, out)


def test_same_padding_equals_rllibs_own():
    pytest.importorskip("ray.rllib")
    from ray.rllib.models.torch.misc import same_padding as rllib_same_padding

    for h in (1, 7, 10, 13, 42, 84):
        for w in (3, 9, 84):
            for k in (1, 2, 3, 4, 8, 11, (3, 2)):
                for s in (1, 2, 3, 4, (2, 1)):
                    kp = k if isinstance(k, tuple) else (k, k)
                    sp = s if isinstance(s, tuple) else (s, s)
                    assert same_padding((h, w), kp, sp) == tuple(rllib_same_padding((h, w), k, s)), (h, w, k, s)


@pytest.mark.parametrize("shape", [(96, 96, 3), (84, 84, 4), (64, 64, 3), (42, 42, 1), (10, 10, 2), (4, 84, 84)])
def test_default_stacks_are_rllibs(shape):
    stack = default_conv_filters(shape)
    try:
        from ray.rllib.models.utils import get_filter_config
    except ImportError:
        assert stack[0][0] == 16
        return
    assert stack == get_filter_config(shape)


@pytest.mark.parametrize("shape", [(210, 160, 3), (32, 32, 3), (84, 42, 4)])
def test_no_default_stack_is_a_clear_error(shape):
    with pytest.raises(ValueError, match=r"conv_filters.*no default CNN configuration for obs shape"):
        PPOTorchRLModule(observation_space=obs_space(shape), action_space=DISC6)


@pytest.mark.parametrize("shape", [(84, 84), (2, 3), (2, 10, 10, 3), ()])
def test_obs_ranks_rllib_refuses_are_flattened_loudly(shape):
    """RLlib's Catalog has no default encoder for these ranks; API.md promises "Box of any shape
    (flattened)": they build an MLP over the flattened obs, never silently (a warning names it)."""
    import math

    from rlmodule_fast.models.catalog import FlattenedObservationWarning

    space = gym.spaces.Box(-1, 1, shape, np.float32)
    for cfg in ({"fcnet_hiddens": [8]}, {"fcnet_hiddens": [8], "use_lstm": True, "lstm_cell_size": 4}):
        with pytest.warns(FlattenedObservationWarning, match=rf"{len(shape)}-D Box.*RLlib 2.60 has no default encoder"):
            m = PPOTorchRLModule(observation_space=space, action_space=DISC6, model_config=cfg)
        first = next(p for n, p in m.named_parameters() if n.endswith("weight"))
        assert first.shape[1] == max(1, math.prod(shape))


def test_encoder_kind_by_space():
    assert obs_encoder_kind(obs_space((84, 84, 4))) == "cnn"
    assert obs_encoder_kind(obs_space((4,))) == "mlp"
    assert obs_encoder_kind(gym.spaces.Discrete(3)) == "mlp"


def test_no_conv_output_is_a_clear_error():
    with pytest.raises(ValueError, match=r"conv_filters.*layer 1.*empty output for a 3x3 input"):
        PPOTorchRLModule(observation_space=obs_space((5, 5, 1)), action_space=DISC6,
                         model_config={"conv_filters": [[4, 3, 2], [4, 4, 1, "valid"]]})


# --------------------------------------------------------------------------------------------
# The CNN against a plain reference; cnn_conv_layers (no ray)
# --------------------------------------------------------------------------------------------
def reference_cnn(obs: torch.Tensor, layers) -> torch.Tensor:
    """[B, H, W, C] -> [B, D]: F.pad + F.conv2d + activation per layer, NHWC flatten."""
    y = obs.permute(0, 3, 1, 2)
    for conv, pad, act in layers:
        y = activation_fn(act)(F.conv2d(F.pad(y, pad), conv.weight, conv.bias, conv.stride))
    return y.permute(0, 2, 3, 1).reshape(obs.shape[0], -1)


@pytest.mark.parametrize("name", [n for n in CASES if not recurrent(n)])
def test_encoder_equals_reference_and_conv_layers(name):
    module = build_ours(name)
    shape = CASES[name][0]
    enc = module.encoder.actor
    assert isinstance(enc, TorchCNNEncoder) and is_cnn_encoder(enc)
    layers = cnn_conv_layers(enc)
    convs = [m for m in enc.net[0].cnn if isinstance(m, torch.nn.Conv2d)]
    assert [c for c, _, _ in layers] == convs  # the module's own layers, in order
    cfg = module.catalog.model_config_dict
    assert all(act == cfg["conv_activation"] for _, _, act in layers)
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        got = enc(x)
        want = reference_cnn(x, layers)
    assert got.shape == (2, cnn_output_dim(shape, module.catalog.conv_filters)) == (2, module.catalog.latent_dims[0])
    close(got, want, f"{name} encoder vs F.conv2d reference", rtol=1e-4, atol=1e-4)
    # leading dims are folded: [2, 3, H, W, C] -> [2, 3, D]
    x5 = x.unsqueeze(1).expand(2, 3, *shape)
    with torch.no_grad():
        close(enc(x5)[:, 2], got, f"{name} folded leading dims", rtol=0, atol=0)


def test_conv_layers_of_recurrent_tokenizer_and_refusals():
    m = build_ours("12x10x3-lstm-separate")
    layers = cnn_conv_layers(m.encoder.actor_encoder)  # the tokenizer's convs
    assert [tuple(c.weight.shape) for c, _, _ in layers] == [(4, 3, 3, 3), (8, 4, 3, 2)]
    assert [p for _, p, _ in layers] == [(0, 1, 0, 1), (0, 1, 0, 1)]  # 12x10 -> 6x5 -> 3x3
    with pytest.raises(ValueError, match="has no conv stack"):
        cnn_conv_layers(torch.nn.Linear(3, 3))
    enc = build_ours("10x10x1-default-shared").encoder.encoder
    enc.net[0].cnn[1].dilation = (2, 2)
    with pytest.raises(ValueError, match=r"cnn\[1\]: only groups=1, dilation=1"):
        cnn_conv_layers(enc)
    enc = build_ours("10x10x1-default-shared").encoder.encoder
    enc.net[0].cnn.insert(2, torch.nn.LayerNorm(16))
    with pytest.raises(ValueError, match=r"cnn\[2\]: a LayerNorm layer is not one the conv stage runs"):
        cnn_conv_layers(enc)


# --------------------------------------------------------------------------------------------
# The PPO module on images (no ray)
# --------------------------------------------------------------------------------------------
def test_fused_conv_path_runs_and_checks_obs():
    # the step itself against the torch layers: tests/test_cnn_fused.py
    m = build_ours("84x84x4-atari-tanh-separate")
    info = m.fast_path_info()
    assert info["active"] is True and info["backend"] == "cpp", info
    obs = np.random.default_rng(0).uniform(-1, 1, (3, 84, 84, 4)).astype(np.float32)
    with torch.no_grad():
        out = m.forward_exploration({Columns.OBS: obs})
        inf = m.forward_inference({Columns.OBS: obs})
    assert out[Columns.ACTIONS].shape == (3,) and out[Columns.ACTION_LOGP].shape == (3,)
    assert bool(((out[Columns.ACTIONS] >= 0) & (out[Columns.ACTIONS] < 6)).all())
    assert torch.isfinite(out[Columns.ACTION_LOGP]).all()
    close(inf[Columns.ACTIONS], inf[Columns.ACTION_DIST_INPUTS].argmax(-1), "inference action = argmax")
    bad = obs.copy()
    bad[1, 5, 5, 2] = np.nan
    with pytest.raises(ValueError, match=r"obs: contains NaN or inf \(row 1\)"):
        m.forward_exploration({Columns.OBS: bad})


def test_forward_train_is_differentiable_through_the_convs():
    m = build_ours("10x10x1-lstm-shared")
    out = m.forward_train(batch_for(m, "10x10x1-lstm-shared"))
    assert out[Columns.VF_PREDS].shape == (3, 2) and out[Columns.ACTION_DIST_INPUTS].shape == (3, 2, 6)
    (out[Columns.ACTION_DIST_INPUTS].sum() + out[Columns.VF_PREDS].sum()).backward()
    g = m.encoder.encoder.tokenizer.net[0].cnn[1].weight.grad
    assert g is not None and g.abs().sum() > 0


@pytest.mark.parametrize("name", ["84x84x4-nature", "10x10x1-lstm-shared"])
def test_uint8_frames_are_cast_like_floats(name):
    m8, mf = build_ours(name, dtype=np.uint8), build_ours(name)
    mf.set_state(m8.get_state())
    b = batch_for(m8, name, seed=4)
    frames = torch.randint(0, 256, b[Columns.OBS].shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    b8, bf = dict(b, obs=frames), dict(b, obs=frames.float())
    close(m8.forward_train(b8), mf.forward_train(bf), f"{name} uint8 train", rtol=0, atol=0)
    step8, stepf = dict(b8), dict(bf)
    if recurrent(name):
        step8["obs"], stepf["obs"] = frames[:, :1], frames[:, :1].float()
    with torch.no_grad():
        close(m8.forward_inference({**step8, "obs": step8["obs"].numpy()})[Columns.ACTION_DIST_INPUTS],
              mf.forward_inference(stepf)[Columns.ACTION_DIST_INPUTS], f"{name} uint8 numpy inference", rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"'obs'.*\(3, 84, 84\)"):
        m8.forward_inference({Columns.OBS: torch.zeros(3, 84, 84, dtype=torch.uint8)})


def test_checkpoint_round_trip(tmp_path):
    m = build_ours("13x9x2-odd-valid-linear")
    m2 = rf.RLModule.from_checkpoint(m.save_to_path(tmp_path / "m"))
    assert m2.catalog.model_config_dict["conv_filters"] == [[4, [3, 2], [2, 1]], [6, 3, 2, "valid"], [5, 1, 2]]
    b = batch_for(m, "13x9x2-odd-valid-linear")
    close(m2.forward_train(b), m.forward_train(b), "checkpoint round trip", rtol=0, atol=0)


def test_catalog_exposes_the_stack_it_built():
    cat = Catalog(obs_space((84, 84, 4)), DISC6, {})
    assert cat.encoder_kind == "cnn" and cat.conv_filters == default_conv_filters((84, 84, 4))
    assert cat.latent_dims == (11 * 11 * 256,)
    assert cat.model_config_dict["conv_filters"] is None  # the user's config is not rewritten
    assert cat.conv_init_hook() is None  # initializers: issue 13's keys plug in here


# --------------------------------------------------------------------------------------------
# RLlib parity (needs ray)
# --------------------------------------------------------------------------------------------
def build_rllib(name: str, cls=None, inference_only: bool = False):
    pytest.importorskip("ray.rllib")
    from ray.rllib.algorithms.ppo.ppo_catalog import PPOCatalog as RLlibPPOCatalog
    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule

    shape, act, cfg = CASES[name]
    cls = cls or DefaultPPOTorchRLModule
    m = cls(observation_space=obs_space(shape), action_space=act, model_config=dict(cfg),
            catalog_class=RLlibPPOCatalog, inference_only=inference_only)
    m.eval()
    return m


def compare_with_rllib(rl, ours, name: str) -> None:
    b = batch_for(ours, name, seed=9)
    with torch.no_grad():
        r = rl.forward_train(dict(b))
        r_vf = rl.compute_values(dict(b), embeddings=r[Columns.EMBEDDINGS])
    o = ours.forward_train(dict(b))
    close(o[Columns.ACTION_DIST_INPUTS], r[Columns.ACTION_DIST_INPUTS], f"{name} train action_dist_inputs")
    close(o[Columns.EMBEDDINGS], r[Columns.EMBEDDINGS], f"{name} train embeddings")
    close(o[Columns.VF_PREDS], r_vf, f"{name} train vf_preds")
    if recurrent(name):
        close(o[Columns.STATE_OUT], r[Columns.STATE_OUT], f"{name} train state_out")
        b = dict(b, obs=b[Columns.OBS][:, :1])
    with torch.no_grad():
        r_inf, o_inf = rl.forward_inference(dict(b)), ours.forward_inference(dict(b))
        r_exp, o_exp = rl.forward_exploration(dict(b)), ours.forward_exploration(dict(b))
    close(o_inf[Columns.ACTION_DIST_INPUTS], r_inf[Columns.ACTION_DIST_INPUTS], f"{name} inference")
    close(o_exp[Columns.ACTION_DIST_INPUTS], r_exp[Columns.ACTION_DIST_INPUTS], f"{name} exploration")
    if recurrent(name):
        close(o_inf[Columns.STATE_OUT], r_inf[Columns.STATE_OUT], f"{name} inference state_out")


@pytest.mark.parametrize("name", LIVE)
def test_names_shapes_and_outputs_equal_rllibs(name):
    rl = build_rllib(name)
    ours = build_ours(name)
    want = {k: tuple(v.shape) for k, v in rl.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == want, f"only ours {sorted(set(got) - set(want))}, only RLlib's {sorted(set(want) - set(got))}"
    assert nested(lambda s: tuple(s.shape), ours.get_initial_state()) == \
        nested(lambda s: tuple(s.shape), rl.get_initial_state())
    # RLlib's weights into ours ...
    ours.set_state(rl.get_state())
    compare_with_rllib(rl, ours, name)
    # ... and ours (changed) back into RLlib's, key for key
    g = torch.Generator().manual_seed(5)
    ours.set_state({k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in ours.get_state().items()})
    rl.set_state(ours.get_state())
    compare_with_rllib(rl, ours, name)


@pytest.mark.parametrize("name", ["42x42x3-default-separate", "10x10x1-lstm-shared"])
def test_inference_only_state_equals_rllibs(name):
    rl = build_rllib(name, inference_only=True)
    ours = build_ours(name, inference_only=True)
    assert sorted(ours.state_dict()) == sorted(rl.state_dict())
    full = build_ours(name)
    assert sorted(full.get_state(inference_only=True)) == sorted(build_rllib(name).get_state(inference_only=True))


@pytest.mark.parametrize("name", ["84x84x4-atari-tanh-separate", "13x9x2-odd-valid-linear", "12x10x3-lstm-separate"])
def test_interop_functions(name, tmp_path):
    from rlmodule_fast.rllib import from_rllib_module, load_rllib_checkpoint, to_rllib_module

    rl = build_rllib(name)
    g = torch.Generator().manual_seed(3)
    rl.set_state({k: torch.as_tensor(np.asarray(v)) + 0.05 * torch.randn(np.shape(v), generator=g)
                  for k, v in rl.get_state().items()})
    compare_with_rllib(rl, from_rllib_module(rl), name)
    loaded = load_rllib_checkpoint(rl.save_to_path(tmp_path / "rl"))
    assert loaded.catalog.encoder_kind == "cnn"
    compare_with_rllib(rl, loaded, name)
    back = to_rllib_module(loaded)
    back.eval()
    compare_with_rllib(back, loaded, name)


@pytest.mark.parametrize("name", ["42x42x3-default-separate", "12x10x3-lstm-separate"])
def test_fast_rllib_module_on_images(name):
    pytest.importorskip("ray.rllib")
    from rlmodule_fast.rllib import FastPPOTorchRLModule

    fast = build_rllib(name, cls=FastPPOTorchRLModule)
    info = fast.fast_path_info()
    assert info["active"] is True and info["backend"] == "cpp", info
    rl = build_rllib(name)
    rl.set_state(fast.get_state())
    b = batch_for(fast, name, seed=1)
    if recurrent(name):
        b = dict(b, obs=b[Columns.OBS][:, :1])
    with torch.no_grad():
        close(fast.forward_inference(dict(b))[Columns.ACTION_DIST_INPUTS],
              rl.forward_inference(dict(b))[Columns.ACTION_DIST_INPUTS], f"{name} FastPPO inference")
    assert fast.fast_path_info()["calls"] == 1  # the fused conv step ran


# --------------------------------------------------------------------------------------------
# Benchmark rows (rlmodule-fast-bench): the vision cases run, their peers compute the same thing
# --------------------------------------------------------------------------------------------
def test_bench_vision_cases_and_peers():
    from rlmodule_fast.bench import cases as C
    from rlmodule_fast.bench.cases import _EagerCNNPolicy, eager_policy, image_module

    ids = {c.id for c in C.cases(ops=["policy_step"], configs=["AtariCNN", "NatureCNN", "RLlibDefaultCNN"])}
    assert ids == {f"policy_step-{k}-B{b}" for k in ("AtariCNN", "NatureCNN", "RLlibDefaultCNN") for b in (1, 32)}
    assert not any(c.config_id.endswith("CNN") for c in C.cases(quick=True))
    # the torch-eager peer computes the module's logits on the same weights
    m = image_module(conv_filters=C.NATURE_FILTERS)
    x = torch.rand(2, 84, 84, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        want = m.forward_inference({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS]
        close(_EagerCNNPolicy(m)(x), want, "torch-eager CNN peer")
        actions, logp = eager_policy(m)(x)
    assert actions.shape == (2,) and logp.shape == (2,) and bool((logp <= 0).all())
    case = next(c for c in C.cases(ops=["policy_step"], batches=[1], configs=["AtariCNN"]))
    ctx = C.Context(device="cpu", quick=True)
    for provider in ("torch-eager", "rf-torch", "rllib", "ort", "ort-sampling"):
        try:
            bench = case.build(provider, ctx)
        except C.Unavailable as e:
            assert provider.startswith("ort") or provider == "rllib", (provider, str(e))
            continue
        with torch.no_grad(), bench.ctx():
            out = bench.fn()
        assert out is not None, provider
    # the cpp row times the fused conv step
    bench = case.build("cpp", ctx)
    with torch.no_grad(), bench.ctx():
        assert bench.fn() is not None


def test_finite_check_is_exact_when_the_fast_sum_overflows():
    from rlmodule_fast.ppo.ppo_rl_module import _check_finite_obs

    big = torch.full((3, 84, 84, 4), 3e38)  # finite, but the one-pass sum overflows to inf
    _check_finite_obs(big)
    big[2, 0, 0, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"obs: contains NaN or inf \(row 2\)"):
        _check_finite_obs(big)
