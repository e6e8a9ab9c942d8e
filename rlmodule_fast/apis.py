"""RLlib's RLModule API mixins (``ray.rllib.core.rl_module.apis``), as classes users can
``isinstance``-check: a module that implements one inherits it.

Same names, methods and meaning as RLlib 2.60; no ray import.
"""
from __future__ import annotations

import abc
import copy
from typing import Any, Dict, List, Tuple

import torch

#: Column a TargetNetworkAPI module's ``forward_target`` returns its action-dist inputs under.
TARGET_NETWORK_ACTION_DIST_INPUTS = "target_network_action_dist_inputs"


class ValueFunctionAPI(abc.ABC):
    """Modules with a value function (PPO, APPO, IMPALA)."""

    @abc.abstractmethod
    def compute_values(self, batch: Dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        """Value predictions [B] (or [B, T]) for ``batch``; ``embeddings`` (the critic latent from
        ``forward_train``) skips the encoder."""


class TargetNetworkAPI(abc.ABC):
    """Modules with target networks (DQN, SAC, APPO). The learner owns the syncing."""

    @abc.abstractmethod
    def make_target_networks(self) -> None:
        """Create the target nets (copies of the main nets, see :func:`make_target_network`)."""

    @abc.abstractmethod
    def get_target_network_pairs(self) -> List[Tuple[torch.nn.Module, torch.nn.Module]]:
        """[(main_net, target_net), ...] for the learner's (Polyak) sync."""

    @abc.abstractmethod
    def forward_target(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        """The forward pass through the target net(s)."""


class InferenceOnlyAPI(abc.ABC):
    """Modules that can be built without their training-only parts (``inference_only=True``)."""

    @abc.abstractmethod
    def get_non_inference_attributes(self) -> List[str]:
        """Attribute paths (``"vf"``, ``"encoder.critic_encoder"``) absent when inference-only."""


class QNetAPI(abc.ABC):
    """Modules for (distributional) Q-learning (DQN, Rainbow, discrete SAC)."""

    @abc.abstractmethod
    def compute_q_values(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        """{"qf_preds": [B, A]} (distributional: also "atoms", "qf_logits", "qf_probs")."""

    def compute_advantage_distribution(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        """The advantage (dueling) or Q distribution; by default ``compute_q_values(batch)``."""
        return self.compute_q_values(batch)


def make_target_network(main_net: torch.nn.Module) -> torch.nn.Module:
    """A frozen deep copy of ``main_net`` (as RLlib's ``core.learner.utils.make_target_network``)."""
    target = copy.deepcopy(main_net)
    target.requires_grad_(False)
    return target


__all__ = ["InferenceOnlyAPI", "QNetAPI", "TARGET_NETWORK_ACTION_DIST_INPUTS", "TargetNetworkAPI",
           "ValueFunctionAPI", "make_target_network"]
