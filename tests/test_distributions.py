"""rlmodule_fast.distributions against torch.distributions, statistics and RLlib's semantics."""
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.distributions as td
from scipy import stats

from rlmodule_fast.distributions import (
    Distribution,
    TorchCategorical,
    TorchDeterministic,
    TorchDiagGaussian,
    TorchMultiCategorical,
    TorchMultiDistribution,
    TorchSquashedGaussian,
)

DTYPES = {"f32": torch.float32, "f64": torch.float64}
# Tolerances: both sides compute the same closed forms in the same dtype, differing only in
# operation order; a few ulps of the magnitudes involved (logits ~ N(0, 3)).
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}

# batch shapes: [B] and [B, T], odd sizes
BATCH = {"B1": (1,), "B17": (17,), "B3-T5": (3, 5)}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# categorical


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("K", [1, 3, 17, 63])
@pytest.mark.parametrize("batch", BATCH.values(), ids=BATCH.keys())
@pytest.mark.parametrize("param", ["logits", "probs", "logits-temp0.5"])
def test_categorical_matches_torch(param, batch, K, dtype):
    g = _gen(K)
    logits = 3.0 * torch.randn(*batch, K, generator=g, dtype=dtype)
    other_logits = 3.0 * torch.randn(*batch, K, generator=g, dtype=dtype)
    if param == "logits":
        ours, ref = TorchCategorical.from_logits(logits), td.Categorical(logits=logits)
        other, ref_other = TorchCategorical(logits=other_logits), td.Categorical(logits=other_logits)
    elif param == "probs":
        p = torch.softmax(logits, -1) * 2.5  # unnormalized on purpose
        # td.Categorical(probs=) clamps probs to [eps, 1-eps] before the log; we do not,
        # so the reference is built from the exact logits log(p).
        ours, ref = TorchCategorical(probs=p), td.Categorical(logits=torch.log(p))
        other, ref_other = TorchCategorical(probs=torch.softmax(other_logits, -1)), td.Categorical(logits=other_logits)
    else:
        ours, ref = TorchCategorical.from_logits(logits, temperature=0.5), td.Categorical(logits=logits / 0.5)
        other, ref_other = TorchCategorical(logits=other_logits), td.Categorical(logits=other_logits)
    actions = torch.randint(0, K, (4, *batch), generator=g)  # with a sample dim in front
    tol = TOL[dtype]
    torch.testing.assert_close(ours.logp(actions), ref.log_prob(actions), **tol)
    torch.testing.assert_close(ours.logp(actions[0]), ref.log_prob(actions[0]), **tol)
    torch.testing.assert_close(ours.logp(actions[0].to(dtype)), ref.log_prob(actions[0]), **tol)
    torch.testing.assert_close(ours.entropy(), ref.entropy(), **tol)
    torch.testing.assert_close(ours.kl(other), td.kl_divergence(ref, ref_other), **tol)
    assert ours.logp(actions).dtype == dtype and ours.entropy().shape == batch


def test_categorical_zero_probability_classes():
    p = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    q = torch.tensor([[0.25, 0.25, 0.5], [0.5, 0.5, 0.0]])
    ours, other = TorchCategorical(probs=p), TorchCategorical(probs=q)
    torch.testing.assert_close(ours.entropy(), td.Categorical(probs=p).entropy())
    kl = ours.kl(other)
    assert torch.isfinite(kl[0]) and kl[1] == math.inf  # q gives 0 where p does not
    torch.testing.assert_close(kl[0], td.kl_divergence(td.Categorical(probs=p[:1]), td.Categorical(probs=q[:1]))[0])
    # masked logits (-inf) are never sampled
    masked = TorchCategorical.from_logits(torch.tensor([[0.0, -math.inf, 1.0]]))
    torch.manual_seed(0)
    assert not (masked.sample(sample_shape=(2000,)) == 1).any()
    assert masked.logp(torch.tensor([1])) == -math.inf


