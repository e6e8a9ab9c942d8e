"""Catalog: spaces + model config -> encoders, heads and action-distribution classes.

The extension points are RLlib 2.60's (``ray.rllib.core.models.catalog.Catalog``), called in
the same order, so a subclass written for RLlib behaves the same here:

- ``__init__`` resolves the model config (``models.config``), then calls
  ``_determine_components_hook()``;
- ``_determine_components_hook()`` sets ``self._encoder_config`` (from the class method
  ``_get_encoder_config``), ``self._action_dist_class_fn`` (a partial of the class method
  ``_get_dist_cls_from_action_space``) and ``self.latent_dims`` (the encoder config's
  ``output_dims``); override it to change what is built (call super() to keep the defaults);
- ``_get_encoder_config(observation_space, model_config_dict, action_space=None)``: an
  ``MLPEncoderConfig`` over the flattened observation, or with ``use_lstm`` / ``use_gru`` a
  ``RecurrentEncoderConfig`` whose tokenizer comes from ``get_tokenizer_config``;
- ``build_encoder(framework)`` builds ``self._encoder_config``; ``get_action_dist_cls(framework)``
  calls ``self._action_dist_class_fn``.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Optional

import gymnasium as gym
import numpy as np

from .cnn import ConvInitHook, default_conv_filters
from .config import resolve_model_config
from .configs import CNNEncoderConfig, MLPEncoderConfig, RecurrentEncoderConfig
from .encoders import obs_dim
from .initializers import conv_init_hook
from .flatten import split_action_mask


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
    config (RLlib keys, a dict or a ``DefaultModelConfig``; validated by
    ``models.config.resolve_model_config``). See the module docstring for the hooks.

    Attributes: ``model_config_dict`` (resolved), ``obs_dim`` (flattened observation width),
    ``latent_dims`` (encoder output shape), ``action_dist_cls``, ``recurrent_kind`` (None,
    "lstm" or "gru"), ``encoder_observation_space`` (the space the encoders read:
    ``observation_space["observations"]`` for RLlib's action-masking Dict, see ``models.flatten``),
    ``action_mask_dim`` (its mask width, or None).
    """

    def __init_subclass__(cls, **kwargs):
        """Subclasses register when defined, so checkpoints may name them (core/checkpoint.py)."""
        super().__init_subclass__(**kwargs)
        from ..core.checkpoint import register_class

        register_class(cls)

    def __init__(self, observation_space: gym.Space, action_space: gym.Space,
                 model_config_dict: Any = None, **kwargs: Any):
        if kwargs:
            raise ValueError(f"Catalog: unexpected arguments {sorted(kwargs)}")
        self.observation_space = observation_space
        self.action_space = action_space
        self._model_config_dict = resolve_model_config(model_config_dict)
        self.encoder_observation_space, self.action_mask_dim = split_action_mask(observation_space)
        enc_space = self.encoder_observation_space
        self.encoder_kind = obs_encoder_kind(enc_space)
        self.obs_dim = obs_dim(enc_space)
        cfg = self._model_config_dict
        self.recurrent_kind = "lstm" if cfg["use_lstm"] else ("gru" if cfg["use_gru"] else None)
        # conv_filters as built: the config's, or RLlib's default stack for the image size
        self.conv_filters = None
        if self.encoder_kind == "cnn":
            self.conv_filters = cfg["conv_filters"] or default_conv_filters(enc_space.shape)
        self._latent_dims = None
        self._determine_components_hook()

    def _determine_components_hook(self) -> None:
        """Decide the components (RLlib's hook): ``_encoder_config``, ``_action_dist_class_fn``
        and ``latent_dims``. Subclasses override it to replace any of them."""
        self._encoder_config = self._get_encoder_config(
            observation_space=self.encoder_observation_space,  # an action-masking Dict's "observations"
            action_space=self.action_space,
            model_config_dict=self._model_config_dict,
        )
        self._action_dist_class_fn = functools.partial(self._get_dist_cls_from_action_space,
                                                       action_space=self.action_space)
        self.latent_dims = self._encoder_config.output_dims

    @property
    def latent_dims(self):
        """Shape of the encoder's output (what the heads read), e.g. ``(256,)``."""
        return self._latent_dims

    @latent_dims.setter
    def latent_dims(self, value) -> None:
        self._latent_dims = value

    @property
    def model_config_dict(self) -> dict:
        return self._model_config_dict

    @property
    def action_dist_cls(self):
        """``get_action_dist_cls("torch")``: the distribution class the module uses (None when a
        subclass's ``_determine_components_hook`` set no ``_action_dist_class_fn`` and
        ``get_action_dist_cls`` is not overridden)."""
        if type(self).get_action_dist_cls is Catalog.get_action_dist_cls and not hasattr(self, "_action_dist_class_fn"):
            return None
        return self.get_action_dist_cls(framework="torch")

    @classmethod
    def _get_encoder_config(cls, observation_space: gym.Space, model_config_dict: dict,
                            action_space: Optional[gym.Space] = None):
        """The encoder config for this observation space, as RLlib's: for a 1-D Box (or Discrete,
        one-hot) an ``MLPEncoderConfig`` (hidden layers ``fcnet_hiddens[:-1]``, latent layer
        ``fcnet_hiddens[-1]``, ``fcnet_activation``, ``fcnet_use_layernorm`` and
        ``fcnet_*_initializer`` on every layer); for a 3-D Box [H, W, C] a ``CNNEncoderConfig``
        (``conv_filters`` or RLlib's default stack for the size, ``conv_activation``,
        ``conv_*_initializer``); with ``use_lstm`` / ``use_gru`` a ``RecurrentEncoderConfig``
        (``lstm_cell_size``, ``lstm_*_initializer``) over ``get_tokenizer_config``'s tokenizer."""
        cfg = model_config_dict
        kind = "lstm" if cfg.get("use_lstm") else ("gru" if cfg.get("use_gru") else None)
        if isinstance(observation_space, gym.spaces.Box) and len(observation_space.shape) == 3:  # obs_encoder_kind
            shape = tuple(int(v) for v in observation_space.shape)
            if kind:
                return RecurrentEncoderConfig(
                    input_dims=shape, recurrent_layer_type=kind, hidden_dim=cfg["lstm_cell_size"],
                    hidden_weights_initializer=cfg["lstm_kernel_initializer"],
                    hidden_weights_initializer_config=cfg["lstm_kernel_initializer_kwargs"],
                    hidden_bias_initializer=cfg["lstm_bias_initializer"],
                    hidden_bias_initializer_config=cfg["lstm_bias_initializer_kwargs"],
                    batch_major=True, num_layers=1,
                    tokenizer_config=cls.get_tokenizer_config(observation_space, cfg),
                )
            return CNNEncoderConfig(
                input_dims=shape,
                cnn_filter_specifiers=cfg["conv_filters"] or default_conv_filters(shape),
                cnn_activation=cfg["conv_activation"],
                cnn_kernel_initializer=cfg["conv_kernel_initializer"],
                cnn_kernel_initializer_config=cfg["conv_kernel_initializer_kwargs"],
                cnn_bias_initializer=cfg["conv_bias_initializer"],
                cnn_bias_initializer_config=cfg["conv_bias_initializer_kwargs"],
            )
        d = obs_dim(observation_space)
        if kind:
            return RecurrentEncoderConfig(
                input_dims=(d,),
                recurrent_layer_type=kind,
                hidden_dim=cfg["lstm_cell_size"],
                hidden_weights_initializer=cfg["lstm_kernel_initializer"],
                hidden_weights_initializer_config=cfg["lstm_kernel_initializer_kwargs"],
                hidden_bias_initializer=cfg["lstm_bias_initializer"],
                hidden_bias_initializer_config=cfg["lstm_bias_initializer_kwargs"],
                batch_major=True,
                num_layers=1,
                tokenizer_config=cls.get_tokenizer_config(observation_space, cfg),
            )
        hiddens = list(cfg["fcnet_hiddens"])
        return MLPEncoderConfig(
            input_dims=(d,),
            hidden_layer_dims=hiddens[:-1],
            hidden_layer_activation=cfg["fcnet_activation"],
            hidden_layer_use_layernorm=cfg["fcnet_use_layernorm"],
            hidden_layer_weights_initializer=cfg["fcnet_kernel_initializer"],
            hidden_layer_weights_initializer_config=cfg["fcnet_kernel_initializer_kwargs"],
            hidden_layer_bias_initializer=cfg["fcnet_bias_initializer"],
            hidden_layer_bias_initializer_config=cfg["fcnet_bias_initializer_kwargs"],
            output_layer_dim=hiddens[-1] if hiddens else None,
            output_layer_activation=cfg["fcnet_activation"],
            output_layer_use_layernorm=cfg["fcnet_use_layernorm"],
        )

    @classmethod
    def get_tokenizer_config(cls, observation_space: gym.Space, model_config_dict: dict, **kwargs):
        """The tokenizer of a recurrent encoder: ``_get_encoder_config`` without the recurrent
        flags (RLlib's behaviour); override to tokenize differently."""
        return cls._get_encoder_config(
            observation_space=observation_space,
            model_config_dict={**model_config_dict, "use_lstm": False, "use_gru": False},
        )

    def build_encoder(self, framework: str = "torch"):
        """Build ``self._encoder_config`` (set by ``_determine_components_hook``)."""
        check_framework(framework)
        if not hasattr(self, "_encoder_config"):
            raise ValueError(f"{type(self).__name__}: no _encoder_config; set it in _determine_components_hook "
                             "or override build_encoder")
        return self._encoder_config.build(framework=framework)

    def conv_init_hook(self) -> ConvInitHook:
        """Where ``conv_kernel_initializer`` / ``conv_bias_initializer`` (+ ``_kwargs``) apply: a
        callable run on each new nn.Conv2d right after it is built (RLlib's place), or None for
        torch's default init (``models.initializers.conv_init_hook``)."""
        return conv_init_hook(self._model_config_dict)

    def get_action_dist_cls(self, framework: str = "torch"):
        """The action distribution class, from ``self._action_dist_class_fn``."""
        check_framework(framework)
        if not hasattr(self, "_action_dist_class_fn"):
            raise ValueError(f"{type(self).__name__}: no _action_dist_class_fn; set it in "
                             "_determine_components_hook or override get_action_dist_cls")
        return self._action_dist_class_fn(framework=framework)

    @classmethod
    def _get_dist_cls_from_action_space(cls, action_space: gym.Space, *, framework: Optional[str] = None):
        """Distribution class for an action space (None when ``framework`` is None, as RLlib):
        Discrete -> TorchCategorical, MultiDiscrete -> TorchMultiCategorical (partial over its
        sizes), 1-D float Box -> TorchDiagGaussian, Tuple / Dict -> TorchMultiDistribution (partial:
        the children's classes, from this method, in the space's structure and their input widths
        in dm-tree order -- Dict keys sorted -- as RLlib's ``_multi_action_dist_partial_helper``)."""
        if framework is None:
            return None
        check_framework(framework)
        from .. import distributions as d

        space = action_space
        if isinstance(space, (gym.spaces.Tuple, gym.spaces.Dict)):
            return cls._multi_action_dist_cls(space, framework)
        if isinstance(space, gym.spaces.Discrete):
            return d.TorchCategorical
        if isinstance(space, gym.spaces.MultiDiscrete):
            return d.TorchMultiCategorical.get_partial_dist_cls(input_lens=[int(n) for n in np.ravel(space.nvec)])
        if isinstance(space, gym.spaces.Box):
            if len(space.shape) != 1:
                raise ValueError(f"action_space: Box actions must be 1-D, got shape {space.shape}")
            if space.dtype.kind in "iu":
                raise ValueError("action_space: Box(..., int) action spaces are not supported; use MultiDiscrete "
                                 "or a float Box")
            return d.TorchDiagGaussian
        raise ValueError(f"action_space: {space!r} is not supported (Discrete, MultiDiscrete, 1-D Box, or a "
                         "Tuple / Dict of them)")

    @classmethod
    def _multi_action_dist_cls(cls, space: gym.Space, framework: str):
        """TorchMultiDistribution partial for a Tuple / Dict action space (see
        ``_get_dist_cls_from_action_space``)."""
        from .. import distributions as d

        def struct(sp):
            if isinstance(sp, gym.spaces.Dict):
                return {k: struct(sp.spaces[k]) for k in sp.spaces}  # flattened by sorted key
            if isinstance(sp, gym.spaces.Tuple):
                return tuple(struct(s) for s in sp.spaces)
            return cls._get_dist_cls_from_action_space(sp, framework=framework)

        def leaves(sp):
            if isinstance(sp, gym.spaces.Dict):
                return [x for k in sorted(sp.spaces) for x in leaves(sp.spaces[k])]
            if isinstance(sp, gym.spaces.Tuple):
                return [x for s in sp.spaces for x in leaves(s)]
            return [sp]

        lens = [int(cls._get_dist_cls_from_action_space(sp, framework=framework).required_input_dim(sp))
                for sp in leaves(space)]
        return d.TorchMultiDistribution.get_partial_dist_cls(space=space, child_distribution_cls_struct=struct(space),
                                                             input_lens=lens)

    @property
    def action_dist_input_dim(self) -> int:
        """Width of ``action_dist_inputs`` (the distribution class's ``required_input_dim``)."""
        return int(self.action_dist_cls.required_input_dim(self.action_space))
