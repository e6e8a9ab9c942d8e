"""Action distributions with RLlib's new-API-stack semantics (torch).

Mirrors ``ray.rllib.core.distribution`` (RLlib 2.10-2.60): ``Distribution`` (abstract base),
``TorchCategorical``, ``TorchDiagGaussian``, ``TorchSquashedGaussian``, ``TorchDeterministic``,
``TorchMultiCategorical`` and ``TorchMultiDistribution``. The maths is written out directly
(no ``torch.distributions`` objects are built) so that constructing a distribution costs a
few attribute stores; log-softmax and the like are computed lazily, once.

Shapes are batch-major: parameters are ``[*batch, K]`` (``[B, K]`` or ``[B, T, K]``); a
distribution's batch shape is everything but the last dim of its parameters. ``sample`` /
``rsample`` take ``sample_shape`` (default ``()``) which is prepended, as in torch.

Conventions shared by every class:

* ``sample`` never carries grad (it runs under ``torch.no_grad``); ``rsample`` does where the
  distribution is reparameterizable (Gaussian, squashed Gaussian, deterministic; categorical
  uses RLlib's straight-through one-hot).
* ``from_logits`` raises ``ValueError`` on NaN inputs (one cheap reduction, only there) and on
  wrong shapes; numpy inputs are accepted (converted with ``torch.as_tensor``, no copy).
* Bad arguments raise ``ValueError`` naming the argument (RLlib uses ``assert``).

Where we knowingly differ from RLlib 2.60, the class docstring says so (search "RLlib:").
"""
from __future__ import annotations

import abc
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "Distribution",
    "TorchDistribution",
    "TorchCategorical",
    "TorchDiagGaussian",
    "TorchSquashedGaussian",
    "TorchDeterministic",
    "TorchMultiCategorical",
    "TorchMultiDistribution",
]

# RLlib's constants (ray.rllib.utils.numpy): clip range of the squashed Gaussian's log-std
# in `from_logits`, and the margin kept from the bounds before atanh.
MIN_LOG_NN_OUTPUT = -5.0
MAX_LOG_NN_OUTPUT = 2.0
SMALL_NUMBER = 1e-6

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)

SampleShape = Union[int, Sequence[int], torch.Size, None]


# ----------------------------------------------------------------------------------------------
# helpers


def _size(sample_shape: SampleShape) -> torch.Size:
    if sample_shape is None:
        return torch.Size()
    if isinstance(sample_shape, int):
        return torch.Size((sample_shape,))
    return torch.Size(sample_shape)


def _as_tensor(x: Any, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (np.ndarray, np.generic, list, tuple, float, int)):
        return torch.as_tensor(x)
    raise ValueError(f"{what}: expected a torch.Tensor or numpy array, got {type(x).__name__}")


def _as_float_tensor(x: Any, what: str, like: Optional[torch.Tensor] = None) -> torch.Tensor:
    if like is not None and isinstance(x, (float, int)):  # python scalar: take like's dtype
        return torch.as_tensor(float(x), dtype=like.dtype if like.is_floating_point() else None,
                               device=like.device)
    t = _as_tensor(x, what)
    if not t.is_floating_point():
        dtype = like.dtype if like is not None and like.is_floating_point() else torch.get_default_dtype()
        t = t.to(dtype)
    if like is not None and t.device != like.device:
        t = t.to(like.device)
    return t


def _logits_tensor(logits: Any, what: str = "logits", *, min_dim: int = 1) -> torch.Tensor:
    """Converts `logits` to a float tensor and checks its rank and for NaN (one reduction)."""
    t = _as_float_tensor(logits, what)
    if t.dim() < min_dim:
        raise ValueError(
            f"{what}: expected a tensor of shape [*batch, K] (at least {min_dim}-d), "
            f"got shape {tuple(t.shape)}"
        )
    # Skipped while torch.compile / torch.export trace (a data-dependent branch; rf.export).
    if t.numel() and not torch.compiler.is_compiling() and bool(torch.isnan(t).any()):
        raise ValueError(f"{what}: contains NaN (shape {tuple(t.shape)})")
    return t


def _check_space(space: Any, cls: type, who: str) -> None:
    if not isinstance(space, cls):
        raise ValueError(
            f"{who}.required_input_dim: space must be gymnasium.spaces.{cls.__name__}, "
            f"got {space!r}"
        )


def _flatten(struct: Any) -> List[Any]:
    """dm-tree's `flatten` for dicts (sorted keys), lists and tuples; anything else is a leaf."""
    if isinstance(struct, dict):
        return [leaf for k in sorted(struct) for leaf in _flatten(struct[k])]
    if isinstance(struct, (list, tuple)):
        return [leaf for s in struct for leaf in _flatten(s)]
    return [struct]


_END = object()


def _unflatten_as(struct: Any, flat: Sequence[Any]) -> Any:
    """Inverse of `_flatten`: rebuilds `struct`'s nesting with the leaves of `flat`."""
    it = iter(flat)

    def build(s: Any) -> Any:
        if isinstance(s, dict):
            built = {k: build(s[k]) for k in sorted(s)}  # leaves come in sorted-key order
            return type(s)((k, built[k]) for k in s)
        if isinstance(s, tuple) and hasattr(s, "_fields"):  # namedtuple
            return type(s)(*[build(x) for x in s])
        if isinstance(s, (list, tuple)):
            return type(s)(build(x) for x in s)
        return next(it)

    out = build(struct)
    if next(it, _END) is not _END:
        raise ValueError("_unflatten_as: more leaves than the structure holds")
    return out