@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0], ids=["T1", "T0.5", "T3"])
def test_categorical_sampling_chi_square(temperature):
    logits = torch.tensor([[1.0, 0.0, -1.0, 2.0, 0.5], [-3.0, 0.0, 0.0, 1.0, 4.0]])
    dist = TorchCategorical.from_logits(logits, temperature=temperature)
    torch.manual_seed(1234)
    n = 20000
    s = dist.sample(sample_shape=(n,))
    assert s.shape == (n, 2) and s.dtype == torch.int64
    probs = torch.softmax(logits.double() / temperature, -1).numpy()
    for row in range(2):
        counts = np.bincount(s[:, row].numpy(), minlength=5)
        _, pval = stats.chisquare(counts, probs[row] * n)
        assert pval > 1e-4, (row, counts, probs[row] * n)


def test_categorical_sample_is_reproducible_under_manual_seed():
    dist = TorchCategorical.from_logits(torch.randn(64, 9, generator=_gen(3)))
    torch.manual_seed(7)
    a = dist.sample()
    torch.manual_seed(7)
    assert torch.equal(a, dist.sample())


def test_categorical_probs_sampling_chi_square():
    p = torch.tensor([0.1, 0.2, 0.0, 0.7])
    torch.manual_seed(99)
    s = TorchCategorical(probs=p).sample(sample_shape=(10000,))
    counts = np.bincount(s.numpy(), minlength=4)
    assert counts[2] == 0
    _, pval = stats.chisquare(counts[[0, 1, 3]], p[[0, 1, 3]].numpy() * 10000)
    assert pval > 1e-4


