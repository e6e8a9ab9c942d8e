"""rlmodule_fast.ops.library: the ops as torch.library custom ops. opcheck for each op, values
against the torch reference / the module, seeded reproducibility, fused_mlp's gradient against
torch autograd, and torch.compile(fullgraph=True) of user functions calling them."""
import numpy as np
import pytest
import torch

gym = pytest.importorskip("gymnasium")
stats = pytest.importorskip("scipy.stats")

import rlmodule_fast as rf  # noqa: E402
from rlmodule_fast.ops import library as L  # noqa: E402, F401  (registers torch.ops.rlmodule_fast)
from rlmodule_fast.ops import reference as R  # noqa: E402

OPS = torch.ops.rlmodule_fast


def g(seed):
    return torch.Generator().manual_seed(seed)


def mlp_args(B=5, I=6, H=7, O=3, seed=0, grad=False):
    gen = g(seed)
    x = torch.randn(B, I, generator=gen)
    ws = [torch.randn(H, I, generator=gen) * 0.4, torch.randn(O, H, generator=gen) * 0.4]
    bs = [torch.randn(H, generator=gen) * 0.1, torch.randn(O, generator=gen) * 0.1]
    if grad:
        for t in [x, *ws, *bs]:
            t.requires_grad_()
    return x, ws, bs


def rnn_weights(kind, I, H, seed=1):
    gen = g(seed)
    n = 4 if kind == "lstm" else 3
    return [torch.randn(n * H, I, generator=gen) * 0.3, torch.randn(n * H, H, generator=gen) * 0.3,
            torch.randn(n * H, generator=gen) * 0.1, torch.randn(n * H, generator=gen) * 0.1]


def policy_args(kind="none", dist="categorical", seed=2, B=5):
    gen = g(seed)
    O, E, H = 6, 8, 7
    enc = [torch.randn(E, O, generator=gen) * 0.3, torch.randn(E, generator=gen) * 0.1]
    lat = E if kind == "none" else H
    D = {"categorical": 4, "multi_categorical": 5, "diag_gaussian": 6}[dist]
    sizes = {"categorical": [4], "multi_categorical": [2, 3], "diag_gaussian": [3]}[dist]
    pi = [torch.randn(D, lat, generator=gen) * 0.3, torch.randn(D, generator=gen) * 0.1]
    vf = [torch.randn(1, lat, generator=gen), torch.randn(1, generator=gen)]
    rnn = rnn_weights(kind, E, H) if kind != "none" else []
    state = [torch.randn(B, H, generator=gen) for _ in range({"none": 0, "gru": 1, "lstm": 2}[kind])]
    obs = torch.randn(B, O, generator=gen)
    return (obs, enc, kind, rnn, state, pi, vf, "tanh", "relu", dist, sizes, 20.0, False, 3)


OPCHECK_CASES = {
    "fused_mlp": lambda: (OPS.fused_mlp, (*mlp_args(), "tanh", None)),
    "fused_mlp-grad-silu-elu": lambda: (OPS.fused_mlp, (*mlp_args(grad=True), "silu", "elu")),
    "fused_mlp-grad-relu": lambda: (OPS.fused_mlp, (*mlp_args(grad=True), "relu", "tanh")),
    "sample_categorical": lambda: (OPS.sample_categorical, (torch.randn(9, 4, generator=g(0)), False, 7)),
    "sample_categorical-det": lambda: (OPS.sample_categorical, (torch.randn(9, 4, generator=g(0)), True, -1)),
    "sample_diag_gaussian": lambda: (OPS.sample_diag_gaussian, (torch.randn(9, 6, generator=g(0)), False, 7)),
    "lstm_step": lambda: (OPS.lstm_step, (torch.randn(5, 6), torch.randn(5, 7), torch.randn(5, 7),
                                          *rnn_weights("lstm", 6, 7)[:2], torch.randn(28))),
    "gru_step": lambda: (OPS.gru_step, (torch.randn(5, 6), torch.randn(5, 7), *rnn_weights("gru", 6, 7))),
    "gru_step-nobias": lambda: (OPS.gru_step, (torch.randn(5, 6), torch.randn(5, 7),
                                               *rnn_weights("gru", 6, 7)[:2], None, None)),
    "policy_step-mlp-categorical": lambda: (OPS.policy_step, policy_args()),
    "policy_step-lstm-gaussian": lambda: (OPS.policy_step, policy_args("lstm", "diag_gaussian")),
    "policy_step-gru-multi": lambda: (OPS.policy_step, policy_args("gru", "multi_categorical")),
}


