"""Deploying a module's policy step outside Python: ONNX (``export_onnx``) and
``torch.export`` (``export_program``) of ``PolicyStep``, which wraps the module's torch layers
and its action distribution's selection (see ``policy`` and ``onnx_export`` for the graph's
inputs, outputs and randomness)."""
from .onnx_export import export_onnx, export_program
from .policy import PolicyStep, register_forward

__all__ = ["PolicyStep", "export_onnx", "export_program", "register_forward"]