def test_categorical_sample_no_grad_rsample_straight_through():
    logits = torch.randn(6, 4, generator=_gen(), requires_grad=True)
    dist = TorchCategorical.from_logits(logits)
    s = dist.sample()
    assert not s.requires_grad and s.shape == (6,)
    r = dist.rsample(sample_shape=(2,))
    assert r.shape == (2, 6, 4) and r.requires_grad
    assert torch.equal(r.detach().sum(-1), torch.ones(2, 6))  # one-hot values
    assert set(r.detach().unique().tolist()) <= {0.0, 1.0}
    (r * torch.arange(4.0)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # logp is differentiable w.r.t. the logits
    logits.grad = None
    dist.logp(s).sum().backward()
    torch.testing.assert_close(logits.grad, torch.nn.functional.one_hot(s, 4) - torch.softmax(logits, -1).detach())


# ----------------------------------------------------------------------------------------------
# diagonal Gaussian


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("A", [1, 3, 17])
@pytest.mark.parametrize("batch", BATCH.values(), ids=BATCH.keys())
def test_diag_gaussian_matches_torch(batch, A, dtype):
    g = _gen(A)
    inputs = torch.randn(*batch, 2 * A, generator=g, dtype=dtype)
    other_inputs = torch.randn(*batch, 2 * A, generator=g, dtype=dtype)
    ours, other = TorchDiagGaussian.from_logits(inputs), TorchDiagGaussian.from_logits(other_inputs)
    mean, log_std = inputs.chunk(2, -1)
    om, ols = other_inputs.chunk(2, -1)
    ref, ref_other = td.Normal(mean, log_std.exp()), td.Normal(om, ols.exp())
    value = torch.randn(4, *batch, A, generator=g, dtype=dtype)
    tol = TOL[dtype]
    torch.testing.assert_close(ours.logp(value), ref.log_prob(value).sum(-1), **tol)
    torch.testing.assert_close(ours.entropy(), ref.entropy().sum(-1), **tol)
    torch.testing.assert_close(ours.kl(other), td.kl_divergence(ref, ref_other).sum(-1), **tol)
    # constructor with explicit loc/scale (scale broadcast from a scalar)
    torch.testing.assert_close(
        TorchDiagGaussian(loc=mean, scale=2.0).logp(value), td.Normal(mean, 2.0).log_prob(value).sum(-1), **tol
    )
    assert ours.logp(value).shape == (4, *batch) and ours.entropy().shape == batch


@pytest.mark.parametrize("cls", [TorchDiagGaussian, TorchSquashedGaussian], ids=["diag", "squashed"])
def test_gaussian_sample_shapes_and_grad(cls):
    inputs = torch.randn(3, 5, 4, generator=_gen(), requires_grad=True)
    dist = cls.from_logits(inputs)
    s = dist.sample()
    assert s.shape == (3, 5, 2) and not s.requires_grad
    assert dist.sample(sample_shape=(7,)).shape == (7, 3, 5, 2)
    r = dist.rsample(sample_shape=(2,))
    assert r.shape == (2, 3, 5, 2) and r.requires_grad
    r.sum().backward()
    g = inputs.grad
    assert g is not None and g[..., :2].abs().sum() > 0 and g[..., 2:].abs().sum() > 0
    inputs.grad = None
    dist = cls.from_logits(inputs)
    a, lp = dist.rsample_and_logp()
    (a.sum() + lp.sum()).backward()
    assert inputs.grad.abs().sum() > 0
    a, lp = dist.sample_and_logp()
    assert not a.requires_grad and lp.requires_grad and lp.shape == (3, 5)


def test_diag_gaussian_moments():
    loc = torch.tensor([[0.0, -2.0, 5.0]])
    scale = torch.tensor([[1.0, 0.1, 3.0]])
    torch.manual_seed(0)
    n = 20000
    s = TorchDiagGaussian(loc=loc, scale=scale).sample(sample_shape=(n,))
    assert s.shape == (n, 1, 3)
    # 5 standard errors: mean se = scale/sqrt(n), std se ~ scale/sqrt(2n)
    assert ((s.mean(0) - loc).abs() < 5 * scale / math.sqrt(n)).all()
    assert ((s.std(0) - scale).abs() < 5 * scale / math.sqrt(2 * n)).all()


def test_diag_gaussian_scale_none_reads_log_std_from_loc():
    x = torch.randn(4, 6, generator=_gen())
    a, b = TorchDiagGaussian(loc=x, scale=None), TorchDiagGaussian.from_logits(x)
    v = torch.randn(4, 3, generator=_gen(1))
    torch.testing.assert_close(a.logp(v), b.logp(v))


# ----------------------------------------------------------------------------------------------
# squashed Gaussian


def _torch_squashed(loc, scale, low, high):
    """Reference: torch's own change of variables (Normal -> tanh -> affine), per-dim summed."""
    # Full [A] bounds: AffineTransform with a 0-d scale and event_dim=1 counts log|scale| once,
    # not once per action dim.
    low = torch.as_tensor(low, dtype=loc.dtype).expand(loc.shape[-1:])
    high = torch.as_tensor(high, dtype=loc.dtype).expand(loc.shape[-1:])
    base = td.Independent(td.Normal(loc, scale), 1)
    return td.TransformedDistribution(
        base, [td.TanhTransform(), td.AffineTransform((high + low) / 2, (high - low) / 2, event_dim=1)]
    )


BOUNDS = {"default": (-1.0, 1.0), "low-2-high3": (-2.0, 3.0), "per-dim": ([-1.0, 0.0, -5.0], [1.0, 2.0, 0.5])}


@pytest.mark.parametrize("bounds", BOUNDS.values(), ids=BOUNDS.keys())
@pytest.mark.parametrize("batch", BATCH.values(), ids=BATCH.keys())
def test_squashed_gaussian_logp_matches_change_of_variables(batch, bounds):
    low, high = bounds
    g = _gen(len(batch))
    inputs = torch.randn(*batch, 6, generator=g, dtype=torch.float64)
    dist = TorchSquashedGaussian.from_logits(inputs, low=low, high=high)
    loc, log_std = inputs.chunk(2, -1)
    ref = _torch_squashed(loc, log_std.clamp(-5, 2).exp(), low, high)
    a, lp = dist.sample_and_logp(sample_shape=(5,))
    lo, hi = torch.as_tensor(low, dtype=a.dtype), torch.as_tensor(high, dtype=a.dtype)
    assert (a >= lo).all() and (a <= hi).all()
    interior = ((a - lo) / (hi - lo) - 0.5).abs().amax(-1) < 0.49  # away from tanh saturation
    torch.testing.assert_close(lp[interior], ref.log_prob(a)[interior], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(dist.logp(a)[interior], lp[interior], rtol=1e-9, atol=1e-9)


def test_squashed_gaussian_logp_numeric_jacobian_and_normalization():
    # 1-D: logp(a) = logN(u) - log|da/du| with da/du by autograd; and the density integrates to 1.
    low, high = -2.0, 3.0
    loc, scale = torch.tensor([[0.3]], dtype=torch.float64), torch.tensor([[0.8]], dtype=torch.float64)
    dist = TorchSquashedGaussian(loc=loc, scale=scale, low=low, high=high)
    u = torch.linspace(-4, 4, 41, dtype=torch.float64).reshape(-1, 1, 1).requires_grad_(True)
    a = dist._squash(u)
    (dadu,) = torch.autograd.grad(a.sum(), u)
    expected = td.Normal(loc, scale).log_prob(u).sum(-1) - torch.log(dadu).sum(-1)
    torch.testing.assert_close(dist.logp(a.detach()), expected.detach(), rtol=1e-8, atol=1e-8)
    grid = torch.linspace(low, high, 200001, dtype=torch.float64)[1:-1].reshape(-1, 1, 1)
    mass = torch.trapezoid(dist.logp(grid).exp().squeeze(-1), grid.squeeze(-1).squeeze(-1))
    assert abs(float(mass) - 1.0) < 1e-3


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_squashed_gaussian_logp_finite_near_bounds(dtype):
    dist = TorchSquashedGaussian(loc=torch.tensor([[8.0, -8.0, 0.0]], dtype=dtype),
                                 scale=torch.tensor([[0.01, 0.01, 1.0]], dtype=dtype))
    at_bounds = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [0.999999, -0.999999, 0.0]], dtype=dtype)
    assert torch.isfinite(dist.logp(at_bounds)).all()
    # saturated samples: tanh(8) == 1 in float32, logp from the pre-squash value stays exact/finite
    a, lp = dist.sample_and_logp(sample_shape=(100,))
    assert torch.isfinite(lp).all() and torch.isfinite(dist.logp(a)).all()
    inputs = torch.tensor([[50.0, 1e4]], dtype=dtype, requires_grad=True)  # log-std clipped to 2
    d2 = TorchSquashedGaussian.from_logits(inputs)
    a, lp = d2.rsample_and_logp(sample_shape=(50,))
    (lp.sum() + a.sum()).backward()
    assert torch.isfinite(lp).all() and torch.isfinite(inputs.grad).all()