# ----------------------------------------------------------------------------------------------
# base classes


class Distribution(abc.ABC):
    """Base class of action distributions (RLlib's ``Distribution`` API).

    Subclasses implement ``logp(value)``, ``kl(other)``, ``entropy()``,
    ``sample(*, sample_shape=())``, ``rsample(*, sample_shape=())``, the static
    ``required_input_dim(space, **kwargs)`` and usually the classmethod
    ``from_logits(logits, **kwargs)``. ``to_deterministic()`` returns a deterministic
    equivalent (default: ``self``).
    """

    @abc.abstractmethod
    def sample(self, *, sample_shape: SampleShape = (), **kwargs) -> Any:
        """Draws a sample of shape ``sample_shape + batch_shape + event_shape`` (no grad)."""

    @abc.abstractmethod
    def rsample(self, *, sample_shape: SampleShape = (), **kwargs) -> Any:
        """Draws a reparameterized sample (gradients flow to the parameters)."""

    @abc.abstractmethod
    def logp(self, value: Any, **kwargs) -> torch.Tensor:
        """Log-likelihood of ``value``; shape ``sample_shape + batch_shape``."""

    @abc.abstractmethod
    def kl(self, other: "Distribution", **kwargs) -> torch.Tensor:
        """KL(self || other), shape ``batch_shape``."""

    @abc.abstractmethod
    def entropy(self, **kwargs) -> torch.Tensor:
        """Entropy, shape ``batch_shape``."""

    @staticmethod
    @abc.abstractmethod
    def required_input_dim(space: gym.Space, **kwargs) -> int:
        """Length of the flat input (``action_dist_inputs``) vector needed for ``space``."""

    @classmethod
    def from_logits(cls, logits: Any, **kwargs) -> "Distribution":
        """Builds the distribution from a model's output ``logits`` ``[*batch, required_input_dim]``."""
        raise NotImplementedError(f"{cls.__name__}.from_logits")

    def to_deterministic(self) -> "Distribution":
        """A deterministic equivalent of this distribution (default: ``self``)."""
        return self

    @classmethod
    def get_partial_dist_cls(parent_cls, **partial_kwargs) -> type:
        """A subclass whose ``from_logits`` / ``required_input_dim`` get ``partial_kwargs``.

        As RLlib's: used by catalogs to build e.g. a ``TorchMultiCategorical`` from logits
        alone (``get_partial_dist_cls(space=space, input_lens=list(space.nvec))``).
        Passing a key again at call time raises ``ValueError``.
        """

        class DistributionPartial(parent_cls):  # type: ignore[misc, valid-type]
            @staticmethod
            def _merge_kwargs(**kwargs):
                overlap = set(kwargs) & set(partial_kwargs)
                if overlap:
                    raise ValueError(
                        f"Cannot override the following kwargs: {sorted(overlap)}; they were "
                        "set when this partial class was defined."
                    )
                return {**partial_kwargs, **kwargs}

            @classmethod
            def required_input_dim(cls, space: gym.Space, **kwargs) -> int:  # type: ignore[override]
                merged = cls._merge_kwargs(**kwargs)
                if "space" in merged and merged["space"] != space:
                    raise ValueError(
                        f"required_input_dim: space {space!r} differs from the partial's "
                        f"space {merged['space']!r}"
                    )
                merged["space"] = space
                return parent_cls.required_input_dim(**merged)

            @classmethod
            def from_logits(cls, logits: Any, **kwargs) -> "Distribution":  # type: ignore[override]
                dist = parent_cls.from_logits(logits, **cls._merge_kwargs(**kwargs))
                dist.__class__ = cls
                return dist

        DistributionPartial.__name__ = f"{parent_cls.__name__}Partial"
        DistributionPartial.__qualname__ = DistributionPartial.__name__
        return DistributionPartial


class TorchDistribution(Distribution, abc.ABC):
    """Common base of the torch distributions: ``sample_and_logp`` / ``rsample_and_logp``."""

    def sample_and_logp(self, *, sample_shape: SampleShape = ()) -> Tuple[Any, torch.Tensor]:
        """``(sample, logp(sample))``; the sample has no grad, logp does."""
        s = self.sample(sample_shape=sample_shape)
        return s, self.logp(s)

    def rsample_and_logp(self, *, sample_shape: SampleShape = ()) -> Tuple[Any, torch.Tensor]:
        """``(rsample, logp(rsample))``, both differentiable."""
        s = self.rsample(sample_shape=sample_shape)
        return s, self.logp(s)


# ----------------------------------------------------------------------------------------------
# categorical


