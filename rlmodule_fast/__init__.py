"""rlmodule_fast: RLlib's RLModule API with fused Triton (GPU) and C++ (CPU) hot paths.

Public names only; no logic here.
"""
from . import apis, appo, distributions, dqn, ops, ppo, rllib, sac  # rllib imports ray only when its functions run
from .core.columns import DEFAULT_MODULE_ID, Columns
from .core.multi_rl_module import MultiRLModule, MultiRLModuleSpec
from .core.rl_module import RLModule, RLModuleConfig, RLModuleSpec
from .core.specs import TensorSpec
from .core.torch_rl_module import TorchRLModule
from .models.catalog import Catalog
from .models.config import DefaultModelConfig
from .ops import backend_info, get_rng_state, manual_seed, set_rng_state

__version__ = "0.1.0"

__all__ = [
    "Catalog", "Columns", "DEFAULT_MODULE_ID", "DefaultModelConfig", "MultiRLModule", "MultiRLModuleSpec", "RLModule",
    "RLModuleConfig", "RLModuleSpec", "TensorSpec", "TorchRLModule", "apis", "appo", "backend_info", "distributions", "dqn",
    "get_rng_state", "manual_seed", "ops", "ppo", "rllib", "sac", "set_rng_state",
]