def test_squashed_gaussian_no_entropy_kl_and_bad_bounds():
    dist = TorchSquashedGaussian.from_logits(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="entropy"):
        dist.entropy()
    with pytest.raises(ValueError, match="kl"):
        dist.kl(dist)
    with pytest.raises(ValueError, match="low < high"):
        TorchSquashedGaussian.from_logits(torch.zeros(2, 4), low=1.0, high=1.0)
    with pytest.raises(ValueError, match="low < high"):
        TorchSquashedGaussian.from_logits(torch.zeros(2, 4), low=np.array([0.0, 2.0]), high=np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="finite"):
        TorchSquashedGaussian.from_logits(torch.zeros(2, 4), low=-np.inf, high=1.0)


# ----------------------------------------------------------------------------------------------
# deterministic and to_deterministic


def test_deterministic_semantics():
    loc = torch.randn(4, 3, generator=_gen(), requires_grad=True)
    d = TorchDeterministic(loc=loc)
    s = d.sample(sample_shape=(2,))
    assert s.shape == (2, 4, 3) and not s.requires_grad and torch.equal(s[1], loc.detach())
    s0 = d.sample()
    s0 += 1.0  # the caller owns the sample: loc is untouched
    assert torch.equal(d.sample(), loc.detach())
    r = d.rsample()
    r.sum().backward()
    assert torch.equal(loc.grad, torch.ones(4, 3))
    lp = d.logp(s0)
    assert lp.shape == loc.shape and lp.dtype == loc.dtype and (lp == 0).all()  # RLlib: zeros_like(loc)
    with pytest.raises(RuntimeError):
        d.entropy()
    with pytest.raises(RuntimeError):
        d.kl(d)
    assert d.to_deterministic() is d
    torch.testing.assert_close(TorchDeterministic.from_logits(loc.detach()).sample(), loc.detach())