class TorchCategorical(TorchDistribution):
    """Categorical distribution over ``{0, ..., K-1}`` from ``logits`` or ``probs`` ``[*batch, K]``.

    Exactly one of ``logits`` (unnormalized log-probabilities) and ``probs`` (non-negative,
    normalized along the last dim here) must be given. ``temperature`` > 0 sharpens
    (< 1) or flattens (> 1) the distribution: ``probs = softmax(logits / temperature)``;
    with ``probs`` it gives ``probs ** (1 / temperature)`` renormalized.

    * ``sample()``: int64 ``[*sample_shape, *batch]`` by Gumbel-max (the same estimator as
      ``rf.ops.sample_categorical``'s torch reference), no grad.
    * ``rsample()``: RLlib's straight-through one-hot: float ``[*sample_shape, *batch, K]``
      whose forward value is the one-hot sample and whose gradient is that of ``probs``.
    * ``logp(value)``: ``log_softmax(logits)[value]``; ``value`` (int or float holding
      integers) broadcasts against the batch shape. Out-of-range values raise torch's
      index error (not checked, to keep it free).
    * ``entropy()``, ``kl(other)``: ``[*batch]``; zero-probability classes contribute 0
      (and ``inf`` KL where ``other`` gives 0 to a class ``self`` does not).
    * ``to_deterministic()``: ``TorchDeterministic(loc=argmax)``.

    Attributes ``logits`` / ``probs`` are as given (logits scaled by the temperature);
    the other one is ``None`` as in RLlib. RLlib: 2.60 dropped ``temperature`` from the
    constructor but documents it; we keep it (2.1x behaviour).
    """

    def __init__(
        self,
        logits: Optional[torch.Tensor] = None,
        probs: Optional[torch.Tensor] = None,
        temperature: float = 1.0,
    ) -> None:
        if (logits is None) == (probs is None):
            raise ValueError("TorchCategorical: exactly one of `logits` and `probs` must be given")
        temperature = float(temperature)
        if not temperature > 0.0 or not math.isfinite(temperature):
            raise ValueError(f"TorchCategorical: temperature must be > 0 and finite, got {temperature}")
        self.temperature = temperature
        if logits is not None:
            logits = _as_float_tensor(logits, "logits")
            if logits.dim() < 1:
                raise ValueError(f"logits: expected shape [*batch, K], got {tuple(logits.shape)}")
            if temperature != 1.0:
                logits = logits / temperature
            self.logits = logits
            self.probs = None
            self._log_probs: Optional[torch.Tensor] = None
            self._probs: Optional[torch.Tensor] = None
        else:
            probs = _as_float_tensor(probs, "probs")
            if probs.dim() < 1:
                raise ValueError(f"probs: expected shape [*batch, K], got {tuple(probs.shape)}")
            if temperature != 1.0:
                probs = probs ** (1.0 / temperature)
            self.logits = None
            self.probs = probs
            self._probs = probs / probs.sum(-1, keepdim=True)
            self._log_probs = None

    # lazily computed, cached normalized forms
    @property
    def log_probs(self) -> torch.Tensor:
        """Normalized log-probabilities ``[*batch, K]``."""
        if self._log_probs is None:
            if self.logits is not None:
                self._log_probs = torch.log_softmax(self.logits, dim=-1)
            else:
                self._log_probs = torch.log(self._probs)
        return self._log_probs

    @property
    def normalized_probs(self) -> torch.Tensor:
        """Normalized probabilities ``[*batch, K]``."""
        if self._probs is None:
            self._probs = torch.softmax(self.logits, dim=-1)
        return self._probs

    @property
    def num_categories(self) -> int:
        p = self.logits if self.logits is not None else self.probs
        return int(p.shape[-1])

    @property
    def batch_shape(self) -> torch.Size:
        p = self.logits if self.logits is not None else self.probs
        return p.shape[:-1]

    def _scores(self) -> torch.Tensor:
        # Anything whose argmax/Gumbel-max equals that of the log-probs.
        return self.logits if self.logits is not None else self.log_probs

    def sample(self, *, sample_shape: SampleShape = (), **kwargs) -> torch.Tensor:
        """int64 actions ``[*sample_shape, *batch]`` (no grad)."""
        shape = _size(sample_shape)
        with torch.no_grad():
            scores = self._scores()
            u = torch.rand(shape + scores.shape, dtype=scores.dtype, device=scores.device)
            u.clamp_(min=torch.finfo(scores.dtype).tiny)
            # Gumbel-max: argmax(scores + G), G = -log(-log(U)).
            return torch.argmax(scores - torch.log(-torch.log(u)), dim=-1)

    def rsample(self, *, sample_shape: SampleShape = (), **kwargs) -> torch.Tensor:
        """Straight-through one-hot ``[*sample_shape, *batch, K]`` (value: one-hot; grad: probs)."""
        idx = self.sample(sample_shape=sample_shape)
        p = self.normalized_probs
        one_hot = F.one_hot(idx, p.shape[-1]).to(p.dtype)
        return (one_hot - p).detach() + p

    def logp(self, value: Any, **kwargs) -> torch.Tensor:
        """Log-probability of integer actions ``value`` ``[*sample_shape, *batch]``."""
        value = _as_tensor(value, "value")
        lp = self.log_probs
        if value.dtype != torch.int64:
            value = value.long()
        if value.device != lp.device:
            value = value.to(lp.device)
        if value.shape == lp.shape[:-1]:
            return lp.gather(-1, value.unsqueeze(-1)).squeeze(-1)
        v = value.unsqueeze(-1)
        try:
            v, lp = torch.broadcast_tensors(v, lp)
        except RuntimeError as e:
            raise ValueError(
                f"logp: value of shape {tuple(value.shape)} does not broadcast against the "
                f"batch shape {tuple(self.batch_shape)}"
            ) from e
        return lp.gather(-1, v[..., :1]).squeeze(-1)

    def entropy(self, **kwargs) -> torch.Tensor:
        """Entropy ``[*batch]``."""
        lp = self.log_probs
        lp = lp.clamp(min=torch.finfo(lp.dtype).min)  # -inf * 0 -> 0, not NaN
        return -(self.normalized_probs * lp).sum(-1)

    def kl(self, other: "TorchCategorical", **kwargs) -> torch.Tensor:
        """KL(self || other) ``[*batch]``."""
        if not isinstance(other, TorchCategorical):
            raise ValueError(f"kl: other must be a TorchCategorical, got {type(other).__name__}")
        p = self.normalized_probs
        t = p * (self.log_probs - other.log_probs)
        return torch.where(p == 0, torch.zeros((), dtype=t.dtype, device=t.device), t).sum(-1)

    @staticmethod
    def required_input_dim(space: gym.Space, **kwargs) -> int:
        """``space.n`` for a ``Discrete`` space."""
        _check_space(space, gym.spaces.Discrete, "TorchCategorical")
        return int(space.n)

    @classmethod
    def from_logits(cls, logits: Any, temperature: float = 1.0, **kwargs) -> "TorchCategorical":
        """From logits ``[*batch, K]`` (float; NaN raises ``ValueError``)."""
        return cls(logits=_logits_tensor(logits), temperature=temperature)

    def to_deterministic(self) -> "TorchDeterministic":
        """``TorchDeterministic(loc=argmax(logits or probs))`` with loc int64 ``[*batch]``."""
        return TorchDeterministic(loc=torch.argmax(self._scores(), dim=-1))


