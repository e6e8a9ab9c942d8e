"""Torch heads with RLlib's parameter names (``net.mlp.N.*``, ``log_std``,
``log_std_clip_param_const``). ``use_layernorm`` (``head_fcnet_use_layernorm``) norms the hidden
layers, never the output layer (RLlib's MLP heads); ``init``: initializer settings for every
layer (``models.initializers.init_layer`` keywords)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .encoders import TorchMLP


class TorchMLPHead(nn.Module):
    """MLP head with a linear output; for a diagonal Gaussian (``clip_log_std``) the second half
    of the output (the log-std) is clamped to [-clip, clip].

    forward(latent [..., H]) -> [..., output_dim].
    """

    def __init__(self, input_dim: int, hiddens: list[int], activation: str, output_dim: int,
                 clip_log_std: bool = False, log_std_clip_param: float = 20.0, *,
                 use_layernorm: bool = False, init: Optional[dict] = None):
        super().__init__()
        self.net = TorchMLP(input_dim, hiddens, activation, output_dim, "linear",
                            hidden_layernorm=use_layernorm, hidden_init=init, output_init=init)
        self.clip_log_std = clip_log_std
        self.register_buffer("log_std_clip_param_const", torch.tensor([float(log_std_clip_param)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.clip_log_std:
            mean, log_std = out.chunk(2, dim=-1)
            c = self.log_std_clip_param_const
            out = torch.cat([mean, torch.clamp(log_std, -c, c)], dim=-1)
        return out


class TorchFreeLogStdMLPHead(nn.Module):
    """Mean from an MLP, log-std a free parameter ``log_std`` [A] (state-independent).

    forward(latent [..., H]) -> [..., 2A] (mean then clamped log-std).
    """

    def __init__(self, input_dim: int, hiddens: list[int], activation: str, action_dim: int,
                 clip_log_std: bool = True, log_std_clip_param: float = 20.0, *,
                 use_layernorm: bool = False, init: Optional[dict] = None):
        super().__init__()
        self.net = TorchMLP(input_dim, hiddens, activation, action_dim, "linear",
                            hidden_layernorm=use_layernorm, hidden_init=init, output_init=init)
        self.log_std = nn.Parameter(torch.zeros(action_dim))
        self.clip_log_std = clip_log_std
        self.register_buffer("log_std_clip_param_const", torch.tensor([float(log_std_clip_param)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.net(x)
        log_std = self.log_std
        if self.clip_log_std:
            c = self.log_std_clip_param_const
            log_std = torch.clamp(log_std, -c, c)
        return torch.cat([mean, log_std.expand_as(mean)], dim=-1)