def test_to_deterministic_per_class():
    g = _gen()
    logits = torch.randn(3, 5, 7, generator=g)
    cat = TorchCategorical.from_logits(logits).to_deterministic()
    assert isinstance(cat, TorchDeterministic) and torch.equal(cat.sample(), logits.argmax(-1))
    assert cat.sample().dtype == torch.int64 and cat.logp(cat.sample()).dtype == torch.float32
    probs = torch.softmax(logits, -1)
    assert torch.equal(TorchCategorical(probs=probs).to_deterministic().sample(), logits.argmax(-1))
    x = torch.randn(3, 5, 4, generator=g)
    gauss = TorchDiagGaussian.from_logits(x).to_deterministic()
    assert isinstance(gauss, TorchDeterministic) and torch.equal(gauss.sample(), x[..., :2])
    sq = TorchSquashedGaussian.from_logits(3 * x, low=-2.0, high=4.0).to_deterministic()
    torch.testing.assert_close(sq.sample(), 1.0 + 3.0 * torch.tanh(3 * x[..., :2]))  # squashed mean
    mc = TorchMultiCategorical.from_logits(logits, input_lens=[2, 5]).to_deterministic()
    assert torch.equal(mc.sample(), torch.stack([logits[..., :2].argmax(-1), logits[..., 2:].argmax(-1)], -1))


# ----------------------------------------------------------------------------------------------
# required_input_dim


SPACES = {
    "Discrete5": (TorchCategorical, gym.spaces.Discrete(5), 5),
    "Box3-diag": (TorchDiagGaussian, gym.spaces.Box(-1, 1, (3,)), 6),
    "Box2x3-diag": (TorchDiagGaussian, gym.spaces.Box(-1, 1, (2, 3)), 12),
    "Box3-squashed": (TorchSquashedGaussian, gym.spaces.Box(-1, 1, (3,)), 6),
    "Box2x3-det": (TorchDeterministic, gym.spaces.Box(-1, 1, (2, 3)), 6),
    "MultiDiscrete3-4-2": (TorchMultiCategorical, gym.spaces.MultiDiscrete([3, 4, 2]), 9),
}


@pytest.mark.parametrize("cls,space,expected", SPACES.values(), ids=SPACES.keys())
def test_required_input_dim(cls, space, expected):
    assert cls.required_input_dim(space) == expected
    assert isinstance(cls.required_input_dim(space), int)


@pytest.mark.parametrize("cls", [TorchCategorical, TorchDiagGaussian, TorchMultiCategorical],
                         ids=["categorical", "diag", "multicat"])
def test_required_input_dim_wrong_space(cls):
    with pytest.raises(ValueError, match="space must be"):
        cls.required_input_dim(gym.spaces.MultiBinary(3))


# ----------------------------------------------------------------------------------------------
# multi-categorical, partial classes, multi-distribution