# ----------------------------------------------------------------------------------------------
# Gaussians


class _TorchNormalBase(TorchDistribution):
    """Shared parts of the diagonal Normal: ``loc``/``scale`` broadcast; event = last dim."""

    def __init__(self, loc: Any, scale: Any) -> None:
        loc = _as_float_tensor(loc, "loc")
        scale = _as_float_tensor(scale, "scale", like=loc)
        if loc.dim() < 1 and scale.dim() < 1:
            raise ValueError(
                f"{type(self).__name__}: loc/scale must have shape [*batch, A], got "
                f"{tuple(loc.shape)} and {tuple(scale.shape)}"
            )
        try:
            # broadcast_shapes costs ~10 us; the common case (from_logits) needs none.
            self._shape = loc.shape if loc.shape == scale.shape else torch.broadcast_shapes(loc.shape, scale.shape)
        except RuntimeError as e:
            raise ValueError(
                f"{type(self).__name__}: loc {tuple(loc.shape)} and scale {tuple(scale.shape)} "
                "do not broadcast"
            ) from e
        self.loc = loc
        self.scale = scale
        self._log_scale: Optional[torch.Tensor] = None

    @property
    def log_scale(self) -> torch.Tensor:
        if self._log_scale is None:
            self._log_scale = torch.log(self.scale)
        return self._log_scale

    @property
    def batch_shape(self) -> torch.Size:
        return self._shape[:-1]

    def _eps(self, sample_shape: SampleShape) -> torch.Tensor:
        return torch.randn(
            _size(sample_shape) + self._shape, dtype=self.loc.dtype, device=self.loc.device
        )

    def _normal_rsample(self, sample_shape: SampleShape) -> torch.Tensor:
        return self.loc + self.scale * self._eps(sample_shape)

    def _normal_logp_elem(self, value: torch.Tensor) -> torch.Tensor:
        """Per-element Normal log-density (not summed)."""
        z = (value - self.loc) / self.scale
        return -0.5 * z * z - self.log_scale - _LOG_SQRT_2PI

    def _check_value(self, value: Any) -> torch.Tensor:
        value = _as_float_tensor(value, "value", like=self.loc)
        # The action dim must be there (a [B] value against loc [B, 1] would silently
        # broadcast to [B, B]) and match.
        if value.dim() < len(self._shape) or value.shape[-1] not in (self._shape[-1], 1):
            raise ValueError(
                f"logp: value must have shape [*sample, *batch, {self._shape[-1]}], "
                f"got {tuple(value.shape)}"
            )
        return value


