"""PPO: the reference model family (``PPOCatalog``, ``PPOTorchRLModule``)."""
from .ppo_catalog import PPOCatalog
from .ppo_rl_module import PPOTorchRLModule

DefaultPPOTorchRLModule = PPOTorchRLModule

__all__ = ["PPOCatalog", "PPOTorchRLModule", "DefaultPPOTorchRLModule"]
