"""fastpath.PolicyPlan (cpp backend) against a straightforward torch composition of the same
layers (nn.Linear / nn.LSTM / nn.GRU built by hand)."""
from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch

import rlmodule_fast as rf
from rlmodule_fast.fastpath import EncoderLayers, PolicyLayers, PolicyPlan, plan_for
from rlmodule_fast.ops import reference as ref

CPP = rf.backend_info()["cpp"]
pytestmark = pytest.mark.skipif(not CPP["available"], reason=f"cpp backend unavailable: {CPP['reason']}")


def _lins(sizes, gen):
    out = []
    for i, o in zip(sizes[:-1], sizes[1:]):
        lin = torch.nn.Linear(i, o)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(o, i, generator=gen) / i**0.5)
            lin.bias.copy_(torch.randn(o, generator=gen) * 0.3)
        out.append(lin)
    return out


def _rnn(kind, i, h, gen):
    r = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(i, h, batch_first=True)
    with torch.no_grad():
        for p in r.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / h**0.5)
    return r


def make_layers(obs=5, hid=(17, 9), act="tanh", head=(), head_act="relu", dist="categorical", sizes=(3,),
                shared=True, rnn=None, rnn_h=11, clip=None, free_log_std=False, seed=0, critic_hid=(13,)):
    g = torch.Generator().manual_seed(seed)
    a_mlp = _lins([obs, *hid], g)
    lat = hid[-1] if hid else obs
    a_rnn = _rnn(rnn, lat, rnn_h, g) if rnn else None
    lat_a = rnn_h if rnn else lat
    critic = None
    lat_c = lat_a
    if not shared:
        c_mlp = _lins([obs, *critic_hid], g)
        c_lat = critic_hid[-1] if critic_hid else obs
        c_rnn = _rnn(rnn, c_lat, rnn_h + 2, g) if rnn else None
        lat_c = rnn_h + 2 if rnn else c_lat
        critic = EncoderLayers(c_mlp, act, c_rnn)
    A = sum(sizes) if dist != "diag_gaussian" else sizes[0]
    n_pi = A if dist != "diag_gaussian" or free_log_std else 2 * A
    pi = _lins([lat_a, *head, n_pi], g)
    vf = _lins([lat_c, *head, 1], g)
    fls = torch.nn.Parameter(torch.randn(A, generator=g)) if free_log_std else None
    return PolicyLayers(actor=EncoderLayers(a_mlp, act, a_rnn), critic=critic, pi=pi, vf=vf, head_activation=head_act,
                        dist=dist, action_sizes=list(sizes), log_std_clip=clip, free_log_std=fls)


def reference_step(L: PolicyLayers, obs, state=None):
    """The float64 truth (ops.reference.policy_step): (dist_inputs, vf, state_out)."""
    r = ref.policy_step(L, obs, state, deterministic=True, compute_value=True)
    return r["action_dist_inputs"], r["vf_preds"], r.get("state_out")


def _close(got, want, scale=1.0):
    got = torch.as_tensor(got).double()
    err = (got - want).abs().max().item() if got.numel() else 0.0
    tol = 3e-5 * scale * max(1.0, want.abs().max().item() if want.numel() else 1.0)
    assert err <= tol, f"max error {err:.3g} > {tol:.3g}"


def _logp_ref(L, d, actions):
    return ref.action_logp(L.dist, L.action_sizes, d, actions)


CONFIGS = {
    "cat-shared-tanh": dict(),
    "cat-nohidden": dict(hid=(), head=(7,)),
    "multicat-sep-silu": dict(dist="multi_categorical", sizes=(3, 2, 5), shared=False, act="silu", head=(7,)),
    "gauss-clip-elu": dict(dist="diag_gaussian", sizes=(3,), act="elu", clip=0.5, head=(6,), head_act="tanh"),
    "gauss-freelogstd-relu": dict(dist="diag_gaussian", sizes=(2,), act="relu", free_log_std=True, clip=20.0),
    "lstm-shared": dict(rnn="lstm"),
    "lstm-sep": dict(rnn="lstm", shared=False, dist="diag_gaussian", sizes=(2,)),
    "gru-shared": dict(rnn="gru", head=(5,)),
    "gru-sep-nomlp": dict(rnn="gru", shared=False, hid=(), critic_hid=()),
}


