"""APPOTorchRLModule: RLlib 2.60's DefaultAPPOTorchRLModule -- the PPO module plus
``TargetNetworkAPI``: an "old policy" copy of the encoder and pi head that APPO's learner syncs
(Polyak) and reads through ``forward_target``.

Same attribute names as RLlib (``_old_encoder``, ``_old_pi``: state-dict keys
``_old_encoder.encoder.net.mlp.0.weight``, ``_old_pi.net.mlp.0.weight``, ...), same output column
(``TARGET_NETWORK_ACTION_DIST_INPUTS``), same non-inference attributes (PPO's plus the two target
nets), so states move between RLlib's module and this one unchanged. The target nets exist only
after ``make_target_networks()`` (RLlib's learner calls it); ``set_state`` with a state holding
them (a learner checkpoint) creates them first. Exploration / inference run PPO's fused step.

Shapes: as ``PPOTorchRLModule`` (``forward_target`` takes a ``forward_train`` batch and returns
{"target_network_action_dist_inputs": [B, (T,) D]}, masked as ``forward_train`` for an
action-masking observation space).
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from torch import nn

from ..apis import TARGET_NETWORK_ACTION_DIST_INPUTS, TargetNetworkAPI, make_target_network
from ..core.specs import to_torch
from ..ppo.ppo_rl_module import PPOTorchRLModule

_TARGETS = ("_old_encoder", "_old_pi")


class APPOTorchRLModule(PPOTorchRLModule, TargetNetworkAPI):
    """PPO module + old-policy target networks (see the module docstring)."""

    def make_target_networks(self) -> None:
        """Frozen deep copies of the encoder and the pi head: ``_old_encoder``, ``_old_pi``."""
        self._old_encoder = make_target_network(self.encoder)
        self._old_pi = make_target_network(self.pi)

    def _has_targets(self) -> bool:
        return all(isinstance(getattr(self, n, None), nn.Module) for n in _TARGETS)

    def get_target_network_pairs(self) -> List[Tuple[nn.Module, nn.Module]]:
        """[(encoder, _old_encoder), (pi, _old_pi)] for the learner's sync."""
        self._require_targets("get_target_network_pairs")
        return [(self.encoder, self._old_encoder), (self.pi, self._old_pi)]

    def forward_target(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        """{TARGET_NETWORK_ACTION_DIST_INPUTS: the old policy's action_dist_inputs} for a
        ``forward_train`` batch (old encoder's actor latent -> old pi head)."""
        self._require_targets("forward_target")
        batch, mask = self._split_mask(batch)
        a, _, _, _ = self._encode(to_torch(batch), critic=False, encoder=self._old_encoder)
        return {TARGET_NETWORK_ACTION_DIST_INPUTS: self._mask(self._old_pi(a), mask)}

    def get_non_inference_attributes(self) -> List[str]:
        return super().get_non_inference_attributes() + list(_TARGETS)

    def _require_targets(self, what: str) -> None:
        if not self._has_targets():
            raise RuntimeError(f"{what}: the target networks do not exist yet; call make_target_networks() "
                               "first (RLlib's APPO learner does)")