@pytest.mark.parametrize("batch", BATCH.values(), ids=BATCH.keys())
def test_multi_categorical_is_sum_of_parts(batch):
    g = _gen()
    lens = [3, 1, 5]
    logits = torch.randn(*batch, sum(lens), generator=g)
    other_logits = torch.randn(*batch, sum(lens), generator=g)
    mc = TorchMultiCategorical.from_logits(logits, input_lens=lens)
    other = TorchMultiCategorical.from_logits(other_logits, input_lens=lens)
    parts = [td.Categorical(logits=p) for p in logits.split(lens, -1)]
    oparts = [td.Categorical(logits=p) for p in other_logits.split(lens, -1)]
    torch.manual_seed(0)
    a = mc.sample(sample_shape=(2,))
    assert a.shape == (2, *batch, 3) and a.dtype == torch.int64
    torch.testing.assert_close(mc.logp(a), sum(p.log_prob(a[..., i]) for i, p in enumerate(parts)))
    torch.testing.assert_close(mc.entropy(), sum(p.entropy() for p in parts))
    torch.testing.assert_close(mc.kl(other), sum(td.kl_divergence(p, o) for p, o in zip(parts, oparts)))
    r = mc.rsample()
    assert r.shape == (*batch, sum(lens))


def test_multi_categorical_temperatures_and_partial_cls():
    space = gym.spaces.MultiDiscrete([3, 4])
    logits = torch.randn(5, 7, generator=_gen())
    mc = TorchMultiCategorical.from_logits(logits, input_lens=[3, 4], temperatures=[0.5, 2.0])
    a = torch.tensor([[0, 1]] * 5)
    expected = td.Categorical(logits=logits[:, :3] / 0.5).log_prob(a[:, 0]) + td.Categorical(
        logits=logits[:, 3:] / 2.0).log_prob(a[:, 1])
    torch.testing.assert_close(mc.logp(a), expected)
    partial = TorchMultiCategorical.get_partial_dist_cls(space=space, input_lens=list(space.nvec))
    assert partial.required_input_dim(space) == 7
    d = partial.from_logits(logits)
    assert isinstance(d, TorchMultiCategorical) and isinstance(d, partial)
    torch.testing.assert_close(d.logp(a), TorchMultiCategorical.from_logits(logits, [3, 4]).logp(a))
    with pytest.raises(ValueError, match="Cannot override"):
        partial.from_logits(logits, input_lens=[3, 4])


def test_multi_distribution_dict_of_children():
    g = _gen()
    space_lens = {"move": 4, "turn": 3}  # Box(2) -> 4 inputs, Discrete(3) -> 3
    classes = {"move": TorchDiagGaussian, "turn": TorchCategorical}
    logits = torch.randn(6, 7, generator=g, requires_grad=True)
    md = TorchMultiDistribution.from_logits(logits, child_distribution_cls_struct=classes, input_lens=space_lens)
    # flattening goes by sorted key: "move" (4) then "turn" (3)
    move = TorchDiagGaussian.from_logits(logits[:, :4])
    turn = TorchCategorical.from_logits(logits[:, 4:])
    torch.manual_seed(0)
    s = md.sample()
    assert set(s) == {"move", "turn"} and s["move"].shape == (6, 2) and s["turn"].shape == (6,)
    expected = move.logp(s["move"]) + turn.logp(s["turn"])
    torch.testing.assert_close(md.logp(s), expected)
    flat = torch.cat([s["move"], s["turn"].unsqueeze(-1).float()], -1)
    torch.testing.assert_close(md.logp(flat), expected)
    torch.testing.assert_close(md.entropy(), move.entropy() + turn.entropy())
    torch.testing.assert_close(md.kl(md), torch.zeros(6), atol=1e-6, rtol=0)
    det = md.to_deterministic().sample()
    assert torch.equal(det["turn"], logits[:, 4:].argmax(-1))
    assert TorchMultiDistribution.required_input_dim(None, input_lens=space_lens) == 7