class TorchDiagGaussian(_TorchNormalBase):
    """Diagonal Gaussian ``N(loc, diag(scale**2))`` with ``loc``/``scale`` ``[*batch, A]``.

    ``from_logits(logits)`` splits ``logits`` ``[*batch, 2A]`` into mean and log-std (RLlib's
    ``action_dist_inputs`` layout; the log-std is not clipped, as in RLlib). ``logp``,
    ``entropy`` and ``kl`` are summed over the last (action) dim -> ``[*batch]``.
    ``sample`` / ``rsample`` give ``[*sample_shape, *batch, A]``. ``to_deterministic()`` is
    ``TorchDeterministic(loc)``. ``scale=None`` reads the second half of ``loc`` as log-std
    (as RLlib's docstring describes). ``scale`` is not checked for positivity (that would
    cost a reduction); ``from_logits`` makes it ``exp(log_std)``.
    """

    def __init__(self, loc: Any, scale: Any = None) -> None:
        if scale is None:
            loc = _as_float_tensor(loc, "loc")
            if loc.dim() < 1 or loc.shape[-1] % 2:
                raise ValueError(
                    f"TorchDiagGaussian: with scale=None, loc must be [*batch, 2A] (mean, "
                    f"log_std), got {tuple(loc.shape)}"
                )
            loc, log_std = loc.chunk(2, dim=-1)
            scale = log_std.exp()
        super().__init__(loc, scale)

    def sample(self, *, sample_shape: SampleShape = (), **kwargs) -> torch.Tensor:
        """``[*sample_shape, *batch, A]``, no grad."""
        with torch.no_grad():
            return self._normal_rsample(sample_shape)

    def rsample(self, *, sample_shape: SampleShape = (), **kwargs) -> torch.Tensor:
        """``loc + scale * eps``, ``[*sample_shape, *batch, A]``, differentiable."""
        return self._normal_rsample(sample_shape)

    def logp(self, value: Any, **kwargs) -> torch.Tensor:
        """Log-density summed over the action dim, ``[*sample_shape, *batch]``."""
        return self._normal_logp_elem(self._check_value(value)).sum(-1)

    def entropy(self, **kwargs) -> torch.Tensor:
        """``sum(0.5 + log(sqrt(2 pi)) + log(scale))`` over the action dim, ``[*batch]``."""
        ent = (0.5 + _LOG_SQRT_2PI) + self.log_scale
        return ent.expand(self._shape).sum(-1)

    def kl(self, other: "TorchDiagGaussian", **kwargs) -> torch.Tensor:
        """KL(self || other) summed over the action dim, ``[*batch]``."""
        if not isinstance(other, TorchDiagGaussian):
            raise ValueError(f"kl: other must be a TorchDiagGaussian, got {type(other).__name__}")
        var_ratio = (self.scale / other.scale) ** 2
        t = ((self.loc - other.loc) / other.scale) ** 2
        return (0.5 * (var_ratio + t - 1.0 - torch.log(var_ratio))).sum(-1)

    @staticmethod
    def required_input_dim(space: gym.Space, **kwargs) -> int:
        """``2 * prod(space.shape)`` for a ``Box``."""
        _check_space(space, gym.spaces.Box, "TorchDiagGaussian")
        return int(np.prod(space.shape, dtype=np.int64)) * 2

    @classmethod
    def from_logits(cls, logits: Any, **kwargs) -> "TorchDiagGaussian":
        """From ``[*batch, 2A]`` = mean and log-std concatenated (NaN raises ``ValueError``)."""
        logits = _logits_tensor(logits)
        if logits.shape[-1] % 2:
            raise ValueError(
                f"logits: last dim must be even (mean, log_std concatenated), got shape "
                f"{tuple(logits.shape)}"
            )
        loc, log_std = logits.chunk(2, dim=-1)
        dist = cls(loc=loc, scale=log_std.exp())
        dist._log_scale = log_std
        return dist

    def to_deterministic(self) -> "TorchDeterministic":
        return TorchDeterministic(loc=self.loc)


def _bound(x: Any, what: str, like: torch.Tensor) -> Union[float, torch.Tensor]:
    if isinstance(x, (int, float, np.floating, np.integer)):
        x = float(x)
        if not math.isfinite(x):
            raise ValueError(f"TorchSquashedGaussian: {what} must be finite, got {x}")
        return x
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    t = t.to(dtype=like.dtype, device=like.device)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"TorchSquashedGaussian: {what} must be finite, got {x}")
    if t.numel() == 1:
        return float(t.reshape(()))
    return t