@pytest.mark.parametrize("case", list(OPCHECK_CASES))
def test_opcheck(case):
    op, args = OPCHECK_CASES[case]()
    result = torch.library.opcheck(op, args)
    assert set(result.values()) == {"SUCCESS"}, result


TRITON_CASES = ["fused_mlp", "fused_mlp-grad-relu", "sample_categorical", "sample_diag_gaussian", "lstm_step",
                "gru_step"]


@pytest.mark.parametrize("case", TRITON_CASES)
def test_opcheck_on_triton(monkeypatch, case):
    """The same ops on the Triton kernels (CUDA's backend; interpreted on CPU here)."""
    if not rf.backend_info()["triton"]["available"]:
        pytest.skip(rf.backend_info()["triton"]["reason"])
    monkeypatch.setenv("RLMODULE_FAST_BACKEND", "triton")
    op, args = OPCHECK_CASES[case]()
    result = torch.library.opcheck(op, args)
    assert set(result.values()) == {"SUCCESS"}, result


def test_values_match_the_torch_reference():
    x, ws, bs = mlp_args()
    torch.testing.assert_close(OPS.fused_mlp(x, ws, bs, "silu", "tanh"), R.fused_mlp(x, ws, bs, "silu", "tanh"))
    xi, h, c = torch.randn(4, 6), torch.randn(4, 7), torch.randn(4, 7)
    w = rnn_weights("lstm", 6, 7)
    b = w[2] + w[3]
    for got, want in zip(OPS.lstm_step(xi, h, c, w[0], w[1], b), R.lstm_step(xi, h, c, w[0], w[1], b)):
        torch.testing.assert_close(got, want)
    w = rnn_weights("gru", 6, 7)
    torch.testing.assert_close(OPS.gru_step(xi, h, *w), R.gru_step(xi, h, *w))
    logits = torch.randn(6, 5)
    a, lp = OPS.sample_categorical(logits, True, -1)
    torch.testing.assert_close(a, logits.argmax(-1))
    torch.testing.assert_close(lp, torch.log_softmax(logits, -1).gather(-1, a[:, None])[:, 0])


@pytest.mark.parametrize("act,out", [("tanh", None), ("relu", "tanh"), ("silu", None), ("elu", "linear"),
                                     ("linear", "tanh")])
def test_fused_mlp_gradient_matches_torch_autograd(act, out):
    x, ws, bs = mlp_args(grad=True, seed=4)
    y = OPS.fused_mlp(x, ws, bs, act, out)
    up = torch.randn_like(y)
    params = [x, *ws, *bs]
    got = torch.autograd.grad((y * up).sum(), params)
    want = torch.autograd.grad((R.fused_mlp(x, ws, bs, act, out) * up).sum(), params)
    for gg, ww in zip(got, want):
        torch.testing.assert_close(gg, ww, rtol=1e-4, atol=1e-5)


