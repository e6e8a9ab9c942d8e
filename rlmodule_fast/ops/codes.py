"""The integer codes the backends take for activations, distributions and rnn kinds.

Their one definition is C++ (csrc/common.h: ``Act``, ``DistKind``, ``RnnKind``), exported by
``_C`` as ``ACTIVATIONS``, ``DISTRIBUTIONS`` and ``RNN_KINDS``; the cpp backend reads them from
``_C``. The Triton kernels must work where ``_C`` is not built, so they read this mirror, and
``tests/test_codes.py`` fails when it drifts from ``_C``'s. Imports nothing.
"""
from __future__ import annotations

#: canonical activation name (``reference.canonical_activation``) -> code; 0 is the identity.
ACTIVATIONS = {"linear": 0, "tanh": 1, "relu": 2, "silu": 3, "elu": 4}
#: ``PolicyLayers.dist`` -> code.
DISTRIBUTIONS = {"categorical": 0, "multi_categorical": 1, "diag_gaussian": 2, "squashed_gaussian": 3}
#: rnn kind -> code (nn.LSTM: "lstm", nn.GRU: "gru").
RNN_KINDS = {"lstm": 0, "gru": 1}
