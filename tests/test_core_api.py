"""Core RLModule API of PPOTorchRLModule: every public method, against hand-written references.

The references below recompute the forward pass from the module's state dict with plain torch
(MLP layer by layer, LSTM/GRU with nn.LSTMCell/nn.GRUCell stepped in a Python loop), so they
do not share code with the module's own layers.
"""
from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rlmodule_fast as rf
from rlmodule_fast import Columns
from rlmodule_fast.ppo import PPOCatalog, PPOTorchRLModule

ATOL = 1e-5
RTOL = 1e-5
# forward_exploration / forward_inference may run a fused backend (C++ / Triton) in float32
FAST_TOL = dict(atol=2e-5, rtol=1e-4)

OBS_SPACES = {
    "obs4": gym.spaces.Box(-1.0, 1.0, (4,), np.float32),
    # a 2-D Box: flattened (API.md), with a FlattenedObservationWarning (RLlib has no encoder for it)
    "obs2x3": gym.spaces.Box(-1.0, 1.0, (2, 3), np.float32),
    "obs6": gym.spaces.Box(-1.0, 1.0, (6,), np.float32),
    "obsDisc5": gym.spaces.Discrete(5),
}
ACT_SPACES = {
    "actDisc3": gym.spaces.Discrete(3),
    "actBox2": gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
    "actMultiDisc2x3": gym.spaces.MultiDiscrete([2, 3]),
}
ACT_FNS = {"tanh": torch.tanh, "relu": torch.relu, "silu": F.silu, "swish": F.silu, "elu": F.elu,
           "linear": lambda t: t}


def make(obs="obs4", act="actDisc3", inference_only=False, **model_config):
    model_config.setdefault("fcnet_hiddens", [8, 6])
    torch.manual_seed(0)
    return PPOTorchRLModule(
        observation_space=OBS_SPACES[obs], action_space=ACT_SPACES[act],
        model_config=model_config, catalog_class=PPOCatalog, inference_only=inference_only,
    )