def test_seeded_draws_are_reproducible_and_leave_the_stream_alone():
    logits = torch.randn(64, 5)
    a1, lp1 = OPS.sample_categorical(logits, False, 123)
    a2, lp2 = OPS.sample_categorical(logits, False, 123)
    assert torch.equal(a1, a2) and torch.equal(lp1, lp2)
    assert not torch.equal(a1, OPS.sample_categorical(logits, False, 124)[0])
    ml = torch.randn(64, 4)
    torch.testing.assert_close(OPS.sample_diag_gaussian(ml, False, 5), OPS.sample_diag_gaussian(ml, False, 5))
    # a seeded call in between does not move the process's stream (seed=-1 draws)
    rf.manual_seed(1)
    first, second = OPS.sample_categorical(logits, False, -1)[0], OPS.sample_categorical(logits, False, -1)[0]
    rf.manual_seed(1)
    assert torch.equal(OPS.sample_categorical(logits, False, -1)[0], first)
    OPS.sample_categorical(logits, False, 99)
    assert torch.equal(OPS.sample_categorical(logits, False, -1)[0], second)
    with pytest.raises(ValueError, match="seed"):
        OPS.sample_categorical(logits, False, -2)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_seeded_draws_are_reproducible_on_every_backend(monkeypatch, backend):
    monkeypatch.setenv("RLMODULE_FAST_BACKEND", backend)  # triton: interpreted on CPU (conftest)
    if backend == "triton" and not rf.backend_info()["triton"]["available"]:
        pytest.skip(rf.backend_info()["triton"]["reason"])
    logits, ml = torch.randn(32, 5), torch.randn(32, 4)
    for op, x in ((OPS.sample_categorical, logits), (OPS.sample_diag_gaussian, ml)):
        a1, lp1 = op(x, False, 77)
        a2, lp2 = op(x, False, 77)
        assert torch.equal(a1, a2) and torch.equal(lp1, lp2)
        assert not torch.equal(a1, op(x, False, 78)[0])


def test_seeded_categorical_draws_follow_softmax():
    N = 5000
    logits = torch.tensor([1.0, 0.0, -0.5, 2.0]).expand(N, 4).contiguous()
    a, lp = OPS.sample_categorical(logits, False, 2024)
    p = torch.softmax(logits[0], -1).double().numpy()
    assert stats.chisquare(np.bincount(a.numpy(), minlength=4), p * N).pvalue > 1e-4
    torch.testing.assert_close(lp, torch.log_softmax(logits, -1).gather(-1, a[:, None])[:, 0])


def _module_args(module):
    """The policy_step op's weight arguments read from a shared-encoder PPO module."""
    enc = module.encoder.encoder
    rnn_kind = getattr(enc, "kind", "none")
    mlp = enc.tokenizer.net.linears if rnn_kind != "none" else enc.net.linears
    flat = [t for lin in mlp for t in (lin.weight, lin.bias)]
    rnn = [] if rnn_kind == "none" else [enc.rnn.weight_ih_l0, enc.rnn.weight_hh_l0, enc.rnn.bias_ih_l0,
                                         enc.rnn.bias_hh_l0]
    pi = [t for lin in module.pi.net.linears for t in (lin.weight, lin.bias)]
    vf = [t for lin in module.vf.net.linears for t in (lin.weight, lin.bias)]
    return flat, rnn_kind, rnn, pi, vf


