"""Torch encoders with RLlib's parameter names (``net.mlp.0.weight``, ``tokenizer...``,
``lstm.weight_ih_l0``), so state dicts move between RLlib modules and ours unchanged.

Shape legend: B batch, T time, D flattened observation, H hidden / latent.
"""
from __future__ import annotations

import math
from typing import Optional

import gymnasium as gym
import torch
import torch.nn.functional as F
from torch import nn

from ..ops import dispatch, fused_mlp
from .initializers import init_layer, init_rnn

_ACT_MODULES = {"tanh": nn.Tanh, "relu": nn.ReLU, "silu": nn.SiLU, "elu": nn.ELU}


def obs_dim(space: gym.Space) -> int:
    """Width of the flattened observation: prod(shape) for Box, n for Discrete (one-hot); Dict /
    Tuple spaces as RLlib's FlattenObservations flattens them (``models.flatten``)."""
    from .flatten import flat_dim, is_structured

    if is_structured(space):
        return flat_dim(space)
    if isinstance(space, gym.spaces.Box):
        return int(math.prod(space.shape)) if space.shape else 1
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    raise ValueError(f"observation_space: {space!r} is not supported (Box of any shape or Discrete)")


def obs_lead_dims(space: gym.Space) -> int:
    """Rank of one observation (0 for Discrete)."""
    return len(space.shape) if isinstance(space, gym.spaces.Box) else 0


def flatten_obs(obs: torch.Tensor, space: gym.Space, n_lead: int, dtype: torch.dtype) -> torch.Tensor:
    """[*lead, *obs_shape] -> [*lead, D] in ``dtype`` (Discrete: one-hot of the index)."""
    if isinstance(space, gym.spaces.Discrete):
        idx = obs.long() - int(space.start)
        # Not checked while torch.compile / torch.export trace (data-dependent; see rf.export).
        if idx.numel() and not torch.compiler.is_compiling() and (int(idx.min()) < 0 or int(idx.max()) >= int(space.n)):
            raise ValueError(f"obs: Discrete observations must lie in [{int(space.start)}, "
                             f"{int(space.start) + int(space.n)}), got values in [{int(obs.min())}, {int(obs.max())}]")
        return F.one_hot(idx, int(space.n)).to(dtype)
    lead = obs.shape[:n_lead]
    return obs.reshape(*lead, obs_dim(space)).to(dtype)  # explicit width: a 0-row batch has no -1


#: RLlib's TorchMLP puts LayerNorm(eps=0.001) between a layer's output and its activation.
LAYERNORM_EPS = 1e-3


class TorchMLP(nn.Module):
    """RLlib's TorchMLP layout in ``self.mlp`` (an nn.Sequential): per layer an ``nn.Linear``,
    then (with layer norm) ``nn.LayerNorm(out, eps=0.001)``, then its activation module unless
    the activation is linear. ``hidden_layernorm`` applies to the hidden layers,
    ``output_layernorm`` to the output layer (when ``output_dim`` is given); RLlib's encoders set
    both from ``fcnet_use_layernorm``, its heads only the first (``head_fcnet_use_layernorm``).

    ``hidden_init`` / ``output_init``: initializer settings (``models.initializers.init_layer``
    keywords: kernel, kernel_kwargs, bias, bias_kwargs) applied to each layer right after it is
    created, as RLlib does (so a seed gives RLlib's weights). forward(x [..., in]) -> [..., out].
    """

    def __init__(self, input_dim: int, hidden_layer_dims: list[int], hidden_activation: str,
                 output_dim: Optional[int] = None, output_activation: str = "linear", *,
                 hidden_layernorm: bool = False, output_layernorm: bool = False,
                 hidden_init: Optional[dict] = None, output_init: Optional[dict] = None):
        super().__init__()
        dims = [input_dim, *hidden_layer_dims] + ([output_dim] if output_dim is not None else [])
        layers: list[nn.Module] = []
        self.activations: list[str] = []
        for i in range(len(dims) - 1):
            is_out = output_dim is not None and i == len(dims) - 2
            act = output_activation if is_out else hidden_activation
            lin = nn.Linear(dims[i], dims[i + 1])
            init_layer(lin, **((output_init if is_out else hidden_init) or {}))
            layers.append(lin)
            self.activations.append(act)
            if output_layernorm if is_out else hidden_layernorm:
                layers.append(nn.LayerNorm(dims[i + 1], eps=LAYERNORM_EPS))
            if act != "linear":
                layers.append(_ACT_MODULES[act]())
        self.mlp = nn.Sequential(*layers)
        self.output_dim = dims[-1]
        self._hidden_activation = hidden_activation
        self._output_activation = self.activations[-1] if self.activations else "linear"

    @property
    def linears(self) -> list[nn.Linear]:
        """The nn.Linear layers as the Sequential holds them now (a replaced layer is seen)."""
        return [m for m in self.mlp if isinstance(m, nn.Linear)]

    @property
    def norms(self) -> list[Optional[nn.LayerNorm]]:
        """Per linear layer (aligned with ``linears``): the nn.LayerNorm right after it, or None."""
        out: list = []
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                out.append(None)
            elif isinstance(m, nn.LayerNorm) and out and out[-1] is None:
                out[-1] = m
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch.export (rf.export) traces the layers' torch ops, never the Triton kernel.
        if not torch.compiler.is_exporting() and dispatch.training_mlp_backend(x) == "triton" and self.linears \
                and not any(self.norms):
            # Differentiable fused kernel (Triton forward, autograd backward) over the same weights.
            # (Layer-normed stacks train through the torch layers; the policy step fuses them.)
            lead = x.shape[:-1]
            linears = self.linears
            y = fused_mlp(x.reshape(-1, x.shape[-1]), [m.weight for m in linears],
                          [m.bias for m in linears], self._hidden_activation, self._output_activation,
                          backend="triton")
            return y.reshape(*lead, y.shape[-1])
        return self.mlp(x)


