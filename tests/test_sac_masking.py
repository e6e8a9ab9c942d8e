"""SAC with Dict / Tuple observations (flattened as RLlib's FlattenObservations, ``models.flatten``)
and action masking for discrete SAC (RLlib's {"action_mask", "observations"} Dict): the fused step
(cpp, triton under the interpreter) against the torch layers, masked actions never sampled,
exact logp, mask errors naming the row, RLlib's own discrete SAC loss finite (values and
gradients) on masked forward_train outputs for alpha 0.1 / 1 / 10, checkpoints, RLlib interop."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from scipy import stats

import rlmodule_fast as rf
from rlmodule_fast.models.flatten import flat_dim, flatten
from rlmodule_fast.ops import dispatch
from rlmodule_fast.ops import reference as ref
from rlmodule_fast.sac import SACCatalog, SACTorchRLModule
from rlmodule_fast.sac.sac_rl_module import MASK_LOGIT_GAP

INFO = rf.backend_info()
BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(not INFO[b]["available"], reason=INFO[b]["reason"]))
            for b in ("torch", "cpp", "triton")]
F32_MIN = float(np.float32(ref.FLOAT_MIN))
#: triton runs on CUDA where there is a GPU, else in the interpreter on CPU tensors (conftest.py)
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# keys out of sorted order: the flattening sorts them (RLlib's tree.flatten)
NESTED = gym.spaces.Dict([
    ("pos", gym.spaces.Box(-1, 1, (3,), np.float32)),
    ("kind", gym.spaces.Discrete(4)),
    ("more", gym.spaces.Tuple([gym.spaces.MultiDiscrete([2, 3]), gym.spaces.Box(0, 1, (2, 2), np.float32),
                               gym.spaces.MultiBinary(3)])),
])
TUPLE = gym.spaces.Tuple([gym.spaces.Box(-1, 1, (2,), np.float32), gym.spaces.Discrete(3)])
BOX_OBS = gym.spaces.Box(-1, 1, (5,), np.float32)
BOX = gym.spaces.Box(-2.0, 2.0, (3,), np.float32)
N_ACT = 7
DISC = gym.spaces.Discrete(N_ACT)
SMALL = {"fcnet_hiddens": [11, 7], "head_fcnet_hiddens": [5], "fusionnet_hiddens": [6], "twin_q": True}


def masked_space(inner: gym.Space, n: int = N_ACT) -> gym.spaces.Dict:
    return gym.spaces.Dict({"action_mask": gym.spaces.Box(0.0, 1.0, (n,)), "observations": inner})


def build(obs_space, act, seed=0, **kw):
    torch.manual_seed(seed)
    return SACTorchRLModule(observation_space=obs_space, action_space=act, model_config=dict(SMALL), **kw)


def sample_inner(space: gym.Space, B: int, g: np.random.Generator):
    """A batch [B, ...] of ``space`` (numpy leaves, nested dicts / tuples)."""
    if isinstance(space, gym.spaces.Dict):
        return {k: sample_inner(s, B, g) for k, s in space.spaces.items()}
    if isinstance(space, gym.spaces.Tuple):
        return tuple(sample_inner(s, B, g) for s in space.spaces)
    if isinstance(space, gym.spaces.Discrete):
        return g.integers(0, int(space.n), B)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return np.stack([g.integers(0, int(n), B) for n in space.nvec], -1)
    if isinstance(space, gym.spaces.MultiBinary):
        return g.integers(0, 2, (B, *space.shape)).astype(np.int8)
    return g.uniform(-1, 1, (B, *space.shape)).astype(np.float32)


def random_mask(B: int, n: int, g: np.random.Generator, p: float = 0.5) -> np.ndarray:
    m = (g.random((B, n)) < p).astype(np.float32)
    m[np.arange(B), g.integers(0, n, B)] = 1.0  # at least one allowed action per row
    return m


def sample_obs(obs_space: gym.Space, B: int, seed: int = 0):
    g = np.random.default_rng(seed)
    if isinstance(obs_space, gym.spaces.Dict) and "action_mask" in obs_space.spaces:
        n = obs_space["action_mask"].shape[0]
        return {"action_mask": random_mask(B, n, g), "observations": sample_inner(obs_space["observations"], B, g)}
    return sample_inner(obs_space, B, g)


def tree_map(fn, x):
    if isinstance(x, dict):
        return {k: tree_map(fn, v) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(tree_map(fn, v) for v in x)
    return fn(x)


def to_torch(x, device="cpu"):
    return tree_map(lambda a: torch.as_tensor(a).to(device), x)


def torch_logits(m: SACTorchRLModule, inner_obs, space: gym.Space) -> torch.Tensor:
    """The pi head's raw logits, features flattened here with models.flatten (no module code)."""
    x = flatten(inner_obs, space, 1, torch.float32) if not isinstance(space, gym.spaces.Box) \
        else torch.as_tensor(inner_obs, dtype=torch.float32)
    with torch.no_grad():
        return m.pi(m.pi_encoder(x))


