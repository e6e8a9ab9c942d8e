"""The whole policy step (encoder [+ LSTM/GRU], pi head, sampling, [value head]) as one backend
call per step.

- ``layers.py``: ``EncoderLayers`` / ``PolicyLayers`` (a module's layers described once), their
  checks and dims, the parameter lists a plan watches, the structure generation.
- ``plan.py``: ``PolicyPlan`` (the facade: backend chosen by ``ops.dispatch``, freshness of
  the weights, ``refresh``), ``plan_for`` (the plan cached on a module) and ``refresh``.
- ``cpp_plan.py`` / ``triton_plan.py``: the backends' plans, side by side.

Its truth: ``ops.reference.policy_step``.
"""
from .layers import EncoderLayers, PolicyLayers
from .plan import PolicyPlan, plan_for, refresh

__all__ = ["EncoderLayers", "PolicyLayers", "PolicyPlan", "plan_for", "refresh"]
