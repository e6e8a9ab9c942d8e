"""The whole policy step (encoder [+ LSTM/GRU], pi head, sampling, [value head]) as one backend
call per step.

- ``layers.py``: ``EncoderLayers`` / ``PolicyLayers`` (a module's layers described once), their
  checks and dims, the parameter lists a plan watches, the structure generation.
- ``plan.py``: ``PolicyPlan`` (the facade: backend chosen by ``ops.dispatch``, freshness of
  the weights, ``refresh``), ``plan_for`` (the plan cached on a module), ``fused_plan`` (the same, or None for good
  when the module's layers are not ones the fused step runs), ``fast_path_info_for`` (which path a
  module's step takes, and why) and ``refresh``.
- ``cpp_plan.py`` / ``triton_plan.py``: the backends' plans, side by side.
- ``cuda_graph.py``: ``CudaGraphStep`` (the triton step captured in a CUDA graph for one batch size).

Its truth: ``ops.reference.policy_step``.
"""
from .cuda_graph import CudaGraphStep
from .layers import EncoderLayers, PolicyLayers
from .plan import (PolicyPlan, UnfusableLayers, fast_path_info_for, fused_plan, mark_unfusable, plan_for, refresh,
                   unfusable_reason)

__all__ = ["CudaGraphStep", "EncoderLayers", "PolicyLayers", "PolicyPlan", "UnfusableLayers", "fast_path_info_for", "fused_plan", "mark_unfusable",
           "plan_for", "refresh", "unfusable_reason"]