@pytest.mark.parametrize("B", [1, 3, 17, 63, 129])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_plan_matches_torch_composition(name, B):
    L = make_layers(**CONFIGS[name], seed=B)
    plan = PolicyPlan(L)
    g = torch.Generator().manual_seed(B + 1)
    obs = torch.randn(B, 5, generator=g) * 2
    state = None
    for t in range(3 if L.actor.rnn is not None else 1):
        want_d, want_v, want_so = reference_step(L, obs, state)
        out = plan.step(obs, state, deterministic=True, compute_value=True)
        _close(out["action_dist_inputs"], want_d)
        _close(out["vf_preds"], want_v)
        assert out["action_logp"].shape == (B,)
        # logp is exact for the returned inputs and actions
        torch.testing.assert_close(out["action_logp"].double(), _logp_ref(L, out["action_dist_inputs"], out["actions"]),
                                   atol=2e-5, rtol=1e-5)
        d = out["action_dist_inputs"]
        if L.dist == "categorical":
            assert out["actions"].dtype == torch.int64 and out["actions"].shape == (B,)
            assert torch.equal(out["actions"], d.argmax(-1))
        elif L.dist == "multi_categorical":
            assert out["actions"].shape == (B, len(L.action_sizes))
            off = 0
            for j, n in enumerate(L.action_sizes):
                assert torch.equal(out["actions"][:, j], d[:, off:off + n].argmax(-1))
                off += n
        else:
            assert torch.equal(out["actions"], d[:, : d.shape[1] // 2])
        if L.actor.rnn is None:
            assert "state_out" not in out
        else:
            so = out["state_out"]
            if L.critic is not None and L.critic.rnn is not None:
                for part in ("actor", "critic"):
                    for k, v in want_so[part].items():
                        _close(so[part][k], v)
            else:
                assert set(so) == set(want_so)
                for k, v in want_so.items():
                    _close(so[k], v)
            state = so
            obs = torch.randn(B, 5, generator=g)


@pytest.mark.parametrize("name", ["cat-shared-tanh", "multicat-sep-silu", "gauss-clip-elu", "lstm-sep"])
def test_plan_stochastic_logp_numpy_and_fresh_outputs(name):
    L = make_layers(**CONFIGS[name])
    plan = PolicyPlan(L)
    obs = np.random.default_rng(0).standard_normal((33, 5)).astype(np.float32)
    o1 = plan.step(obs)
    assert isinstance(o1["actions"], np.ndarray) and isinstance(o1["action_dist_inputs"], np.ndarray)
    assert "vf_preds" not in o1
    want_d, _, _ = reference_step(L, obs)
    _close(o1["action_dist_inputs"], want_d)
    np.testing.assert_allclose(o1["action_logp"], _logp_ref(L, o1["action_dist_inputs"], o1["actions"]).numpy(),
                               atol=2e-5, rtol=1e-5)
    keep = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in o1.items()}
    o2 = plan.step(obs * 0 + 1)  # a later call never overwrites earlier results
    for k in ("action_dist_inputs", "action_logp"):
        assert o2[k] is not o1[k]
        np.testing.assert_array_equal(o1[k], keep[k])
    # float64 numpy and non-contiguous tensors are converted
    o3 = plan.step(obs.astype(np.float64), deterministic=True)
    _close(o3["action_dist_inputs"], want_d)
    wide = torch.randn(33, 12)
    wide[:, 3:8] = torch.from_numpy(obs)
    o4 = plan.step(wide[:, 3:8], deterministic=True)
    _close(o4["action_dist_inputs"], want_d)
    o5 = plan.step(torch.from_numpy(obs).t().contiguous().t(), deterministic=True)
    _close(o5["action_dist_inputs"], want_d)
    o6 = plan.step(np.broadcast_to(obs[:1], (4, 5)), deterministic=True)  # row stride 0
    _close(o6["action_dist_inputs"], want_d[:1].expand(4, -1))
    o7 = plan.step(obs[:0])  # empty batch
    assert o7["action_dist_inputs"].shape == (0, want_d.shape[1]) and o7["actions"].shape[0] == 0


def test_plan_out_buffers():
    L = make_layers(rnn="lstm", shared=False)
    plan = PolicyPlan(L)
    B = 7
    obs = torch.randn(B, 5)
    out = {"action_dist_inputs": torch.empty(B, 3), "actions": np.empty(B, np.int64), "action_logp": torch.empty(B),
           "vf_preds": torch.empty(B),
           "state_out": {"actor": {"h": torch.empty(B, 11), "c": torch.empty(B, 11)},
                         "critic": {"h": torch.empty(B, 13), "c": torch.empty(B, 13)}}}
    res = plan.step(obs, None, deterministic=True, compute_value=True, out=out)
    assert res is out
    want = plan.step(obs, None, deterministic=True, compute_value=True)
    torch.testing.assert_close(out["action_dist_inputs"], want["action_dist_inputs"], rtol=0, atol=0)
    assert np.array_equal(out["actions"], want["actions"].numpy())
    torch.testing.assert_close(out["vf_preds"], want["vf_preds"], rtol=0, atol=0)
    torch.testing.assert_close(out["state_out"]["critic"]["c"], want["state_out"]["critic"]["c"], rtol=0, atol=0)
    bad = dict(out, action_logp=torch.empty(B + 1))
    with pytest.raises(ValueError, match=r"out\['action_logp'\]: expected a contiguous writable torch.float32"):
        plan.step(obs, out=bad)


def test_plan_sees_inplace_weight_updates():
    L = make_layers(rnn="gru", shared=False, head=(7,))
    plan = PolicyPlan(L)
    obs = torch.randn(9, 5)
    params = [p for m in L.actor.mlp + L.pi + L.vf for p in m.parameters()] + list(L.actor.rnn.parameters())
    opt = torch.optim.Adam(params, lr=0.1)
    for _ in range(2):
        loss = sum(p.sum() for p in params)
        opt.zero_grad()
        loss.backward()
        opt.step()
        want_d, want_v, _ = reference_step(L, obs)
        out = plan.step(obs, deterministic=True, compute_value=True)
        _close(out["action_dist_inputs"], want_d)
        _close(out["vf_preds"], want_v)
    L.pi[-1].load_state_dict({k: torch.randn_like(v) for k, v in L.pi[-1].state_dict().items()})
    L.critic.mlp[0].load_state_dict({k: torch.randn_like(v) for k, v in L.critic.mlp[0].state_dict().items()})
    want_d, want_v, _ = reference_step(L, obs)
    out = plan.step(obs, deterministic=True, compute_value=True)
    _close(out["action_dist_inputs"], want_d)
    _close(out["vf_preds"], want_v)


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
def test_plan_sees_critic_rnn_updates_without_the_value_head(rnn):
    """A separate critic's rnn advances state_out["critic"] in every step, also without the value
    head: in-place updates of only the critic's encoder must be seen by such a step (it watched
    the actor's weights alone and stepped the critic's state with the first weights it packed)."""
    L = make_layers(rnn=rnn, shared=False)
    plan = PolicyPlan(L)
    obs = torch.randn(4, 5)
    state = plan.step(obs, deterministic=True)["state_out"]
    for part in (L.critic.rnn, L.critic.mlp[0]):
        with torch.no_grad():
            for p in part.parameters():
                p.mul_(1.5)
        out = plan.step(obs, state, deterministic=True)
        _, _, want = reference_step(L, obs, state)
        for k in want["critic"]:
            _close(out["state_out"]["critic"][k], want["critic"][k])


def _odd_address(x: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 copy of ``x`` starting at an odd address."""
    raw = bytearray(x.nbytes + 1)
    y = np.frombuffer(raw, dtype=np.float32, offset=1, count=x.size).reshape(x.shape)
    y[...] = x
    assert not y.flags.aligned and y.flags.c_contiguous
    return y


def test_plan_unaligned_state_reaches_the_kernels_aligned():
    """State rows at an odd address: the rnn kernels load them as floats (UBSan: misaligned loads
    in rnn.h). The plan copies them aligned (numpy and tensors); _C.Policy.step refuses them."""
    L = make_layers(rnn="lstm", shared=False)
    plan = PolicyPlan(L)
    obs = np.random.default_rng(0).standard_normal((9, 5)).astype(np.float32)
    H = {"actor": L.actor.rnn.hidden_size, "critic": L.critic.rnn.hidden_size}
    state = {p: {k: np.random.default_rng(i).standard_normal((9, 1, H[p])).astype(np.float32) for i, k in
                 enumerate(("h", "c"))} for p in H}
    want = plan.step(obs, state, deterministic=True)
    for wrap in (lambda a: a, torch.from_numpy):
        odd = {p: {k: wrap(_odd_address(v)) for k, v in s.items()} for p, s in state.items()}
        got = plan.step(obs, odd, deterministic=True)
        for k in ("action_dist_inputs", "actions", "action_logp"):
            np.testing.assert_array_equal(np.asarray(got[k]), want[k])
        for p in state:
            for k in state[p]:
                np.testing.assert_array_equal(np.asarray(got["state_out"][p][k]), want["state_out"][p][k])
    h = _odd_address(state["actor"]["h"][:, 0])
    with pytest.raises(ValueError, match="state h: expected a 4-byte aligned"):
        plan.impl._net.step(obs, 9, 0, (h, None, None, None), True, False, None)


def test_plan_free_log_std_updates():
    L = make_layers(**CONFIGS["gauss-freelogstd-relu"])
    plan = PolicyPlan(L)
    obs = torch.randn(4, 5)
    with torch.no_grad():
        L.free_log_std.fill_(0.25)
    out = plan.step(obs, deterministic=True)
    assert torch.all(out["action_dist_inputs"][:, 2:] == 0.25)


def test_plan_thread_safe():
    layers = [make_layers(seed=1), make_layers(dist="diag_gaussian", sizes=(3,), rnn="lstm", seed=2)]
    plans = [PolicyPlan(L) for L in layers]
    obs = [torch.randn(150, 5, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    want = {(p, i): plans[p].step(obs[i], deterministic=True, compute_value=True) for p in range(2) for i in range(4)}
    errors = []

    def worker(p, reps=15):
        try:
            for r in range(reps):
                for i in range(4):
                    got = plans[p].step(obs[i], deterministic=True, compute_value=True)
                    for k in ("action_dist_inputs", "vf_preds", "actions"):
                        if not torch.equal(got[k], want[(p, i)][k]):
                            errors.append((p, i, k))
                    plans[p].step(obs[i])  # stochastic steps interleaved
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(p,)) for p in (0, 1, 0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]


def test_plan_reproducible_and_distributed():
    scipy_stats = pytest.importorskip("scipy.stats")
    L = make_layers(head=(), hid=(3,))
    plan = PolicyPlan(L)
    obs = torch.randn(1, 5).expand(20000, 5).contiguous()
    rf.manual_seed(5)
    a1 = plan.step(obs)["actions"]
    rf.manual_seed(5)  # the same seed again: rf.manual_seed restarts the fused stream
    a2 = plan.step(obs)["actions"]
    assert torch.equal(a1, a2)
    p = torch.softmax(reference_step(L, obs[:1])[0][0], -1).numpy()
    counts = torch.bincount(a1, minlength=3).numpy()
    assert scipy_stats.chisquare(counts, p / p.sum() * counts.sum()).pvalue > 1e-4
    # gaussian moments through the plan
    Lg = make_layers(dist="diag_gaussian", sizes=(2,), clip=1.0)
    d, _, _ = reference_step(Lg, obs[:1])
    acts = PolicyPlan(Lg).step(obs)["actions"].double()
    mean, std = d[0, :2], d[0, 2:].exp()
    assert ((acts.mean(0) - mean).abs() < 5 * std / 20000**0.5).all()
    assert ((acts.std(0) / std - 1).abs() < 0.05).all()


def test_plan_bad_inputs():
    L = make_layers(rnn="lstm")
    plan = PolicyPlan(L)
    with pytest.raises(ValueError, match=r"obs: expected shape \[B, 5\], got \(3, 4\)"):
        plan.step(torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"state\['c'\]: expected a CPU \[3, 11\] array, got \(3, 10\)"):
        plan.step(torch.randn(3, 5), {"h": torch.zeros(3, 11), "c": torch.zeros(3, 10)})
    with pytest.raises(ValueError, match=r"state: missing key 'c'"):
        plan.step(torch.randn(3, 5), {"h": torch.zeros(3, 11)})
    obs = torch.randn(3, 5)
    obs[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"obs: contains NaN or inf \(row 1\)"):
        plan.step(obs)
    obs[1, 2] = float("inf")  # could saturate to a finite action: refused all the same
    with pytest.raises(ValueError, match=r"obs: contains NaN or inf \(row 1\)"):
        plan.step(obs, deterministic=True)
    Lnv = make_layers()
    Lnv.vf = None
    with pytest.raises(ValueError, match="compute_value: this plan has no value head"):
        PolicyPlan(Lnv).step(torch.randn(2, 5), compute_value=True)
    with pytest.raises(ValueError, match=r"pi: last layer has 3 outputs, expected 4"):
        PolicyPlan(make_layers(sizes=(4,)).__class__(**{**make_layers().__dict__, "action_sizes": [4]}))
    with pytest.raises(ValueError, match=r"dist: expected one of"):
        PolicyPlan(PolicyLayers(**{**make_layers().__dict__, "dist": "beta"}))
    with pytest.raises(ValueError, match=r"head_activation: unknown activation 'gelu'"):
        PolicyPlan(PolicyLayers(**{**make_layers().__dict__, "head_activation": "gelu"}))
    with pytest.raises(ValueError, match=r"backend='cuda'"):
        PolicyPlan(make_layers(), backend="cuda")


def test_plan_for_caches_and_respects_forced_backend(monkeypatch):
    class Mod(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.L = make_layers()
            self.lins = torch.nn.ModuleList(self.L.actor.mlp + self.L.pi + self.L.vf)
            self.calls = 0

        def policy_layers(self):
            self.calls += 1
            return self.L

    m = Mod()
    monkeypatch.delenv("RLMODULE_FAST_BACKEND", raising=False)
    p = plan_for(m, torch.zeros(1, 5))
    assert isinstance(p, PolicyPlan) and p.backend == "cpp"
    assert plan_for(m, torch.zeros(2, 5)) is p and m.calls == 1
    monkeypatch.setenv("RLMODULE_FAST_BACKEND", "torch")
    assert plan_for(m, torch.zeros(1, 5)) is None


@pytest.mark.parametrize("B", [49, 130, 300])
def test_plan_same_result_for_any_thread_count(B):
    L = make_layers(dist="multi_categorical", sizes=(3, 2, 5), rnn="lstm", shared=False)
    plan = PolicyPlan(L)
    obs = torch.randn(B, 5)
    prev = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            rf.manual_seed(3)
            outs.append(plan.step(obs, compute_value=True))
    finally:
        torch.set_num_threads(prev)
    for o in outs[1:]:
        for k in ("action_dist_inputs", "actions", "action_logp", "vf_preds"):
            assert torch.equal(o[k], outs[0][k]), k
        assert torch.equal(o["state_out"]["critic"]["c"], outs[0]["state_out"]["critic"]["c"])


def test_plan_float64_module_and_concurrent_updates():
    L = make_layers(rnn="gru", head=(7,))
    mods = L.actor.mlp + L.pi + L.vf + [L.actor.rnn]
    for m in mods:
        m.double()
    plan = PolicyPlan(L)
    obs = torch.randn(60, 5, dtype=torch.float64)
    want_d, want_v, _ = reference_step(L, obs)
    out = plan.step(obs, deterministic=True, compute_value=True)
    assert out["action_dist_inputs"].dtype == torch.float32  # the plan computes and returns float32
    _close(out["action_dist_inputs"], want_d)
    _close(out["vf_preds"], want_v)
    # a thread stepping while the main thread updates weights in place: no crash, and once the
    # updates stop the next step reflects the final weights
    stop = threading.Event()
    errors = []

    def stepper():
        try:
            while not stop.is_set():
                plan.step(obs, compute_value=True)
        except Exception as e:  # pragma: no cover
            errors.append(e)

    t = threading.Thread(target=stepper)
    t.start()
    with torch.no_grad():
        for i in range(30):
            for m in mods:
                for p in m.parameters():
                    p.mul_(0.99)
    stop.set()
    t.join()
    assert not errors
    want_d, want_v, _ = reference_step(L, obs)
    out = plan.step(obs, deterministic=True, compute_value=True)
    _close(out["action_dist_inputs"], want_d)
    _close(out["vf_preds"], want_v)


def test_plan_pickles_and_module_deepcopies():
    import pickle

    L = make_layers(rnn="lstm")
    plan = PolicyPlan(L)
    obs = torch.randn(3, 5)
    want = plan.step(obs, deterministic=True)["action_dist_inputs"]
    clone = pickle.loads(pickle.dumps(plan))
    assert torch.equal(clone.step(obs, deterministic=True)["action_dist_inputs"], want)
    assert torch.equal(copy.deepcopy(plan).step(obs, deterministic=True)["action_dist_inputs"], want)

    class Mod(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.L = make_layers()
            self.lins = torch.nn.ModuleList(self.L.actor.mlp + self.L.pi + self.L.vf)

        def policy_layers(self):
            return self.L

    m = Mod()
    p = plan_for(m, obs)
    m2 = copy.deepcopy(m)  # the cached plan does not travel with the module
    p2 = plan_for(m2, obs)
    assert p2 is not p
    torch.testing.assert_close(p2.step(obs, deterministic=True)["action_dist_inputs"],
                               p.step(obs, deterministic=True)["action_dist_inputs"], rtol=0, atol=0)


def test_repack_under_weights_lock_is_never_torn():
    """An updater that rewrites every parameter in place under ``weights_lock`` (what set_state /
    a guarded optimizer step do) while another thread steps: each step gives exactly the old or
    the new weights' result, never a mix (bugs-cpp.md, TORN results)."""
    import threading
    import time

    g = torch.Generator().manual_seed(3)
    lins = [torch.nn.Linear(8, 32), torch.nn.Linear(32, 32)]
    pi = [torch.nn.Linear(32, 4)]
    L = PolicyLayers(actor=EncoderLayers(lins, "tanh"), critic=None, pi=pi, vf=None, head_activation="relu",
                     dist="categorical", action_sizes=[4], log_std_clip=None)
    params = [p for l in lins + pi for p in l.parameters()]
    states = [[torch.round(torch.randn(p.shape, generator=g) * 64) / 1024 for p in params] for _ in range(2)]
    lock = threading.RLock()
    plan = PolicyPlan(L, backend="cpp", weights_lock=lock)
    obs = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    outs = []
    with torch.no_grad():
        for st in states:
            for p, v in zip(params, st):
                p.copy_(v)
            outs.append(plan.step(obs, deterministic=True)["action_dist_inputs"].copy())
    stop = threading.Event()

    def updater():
        i = 0
        while not stop.is_set():
            with lock, torch.no_grad():
                for p, v in zip(params, states[i % 2]):
                    p.copy_(v)
            i += 1

    th = threading.Thread(target=updater)
    th.start()
    steps = torn = 0
    try:
        t_end = time.perf_counter() + 0.7
        while time.perf_counter() < t_end and torn < 3:
            o = plan.step(obs, deterministic=True)["action_dist_inputs"]
            steps += 1
            torn += not any(np.array_equal(o, w) for w in outs)
    finally:
        stop.set()
        th.join()
    assert steps > 0 and torn == 0, f"{torn} torn results in {steps} steps"
