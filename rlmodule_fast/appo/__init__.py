"""APPO (and IMPALA, which uses the PPO module): RLlib's DefaultAPPOTorchRLModule."""
from .appo_rl_module import APPOTorchRLModule

__all__ = ["APPOTorchRLModule"]
