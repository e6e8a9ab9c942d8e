"""rlmodule_fast: RLlib's RLModule API with fused Triton (GPU) and C++ (CPU) hot paths.

Public names only; no logic here.
"""
from . import ops
from .ops import backend_info, manual_seed

__version__ = "0.1.0"