class TorchSquashedGaussian(_TorchNormalBase):
    """Gaussian squashed by tanh into ``[low, high]`` (default ``[-1, 1]``), as used by SAC.

    ``u ~ N(loc, scale)``, action ``a = low + (tanh(u) + 1) / 2 * (high - low)`` (clipped to the
    bounds). ``low``/``high`` are floats or arrays broadcasting against the action dim.

    * ``logp(a)``: the log-density of ``a`` by change of variables, summed over the action
      dim: ``logN(u) - log(1 - tanh(u)^2) - log((high - low) / 2)`` with ``u = atanh(...)``
      of ``a`` clipped ``SMALL_NUMBER`` inside the bounds (finite at the bounds) and
      ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))`` (stable for large ``|u|``).
      ``sample_and_logp`` / ``rsample_and_logp`` use the pre-squash ``u`` and are exact
      even where tanh saturates.
      RLlib: RLlib leaves out the constant ``-sum(log((high - low) / 2))``; with the default
      bounds it is 0 and both agree. We keep it so ``logp`` is a true density.
    * ``entropy()`` / ``kl()``: ``ValueError`` (no closed form), as RLlib.
    * ``from_logits(logits, low=-1, high=1)``: clips the log-std to ``[-5, 2]`` as RLlib.
    * ``to_deterministic()``: ``TorchDeterministic(squash(loc))``, the median action.
      RLlib: RLlib 2.60 returns the unsquashed ``loc`` (can lie outside the bounds).
    """

    def __init__(self, loc: Any, scale: Any = 1.0, low: Any = -1.0, high: Any = 1.0) -> None:
        super().__init__(loc, scale)
        self.low = _bound(low, "low", self.loc)
        self.high = _bound(high, "high", self.loc)
        ok = (self.low < self.high) if isinstance(self.low, float) and isinstance(self.high, float) \
            else bool(torch.all(torch.as_tensor(self.low) < torch.as_tensor(self.high)))
        if not ok:
            raise ValueError(f"TorchSquashedGaussian: need low < high, got low={low}, high={high}")
        half = (self.high - self.low) / 2.0
        self._log_half_range = math.log(half) if isinstance(half, float) else torch.log(half)

    def _squash(self, u: torch.Tensor) -> torch.Tensor:
        a = (torch.tanh(u) + 1.0) * ((self.high - self.low) / 2.0) + self.low
        return torch.clamp(a, self.low, self.high)

    def _unsquash(self, a: torch.Tensor) -> torch.Tensor:
        y = (a - self.low) / (self.high - self.low) * 2.0 - 1.0
        y = torch.clamp(y, -1.0 + SMALL_NUMBER, 1.0 - SMALL_NUMBER)
        return torch.atanh(y)

    def _squashed_logp(self, u: torch.Tensor) -> torch.Tensor:
        log_det = 2.0 * (_LOG_2 - u - F.softplus(-2.0 * u)) + self._log_half_range
        return (self._normal_logp_elem(u) - log_det).sum(-1)

    def sample(self, *, sample_shape: SampleShape = (), **kwargs) -> torch.Tensor:
        """Actions in ``[low, high]``, ``[*sample_shape, *batch, A]``, no grad."""
        with torch.no_grad():
            return self._squash(self._normal_rsample(sample_shape))

    def rsample(self, *, sample_shape: SampleShape = (), **kwargs) -> torch.Tensor:
        """Differentiable actions in ``[low, high]``, ``[*sample_shape, *batch, A]``."""
        return self._squash(self._normal_rsample(sample_shape))

    def sample_and_logp(self, *, sample_shape: SampleShape = ()) -> Tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            u = self._normal_rsample(sample_shape)
        return self._squash(u), self._squashed_logp(u)

    def rsample_and_logp(self, *, sample_shape: SampleShape = ()) -> Tuple[torch.Tensor, torch.Tensor]:
        u = self._normal_rsample(sample_shape)
        return self._squash(u), self._squashed_logp(u)

    def logp(self, value: Any, **kwargs) -> torch.Tensor:
        """Log-density of actions ``value`` ``[*sample_shape, *batch, A]`` -> ``[*sample_shape, *batch]``."""
        return self._squashed_logp(self._unsquash(self._check_value(value)))

    def entropy(self, **kwargs) -> torch.Tensor:
        raise ValueError("entropy() is not defined for TorchSquashedGaussian (no closed form)")

    def kl(self, other: Distribution, **kwargs) -> torch.Tensor:
        raise ValueError("kl() is not defined for TorchSquashedGaussian (no closed form)")

    @staticmethod
    def required_input_dim(space: gym.Space, **kwargs) -> int:
        """``2 * prod(space.shape)`` for a ``Box``."""
        _check_space(space, gym.spaces.Box, "TorchSquashedGaussian")
        return int(np.prod(space.shape, dtype=np.int64)) * 2

    @classmethod
    def from_logits(cls, logits: Any, low: Any = -1.0, high: Any = 1.0, **kwargs) -> "TorchSquashedGaussian":
        """From ``[*batch, 2A]`` mean/log-std (log-std clipped to [-5, 2]); NaN raises ``ValueError``."""
        logits = _logits_tensor(logits)
        if logits.shape[-1] % 2:
            raise ValueError(
                f"logits: last dim must be even (mean, log_std concatenated), got shape "
                f"{tuple(logits.shape)}"
            )
        loc, log_std = logits.chunk(2, dim=-1)
        log_std = torch.clamp(log_std, MIN_LOG_NN_OUTPUT, MAX_LOG_NN_OUTPUT)
        dist = cls(loc=loc, scale=log_std.exp(), low=low, high=high)
        dist._log_scale = log_std
        return dist

    def to_deterministic(self) -> "TorchDeterministic":
        return TorchDeterministic(loc=self._squash(self.loc))


# ----------------------------------------------------------------------------------------------
# deterministic


class TorchDeterministic(TorchDistribution):
    """Point mass at ``loc`` (any shape, any dtype; e.g. ``[*batch, A]`` or int64 ``[*batch]``).

    * ``sample()``: a fresh copy of ``loc`` expanded to ``[*sample_shape, *loc.shape]``, no grad.
    * ``rsample()``: the same, differentiable w.r.t. a float ``loc``.
      RLlib: RLlib raises ``NotImplementedError`` here.
    * ``logp(value)``: zeros of ``loc``'s shape, as RLlib (``zeros_like(loc)``), but always a
      float dtype (RLlib gives int64 zeros for an argmax ``loc``). Note: not summed over
      the action dim.
    * ``entropy()`` / ``kl()``: ``RuntimeError``, as RLlib.
    * ``required_input_dim(Box)``: ``prod(space.shape)``.
    """

    def __init__(self, loc: Any) -> None:
        self.loc = _as_tensor(loc, "loc")

    def sample(self, *, sample_shape: SampleShape = (), **kwargs) -> torch.Tensor:
        loc = self.loc.detach()
        return loc.expand(_size(sample_shape) + loc.shape).clone()

    def rsample(self, *, sample_shape: SampleShape = (), **kwargs) -> torch.Tensor:
        return self.loc.expand(_size(sample_shape) + self.loc.shape).clone()

    def logp(self, value: Any, **kwargs) -> torch.Tensor:
        dtype = self.loc.dtype if self.loc.is_floating_point() else torch.get_default_dtype()
        return torch.zeros(self.loc.shape, dtype=dtype, device=self.loc.device)

    def entropy(self, **kwargs) -> torch.Tensor:
        raise RuntimeError(f"`entropy()` not supported for {type(self).__name__}.")

    def kl(self, other: Distribution, **kwargs) -> torch.Tensor:
        raise RuntimeError(f"`kl()` not supported for {type(self).__name__}.")

    @staticmethod
    def required_input_dim(space: gym.Space, **kwargs) -> int:
        _check_space(space, gym.spaces.Box, "TorchDeterministic")
        return int(np.prod(space.shape, dtype=np.int64))

    @classmethod
    def from_logits(cls, logits: Any, **kwargs) -> "TorchDeterministic":
        """``loc = logits`` (NaN raises ``ValueError``)."""
        return cls(loc=_logits_tensor(logits))

    def to_deterministic(self) -> "TorchDeterministic":
        return self