def sample_obs(space: gym.Space, *lead: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if isinstance(space, gym.spaces.Discrete):
        return torch.randint(0, int(space.n), lead, generator=g)
    return torch.rand(*lead, *space.shape, generator=g) * 2 - 1


def dist_width(space: gym.Space) -> int:
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return int(space.nvec.sum())
    return 2 * int(space.shape[0])


def flat_obs(obs: torch.Tensor, space: gym.Space, n_lead: int) -> torch.Tensor:
    if isinstance(space, gym.spaces.Discrete):
        return F.one_hot(obs.long(), int(space.n)).float()
    return obs.reshape(*obs.shape[:n_lead], -1).float()


def ref_mlp(state: dict, prefix: str, x: torch.Tensor, hidden_act: str, out_act: str) -> torch.Tensor:
    """Apply the nn.Linear layers stored under ``prefix`` + "<idx>.weight" in index order."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.weight$")
    idx = sorted(int(m.group(1)) for k in state if (m := pat.match(k)))
    assert idx, f"no linear layers under {prefix}"
    for n, i in enumerate(idx):
        x = x @ state[f"{prefix}{i}.weight"].T + state[f"{prefix}{i}.bias"]
        x = ACT_FNS[out_act if n == len(idx) - 1 else hidden_act](x)
    return x


def ref_head(state, name, latent, head_act, clip=None):
    out = ref_mlp(state, f"{name}.net.mlp.", latent, head_act, "linear")
    if clip is not None:
        mean, log_std = out.chunk(2, dim=-1)
        out = torch.cat([mean, log_std.clamp(-clip, clip)], -1)
    return out


def ref_rnn(state, prefix, tokens, h, c, kind):
    """tokens [B, T, I]; h, c [B, H] -> (out [B, T, H], h, c), stepping a cell in a loop."""
    w_ih = state[f"{prefix}.{kind}.weight_ih_l0"]
    H = w_ih.shape[0] // (4 if kind == "lstm" else 3)
    cell = (torch.nn.LSTMCell if kind == "lstm" else torch.nn.GRUCell)(w_ih.shape[1], H)
    with torch.no_grad():
        cell.weight_ih.copy_(w_ih)
        cell.weight_hh.copy_(state[f"{prefix}.{kind}.weight_hh_l0"])
        cell.bias_ih.copy_(state[f"{prefix}.{kind}.bias_ih_l0"])
        cell.bias_hh.copy_(state[f"{prefix}.{kind}.bias_hh_l0"])
    outs = []
    for t in range(tokens.shape[1]):
        if kind == "lstm":
            h, c = cell(tokens[:, t], (h, c))
        else:
            h = cell(tokens[:, t], h)
        outs.append(h)
    return torch.stack(outs, 1), h, c


def state_in_for(module, B, seed=1, three_d=True):
    g = torch.Generator().manual_seed(seed)

    def fill(s):
        return {k: (fill(v) if isinstance(v, dict) else
                    torch.randn(B, *v.shape, generator=g) * 0.5 if three_d else torch.randn(B, v.shape[-1], generator=g) * 0.5)
                for k, v in s.items()}
    return fill(module.get_initial_state())


def assert_close(a, b, **kw):
    torch.testing.assert_close(a, b, atol=kw.get("atol", ATOL), rtol=kw.get("rtol", RTOL))


def clone_tree(x):
    if isinstance(x, dict):
        return {k: clone_tree(v) for k, v in x.items()}
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, np.ndarray):
        return x.copy()
    return x


def assert_tree_equal(a, b):
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict))
    if isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            assert_tree_equal(a[k], b[k])
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# Feed-forward module vs. the hand-written reference
# ---------------------------------------------------------------------------------------------
FF_CASES = [
    (o, a, share)
    for o in OBS_SPACES for a in ACT_SPACES for share in (True, False)
]


@pytest.mark.parametrize("obs,act,share", FF_CASES,
                         ids=[f"{o}-{a}-{'shared' if s else 'separate'}" for o, a, s in FF_CASES])
def test_forward_train_matches_reference(obs, act, share):
    m = make(obs, act, vf_share_layers=share, fcnet_hiddens=[7, 5], head_fcnet_hiddens=[3])
    space = OBS_SPACES[obs]
    B = 6
    x = sample_obs(space, B)
    out = m.forward_train({Columns.OBS: x})
    st = {k: v.detach() for k, v in m.get_state().items()}
    xf = flat_obs(x, space, 1)
    a_pref = "encoder.encoder.net.mlp." if share else "encoder.actor_encoder.net.mlp."
    c_pref = "encoder.encoder.net.mlp." if share else "encoder.critic_encoder.net.mlp."
    a_lat = ref_mlp(st, a_pref, xf, "tanh", "tanh")
    c_lat = ref_mlp(st, c_pref, xf, "tanh", "tanh")
    clip = 20.0 if isinstance(ACT_SPACES[act], gym.spaces.Box) else None
    assert out[Columns.ACTION_DIST_INPUTS].shape == (B, dist_width(ACT_SPACES[act]))
    assert_close(out[Columns.ACTION_DIST_INPUTS], ref_head(st, "pi", a_lat, "relu", clip))
    assert out[Columns.VF_PREDS].shape == (B,)
    assert_close(out[Columns.VF_PREDS], ref_head(st, "vf", c_lat, "relu")[:, 0])
    assert_close(out[Columns.EMBEDDINGS], c_lat)
    # exploration / inference share the actor path
    for fwd in (m.forward_exploration, m.forward_inference):
        o2 = fwd({Columns.OBS: x})
        assert_close(o2[Columns.ACTION_DIST_INPUTS], out[Columns.ACTION_DIST_INPUTS], **FAST_TOL)
        if Columns.ACTIONS in o2:  # fast path may also sample
            assert o2[Columns.ACTIONS].shape[0] == B
            assert o2[Columns.ACTION_LOGP].shape == (B,)


@pytest.mark.parametrize("act_name", ["tanh", "relu", "silu", "swish", "elu", "linear", "Tanh", None],
                         ids=lambda a: f"act-{a}")
def test_all_activations(act_name):
    m = make(fcnet_hiddens=[5, 4], fcnet_activation=act_name, head_fcnet_hiddens=[3],
             head_fcnet_activation=act_name)
    canon = "linear" if act_name is None else act_name.lower()
    x = sample_obs(OBS_SPACES["obs4"], 5)
    st = {k: v.detach() for k, v in m.get_state().items()}
    lat = ref_mlp(st, "encoder.encoder.net.mlp.", x, canon, canon)
    out = m.forward_train({Columns.OBS: x})
    assert_close(out[Columns.EMBEDDINGS], lat)
    assert_close(out[Columns.ACTION_DIST_INPUTS], ref_head(st, "pi", lat, canon))
    assert_close(out[Columns.VF_PREDS], ref_head(st, "vf", lat, canon)[:, 0])


@pytest.mark.parametrize("heads", [[], [4], [4, 3]], ids=lambda h: f"head{'x'.join(map(str, h)) or 'none'}")
def test_head_fcnet_hiddens_layer_shapes(heads):
    m = make(fcnet_hiddens=[6], head_fcnet_hiddens=heads)
    st = m.get_state()
    pi_w = [v.shape for k, v in st.items() if k.startswith("pi.net.mlp.") and k.endswith("weight")]
    vf_w = [v.shape for k, v in st.items() if k.startswith("vf.net.mlp.") and k.endswith("weight")]
    dims = [6, *heads]
    assert pi_w == [(o, i) for i, o in zip(dims, dims[1:] + [3])]
    assert vf_w == [(o, i) for i, o in zip(dims, dims[1:] + [1])]


def test_rllib_parameter_names_shared_and_separate():
    shared = set(make(fcnet_hiddens=[8, 6]).get_state())
    assert {"encoder.encoder.net.mlp.0.weight", "encoder.encoder.net.mlp.2.weight",
            "pi.net.mlp.0.weight", "vf.net.mlp.0.weight"} <= shared
    sep = set(make(fcnet_hiddens=[8], vf_share_layers=False).get_state())
    assert {"encoder.actor_encoder.net.mlp.0.weight", "encoder.critic_encoder.net.mlp.0.weight"} <= sep
    lstm = set(make(fcnet_hiddens=[8], use_lstm=True, lstm_cell_size=4).get_state())
    assert {"encoder.encoder.tokenizer.net.mlp.0.weight", "encoder.encoder.lstm.weight_ih_l0",
            "encoder.encoder.lstm.weight_hh_l0", "encoder.encoder.lstm.bias_ih_l0",
            "encoder.encoder.lstm.bias_hh_l0"} <= lstm


def test_free_log_std_box():
    m = make(act="actBox2", free_log_std=True)
    assert "pi.log_std" in m.get_state()
    with torch.no_grad():
        m.pi.log_std.copy_(torch.tensor([0.3, -25.0]))
    out = m.forward_train({Columns.OBS: sample_obs(OBS_SPACES["obs4"], 3)})
    log_std = out[Columns.ACTION_DIST_INPUTS][:, 2:]
    assert_close(log_std, torch.tensor([[0.3, -20.0]]).expand(3, 2))


def test_gaussian_log_std_clipped():
    m = make(act="actBox2", fcnet_hiddens=[4], log_std_clip_param=0.5)
    with torch.no_grad():
        for p in m.pi.parameters():
            p.fill_(10.0)
    out = m.forward_train({Columns.OBS: sample_obs(OBS_SPACES["obs4"], 3)})
    assert torch.all(out[Columns.ACTION_DIST_INPUTS][:, 2:] == 0.5)


# ---------------------------------------------------------------------------------------------
# Recurrent modules
# ---------------------------------------------------------------------------------------------
RNN_CASES = [(kind, share, obs) for kind in ("lstm", "gru") for share in (True, False) for obs in ("obs4", "obs2x3", "obs6", "obsDisc5")]


def make_rnn(kind, share, obs="obs4", act="actDisc3", **kw):
    key = "use_lstm" if kind == "lstm" else "use_gru"
    return make(obs, act, fcnet_hiddens=[6], lstm_cell_size=5, vf_share_layers=share, **{key: True}, **kw)


def rnn_ids(cases):
    return [f"{k}-{'shared' if s else 'separate'}-{o}" for k, s, o in cases]


@pytest.mark.parametrize("kind,share,obs", RNN_CASES, ids=rnn_ids(RNN_CASES))
def test_rnn_initial_state_layout(kind, share, obs):
    m = make_rnn(kind, share, obs)
    assert m.is_stateful()
    init = m.get_initial_state()
    keys = {"h", "c"} if kind == "lstm" else {"h"}
    parts = [init] if share else [init["actor"], init["critic"]]
    if not share:
        assert set(init) == {"actor", "critic"}
    for p in parts:
        assert set(p) == keys
        for v in p.values():
            assert v.shape == (1, 5) and torch.all(v == 0)
    # a fresh dict each call (caller owns it)
    leaf = parts[0]["h"]
    leaf.add_(1.0)
    again = m.get_initial_state()
    assert torch.all((again if share else again["actor"])["h"] == 0)


@pytest.mark.parametrize("kind,share,obs", RNN_CASES, ids=rnn_ids(RNN_CASES))
def test_rnn_forward_train_matches_reference(kind, share, obs):
    m = make_rnn(kind, share, obs)
    space = OBS_SPACES[obs]
    B, T = 3, 4
    x = sample_obs(space, B, T)
    s_in = state_in_for(m, B)
    out = m.forward_train({Columns.OBS: x, Columns.STATE_IN: s_in})
    st = {k: v.detach() for k, v in m.get_state().items()}
    xf = flat_obs(x, space, 2)

    def run(prefix, s):
        tokens = ref_mlp(st, f"{prefix}.tokenizer.net.mlp.", xf, "tanh", "tanh")
        c0 = s["c"][:, 0] if kind == "lstm" else None
        return ref_rnn(st, prefix, tokens, s["h"][:, 0], c0, kind)

    if share:
        a_out, h, c = run("encoder.encoder", s_in)
        c_out = a_out
        exp_state = {"h": h, "c": c} if kind == "lstm" else {"h": h}
    else:
        a_out, ha, ca = run("encoder.actor_encoder", s_in["actor"])
        c_out, hc, cc = run("encoder.critic_encoder", s_in["critic"])
        exp_state = {"actor": {"h": ha, "c": ca} if kind == "lstm" else {"h": ha},
                     "critic": {"h": hc, "c": cc} if kind == "lstm" else {"h": hc}}
    assert out[Columns.ACTION_DIST_INPUTS].shape == (B, T, 3)
    assert_close(out[Columns.ACTION_DIST_INPUTS], ref_head(st, "pi", a_out, "relu"))
    assert out[Columns.VF_PREDS].shape == (B, T)
    assert_close(out[Columns.VF_PREDS], ref_head(st, "vf", c_out, "relu")[..., 0])
    assert_close(out[Columns.EMBEDDINGS], c_out)

    def check_state(got, exp):
        assert set(got) == set(exp)
        for k in exp:
            if isinstance(exp[k], dict):
                check_state(got[k], exp[k])
            else:
                assert got[k].shape == (B, 1, 5), f"state_out[{k}] shape {tuple(got[k].shape)}"
                assert_close(got[k][:, 0], exp[k])
    check_state(out[Columns.STATE_OUT], exp_state)


@pytest.mark.parametrize("step_layout", ["B1", "B"], ids=["step-B1", "step-B"])
@pytest.mark.parametrize("kind,share", [("lstm", True), ("lstm", False), ("gru", True), ("gru", False)],
                         ids=["lstm-shared", "lstm-separate", "gru-shared", "gru-separate"])
@pytest.mark.parametrize("method", ["forward_inference", "forward_exploration"])
def test_rnn_stepping_equals_sequence(method, kind, share, step_layout):
    m = make_rnn(kind, share, "obs6")
    B, T = 2, 5
    x = sample_obs(OBS_SPACES["obs6"], B, T, seed=3)
    s0 = state_in_for(m, B, seed=4)
    seq = m.forward_train({Columns.OBS: x, Columns.STATE_IN: s0})
    state = s0 if step_layout == "B1" else _squeeze_state(s0)
    for t in range(T):
        obs_t = x[:, t:t + 1] if step_layout == "B1" else x[:, t]
        with torch.no_grad():  # as env runners call it (lets a fused path run)
            out = getattr(m, method)({Columns.OBS: obs_t, Columns.STATE_IN: state})
        logits = out[Columns.ACTION_DIST_INPUTS]
        if step_layout == "B1":
            assert logits.shape == (B, 1, 3)
            logits = logits[:, 0]
        else:
            assert logits.shape == (B, 3)
        assert_close(logits, seq[Columns.ACTION_DIST_INPUTS][:, t], **FAST_TOL)
        if Columns.ACTIONS in out:
            assert out[Columns.ACTIONS].shape[:logits.dim() - 1 + (step_layout == "B1")] == \
                out[Columns.ACTION_DIST_INPUTS].shape[:-1]
        state = out[Columns.STATE_OUT]
        _check_state_layout(state, B)
    # final actor state equals the sequence's final state
    seq_state = seq[Columns.STATE_OUT] if share else seq[Columns.STATE_OUT]["actor"]
    got = state if share else state["actor"]
    for k in seq_state:
        assert_close(got[k].reshape(B, -1), seq_state[k].reshape(B, -1), **FAST_TOL)


def _squeeze_state(s):
    return {k: (_squeeze_state(v) if isinstance(v, dict) else v[:, 0]) for k, v in s.items()}


def _check_state_layout(s, B):
    for k, v in s.items():
        if isinstance(v, dict):
            _check_state_layout(v, B)
        else:
            assert v.shape == (B, 1, 5), f"state_out[{k!r}] has shape {tuple(v.shape)}, expected (B, 1, 5)"


def test_rnn_missing_state_in_is_value_error():
    m = make_rnn("lstm", True)
    with pytest.raises(ValueError, match="state_in"):
        m.forward_train({Columns.OBS: sample_obs(OBS_SPACES["obs4"], 2, 3)})
    with pytest.raises(ValueError, match="state_in"):
        m.forward_inference({Columns.OBS: sample_obs(OBS_SPACES["obs4"], 2)})


def test_rnn_nested_state_missing_critic_is_value_error():
    m = make_rnn("lstm", False)
    s = state_in_for(m, 2)
    del s["critic"]
    with pytest.raises(ValueError, match="critic"):
        m.forward_train({Columns.OBS: sample_obs(OBS_SPACES["obs4"], 2, 3), Columns.STATE_IN: s})


def test_rnn_state_wrong_cell_size_is_value_error():
    m = make_rnn("lstm", True)
    s = {"h": torch.zeros(2, 1, 7), "c": torch.zeros(2, 1, 5)}
    with pytest.raises(ValueError, match=r"h.*\(2, 1, 7\)"):
        m.forward_train({Columns.OBS: sample_obs(OBS_SPACES["obs4"], 2, 3), Columns.STATE_IN: s})


def test_rnn_train_rejects_obs_without_time_axis():
    m = make_rnn("gru", True)
    with pytest.raises(ValueError, match="obs"):
        m.forward_train({Columns.OBS: sample_obs(OBS_SPACES["obs4"], 2), Columns.STATE_IN: state_in_for(m, 2)})


def test_stateless_module():
    m = make()
    assert m.get_initial_state() == {}
    assert m.is_stateful() is False
    out = m.forward_train({Columns.OBS: sample_obs(OBS_SPACES["obs4"], 2)})
    assert Columns.STATE_OUT not in out


# ---------------------------------------------------------------------------------------------
# compute_values, distributions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("share", [True, False], ids=["shared", "separate"])
def test_compute_values(share):
    m = make(vf_share_layers=share)
    x = sample_obs(OBS_SPACES["obs4"], 4)
    out = m.forward_train({Columns.OBS: x})
    v = m.compute_values({Columns.OBS: x})
    assert v.shape == (4,)
    assert_close(v, out[Columns.VF_PREDS])
    v2 = m.compute_values({Columns.OBS: x}, embeddings=out[Columns.EMBEDDINGS])
    assert_close(v2, out[Columns.VF_PREDS])


def test_compute_values_rnn():
    m = make_rnn("lstm", False)
    x = sample_obs(OBS_SPACES["obs4"], 2, 3)
    s = state_in_for(m, 2)
    out = m.forward_train({Columns.OBS: x, Columns.STATE_IN: s})
    v = m.compute_values({Columns.OBS: x, Columns.STATE_IN: s})
    assert v.shape == (2, 3)
    assert_close(v, out[Columns.VF_PREDS])


@pytest.mark.parametrize("act,cls_name", [("actDisc3", "TorchCategorical"), ("actBox2", "TorchDiagGaussian"),
                                          ("actMultiDisc2x3", "TorchMultiCategorical")],
                         ids=["Discrete", "Box", "MultiDiscrete"])
def test_action_dist_classes(act, cls_name):
    m = make(act=act)
    x = sample_obs(OBS_SPACES["obs4"], 4)
    logits = m.forward_inference({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS]
    for getter in (m.get_inference_action_dist_cls, m.get_exploration_action_dist_cls, m.get_train_action_dist_cls):
        cls = getter()
        assert issubclass(cls, getattr(rf.distributions, cls_name)) or cls_name in [c.__name__ for c in cls.__mro__]
        dist = cls.from_logits(logits)
        a = dist.sample()
        lp = dist.logp(a)
        assert lp.shape == (4,)
        assert torch.isfinite(lp).all()
    if act == "actMultiDisc2x3":
        a = m.get_train_action_dist_cls().from_logits(logits).sample()
        assert a.shape == (4, 2)
        assert (a[:, 0] < 2).all() and (a[:, 1] < 3).all()


# ---------------------------------------------------------------------------------------------
# get_state / set_state
# ---------------------------------------------------------------------------------------------
def test_get_state_components_and_inference_only():
    m = make(vf_share_layers=False)
    full = m.get_state()
    assert all(isinstance(v, torch.Tensor) for v in full.values())
    assert set(m.get_state(components="pi")) == {k for k in full if k.startswith("pi.")}
    assert set(m.get_state(components=["pi", "vf"])) == {k for k in full if k.startswith(("pi.", "vf."))}
    assert set(m.get_state(not_components="vf")) == {k for k in full if not k.startswith("vf.")}
    inf = set(m.get_state(inference_only=True))
    assert inf == {k for k in full if not k.startswith(("vf.", "encoder.critic_encoder."))}
    assert any(k.startswith("encoder.actor_encoder.") for k in inf)


def test_get_state_inference_only_shared_keeps_encoder():
    m = make(vf_share_layers=True)
    inf = set(m.get_state(inference_only=True))
    assert any(k.startswith("encoder.encoder.") for k in inf)
    assert not any(k.startswith("vf.") for k in inf)


@pytest.mark.parametrize("as_numpy", [False, True], ids=["tensors", "numpy"])
def test_set_state_round_trip(as_numpy):
    src = make()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))
    dst = make()
    state = {k: (v.detach().numpy().copy() if as_numpy else v.detach().clone()) for k, v in src.get_state().items()}
    dst.set_state(state)
    x = sample_obs(OBS_SPACES["obs4"], 5)
    assert_close(dst.forward_train({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS],
                 src.forward_train({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS], atol=0, rtol=0)
    # the module copied the weights: mutating the source state does not reach it
    before = {k: v.detach().clone() for k, v in dst.get_state().items()}
    for v in state.values():
        v[...] = 0
    for k, v in dst.get_state().items():
        assert torch.equal(v, before[k]), k


def test_set_state_float64_numpy_is_accepted():
    src, dst = make(), make()
    with torch.no_grad():
        for p in src.parameters():
            p.mul_(1.5)
    dst.set_state({k: v.detach().double().numpy() for k, v in src.get_state().items()})
    for k, v in src.get_state().items():
        assert_close(dst.get_state()[k], v)
        assert dst.get_state()[k].dtype == torch.float32


def test_set_state_wrong_shape_names_key_and_shapes():
    m = make()
    state = {k: v.clone() for k, v in m.get_state().items()}
    state["pi.net.mlp.0.weight"] = torch.zeros(4, 6)
    with pytest.raises(ValueError, match=r"pi\.net\.mlp\.0\.weight.*\(3, 6\).*\(4, 6\)"):
        m.set_state(state)


def test_set_state_unknown_key_is_value_error():
    m = make()
    state = {k: v.clone() for k, v in m.get_state().items()}
    state["bogus.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="bogus.weight"):
        m.set_state(state)


def test_set_state_missing_key_is_value_error():
    m = make()
    state = {k: v.clone() for k, v in m.get_state().items()}
    del state["encoder.encoder.net.mlp.0.bias"]
    with pytest.raises(ValueError, match=r"encoder\.encoder\.net\.mlp\.0\.bias"):
        m.set_state(state)


def test_set_state_rejects_non_tensor_values():
    m = make()
    state = {k: v.clone() for k, v in m.get_state().items()}
    state["pi.net.mlp.0.bias"] = [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"pi\.net\.mlp\.0\.bias"):
        m.set_state(state)


def test_set_state_failure_leaves_module_unchanged():
    m = make()
    before = {k: v.clone() for k, v in m.get_state().items()}
    state = {k: torch.full_like(v, 7.0) for k, v in before.items()}
    state["vf.net.mlp.0.weight"] = torch.zeros(2, 2)
    with pytest.raises(ValueError):
        m.set_state(state)
    for k, v in m.get_state().items():
        assert torch.equal(v, before[k]), f"{k} changed by a failed set_state"


# ---------------------------------------------------------------------------------------------
# inference_only modules
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("share", [True, False], ids=["shared", "separate"])
def test_inference_only_module(share):
    full = make(vf_share_layers=share)
    with torch.no_grad():
        for p in full.parameters():
            p.add_(0.1 * torch.randn_like(p))
    inf = make(vf_share_layers=share, inference_only=True)
    keys = set(inf.get_state())
    assert not any(k.startswith("vf.") for k in keys)
    assert not any(k.startswith("encoder.critic_encoder.") for k in keys)
    assert not any(n.startswith(("vf.", "encoder.critic_encoder.")) for n, _ in inf.named_parameters())
    assert keys == set(full.get_state(inference_only=True))
    x = sample_obs(OBS_SPACES["obs4"], 4)
    with pytest.raises(RuntimeError):
        inf.forward_train({Columns.OBS: x})
    inf.set_state(full.get_state(inference_only=True))
    assert_close(inf.forward_inference({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS],
                 full.forward_inference({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS], atol=0, rtol=0)
    assert inf.forward_exploration({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS].shape == (4, 3)


@pytest.mark.parametrize("share", [True, False], ids=["shared", "separate"])
def test_inference_only_module_accepts_full_state(share):
    """RLlib's TorchRLModule.set_state loads with strict=False so that a learner's full state
    (value function included) can be pushed to inference-only env-runner modules."""
    full = make(vf_share_layers=share)
    inf = make(vf_share_layers=share, inference_only=True)
    with torch.no_grad():
        for p in full.parameters():
            p.add_(0.1)
    inf.set_state(full.get_state())
    x = sample_obs(OBS_SPACES["obs4"], 4)
    assert_close(inf.forward_inference({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS],
                 full.forward_inference({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS], atol=0, rtol=0)


def test_inference_only_rnn_separate_state_is_actor_only():
    m = make_rnn("lstm", False, inference_only=True)
    init = m.get_initial_state()
    assert set(init) == {"actor"} or set(init) == {"actor", "critic"}
    s = state_in_for(m, 2)
    out = m.forward_inference({Columns.OBS: sample_obs(OBS_SPACES["obs4"], 2, 1), Columns.STATE_IN: s})
    assert out[Columns.ACTION_DIST_INPUTS].shape == (2, 1, 3)
    assert "actor" in out[Columns.STATE_OUT]


# ---------------------------------------------------------------------------------------------
# Misc API
# ---------------------------------------------------------------------------------------------
def test_misc_api():
    m = make()
    assert m.framework == "torch"
    assert rf.TorchRLModule.framework == "torch"
    assert m.unwrapped() is m
    assert isinstance(m, rf.RLModule) and isinstance(m, rf.TorchRLModule) and isinstance(m, torch.nn.Module)
    multi = m.as_multi_rl_module()
    assert isinstance(multi, rf.MultiRLModule)
    assert list(multi.keys()) == [rf.DEFAULT_MODULE_ID] and rf.DEFAULT_MODULE_ID == "default_policy"
    assert multi[rf.DEFAULT_MODULE_ID] is m
    defaults = {"obs": object()}
    vr = m.update_default_view_requirements(defaults)
    assert isinstance(vr, dict) and "obs" in vr
    assert m.get_checkpointable_components() == []
    meta = m.get_metadata()
    assert isinstance(meta, dict)
    assert "PPOTorchRLModule" in meta["class"]
    assert meta["torch_version"] == torch.__version__
    assert meta["rlmodule_fast_version"] == rf.__version__
    assert "checkpoint_version" in meta


def test_columns_values_match_rllib():
    expected = {"OBS": "obs", "ACTIONS": "actions", "ACTION_DIST_INPUTS": "action_dist_inputs",
                "ACTION_LOGP": "action_logp", "VF_PREDS": "vf_preds", "STATE_IN": "state_in",
                "STATE_OUT": "state_out", "EMBEDDINGS": "embeddings", "SEQ_LENS": "seq_lens",
                "NEXT_OBS": "new_obs", "REWARDS": "rewards", "TERMINATEDS": "terminateds",
                "TRUNCATEDS": "truncateds", "ADVANTAGES": "advantages", "VALUE_TARGETS": "value_targets",
                "LOSS_MASK": "loss_mask"}
    for name, value in expected.items():
        assert getattr(Columns, name) == value, name


def test_call_runs_forward_train():
    m = make()
    x = sample_obs(OBS_SPACES["obs4"], 3)
    a = m({Columns.OBS: x})
    b = m.forward_train({Columns.OBS: x})
    assert set(a) == set(b)
    for k in a:
        assert_close(a[k], b[k], atol=0, rtol=0)


@pytest.mark.parametrize("case", ["ff-shared", "ff-separate-box", "lstm-separate", "gru-shared"])
def test_forward_train_gradients_reach_every_parameter(case):
    if case == "ff-shared":
        m = make()
        batch = {Columns.OBS: sample_obs(OBS_SPACES["obs4"], 4)}
    elif case == "ff-separate-box":
        m = make(act="actBox2", vf_share_layers=False, free_log_std=True, head_fcnet_hiddens=[3])
        batch = {Columns.OBS: sample_obs(OBS_SPACES["obs4"], 4)}
    elif case == "lstm-separate":
        m = make_rnn("lstm", False)
        batch = {Columns.OBS: sample_obs(OBS_SPACES["obs4"], 2, 3), Columns.STATE_IN: state_in_for(m, 2)}
    else:
        m = make_rnn("gru", True, "obsDisc5")
        batch = {Columns.OBS: sample_obs(OBS_SPACES["obsDisc5"], 2, 3), Columns.STATE_IN: state_in_for(m, 2)}
    out = m.forward_train(batch)
    g = torch.Generator().manual_seed(7)
    ad, vf = out[Columns.ACTION_DIST_INPUTS], out[Columns.VF_PREDS]
    loss = (ad * torch.randn(ad.shape, generator=g)).sum() + (vf * torch.randn(vf.shape, generator=g)).sum()
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"zero gradient at {name}"


@pytest.mark.parametrize("method", ["forward_train", "forward_exploration", "forward_inference"])
@pytest.mark.parametrize("rnn", [False, True], ids=["ff", "lstm"])
def test_outputs_not_aliased_and_input_not_modified(method, rnn):
    m = make_rnn("lstm", False) if rnn else make()
    B = 3

    def batch(seed):
        if rnn:
            shape = (B, 2) if method == "forward_train" else (B, 1)
            return {Columns.OBS: sample_obs(OBS_SPACES["obs4"], *shape, seed=seed),
                    Columns.STATE_IN: state_in_for(m, B, seed=seed)}
        return {Columns.OBS: sample_obs(OBS_SPACES["obs4"], B, seed=seed)}

    b1 = batch(1)
    b1_copy = clone_tree(b1)
    with torch.no_grad():
        out1 = getattr(m, method)(b1)
    snapshot = clone_tree(out1)
    assert_tree_equal(b1, b1_copy)  # input untouched
    with torch.no_grad():
        out2 = getattr(m, method)(batch(2))
    assert_tree_equal(out1, snapshot)  # earlier outputs untouched
    assert out1 is not out2
    # the returned tensors do not share memory with the input batch
    for v in out1.values():
        if isinstance(v, torch.Tensor):
            assert v.data_ptr() != b1[Columns.OBS].data_ptr()


@pytest.mark.parametrize("method", ["forward_train", "forward_inference"])
def test_numpy_float64_noncontiguous_inputs(method):
    m = make(obs="obs6")
    base = np.random.default_rng(0).uniform(-1, 1, size=(5, 12))
    obs = base[:, ::2]  # float64, non-contiguous
    assert not obs.flags["C_CONTIGUOUS"] and obs.dtype == np.float64
    keep = obs.copy()
    out = getattr(m, method)({Columns.OBS: obs})
    ref = getattr(m, method)({Columns.OBS: torch.from_numpy(obs.copy()).float()})
    assert_close(out[Columns.ACTION_DIST_INPUTS].float(), ref[Columns.ACTION_DIST_INPUTS])
    assert out[Columns.ACTION_DIST_INPUTS].dtype == torch.float32
    np.testing.assert_array_equal(obs, keep)


def test_numpy_negative_strides_and_discrete_numpy_obs():
    m = make(obs="obs4")
    obs = np.random.default_rng(1).uniform(-1, 1, size=(4, 4)).astype(np.float32)[::-1]
    out = m.forward_inference({Columns.OBS: obs})
    ref = m.forward_inference({Columns.OBS: torch.from_numpy(obs.copy())})
    assert_close(out[Columns.ACTION_DIST_INPUTS], ref[Columns.ACTION_DIST_INPUTS])
    md = make(obs="obsDisc5")
    idx = np.array([0, 4, 2], dtype=np.int64)
    o1 = md.forward_train({Columns.OBS: idx})
    o2 = md.forward_train({Columns.OBS: torch.from_numpy(idx)})
    assert_close(o1[Columns.ACTION_DIST_INPUTS], o2[Columns.ACTION_DIST_INPUTS])


def test_numpy_state_in_accepted():
    m = make_rnn("gru", True)
    s = {"h": np.zeros((2, 1, 5), dtype=np.float64)}
    out = m.forward_exploration({Columns.OBS: np.zeros((2, 4), dtype=np.float32), Columns.STATE_IN: s})
    assert out[Columns.ACTION_DIST_INPUTS].shape == (2, 3)
    assert isinstance(out[Columns.STATE_OUT]["h"], torch.Tensor)


def test_discrete_obs_is_one_hot():
    m = make(obs="obsDisc5", fcnet_hiddens=[4])
    st = {k: v.detach() for k, v in m.get_state().items()}
    obs = torch.tensor([0, 3, 4])
    out = m.forward_train({Columns.OBS: obs})
    w, b = st["encoder.encoder.net.mlp.0.weight"], st["encoder.encoder.net.mlp.0.bias"]
    assert_close(out[Columns.EMBEDDINGS], torch.tanh(w[:, obs].T + b))


def test_discrete_obs_rejects_float_dtype():
    m = make(obs="obsDisc5")
    with pytest.raises(ValueError, match="obs"):
        m.forward_train({Columns.OBS: torch.tensor([0.5, 1.0])})


def test_keyword_constructor_matches_config_constructor():
    obs, act = OBS_SPACES["obs4"], ACT_SPACES["actDisc3"]
    a = PPOTorchRLModule(observation_space=obs, action_space=act, model_config={"fcnet_hiddens": [5]},
                         catalog_class=PPOCatalog)
    b = PPOTorchRLModule(rf.RLModuleConfig(observation_space=obs, action_space=act,
                                           model_config_dict={"fcnet_hiddens": [5]}, catalog_class=PPOCatalog))
    assert {k: v.shape for k, v in a.get_state().items()} == {k: v.shape for k, v in b.get_state().items()}
    assert a.inference_only is False and b.inference_only is False
    assert a.observation_space == obs and a.action_space == act


# ---------------------------------------------------------------------------------------------
# Weight changes reach the (possibly cached / fused) exploration and inference paths
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["set_state", "optimizer-step", "in-place-copy"])
@pytest.mark.parametrize("rnn", [False, True], ids=["ff", "gru"])
def test_weight_updates_are_seen_by_next_forward(how, rnn):
    m = make_rnn("gru", True) if rnn else make()
    B = 4
    batch = {Columns.OBS: sample_obs(OBS_SPACES["obs4"], B)}
    if rnn:
        batch[Columns.STATE_IN] = _squeeze_state(state_in_for(m, B))
    with torch.no_grad():
        before = m.forward_inference(batch)[Columns.ACTION_DIST_INPUTS].clone()
        m.forward_exploration(batch)
    if how == "set_state":
        m.set_state({k: v + 0.25 if v.dtype.is_floating_point and "clip" not in k else v
                     for k, v in m.get_state().items()})
    elif how == "optimizer-step":
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        tb = dict(batch)
        if rnn:
            tb = {Columns.OBS: batch[Columns.OBS][:, None], Columns.STATE_IN: state_in_for(m, B)}
        out = m.forward_train(tb)
        (out[Columns.ACTION_DIST_INPUTS].sum() + out[Columns.VF_PREDS].sum()).backward()
        opt.step()
    else:
        with torch.no_grad():
            m.pi.net.mlp[0].weight.mul_(-2.0)
    with torch.no_grad():
        after_inf = m.forward_inference(batch)[Columns.ACTION_DIST_INPUTS]
        after_exp = m.forward_exploration(batch)[Columns.ACTION_DIST_INPUTS]
        if rnn:  # the autograd (torch) path as reference
            ref = m.forward_train({Columns.OBS: batch[Columns.OBS][:, None],
                                   Columns.STATE_IN: {k: v[:, None] for k, v in batch[Columns.STATE_IN].items()}})
            ref = ref[Columns.ACTION_DIST_INPUTS][:, 0]
        else:
            ref = m.forward_train(batch)[Columns.ACTION_DIST_INPUTS]
    assert not torch.allclose(after_inf, before), "weight change not visible"
    torch.testing.assert_close(after_inf, ref, **FAST_TOL)
    torch.testing.assert_close(after_exp, ref, **FAST_TOL)


@pytest.mark.parametrize("act", ["actDisc3", "actBox2", "actMultiDisc2x3"])
def test_inference_is_deterministic_and_sampled_actions_consistent(act):
    m = make(act=act)
    batch = {Columns.OBS: sample_obs(OBS_SPACES["obs4"], 6)}
    with torch.no_grad():
        o1, o2 = m.forward_inference(batch), m.forward_inference(batch)
    torch.testing.assert_close(o1[Columns.ACTION_DIST_INPUTS], o2[Columns.ACTION_DIST_INPUTS], atol=0, rtol=0)
    logits = o1[Columns.ACTION_DIST_INPUTS]
    if Columns.ACTIONS in o1:  # the fused path returns the deterministic action
        assert torch.equal(o1[Columns.ACTIONS], o2[Columns.ACTIONS])
        if act == "actDisc3":
            assert torch.equal(o1[Columns.ACTIONS].long(), logits.argmax(-1))
        elif act == "actBox2":
            torch.testing.assert_close(o1[Columns.ACTIONS], logits[:, :2], **FAST_TOL)
    with torch.no_grad():
        ex = m.forward_exploration(batch)
    if Columns.ACTIONS in ex:
        dist = m.get_exploration_action_dist_cls().from_logits(ex[Columns.ACTION_DIST_INPUTS])
        torch.testing.assert_close(ex[Columns.ACTION_LOGP], dist.logp(ex[Columns.ACTIONS]), **FAST_TOL)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_rnn_discrete_obs_stepping_equals_sequence(kind):
    m = make_rnn(kind, True, "obsDisc5")
    B, T = 3, 4
    x = sample_obs(OBS_SPACES["obsDisc5"], B, T, seed=5)
    s0 = state_in_for(m, B, seed=6)
    seq = m.forward_train({Columns.OBS: x, Columns.STATE_IN: s0})
    state = s0
    for t in range(T):
        out = m.forward_inference({Columns.OBS: x[:, t], Columns.STATE_IN: state})
        torch.testing.assert_close(out[Columns.ACTION_DIST_INPUTS], seq[Columns.ACTION_DIST_INPUTS][:, t], **FAST_TOL)
        state = out[Columns.STATE_OUT]


def test_discrete_obs_with_start_offset():
    space = gym.spaces.Discrete(4, start=2)
    torch.manual_seed(0)
    m = PPOTorchRLModule(observation_space=space, action_space=ACT_SPACES["actDisc3"],
                         model_config={"fcnet_hiddens": [3]})
    st = {k: v.detach() for k, v in m.get_state().items()}
    obs = torch.tensor([2, 5, 3])
    out = m.forward_train({Columns.OBS: obs})
    w, b = st["encoder.encoder.net.mlp.0.weight"], st["encoder.encoder.net.mlp.0.bias"]
    assert_close(out[Columns.EMBEDDINGS], torch.tanh(w[:, obs - 2].T + b))


@pytest.mark.parametrize("bad", [5, -1, 1000], ids=lambda v: f"obs{v}")
@pytest.mark.parametrize("method", ["forward_train", "forward_exploration", "forward_inference"])
def test_discrete_obs_out_of_range_is_value_error(method, bad):
    """An index outside Discrete(5) must be a ValueError naming 'obs' (never an out-of-bounds read)."""
    m = make(obs="obsDisc5")
    with torch.no_grad(), pytest.raises(ValueError, match="obs"):
        getattr(m, method)({Columns.OBS: torch.tensor([0, bad, 1])})


def test_extra_batch_columns_are_accepted_and_untouched():
    """Learner batches carry many more columns (actions, rewards, advantages, ...)."""
    m = make_rnn("lstm", True)
    B, T = 2, 3
    batch = {Columns.OBS: sample_obs(OBS_SPACES["obs4"], B, T), Columns.STATE_IN: state_in_for(m, B),
             Columns.ACTIONS: torch.zeros(B, T, dtype=torch.long), Columns.REWARDS: torch.ones(B, T),
             Columns.SEQ_LENS: torch.full((B,), T), Columns.LOSS_MASK: torch.ones(B, T, dtype=torch.bool),
             "infos": [{} for _ in range(B)]}
    keep = clone_tree(batch)
    out = m.forward_train(batch)
    assert out[Columns.ACTION_DIST_INPUTS].shape == (B, T, 3)
    assert set(batch) == set(keep)
    for k in keep:
        if isinstance(keep[k], (torch.Tensor, dict)):
            assert_tree_equal(batch[k], keep[k])
