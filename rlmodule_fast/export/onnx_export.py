"""``export_onnx`` / ``export_program``: a module's policy step (``PolicyStep``) traced by
``torch.export`` and, for ONNX, translated by ``torch.onnx.export(dynamo=True)`` (onnxscript).

Randomness (``explore=True``): the graph draws its own noise with ONNX's ``RandomUniformLike``
(categorical: Gumbel-max, ``argmax(logits - log(-log(U)))``) and ``RandomNormalLike``
(Gaussian: ``mean + std * N(0, 1)``) nodes, unseeded: every run draws fresh noise (ONNX
Runtime seeds them itself; there is no per-call seed input). ``action_logp`` is the log-prob
of the action the graph drew, computed in the graph by the module's distribution maths.

Not in the graph: the module's input checks. Out-of-range Discrete observations give an
all-zero one-hot, NaN observations propagate (ONNX has no way to raise).
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from typing import Optional, Union

import torch

from .policy import PolicyStep

Batch = Union[str, int]


def _batch_arg(batch: Batch) -> Optional[int]:
    """None for "dynamic", else the fixed batch size."""
    if batch == "dynamic":
        return None
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: expected \"dynamic\" or a positive int, got {batch!r}")
    return batch


def _dynamic_shapes(step: PolicyStep, fixed: Optional[int]):
    if fixed is not None:
        return None
    b = torch.export.Dim("batch", min=1, max=1 << 30)
    # forward(*inputs): torch.export binds the varargs to one tuple entry.
    return (tuple({0: b} for _ in step.input_names),)


@contextlib.contextmanager
def _quiet_tracing():
    """No grad, and without the tracer's notes that say nothing about the user's module
    (nn.LSTM's ``_flat_weights`` re-assigned during export, torch-internal FutureWarnings)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*_flat_weights.*assigned during export")
        warnings.filterwarnings("ignore", message=r".*axis name.*will not be used")
        yield


def _example(step: PolicyStep, fixed: Optional[int]) -> tuple:
    # B=2 when dynamic: torch.export specializes dimensions of size 0 and 1 in the example.
    return step.example_inputs(fixed if fixed is not None else 2)


def export_program(module, *, explore: bool = False, batch: Batch = "dynamic",
                   with_value: Optional[bool] = None) -> "torch.export.ExportedProgram":
    """``torch.export.export`` of ``PolicyStep(module, explore=..., with_value=...)``.

    The program's positional inputs are ``obs`` [B, *obs_shape] and the flattened state
    ``[B, 1, H]`` each (names in ``PolicyStep.input_names``); it returns the tuple named by
    ``PolicyStep.output_names``. ``batch``: "dynamic" (B is symbolic, >= 1) or a fixed int.
    Random draws stay ``aten.rand`` / ``aten.randn`` nodes (torch's generator at run time).
    """
    fixed = _batch_arg(batch)
    step = PolicyStep(module, explore=explore, with_value=with_value).eval()
    with _quiet_tracing():
        return torch.export.export(step, _example(step, fixed), dynamic_shapes=_dynamic_shapes(step, fixed),
                                   strict=False)


def export_onnx(module, path: Union[str, os.PathLike], *, explore: bool = False, batch: Batch = "dynamic",
                with_value: Optional[bool] = None, opset_version: Optional[int] = None) -> str:
    """Writes the module's policy step to ``path`` as an ONNX model; returns the path.

    Inputs: ``"obs"`` [B, *obs_shape] (the observation space's dtype; Discrete: int64
    indices), and for recurrent modules ``"state_in.<name>"`` float32 [B, 1, H] (names:
    ``h``, ``c`` with a shared encoder; ``actor.h``, ``actor.c``, ``critic.h``, ``critic.c``
    with ``vf_share_layers=False``). Outputs: ``"actions"`` (Discrete: int64 [B];
    MultiDiscrete: int64 [B, n]; Box: float32 [B, A]), ``"action_logp"`` float32 [B],
    ``"action_dist_inputs"`` float32 [B, K], ``"vf_preds"`` float32 [B] (when the module has
    a value head and ``with_value`` is not False), ``"state_out.<name>"`` [B, 1, H].
    ``explore``: sample in the graph (see the module docstring) instead of argmax / mean.
    ``batch``: "dynamic" (any B >= 1 in one file) or a fixed positive int.
    """
    fixed = _batch_arg(batch)
    path = os.fspath(path)
    step = PolicyStep(module, explore=explore, with_value=with_value).eval()
    kwargs = {} if opset_version is None else {"opset_version": int(opset_version)}
    log = io.StringIO()
    with _quiet_tracing(), contextlib.redirect_stdout(log):  # the exporter prints progress lines
        program = torch.onnx.export(
            step, _example(step, fixed), dynamo=True, input_names=step.input_names,
            output_names=step.output_names, dynamic_shapes=_dynamic_shapes(step, fixed),
            external_data=False, verbose=False, **kwargs)
    program.save(path)
    return path
