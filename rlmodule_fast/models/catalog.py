"""Catalog: spaces + model config -> encoders, heads and action-distribution classes."""
from __future__ import annotations

import warnings
from typing import Any, Mapping, Optional

import gymnasium as gym
import numpy as np

from .cnn import ConvInitHook, TorchCNNEncoder, cnn_output_dim, default_conv_filters
from .config import resolve_model_config
from .encoders import TorchMLPEncoder, TorchRNNEncoder, obs_dim


def check_framework(framework: str) -> None:
    if framework != "torch":
        raise ValueError(f"framework={framework!r}: only 'torch' is supported")


def obs_encoder_kind(space: gym.Space) -> str:
    """The encoder for an observation space: "cnn" for a 3-D Box [H, W, C] (RLlib's Catalog
    choice), "mlp" for a 1-D Box and Discrete (one-hot, our extension). A Box of any other rank
    (0-D, 2-D, 4-D, ...) has no default encoder in RLlib (its Catalog raises); here it is
    flattened into the MLP encoder as API.md promises ("Box of any shape (flattened)") -- never
    silently: a ``FlattenedObservationWarning`` says so, naming the shape."""
    if not isinstance(space, gym.spaces.Box):
        return "mlp"
    rank = len(space.shape)
    if rank == 3:
        return "cnn"
    if rank != 1:
        warnings.warn(
            f"observation_space: {space} is a {rank}-D Box; RLlib 2.60 has no default encoder for it (its "
            f"Catalog raises) -- rlmodule_fast flattens its {obs_dim(space)} values into the MLP encoder. "
            "Give a 1-D Box to keep RLlib-identical behaviour, or a 3-D Box [H, W, C] for RLlib's CNN.",
            FlattenedObservationWarning, stacklevel=3)
    return "mlp"


class FlattenedObservationWarning(UserWarning):
    """A Box observation of a rank RLlib has no default encoder for was flattened into an MLP."""


class Catalog:
    """Builds the pieces of a model from ``observation_space``, ``action_space`` and a model
    config (RLlib keys; validated by ``models.config.resolve_model_config``).

    Attributes: ``model_config_dict`` (resolved), ``obs_dim`` (flattened observation width),
    ``latent_dims`` (encoder output shape), ``action_dist_cls``.
    """

    def __init_subclass__(cls, **kwargs):
        """Subclasses register when defined, so checkpoints may name them (core/checkpoint.py)."""
        super().__init_subclass__(**kwargs)
        from ..core.checkpoint import register_class

        register_class(cls)

    def __init__(self, observation_space: gym.Space, action_space: gym.Space,
                 model_config_dict: Optional[Mapping[str, Any]] = None, **kwargs: Any):
        if kwargs:
            raise ValueError(f"Catalog: unexpected arguments {sorted(kwargs)}")
        self.observation_space = observation_space
        self.action_space = action_space
        self._model_config_dict = resolve_model_config(model_config_dict)
        self.encoder_kind = obs_encoder_kind(observation_space)
        self.obs_dim = obs_dim(observation_space)
        cfg = self._model_config_dict
        self.recurrent_kind = "lstm" if cfg["use_lstm"] else ("gru" if cfg["use_gru"] else None)
        # conv_filters as built: the config's, or RLlib's default stack for the image size
        self.conv_filters = None
        if self.encoder_kind == "cnn":
            self.conv_filters = cfg["conv_filters"] or default_conv_filters(observation_space.shape)
        if self.recurrent_kind:
            self.latent_dims = (cfg["lstm_cell_size"],)
        elif self.encoder_kind == "cnn":  # RLlib: the flattened conv output, no dense layer after it
            self.latent_dims = (cnn_output_dim(observation_space.shape, self.conv_filters),)
        else:
            self.latent_dims = (cfg["fcnet_hiddens"][-1] if cfg["fcnet_hiddens"] else self.obs_dim,)
        self.action_dist_cls = self.get_action_dist_cls(framework="torch")

    @property
    def model_config_dict(self) -> dict:
        return self._model_config_dict

    def build_encoder(self, framework: str = "torch"):
        """One encoder: an MLP over the flattened obs, or tokenizer MLP + LSTM/GRU; for image
        observations RLlib's CNN (``models.cnn.TorchCNNEncoder``), or CNN tokenizer + LSTM/GRU."""
        check_framework(framework)
        cfg = self._model_config_dict
        if self.encoder_kind == "cnn":
            cnn = TorchCNNEncoder(self.observation_space.shape, self.conv_filters, cfg["conv_activation"],
                                  self.conv_init_hook())
            if self.recurrent_kind:
                return TorchRNNEncoder(cnn.output_dim, [], cfg["fcnet_activation"], cfg["lstm_cell_size"],
                                       self.recurrent_kind, tokenizer=cnn)
            return cnn
        if self.recurrent_kind:
            return TorchRNNEncoder(self.obs_dim, cfg["fcnet_hiddens"], cfg["fcnet_activation"],
                                   cfg["lstm_cell_size"], self.recurrent_kind)
        return TorchMLPEncoder(self.obs_dim, cfg["fcnet_hiddens"], cfg["fcnet_activation"])

    def conv_init_hook(self) -> ConvInitHook:
        """Where ``conv_kernel_initializer`` / ``conv_bias_initializer`` (+ ``_kwargs``) apply: a
        callable run on each new nn.Conv2d right after it is built (RLlib's place), or None for
        torch's default init. The initializer keys come with the model-config work (issue 13,
        ``models/initializers.py``); until they are merged this returns None."""
        return None

    def get_action_dist_cls(self, framework: str = "torch"):
        """Distribution class for the action space: Discrete -> TorchCategorical, MultiDiscrete ->
        TorchMultiCategorical (partial over its sizes), Box -> TorchDiagGaussian."""
        check_framework(framework)
        from .. import distributions as d

        space = self.action_space
        if isinstance(space, gym.spaces.Discrete):
            return d.TorchCategorical
        if isinstance(space, gym.spaces.MultiDiscrete):
            return d.TorchMultiCategorical.get_partial_dist_cls(input_lens=[int(n) for n in np.ravel(space.nvec)])
        if isinstance(space, gym.spaces.Box):
            if len(space.shape) != 1:
                raise ValueError(f"action_space: Box actions must be 1-D, got shape {space.shape}")
            return d.TorchDiagGaussian
        raise ValueError(f"action_space: {space!r} is not supported (Discrete, MultiDiscrete or 1-D Box)")

    @property
    def action_dist_input_dim(self) -> int:
        """Width of ``action_dist_inputs`` (the distribution class's ``required_input_dim``)."""
        return int(self.action_dist_cls.required_input_dim(self.action_space))

