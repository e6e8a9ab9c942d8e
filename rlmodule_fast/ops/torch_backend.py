"""The ``torch`` backend: the reference ops, with numpy inputs accepted (numpy in, numpy out)."""
from __future__ import annotations

import torch

from . import reference

OPS = frozenset({"fused_mlp", "sample_categorical", "sample_diag_gaussian", "lstm_step", "gru_step"})


def status() -> tuple[bool, str]:
    return True, ""


def details() -> dict:
    return {"version": torch.__version__}


def _as_tensor(a):
    return torch.from_numpy(a) if not isinstance(a, torch.Tensor) and a is not None else a


def fused_mlp(x, weights, biases, activation="tanh", output_activation=None):
    is_numpy = not isinstance(x, torch.Tensor)
    out = reference.fused_mlp(
        _as_tensor(x), [_as_tensor(w) for w in weights], [_as_tensor(b) for b in biases],
        activation, output_activation,
    )
    return out.numpy() if is_numpy else out


def _wrap(fn):
    def run(*args):
        is_numpy = not isinstance(args[0], torch.Tensor)
        out = fn(*[_as_tensor(a) for a in args])
        if not is_numpy:
            return out
        return tuple(o.numpy() for o in out) if isinstance(out, tuple) else out.numpy()
    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


def sample_categorical(logits, deterministic=False):
    return _wrap(lambda t: reference.sample_categorical(t, deterministic))(logits)


def sample_diag_gaussian(mean_logstd, deterministic=False):
    return _wrap(lambda t: reference.sample_diag_gaussian(t, deterministic))(mean_logstd)


lstm_step = _wrap(reference.lstm_step)
gru_step = _wrap(reference.gru_step)
