"""Encoder configs as RLlib's ``ray.rllib.core.models.configs`` (the subset our catalogs build):
what ``Catalog._get_encoder_config`` returns and ``Catalog.build_encoder`` builds. A catalog
subclass may return its own config object instead: anything with ``output_dims`` and
``build(framework)`` works (RLlib's contract).

Field names are RLlib's, so an override written against RLlib reads the same fields.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional


def _check_torch(framework: str) -> None:
    if framework != "torch":
        raise ValueError(f"framework={framework!r}: only 'torch' is supported")


@dataclasses.dataclass
class ModelConfig:
    """Base: ``input_dims`` (the flattened input width as a 1-tuple), ``output_dims``, ``build``."""

    input_dims: Optional[tuple] = None

    @property
    def output_dims(self) -> tuple:
        raise NotImplementedError

    def build(self, framework: str = "torch"):
        raise NotImplementedError


@dataclasses.dataclass
class MLPEncoderConfig(ModelConfig):
    """RLlib's MLPEncoderConfig: hidden layers + an output (latent) layer, each optionally
    layer-normed, with initializer settings (None: torch's default init).

    build() -> ``encoders.TorchMLPEncoder`` ([B, input_dims[0]] -> [B, output_dims[0]])."""

    hidden_layer_dims: list = dataclasses.field(default_factory=list)
    hidden_layer_activation: str = "relu"
    hidden_layer_use_layernorm: bool = False
    hidden_layer_weights_initializer: Any = None
    hidden_layer_weights_initializer_config: Optional[dict] = None
    hidden_layer_bias_initializer: Any = None
    hidden_layer_bias_initializer_config: Optional[dict] = None
    output_layer_dim: Optional[int] = None
    output_layer_activation: str = "linear"
    output_layer_use_layernorm: bool = False

    @property
    def output_dims(self) -> tuple:
        if self.output_layer_dim is not None:
            return (int(self.output_layer_dim),)
        if self.hidden_layer_dims:
            return (int(self.hidden_layer_dims[-1]),)
        return (int(self.input_dims[0]),)

    def build(self, framework: str = "torch"):
        from .encoders import TorchMLPEncoder

        _check_torch(framework)
        if self.hidden_layer_activation != self.output_layer_activation or (
                self.hidden_layer_use_layernorm != self.output_layer_use_layernorm):
            raise ValueError("MLPEncoderConfig: rlmodule_fast's MLP encoder uses one activation and one layer-norm "
                             "setting for every layer (as RLlib's default catalogs build it)")
        hiddens = list(self.hidden_layer_dims) + ([self.output_layer_dim] if self.output_layer_dim else [])
        init = {"kernel": self.hidden_layer_weights_initializer,
                "kernel_kwargs": self.hidden_layer_weights_initializer_config,
                "bias": self.hidden_layer_bias_initializer,
                "bias_kwargs": self.hidden_layer_bias_initializer_config}
        return TorchMLPEncoder(int(self.input_dims[0]), hiddens, self.hidden_layer_activation,
                               use_layernorm=self.hidden_layer_use_layernorm, init=init)


@dataclasses.dataclass
class CNNEncoderConfig(ModelConfig):
    """RLlib's CNNEncoderConfig: ``input_dims`` the image shape [H, W, C], a Conv2D stack
    (``cnn_filter_specifiers``: [[filters, kernel, stride(, padding)], ...]) with one activation
    and initializers; the latent is the flattened last conv output (no dense layer after it).

    build() -> ``cnn.TorchCNNEncoder`` ([B, H, W, C] -> [B, output_dims[0]])."""

    cnn_filter_specifiers: list = dataclasses.field(default_factory=list)
    cnn_activation: str = "relu"
    cnn_kernel_initializer: Any = None
    cnn_kernel_initializer_config: Optional[dict] = None
    cnn_bias_initializer: Any = None
    cnn_bias_initializer_config: Optional[dict] = None

    @property
    def output_dims(self) -> tuple:
        from .cnn import cnn_output_dim

        return (cnn_output_dim(self.input_dims, self.cnn_filter_specifiers),)

    def build(self, framework: str = "torch"):
        from .cnn import TorchCNNEncoder
        from .initializers import conv_init_hook

        _check_torch(framework)
        hook = conv_init_hook({"conv_kernel_initializer": self.cnn_kernel_initializer,
                               "conv_kernel_initializer_kwargs": self.cnn_kernel_initializer_config,
                               "conv_bias_initializer": self.cnn_bias_initializer,
                               "conv_bias_initializer_kwargs": self.cnn_bias_initializer_config})
        return TorchCNNEncoder(self.input_dims, self.cnn_filter_specifiers, self.cnn_activation, hook)


@dataclasses.dataclass
class RecurrentEncoderConfig(ModelConfig):
    """RLlib's RecurrentEncoderConfig: a tokenizer (its own config, built first), then a 1-layer
    LSTM or GRU (``recurrent_layer_type``) of ``hidden_dim`` units, batch-major.

    build() -> ``encoders.TorchRNNEncoder`` ([B, T, input_dims[0]] -> [B, T, hidden_dim])."""

    recurrent_layer_type: str = "lstm"
    hidden_dim: int = 256
    num_layers: int = 1
    batch_major: bool = True
    hidden_weights_initializer: Any = None
    hidden_weights_initializer_config: Optional[dict] = None
    hidden_bias_initializer: Any = None
    hidden_bias_initializer_config: Optional[dict] = None
    tokenizer_config: Any = None

    @property
    def output_dims(self) -> tuple:
        return (int(self.hidden_dim),)

    def build(self, framework: str = "torch"):
        from .encoders import TorchRNNEncoder

        _check_torch(framework)
        if self.recurrent_layer_type not in ("lstm", "gru"):
            raise ValueError(f"RecurrentEncoderConfig.recurrent_layer_type: expected 'lstm' or 'gru', "
                             f"got {self.recurrent_layer_type!r}")
        if self.num_layers != 1 or not self.batch_major:
            raise ValueError("RecurrentEncoderConfig: only num_layers=1, batch_major=True are supported")
        if self.tokenizer_config is None:
            raise ValueError("RecurrentEncoderConfig.tokenizer_config: required (the MLP before the RNN)")
        tokenizer = self.tokenizer_config.build(framework=framework)
        rnn_init = {"kernel": self.hidden_weights_initializer, "kernel_kwargs": self.hidden_weights_initializer_config,
                    "bias": self.hidden_bias_initializer, "bias_kwargs": self.hidden_bias_initializer_config}
        return TorchRNNEncoder(int(math.prod(self.input_dims)), [], "linear", int(self.hidden_dim),
                               self.recurrent_layer_type, tokenizer=tokenizer,
                               token_dim=int(self.tokenizer_config.output_dims[0]), rnn_init=rnn_init)