def on_backend(m, obs, backend, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, backend)
    if backend == "triton" and torch.cuda.is_available():  # else: the interpreter on CPU tensors
        return m.to("cuda"), to_torch(obs, "cuda")
    return m, obs


# ------------------------------------------------------------------ Dict / Tuple observations
@pytest.mark.parametrize("B", [1, 13], ids=lambda b: f"B{b}")
@pytest.mark.parametrize("act", [BOX, DISC], ids=["box", "discrete"])
@pytest.mark.parametrize("space", [NESTED, TUPLE], ids=["dict", "tuple"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_structured_obs_step_equals_torch_layers(backend, space, act, B, monkeypatch):
    """The fused step (squashed Gaussian code 3 / categorical) runs on the flattened features."""
    m = build(space, act)
    obs = sample_obs(space, B, seed=B)
    logits = torch_logits(m, obs, space)
    m, obs = on_backend(m, obs, backend, monkeypatch)
    info = m.fast_path_info()
    assert info["backend"] == backend and info["active"] == (backend != "torch"), info
    det = m.forward_inference({"obs": obs})
    assert set(det) == {"action_dist_inputs", "actions", "action_logp"}
    adi = torch.as_tensor(det["action_dist_inputs"]).cpu()
    torch.testing.assert_close(adi, logits, atol=2e-6, rtol=1e-5)
    dist = m.get_inference_action_dist_cls().from_logits(logits.double())
    if act is BOX:
        torch.testing.assert_close(det["actions"].cpu().double(), torch.tanh(logits[:, :3]).double(),
                                   atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(det["action_logp"].cpu().double(), dist._squashed_logp(dist.loc),
                                   atol=5e-5, rtol=1e-5)
    else:
        assert torch.equal(det["actions"].cpu(), logits.argmax(-1))
    rf.manual_seed(0)
    out = m.forward_exploration({"obs": obs})
    a = out["actions"].cpu()
    if act is BOX:
        assert a.shape == (B, 3) and float(a.abs().max()) < 0.999
        torch.testing.assert_close(out["action_logp"].cpu().double(), dist.logp(a.double()), atol=2e-3, rtol=1e-4)
    else:
        assert a.shape == (B,) and a.dtype == torch.int64
        torch.testing.assert_close(out["action_logp"].cpu().double(), dist.logp(a), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_structured_obs_of_the_wrong_structure_name_the_path(backend, monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, backend)
    m = build(NESTED, DISC)
    with pytest.raises(ValueError, match=r"obs: expected a nested batch matching the Dict .*got a ndarray"):
        m.forward_exploration({"obs": np.zeros((2, flat_dim(NESTED)), np.float32)})
    obs = sample_obs(NESTED, 2)
    with pytest.raises(ValueError, match=r"obs\['more'\]"):
        m.forward_inference({"obs": {**obs, "more": obs["more"][:2]}})
    del obs["pos"]
    with pytest.raises(ValueError, match=r"obs\['pos'\]"):
        m.forward_inference({"obs": obs})


@pytest.mark.parametrize("act", [BOX, DISC], ids=["box", "discrete"])
def test_structured_obs_train_equals_rllib_on_flattened_obs(act):
    """forward_train of a Dict-obs module equals RLlib's DefaultSACTorchRLModule built on the flattened
    Box (what RLlib's FlattenObservations connector hands it), fed RLlib's own flattening."""
    pytest.importorskip("ray.rllib")
    from ray.rllib.algorithms.sac.torch.default_sac_torch_rl_module import DefaultSACTorchRLModule
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.utils.numpy import flatten_inputs_to_1d_tensor
    from ray.rllib.utils.spaces.space_utils import get_base_struct_from_space

    D = flat_dim(NESTED)
    theirs = DefaultSACTorchRLModule(observation_space=gym.spaces.Box(-np.inf, np.inf, (D,), np.float32),
                                     action_space=act,
                                     model_config={**dataclasses.asdict(DefaultModelConfig()), **SMALL})
    ours = build(NESTED, act)
    theirs.make_target_networks()
    ours.make_target_networks()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    B, g = 9, np.random.default_rng(5)
    obs, new_obs = sample_inner(NESTED, B, g), sample_inner(NESTED, B, g)

    def rl_flat(o):
        return torch.from_numpy(flatten_inputs_to_1d_tensor(o, get_base_struct_from_space(NESTED), batch_axis=True))
    actions = torch.rand(B, 3) * 2 - 1 if act is BOX else torch.randint(0, N_ACT, (B,))
    torch.manual_seed(3)
    want = theirs.forward_train({"obs": rl_flat(obs), "new_obs": rl_flat(new_obs), "actions": actions})
    torch.manual_seed(3)
    got = ours.forward_train({"obs": to_torch(obs), "new_obs": to_torch(new_obs), "actions": actions})
    assert set(got) == set(want)
    for k in want:  # the same torch draws in the same order
        torch.testing.assert_close(got[k], want[k], msg=k)
    q_batch = {"obs": to_torch(obs), "actions": actions} if act is BOX else {"obs": to_torch(obs)}
    q_theirs = {**q_batch, "obs": rl_flat(obs)}
    with torch.no_grad():
        torch.testing.assert_close(ours.compute_q_values(q_batch, squeeze=act is BOX),
                                   theirs.compute_q_values(q_theirs, squeeze=act is BOX))


# ------------------------------------------------------------------ action masking: the step
MASKED = {"box-obs": masked_space(BOX_OBS), "dict-obs": masked_space(NESTED)}


@pytest.mark.parametrize("B", [1, 17], ids=lambda b: f"B{b}")
@pytest.mark.parametrize("name", list(MASKED))
@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_step_never_samples_masked_actions(backend, name, B, monkeypatch):
    """box-obs: the cpp env-runner lane (step_flat with the mask); dict-obs: flattened features."""
    space = MASKED[name]
    m = build(space, DISC)
    obs = sample_obs(space, B, seed=B + 1)
    mask = torch.from_numpy(obs["action_mask"])
    want = torch_logits(m, obs["observations"], space["observations"])
    m, obs = on_backend(m, obs, backend, monkeypatch)
    info = m.fast_path_info()
    assert info["backend"] == backend and info["active"] == (backend != "torch"), info
    for fwd in (m.forward_inference, m.forward_exploration):
        for _ in range(3 if fwd is m.forward_exploration else 1):
            out = fwd({"obs": obs})
            adi = torch.as_tensor(out["action_dist_inputs"]).cpu()
            assert bool((adi[mask == 0] == F32_MIN).all()), "masked logits must be RLlib's FLOAT_MIN"
            torch.testing.assert_close(adi[mask == 1], want[mask == 1], atol=2e-6, rtol=1e-5)
            a = torch.as_tensor(out["actions"]).cpu()
            assert a.shape == (B,) and bool((mask.gather(1, a[:, None]) == 1).all()), "a masked action was taken"
            lp_all = torch.log_softmax(want.double().masked_fill(mask == 0, float("-inf")), -1)
            torch.testing.assert_close(out["action_logp"].cpu().double(), lp_all.gather(1, a[:, None])[:, 0],
                                       atol=2e-6, rtol=1e-5)
            if fwd is m.forward_inference:
                assert torch.equal(a, lp_all.argmax(-1))
    assert set(obs) == {"action_mask", "observations"}  # the caller's batch is untouched


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_sampling_frequencies(backend, monkeypatch):
    """One row repeated: masked actions get no draws, the others softmax over the allowed logits."""
    space = masked_space(BOX_OBS)
    m = build(space, DISC, seed=2)
    n = 600 if backend == "triton" and TRITON_DEVICE == "cpu" else 4000
    mask = np.array([[1, 0, 1, 1, 0, 0, 1]], np.float32)
    row = np.random.default_rng(1).uniform(-1, 1, (1, 5)).astype(np.float32)
    obs = {"action_mask": np.repeat(mask, n, 0), "observations": np.repeat(row, n, 0)}
    p = torch.softmax(torch_logits(m, row, BOX_OBS).double()[0].masked_fill(torch.from_numpy(mask[0]) == 0,
                                                                             float("-inf")), -1).numpy()
    m, obs = on_backend(m, obs, backend, monkeypatch)
    rf.manual_seed(11)
    torch.manual_seed(11)
    counts = np.bincount(torch.as_tensor(m.forward_exploration({"obs": obs})["actions"]).cpu().numpy(),
                         minlength=N_ACT)
    keep = mask[0] == 1
    assert counts[~keep].sum() == 0
    _, pval = stats.chisquare(counts[keep], p[keep] * n)
    assert pval > 1e-4, (counts, p)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_masks_name_the_row(backend, monkeypatch):
    space = masked_space(NESTED)
    m = build(space, DISC)
    m.make_target_networks()
    monkeypatch.setenv(dispatch.ENV_VAR, backend)
    base = sample_obs(space, 5, seed=3)
    cases = [(3, lambda r: np.zeros(N_ACT, np.float32), r"every action is masked \(row 3\)"),
             (2, lambda r: np.where(np.arange(N_ACT) == 1, 0.5, r), r"expected (values )?0 or 1.*row 2"),
             (1, lambda r: np.where(np.arange(N_ACT) == 4, np.nan, r), r"action_mask.*row 1")]
    for row, change, msg in cases:
        obs = {**base, "action_mask": base["action_mask"].copy()}
        obs["action_mask"][row] = change(obs["action_mask"][row])
        for fwd in (m.forward_exploration, m.forward_inference):
            with pytest.raises(ValueError, match=msg):
                fwd({"obs": obs})
        good = sample_obs(space, 5, seed=4)
        for key in ("obs", "new_obs"):  # the learner's batch: either column's mask is checked
            batch = {"obs": to_torch(good), "new_obs": to_torch(good), "actions": torch.zeros(5, dtype=torch.long)}
            batch[key] = to_torch(obs)
            with pytest.raises(ValueError, match=msg):
                m.forward_train(batch)
    with pytest.raises(ValueError, match="action_mask"):
        m.forward_exploration({"obs": {**base, "action_mask": base["action_mask"][:, :4]}})
    with pytest.raises(ValueError, match="action_mask"):
        m.forward_exploration({"obs": {"observations": base["observations"]}})
    with pytest.raises(ValueError, match="new_obs"):
        m.forward_train({"obs": to_torch(base), "new_obs": to_torch(base["observations"]),
                         "actions": torch.zeros(5, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"new_obs: expected \{'action_mask'"):
        m._train_discrete({"obs": to_torch(base), "new_obs": to_torch(base["observations"])})


def test_continuous_sac_refuses_a_mask():
    with pytest.raises(ValueError, match=r"observation_space\['action_mask'\]: masking needs a Discrete action"):
        build(masked_space(BOX_OBS, 3), BOX)
    with pytest.raises(ValueError, match=r"expected shape \(7,\).*got \(4,\)"):
        build(masked_space(BOX_OBS, 4), DISC)
    assert SACCatalog(masked_space(NESTED), DISC, dict(SMALL)).obs_dim == flat_dim(NESTED)


# ------------------------------------------------------------------ action masking: the loss
class _Metrics:
    """Stands in for RLlib's MetricsLogger (the loss only logs into it)."""

    def __init__(self):
        self.logged = {}

    def log_value(self, key, value, **kw):
        self.logged[key] = value

    def log_dict(self, d, key=None, **kw):
        self.logged.update(d)


def rllib_discrete_sac_loss(fwd_out: dict, batch: dict, alpha: float, n_actions: int):
    """RLlib 2.60's own ``SACTorchLearner._compute_loss_for_module_discrete`` (the installed
    code, unbound) on our outputs: {optimizer name: loss} as its compute_gradients reads them,
    and log_alpha."""
    from ray.rllib.algorithms.sac.torch.sac_torch_learner import SACTorchLearner

    log_alpha = torch.tensor([float(np.log(alpha))], requires_grad=True)
    learner = SimpleNamespace(
        curr_log_alpha={"m": log_alpha},
        # RLlib's "auto" target entropy for Discrete(n): 0.98 * -log(1 / n)
        target_entropy={"m": torch.tensor(0.98 * np.log(n_actions), dtype=torch.float32)},
        metrics=_Metrics(), _temp_losses={})
    total = SACTorchLearner._compute_loss_for_module_discrete(
        learner, module_id="m", config=SimpleNamespace(gamma=0.99, twin_q=True), batch=batch, fwd_out=fwd_out)
    losses = {name[1]: v for name, v in learner._temp_losses.items()}
    losses["total"] = total
    return losses, log_alpha


def _learner_batch(space, B, seed):
    """A replay batch whose taken actions are allowed ones."""
    obs, new_obs = sample_obs(space, B, seed), sample_obs(space, B, seed + 100)
    g = torch.Generator().manual_seed(seed)
    allowed = torch.from_numpy(obs["action_mask"])
    actions = torch.multinomial(allowed, 1, generator=g)[:, 0]
    return {"obs": to_torch(obs), "new_obs": to_torch(new_obs), "actions": actions,
            "rewards": torch.randn(B, generator=g), "terminateds": torch.rand(B, generator=g) < 0.2,
            "n_step": torch.ones(B), "weights": torch.ones(B)}


@pytest.mark.parametrize("alpha", [0.1, 1.0, 10.0])
def test_rllib_discrete_loss_is_finite_with_masks(alpha):
    """RLlib's discrete SAC loss sums probs * (alpha * log_probs - Q) over actions: on our masked
    forward_train outputs every loss and every gradient (pi, both Qs, log_alpha) is finite, and the
    losses equal the same formula restricted to the allowed actions."""
    pytest.importorskip("ray.rllib")
    space = masked_space(NESTED)
    m = build(space, DISC, seed=1)
    m.make_target_networks()
    with torch.no_grad():  # logits far apart, so masked-out mass would show in the losses
        m.pi.net.linears[-1].weight.mul_(30.0)
    batch = _learner_batch(space, 13, seed=2)
    fwd = m.forward_train(batch)
    for k in ("action_probs", "action_probs_next"):
        mask = batch["obs" if k == "action_probs" else "new_obs"]["action_mask"]
        assert bool((fwd[k][mask == 0] == 0).all()), f"{k}: a masked action has probability > 0"
        logp = fwd[k.replace("probs", "log_probs")]
        assert bool(torch.isfinite(logp).all())
        assert float(logp[mask == 0].max()) <= -MASK_LOGIT_GAP + 1e-3
    losses, log_alpha = rllib_discrete_sac_loss(fwd, batch, alpha, N_ACT)
    for name, v in losses.items():
        assert bool(torch.isfinite(v).all()), f"{name} = {v} at alpha={alpha}"
    # RLlib's compute_gradients: one backward per optimizer's loss, over the shared graph
    groups = {"policy_loss": list(m.pi.parameters()) + list(m.pi_encoder.parameters()),
              "qf_loss": list(m.qf.parameters()) + list(m.qf_encoder.parameters()),
              "qf_twin_loss": list(m.qf_twin.parameters()) + list(m.qf_twin_encoder.parameters()),
              "alpha_loss": [log_alpha]}
    for name, params in groups.items():
        grads = torch.autograd.grad(losses[name], params, retain_graph=True, allow_unused=True)
        got = [gr for gr in grads if gr is not None]
        assert got, name
        assert all(bool(torch.isfinite(gr).all()) for gr in got), f"{name}: non-finite gradient at alpha={alpha}"
    assert any(float(gr.abs().sum()) > 0 for gr in torch.autograd.grad(losses["policy_loss"],
                                                                       list(m.pi.parameters()), retain_graph=True))

    # the same losses from probabilities over the allowed actions only (no masked term at all)
    def allowed_only(logits, mask):
        lp = torch.log_softmax(logits.masked_fill(mask == 0, float("-inf")), -1)
        return lp.exp(), torch.where(mask == 1, lp, torch.zeros_like(lp))
    with torch.no_grad():
        ref_out = dict(fwd)
        for key, col in (("", "obs"), ("_next", "new_obs")):
            logits = m.pi(m.pi_encoder(flatten(batch[col]["observations"], NESTED, 1, torch.float32)))
            ref_out["action_probs" + key], ref_out["action_log_probs" + key] = \
                allowed_only(logits, batch[col]["action_mask"])
        want, _ = rllib_discrete_sac_loss(ref_out, batch, alpha, N_ACT)
    for name in ("policy_loss", "qf_loss", "qf_twin_loss", "alpha_loss"):
        torch.testing.assert_close(losses[name].detach(), want[name], atol=1e-5, rtol=1e-5, msg=name)


def test_rllib_masking_value_would_make_the_loss_nan():
    """Why SAC's forward_train does not use RLlib's FLOAT_MIN logits: log-probs ~-3.4e38 make
    alpha * logp overflow to -inf once alpha > 1, and RLlib's probs * (...) sum then gives NaN."""
    pytest.importorskip("ray.rllib")
    space = masked_space(NESTED)
    m = build(space, DISC, seed=1)
    m.make_target_networks()
    batch = _learner_batch(space, 13, seed=2)
    fwd = m.forward_train(batch)
    for key, col in (("", "obs"), ("_next", "new_obs")):
        logits = m.pi(m.pi_encoder(flatten(batch[col]["observations"], NESTED, 1, torch.float32)))
        lp = torch.log_softmax(ref.mask_logits(logits, batch[col]["action_mask"]), -1)
        fwd["action_probs" + key], fwd["action_log_probs" + key] = lp.exp(), lp
    losses, _ = rllib_discrete_sac_loss(fwd, batch, 10.0, N_ACT)
    assert not bool(torch.isfinite(losses["policy_loss"]))


# ------------------------------------------------------------------ checkpoints and interop
@pytest.mark.parametrize("name", ["masked-dict", "tuple-box"])
def test_checkpoint_roundtrip(name, tmp_path):
    space, act = (masked_space(NESTED), DISC) if name == "masked-dict" else (TUPLE, BOX)
    m = build(space, act, seed=4)
    m.make_target_networks()
    m.save_to_path(tmp_path / "ckpt")
    back = rf.RLModule.from_checkpoint(tmp_path / "ckpt")
    assert type(back) is SACTorchRLModule and back.observation_space == space
    assert hasattr(back, "target_qf")
    for k, v in m.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    obs = sample_obs(space, 6, seed=9)
    a, b = m.forward_inference({"obs": obs}), back.forward_inference({"obs": obs})
    for k in a:
        torch.testing.assert_close(b[k], a[k], msg=k)
    actions = torch.randint(0, N_ACT, (6,)) if act is DISC else torch.rand(6, 3) * 2 - 1
    batch = {"obs": to_torch(obs), "new_obs": to_torch(sample_obs(space, 6, seed=10)), "actions": actions}
    torch.manual_seed(0)
    want = m.forward_train(batch)
    torch.manual_seed(0)
    got = back.forward_train(batch)
    for k in want:
        torch.testing.assert_close(got[k], want[k], msg=k)
    # a state whose target networks do not fit is refused and leaves no half-made targets behind
    fresh = build(space, act, seed=5)
    bad = m.get_state()
    bad["target_qf.net.mlp.0.weight"] = bad["target_qf.net.mlp.0.weight"][:, :-1]
    with pytest.raises(ValueError, match="target_qf.net.mlp.0.weight"):
        fresh.set_state(bad)
    assert not hasattr(fresh, "target_qf") and not hasattr(fresh, "target_qf_twin_encoder")


def test_rllib_conversion_refuses_masked_and_structured_modules():
    pytest.importorskip("ray.rllib")
    import rlmodule_fast.rllib as rr

    with pytest.raises(ValueError, match="action-masking SACTorchRLModule.*cannot be converted"):
        rr.to_rllib_sac_module(build(masked_space(BOX_OBS), DISC))
    with pytest.raises(ValueError, match="no Dict / Tuple observation space.*FlattenObservations"):
        rr.rllib_sac_module_kwargs(build(TUPLE, BOX))
    assert set(rr.to_rllib_sac_state(build(masked_space(NESTED), DISC))) >= {"pi.net.mlp.0.weight"}


def test_export_onnx_masked_inference_matches_module(tmp_path):
    """export_onnx of a masked discrete SAC module: inputs "obs.action_mask" / "obs.observations",
    masked logits and the argmax over the allowed actions as the module's forward_inference."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    m = build(masked_space(BOX_OBS), DISC, inference_only=True)
    path = m.export_onnx(tmp_path / "sac.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    obs = sample_obs(masked_space(BOX_OBS), 6, seed=1)
    names = [i.name for i in sess.get_inputs()]
    assert sorted(names) == ["obs.action_mask", "obs.observations"]
    got = dict(zip([o.name for o in sess.get_outputs()],
                   sess.run(None, {n: obs[n.split(".", 1)[1]] for n in names})))
    want = m.forward_inference({"obs": obs})
    assert np.array_equal(got["actions"], want["actions"].numpy())
    np.testing.assert_allclose(got["action_logp"], want["action_logp"].numpy(), rtol=1e-5, atol=2e-5)
    allowed = obs["action_mask"] == 1
    np.testing.assert_allclose(got["action_dist_inputs"][allowed], want["action_dist_inputs"].numpy()[allowed],
                               rtol=1e-5, atol=2e-5)