# ----------------------------------------------------------------------------------------------
# bad inputs


NAN_CASES = {
    "categorical": lambda x: TorchCategorical.from_logits(x),
    "diag": lambda x: TorchDiagGaussian.from_logits(x),
    "squashed": lambda x: TorchSquashedGaussian.from_logits(x),
    "deterministic": lambda x: TorchDeterministic.from_logits(x),
    "multicat": lambda x: TorchMultiCategorical.from_logits(x, input_lens=[2, 2]),
}


@pytest.mark.parametrize("make", NAN_CASES.values(), ids=NAN_CASES.keys())
def test_nan_logits_raise(make):
    x = torch.zeros(3, 4)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        make(x)
    make(torch.zeros(3, 4))  # and the clean input is fine


BAD = {
    "diag-odd-last-dim": (lambda: TorchDiagGaussian.from_logits(torch.zeros(2, 5)), "even"),
    "squashed-odd-last-dim": (lambda: TorchSquashedGaussian.from_logits(torch.zeros(2, 3)), "even"),
    "categorical-scalar-logits": (lambda: TorchCategorical.from_logits(torch.tensor(1.0)), "shape"),
    "categorical-logits-and-probs": (lambda: TorchCategorical(logits=torch.zeros(2), probs=torch.ones(2)), "exactly one"),
    "categorical-neither": (lambda: TorchCategorical(), "exactly one"),
    "categorical-temperature-0": (lambda: TorchCategorical.from_logits(torch.zeros(2, 3), temperature=0.0), "temperature"),
    "categorical-not-a-tensor": (lambda: TorchCategorical.from_logits("abc"), "torch.Tensor"),
    "multicat-lens-mismatch": (lambda: TorchMultiCategorical.from_logits(torch.zeros(2, 5), input_lens=[2, 2]), "sum"),
    "multicat-temps-mismatch": (
        lambda: TorchMultiCategorical.from_logits(torch.zeros(2, 4), input_lens=[2, 2], temperatures=[1.0]), "temperatures"),
    "multicat-logp-width": (
        lambda: TorchMultiCategorical.from_logits(torch.zeros(2, 4), input_lens=[2, 2]).logp(torch.zeros(2, 3)), "shape"),
    "diag-logp-missing-action-dim": (
        lambda: TorchDiagGaussian.from_logits(torch.zeros(5, 2)).logp(torch.zeros(5)), "shape"),
    "diag-logp-wrong-action-dim": (
        lambda: TorchDiagGaussian.from_logits(torch.zeros(5, 6)).logp(torch.zeros(5, 2)), "shape"),
    "categorical-logp-bad-broadcast": (
        lambda: TorchCategorical.from_logits(torch.zeros(5, 3)).logp(torch.zeros(4, dtype=torch.long)), "broadcast"),
    "categorical-kl-other-type": (
        lambda: TorchCategorical.from_logits(torch.zeros(5, 3)).kl(TorchDiagGaussian.from_logits(torch.zeros(5, 2))),
        "TorchCategorical"),
}


@pytest.mark.parametrize("call,match", BAD.values(), ids=BAD.keys())
def test_bad_inputs_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_numpy_logits_accepted():
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    d = TorchDiagGaussian.from_logits(x)
    assert d.sample().dtype == torch.float32
    c = TorchCategorical.from_logits(x)
    torch.testing.assert_close(c.logp(np.array([0, 1, 2, 5])),
                               td.Categorical(logits=torch.from_numpy(x)).log_prob(torch.tensor([0, 1, 2, 5])))


def test_all_are_distributions():
    for cls in (TorchCategorical, TorchDiagGaussian, TorchSquashedGaussian, TorchDeterministic,
                TorchMultiCategorical, TorchMultiDistribution):
        assert issubclass(cls, Distribution)
    with pytest.raises(TypeError):
        Distribution()  # abstract
