"""SAC: RLlib 2.60's DefaultSACTorchRLModule family (``SACCatalog``, ``SACTorchRLModule``):
squashed-Gaussian (Box) or categorical (Discrete) policy, twin Q networks, target networks."""
from .sac_catalog import SACCatalog
from .sac_rl_module import SACTorchRLModule

DefaultSACTorchRLModule = SACTorchRLModule

__all__ = ["DefaultSACTorchRLModule", "SACCatalog", "SACTorchRLModule"]