class TorchMLPEncoder(nn.Module):
    """MLP over the flattened observation; its last hidden layer is the latent (``net``).

    As RLlib's MLP encoder: ``use_layernorm`` (``fcnet_use_layernorm``) norms every layer, the
    latent layer included, and ``init`` (``fcnet_*_initializer``) initialises every layer."""

    def __init__(self, input_dim: int, hiddens: list[int], activation: str, *,
                 use_layernorm: bool = False, init: Optional[dict] = None):
        super().__init__()
        self.activation = activation
        self.net = TorchMLP(input_dim, hiddens[:-1], activation, hiddens[-1] if hiddens else None, activation,
                            hidden_layernorm=use_layernorm, output_layernorm=use_layernorm,
                            hidden_init=init, output_init=init)
        self.output_dim = self.net.output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TorchRNNEncoder(nn.Module):
    """Tokenizer MLP (or the given ``tokenizer``, e.g. a ``models.cnn.TorchCNNEncoder``), then a
    1-layer LSTM (``self.lstm``) or GRU (``self.gru``), batch-major.

    ``tokenizer``: a module mapping [..., D] -> [..., token_dim] (default: ``TorchMLPEncoder(input_dim, hiddens,
    activation, **tokenizer_kwargs)``, RLlib's tokenizer for a 1-D observation). ``rnn_init``:
    ``lstm_*_initializer`` settings (``models.initializers.init_rnn``).

    forward(x [B, T, D] (CNN tokenizer: [B, T, H, W, C]), state {"h": [B, 1, H](, "c")})
    -> (out [B, T, H], state_out same layout).
    """

    def __init__(self, input_dim: int, hiddens: list[int], activation: str, cell_size: int, kind: str, *,
                 tokenizer: Optional[nn.Module] = None, token_dim: Optional[int] = None,
                 tokenizer_kwargs: Optional[dict] = None, rnn_init: Optional[dict] = None):
        super().__init__()
        self.kind = kind
        self.cell_size = cell_size
        self.tokenizer = tokenizer if tokenizer is not None else TorchMLPEncoder(
            input_dim, hiddens, activation, **(tokenizer_kwargs or {}))
        rnn_cls = nn.LSTM if kind == "lstm" else nn.GRU
        token_dim = self.tokenizer.output_dim if token_dim is None else token_dim
        rnn = rnn_cls(token_dim, cell_size, batch_first=True)
        init_rnn(rnn, **(rnn_init or {}))
        setattr(self, kind, rnn)
        self.output_dim = cell_size

    @property
    def rnn(self) -> nn.Module:
        return getattr(self, self.kind)

    def initial_state(self) -> dict:
        z = torch.zeros(1, self.cell_size)
        return {"h": z, "c": z.clone()} if self.kind == "lstm" else {"h": z}

    def forward(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        tokens = self.tokenizer(x)
        h = state["h"].transpose(0, 1).contiguous()
        if self.kind == "lstm":
            out, (h_n, c_n) = self.lstm(tokens, (h, state["c"].transpose(0, 1).contiguous()))
            return out, {"h": h_n.transpose(0, 1), "c": c_n.transpose(0, 1)}
        out, h_n = self.gru(tokens, h)
        return out, {"h": h_n.transpose(0, 1)}


class TorchActorCriticEncoder(nn.Module):
    """Shared ``encoder`` (vf_share_layers=True) or ``actor_encoder`` + ``critic_encoder``.

    ``critic`` is not built for an inference-only module. Recurrent encoders keep their state
    flat {"h", "c"} when shared, nested {"actor": {...}, "critic": {...}} otherwise (as RLlib).
    """

    def __init__(self, make_encoder, shared: bool, inference_only: bool):
        super().__init__()
        self.shared = shared
        if shared:
            self.encoder = make_encoder()
        else:
            self.actor_encoder = make_encoder()
            if not inference_only:
                self.critic_encoder = make_encoder()

    @property
    def actor(self) -> nn.Module:
        return self.encoder if self.shared else self.actor_encoder

    @property
    def critic(self) -> Optional[nn.Module]:
        return self.encoder if self.shared else getattr(self, "critic_encoder", None)