@pytest.mark.parametrize("model", ["mlp", "lstm"])
def test_policy_step_op_equals_the_module(model):
    torch.manual_seed(0)
    cfg = {"fcnet_hiddens": [16], "head_fcnet_hiddens": [8]}
    if model == "lstm":
        cfg.update(use_lstm=True, lstm_cell_size=8)
    module = rf.RLModuleSpec(module_class=rf.ppo.PPOTorchRLModule, observation_space=gym.spaces.Box(-1, 1, (5,)),
                             action_space=gym.spaces.MultiDiscrete([3, 2]), model_config_dict=cfg,
                             catalog_class=rf.ppo.PPOCatalog).build()
    flat, kind, rnn, pi, vf = _module_args(module)
    B = 6
    obs = torch.rand(B, 5) * 2 - 1
    state = [torch.randn(B, 8) * 0.5, torch.randn(B, 8) * 0.5] if kind == "lstm" else []
    with torch.no_grad():
        adi, actions, logp, vf_preds, state_out = OPS.policy_step(
            obs, flat, kind, rnn, state, pi, vf, "tanh", "relu", "multi_categorical", [3, 2], 20.0, True, -1)
        batch = {"obs": obs}
        if state:
            batch["state_in"] = {"h": state[0][:, None], "c": state[1][:, None]}
        want = module.forward_inference(batch)
        values = module.compute_values(batch)
    torch.testing.assert_close(adi, want["action_dist_inputs"], rtol=1e-5, atol=1e-5)
    assert torch.equal(actions, want["actions"])
    torch.testing.assert_close(logp, want["action_logp"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vf_preds, values, rtol=1e-5, atol=1e-5)
    if state:
        torch.testing.assert_close(state_out[0], want["state_out"]["h"][:, 0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(state_out[1], want["state_out"]["c"][:, 0], rtol=1e-5, atol=1e-5)
    # in-place weight updates are seen by the cached plan
    with torch.no_grad():
        pi[0].mul_(2.0)
        adi2 = OPS.policy_step(obs, flat, kind, rnn, state, pi, vf, "tanh", "relu", "multi_categorical", [3, 2],
                               20.0, True, -1)[0]
        torch.testing.assert_close(adi2, module.forward_inference(batch)["action_dist_inputs"], rtol=1e-5, atol=1e-5)


def _user_fn(x, ws, bs, w_ih, w_hh, b, h, c):
    z = OPS.fused_mlp(x, ws, bs, "tanh", "tanh")
    h2, c2 = OPS.lstm_step(z, h, c, w_ih, w_hh, b)
    actions, logp = OPS.sample_categorical(h2[:, :4] * 3.0, False, 11)
    return actions, logp, h2, c2


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_fullgraph_has_no_graph_break(backend):
    torch._dynamo.reset()
    x, ws, bs = mlp_args(O=6)
    w = rnn_weights("lstm", 6, 7)
    h, c = torch.randn(5, 7), torch.randn(5, 7)
    args = (x, ws, bs, w[0], w[1], w[2] + w[3], h, c)
    compiled = torch.compile(_user_fn, fullgraph=True, backend=backend)
    for got, want in zip(compiled(*args), _user_fn(*args)):
        torch.testing.assert_close(got, want)
    explanation = torch._dynamo.explain(_user_fn)(*args)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


@pytest.mark.parametrize("act", ["relu", "tanh"])  # ("tanh", None): both equal the Python defaults of rf.ops
def test_compiled_training_step_matches_eager_gradients(act):
    torch._dynamo.reset()

    def loss_fn(x, ws, bs):
        return OPS.fused_mlp(x, ws, bs, act, None).square().mean()

    x, ws, bs = mlp_args(grad=True, seed=6)
    params = [x, *ws, *bs]
    want = torch.autograd.grad(loss_fn(x, ws, bs), params)
    got = torch.autograd.grad(torch.compile(loss_fn, fullgraph=True, backend="aot_eager")(x, ws, bs), params)
    for gg, ww in zip(got, want):
        torch.testing.assert_close(gg, ww)


def test_compile_policy_step_fullgraph():
    torch._dynamo.reset()
    args = policy_args("gru", "diag_gaussian")

    def step(obs, state):
        a = args
        return OPS.policy_step(obs, a[1], a[2], a[3], state, a[5], a[6], a[7], a[8], a[9], a[10], a[11], False, 5)

    want = step(args[0], args[4])
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(args[0], args[4])
    for gg, ww in zip(got[:4], want[:4]):
        torch.testing.assert_close(gg, ww)
    torch.testing.assert_close(got[4], want[4])


def test_inductor_compiles_fused_mlp():
    pytest.importorskip("torch._inductor")
    torch._dynamo.reset()
    x, ws, bs = mlp_args(seed=8)

    def f(x):
        return torch.softmax(OPS.fused_mlp(x, ws, bs, "tanh", None) * 2.0, -1)

    try:
        got = torch.compile(f, fullgraph=True, backend="inductor")(x)
    except Exception as e:  # no C++ compiler for inductor's CPU codegen here
        if "compiler" in str(e).lower() or "cpp" in type(e).__name__.lower():
            pytest.skip(f"inductor cannot build CPU code here: {type(e).__name__}")
        raise
    torch.testing.assert_close(got, f(x))