# ----------------------------------------------------------------------------------------------
# multi


class TorchMultiCategorical(TorchDistribution):
    """Independent categoricals for a ``MultiDiscrete`` space.

    ``from_logits(logits, input_lens, temperatures=None)`` splits ``logits``
    ``[*batch, sum(input_lens)]`` along the last dim. Actions are int64
    ``[*sample_shape, *batch, n]`` (``n = len(input_lens)``); ``logp``, ``entropy`` and ``kl``
    are sums over the parts -> ``[*batch]``. ``to_deterministic()`` gives
    ``TorchDeterministic`` of the per-part argmax ``[*batch, n]``.
    RLlib: ``rsample`` returns the parts' straight-through one-hots *concatenated* on the
    last dim ``[..., sum(K)]`` (RLlib stacks them, which fails for unequal sizes); the
    ``temperatures`` are applied (RLlib 2.60 ignores them); ``sample`` accepts ``sample_shape``.
    """

    def __init__(self, categoricals: List[TorchCategorical]) -> None:
        if not categoricals or not all(isinstance(c, TorchCategorical) for c in categoricals):
            raise ValueError("TorchMultiCategorical: categoricals must be a non-empty list of TorchCategorical")
        self._cats = list(categoricals)

    def sample(self, *, sample_shape: SampleShape = (), **kwargs) -> torch.Tensor:
        return torch.stack([c.sample(sample_shape=sample_shape) for c in self._cats], dim=-1)

    def rsample(self, *, sample_shape: SampleShape = (), **kwargs) -> torch.Tensor:
        return torch.cat([c.rsample(sample_shape=sample_shape) for c in self._cats], dim=-1)

    def logp(self, value: Any, **kwargs) -> torch.Tensor:
        """Sum of the parts' logp; ``value`` ``[*sample_shape, *batch, n]`` -> ``[*sample_shape, *batch]``."""
        value = _as_tensor(value, "value")
        if value.dim() < 1 or value.shape[-1] != len(self._cats):
            raise ValueError(
                f"logp: value must have shape [*batch, {len(self._cats)}], got {tuple(value.shape)}"
            )
        parts = value.unbind(-1)
        out = self._cats[0].logp(parts[0])
        for c, v in zip(self._cats[1:], parts[1:]):
            out = out + c.logp(v)
        return out

    def entropy(self, **kwargs) -> torch.Tensor:
        out = self._cats[0].entropy()
        for c in self._cats[1:]:
            out = out + c.entropy()
        return out

    def kl(self, other: "TorchMultiCategorical", **kwargs) -> torch.Tensor:
        if not isinstance(other, TorchMultiCategorical) or len(other._cats) != len(self._cats):
            raise ValueError("kl: other must be a TorchMultiCategorical with the same number of parts")
        out = self._cats[0].kl(other._cats[0])
        for c, o in zip(self._cats[1:], other._cats[1:]):
            out = out + c.kl(o)
        return out

    @staticmethod
    def required_input_dim(space: gym.Space, **kwargs) -> int:
        """``sum(space.nvec)`` for a ``MultiDiscrete`` space."""
        _check_space(space, gym.spaces.MultiDiscrete, "TorchMultiCategorical")
        return int(np.sum(space.nvec))

    @classmethod
    def from_logits(
        cls,
        logits: Any,
        input_lens: Sequence[int],
        temperatures: Optional[Sequence[float]] = None,
        **kwargs,
    ) -> "TorchMultiCategorical":
        """From ``logits`` ``[*batch, sum(input_lens)]`` (NaN raises ``ValueError``)."""
        logits = _logits_tensor(logits)
        input_lens = [int(n) for n in np.asarray(input_lens).reshape(-1)]
        if not input_lens or any(n < 1 for n in input_lens):
            raise ValueError(f"input_lens: expected positive ints, got {input_lens}")
        if sum(input_lens) != logits.shape[-1]:
            raise ValueError(
                f"logits: last dim must be sum(input_lens)={sum(input_lens)}, got shape "
                f"{tuple(logits.shape)}"
            )
        if not temperatures:
            temperatures = [1.0] * len(input_lens)
        if len(temperatures) != len(input_lens):
            raise ValueError(
                f"temperatures: expected {len(input_lens)} values (one per part), got {len(temperatures)}"
            )
        return cls([
            TorchCategorical(logits=part, temperature=t)
            for part, t in zip(torch.split(logits, input_lens, dim=-1), temperatures)
        ])

    def to_deterministic(self) -> "TorchDeterministic":
        return TorchDeterministic(
            loc=torch.stack([torch.argmax(c._scores(), dim=-1) for c in self._cats], dim=-1)
        )


