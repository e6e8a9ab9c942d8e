"""The machinery the Fast* RLlib modules share: the fused step's config, ``fast_path_info``,
``refresh_fast_path`` and the forwards that try the fused step before RLlib's torch forward.

A module using :class:`FusedStepMixin` calls :meth:`~FusedStepMixin._setup_fast` from its
``setup`` and defines ``_fast(batch, deterministic)`` (the fused step's outputs in RLlib's
layout, or None to run RLlib's forward). :class:`FusedForwardsMixin` adds the four forwards
for modules whose ``_fast`` takes only the batch and ``deterministic``.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..fastpath import fused_plan, mark_unfusable, refresh, unfusable_reason
from ..ops import dispatch


class FusedStepMixin:
    """``fast_path_info`` / ``refresh_fast_path`` of a Fast* RLlib module. Class attributes:
    ``_FUSED_OP`` (the dispatch op), ``_fused_plan`` (the plan builder) and
    ``_KEEP_DISPATCH_REASON`` (whether an active path reports the dispatcher's reason)."""

    _FUSED_OP = "policy_step"
    _fused_plan = staticmethod(fused_plan)
    _KEEP_DISPATCH_REASON = False

    def _setup_fast(self, fast_cfg: Callable[[], dict]) -> None:
        """Set the fused-step counter and ``_fast_cfg`` from ``fast_cfg()``; a ValueError marks
        the module unfusable (RLlib built it; only the fused step cannot describe it)."""
        self._calls = [0]  # steps that ran fused (a list: nn.Module.__setattr__ is slow)
        try:
            self._fast_cfg = fast_cfg()
        except ValueError as err:
            self._fast_cfg = None
            mark_unfusable(self, f"model config: {err}")

    def fast_path_info(self) -> dict:
        """{"active": bool, "backend": str | None, "reason": str, "calls": int}: whether
        forward_exploration / forward_inference run a fused step for a CPU batch (as RLlib's env
        runners give), which backend, why not if not, and how many steps ran fused so far."""
        example = torch.zeros(1, 1)
        plan, reason = None, unfusable_reason(self)
        if not reason:
            try:
                name, reason = dispatch.explain(self._FUSED_OP, example)
                if name != "torch":
                    plan = self._fused_plan(self, example)
                    if plan is None:
                        reason = unfusable_reason(self)
                    elif not self._KEEP_DISPATCH_REASON:
                        reason = ""
            except (RuntimeError, ValueError) as e:
                reason = f"{type(e).__name__}: {e}"
        return {"active": plan is not None, "backend": getattr(plan, "backend", None), "reason": reason,
                "calls": self._calls[0]}

    def refresh_fast_path(self) -> None:
        """Re-read the layers and repack the fused step's weights now: needed only after writes
        the step cannot detect (in-place ops on ``p.data``, writes through a numpy view of a
        parameter); see ``rlmodule_fast.fastpath``."""
        refresh(self)


class FusedForwardsMixin(FusedStepMixin):
    """The forwards: the fused step, else RLlib's. RLlib's TorchRLModule wraps these in
    self.eval() ... self.train(): ~50 us per call on a PPO module (a walk over every submodule,
    twice), 5x the fused step. The fused step has no train/eval-dependent layer, so it skips that
    round trip; RLlib's forward keeps it."""

    def forward_exploration(self, batch: dict, **kwargs) -> dict:
        out = self._fast(batch, deterministic=False)
        return out if out is not None else super().forward_exploration(batch, **kwargs)

    def forward_inference(self, batch: dict, **kwargs) -> dict:
        out = self._fast(batch, deterministic=True)
        return out if out is not None else super().forward_inference(batch, **kwargs)

    def _forward_exploration(self, batch: dict, **kwargs) -> dict:
        out = self._fast(batch, deterministic=False)
        return out if out is not None else super()._forward_exploration(batch, **kwargs)

    def _forward_inference(self, batch: dict, **kwargs) -> dict:
        out = self._fast(batch, deterministic=True)
        return out if out is not None else super()._forward_inference(batch, **kwargs)
