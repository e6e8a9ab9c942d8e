"""Test-session set-up shared by every test file.

Without a CUDA device the Triton kernels can only run in Triton's interpreter (numpy behind
it), and Triton reads TRITON_INTERPRET when the kernels are first decorated: set it here,
before any test module imports rlmodule_fast, so the triton backend is testable on CPU
tensors. Under ``auto`` CPU inputs still go to the cpp backend; triton runs only where a test
asks for it (``backend="triton"`` or RLMODULE_FAST_BACKEND=triton).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