def _action_width(dist: Distribution) -> int:
    """Width of `dist`'s action in a flat concatenated action tensor (for MultiDistribution.logp)."""
    if isinstance(dist, TorchCategorical):
        return 1
    if isinstance(dist, TorchMultiCategorical):
        return len(dist._cats)
    if isinstance(dist, _TorchNormalBase):
        return int(dist._shape[-1])
    if isinstance(dist, TorchDeterministic):
        return int(dist.loc.shape[-1]) if dist.loc.dim() > 1 else 1
    raise ValueError(
        f"logp: cannot split a flat action tensor for a {type(dist).__name__} child; pass "
        "the actions as a nested structure instead"
    )


class TorchMultiDistribution(TorchDistribution):
    """A (nested dict/list/tuple) structure of child distributions, e.g. for Dict/Tuple spaces.

    ``from_logits(logits, child_distribution_cls_struct, input_lens)`` splits the last dim
    of ``logits`` by the flattened ``input_lens`` (dicts flatten by sorted key, as dm-tree).
    ``sample``/``rsample`` return the same structure of samples; ``logp`` takes either that
    structure or one flat tensor (children concatenated on the last dim; categorical
    children one column) and returns the sum over children, as do ``entropy`` and ``kl``.
    """

    def __init__(self, child_distribution_struct: Union[Tuple, List, Dict]) -> None:
        self._original_struct = child_distribution_struct
        self._flat_child_distributions = _flatten(child_distribution_struct)
        if not self._flat_child_distributions or not all(
            isinstance(d, Distribution) for d in self._flat_child_distributions
        ):
            raise ValueError(
                "TorchMultiDistribution: child_distribution_struct must hold Distribution leaves"
            )

    def _map(self, fn) -> Any:
        return _unflatten_as(self._original_struct, [fn(d) for d in self._flat_child_distributions])

    def sample(self, *, sample_shape: SampleShape = (), **kwargs) -> Any:
        return self._map(lambda d: d.sample(sample_shape=sample_shape))

    def rsample(self, *, sample_shape: SampleShape = (), **kwargs) -> Any:
        return self._map(lambda d: d.rsample(sample_shape=sample_shape))

    def logp(self, value: Any, **kwargs) -> torch.Tensor:
        dists = self._flat_child_distributions
        if isinstance(value, (torch.Tensor, np.ndarray)):
            value = _as_tensor(value, "value")
            widths = [_action_width(d) for d in dists]
            if value.dim() < 1 or value.shape[-1] != sum(widths):
                raise ValueError(
                    f"logp: flat value must have last dim {sum(widths)}, got {tuple(value.shape)}"
                )
            parts = list(torch.split(value, widths, dim=-1))
            parts = [p.squeeze(-1) if isinstance(d, TorchCategorical) else p for p, d in zip(parts, dists)]
        else:
            parts = _flatten(value)
            if len(parts) != len(dists):
                raise ValueError(
                    f"logp: value holds {len(parts)} leaves, the distribution {len(dists)}"
                )
        out = None
        for d, v in zip(dists, parts):
            if isinstance(d, TorchCategorical) and isinstance(v, torch.Tensor) and v.dim() > 1 \
                    and v.shape[-1] == 1 and v.dim() > len(d.batch_shape):
                v = v.squeeze(-1)
            lp = d.logp(v)
            out = lp if out is None else out + lp
        return out

    def entropy(self, **kwargs) -> torch.Tensor:
        return sum(d.entropy() for d in self._flat_child_distributions)

    def kl(self, other: "TorchMultiDistribution", **kwargs) -> torch.Tensor:
        if not isinstance(other, TorchMultiDistribution) or len(other._flat_child_distributions) != len(
            self._flat_child_distributions
        ):
            raise ValueError("kl: other must be a TorchMultiDistribution of the same structure")
        return sum(d.kl(o) for d, o in zip(self._flat_child_distributions, other._flat_child_distributions))

    @staticmethod
    def required_input_dim(space: gym.Space, input_lens: Any = None, as_list: bool = False, **kwargs) -> Any:
        """``sum(input_lens)`` (or the flat list with ``as_list=True``), as RLlib."""
        if input_lens is None:
            raise ValueError("TorchMultiDistribution.required_input_dim: input_lens is required")
        lens = [int(n) for n in _flatten(input_lens)]
        return lens if as_list else sum(lens)

    @classmethod
    def from_logits(
        cls,
        logits: Any,
        child_distribution_cls_struct: Union[Dict, List, Tuple] = None,
        input_lens: Union[Dict, List[int]] = None,
        **kwargs,
    ) -> "TorchMultiDistribution":
        """Splits ``logits`` ``[*batch, sum(input_lens)]`` among the child classes."""
        if child_distribution_cls_struct is None or input_lens is None:
            raise ValueError("from_logits: child_distribution_cls_struct and input_lens are required")
        logits = _logits_tensor(logits)
        lens = [int(n) for n in _flatten(input_lens)]
        classes = _flatten(child_distribution_cls_struct)
        if len(lens) != len(classes):
            raise ValueError(
                f"input_lens: {len(lens)} entries for {len(classes)} child distribution classes"
            )
        if sum(lens) != logits.shape[-1]:
            raise ValueError(
                f"logits: last dim must be sum(input_lens)={sum(lens)}, got shape {tuple(logits.shape)}"
            )
        children = [c.from_logits(part) for c, part in zip(classes, torch.split(logits, lens, dim=-1))]
        return cls(_unflatten_as(child_distribution_cls_struct, children))

    def to_deterministic(self) -> "TorchMultiDistribution":
        return TorchMultiDistribution(self._map(lambda d: d.to_deterministic()))
