"""ONNX Runtime as a benchmark provider: the same torch layers exported with ``torch.onnx.export``
and run by an ``onnxruntime.InferenceSession`` on the CPU, numpy in and numpy out.

Two providers use it:

- ``ort``: the logits only (``action_dist_inputs`` of the policy step, or the MLP's output of the
  ``fused_mlp`` op) from numpy observations;
- ``ort-sampling``: the policy step as an env runner needs it: ORT logits, then the action and
  its log-probability sampled in numpy (:func:`numpy_sampler`: Gumbel-max for Categorical /
  MultiCategorical, ``mean + std * eps`` for the diagonal Gaussian).
- ``ort-exported``: the policy step as ``module.export_onnx(explore=True)`` writes it
  (:class:`ExportedPolicy`): sampling and logp inside the graph, one ``sess.run`` per step.

The export uses the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``, which
needs the ``onnx`` package): it traces a module in ~0.1 s, where the dynamo exporter takes
seconds and also needs ``onnxscript``. Where the legacy exporter fails (it is deprecated since
torch 2.9) the dynamo one is tried. The session runs with ``intra_op_num_threads`` = torch's
thread count (``--threads``, 1 by default) and one inter-op thread, sequential execution, all
graph optimizations; the exported model is checked against the torch layers once (max abs
difference), so every row is on the same weights.
"""
from __future__ import annotations

import importlib.util
import io
import logging
import math
import warnings
from typing import Callable, Optional

import numpy as np
import torch

INSTALL_HINT = "pip install onnxruntime onnx, or pip install 'rlmodule_fast[bench]'"


class OrtUnavailable(Exception):
    """ONNX Runtime cannot run this here; the message is the reason shown as "n/a"."""


def ort_status() -> tuple:
    """(usable, reason): onnxruntime and onnx (the exporter's dependency) importable."""
    missing = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"{' and '.join(missing)} not installed ({INSTALL_HINT})"
    return True, ""


def ort_version() -> Optional[str]:
    try:
        from importlib.metadata import version

        return version("onnxruntime")
    except Exception:
        return None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:160]


def export(model: torch.nn.Module, example: tuple, input_names: list, output_names: list) -> tuple:
    """(ONNX model bytes, exporter used) of ``model`` traced on ``example`` with a dynamic batch
    axis (axis 0 of every input and output)."""
    ok, why = ort_status()
    if not ok:
        raise OrtUnavailable(why)
    axes = {n: {0: "B"} for n in (*input_names, *output_names)}
    errors = []
    for dynamo in (False, True):
        if dynamo and importlib.util.find_spec("onnxscript") is None:
            errors.append("dynamo exporter: onnxscript not installed")
            break
        f = io.BytesIO()
        try:
            with warnings.catch_warnings(), torch.no_grad(), _quiet_torch_onnx():
                warnings.simplefilter("ignore")
                if dynamo:
                    dims = tuple({0: torch.export.Dim("B", min=1)} for _ in example)
                    torch.onnx.export(model, example, f, dynamo=True, input_names=input_names,
                                      output_names=output_names, dynamic_shapes=dims, verbose=False)
                else:
                    torch.onnx.export(model, example, f, dynamo=False, input_names=input_names,
                                      output_names=output_names, dynamic_axes=axes)
            return f.getvalue(), ("torch.onnx.export(dynamo=True)" if dynamo else "torch.onnx.export(dynamo=False)")
        except Exception as e:  # the reason of the last try is reported
            errors.append(f"{'dynamo' if dynamo else 'legacy'} exporter: {type(e).__name__}: {_first_line(e)}")
    raise OrtUnavailable("ONNX export failed: " + "; ".join(errors))


class _quiet_torch_onnx:
    """Silences the exporter's loggers (the dynamo exporter logs each stage at INFO/WARNING)."""

    def __enter__(self):
        self._lv = [(lg, lg.level) for lg in (logging.getLogger("torch.onnx"), logging.getLogger("torch.export"))]
        for lg, _ in self._lv:
            lg.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        for lg, lv in self._lv:
            lg.setLevel(lv)
        return False


def session(model_bytes: bytes, threads: Optional[int] = None):
    """An onnxruntime CPU InferenceSession: ``intra_op_num_threads`` = ``threads`` (default torch's
    thread count), one inter-op thread, sequential execution, all graph optimizations."""
    ok, why = ort_status()
    if not ok:
        raise OrtUnavailable(why)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise OrtUnavailable(f"onnxruntime session: {type(e).__name__}: {_first_line(e)}")


# --------------------------------------------------------------------------------------------
# numpy sampling
# --------------------------------------------------------------------------------------------
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def numpy_sampler(action_space, seed: int = 0, dist_cls=None) -> Callable:
    """fn(action_dist_inputs [B, W] float32 numpy) -> (actions, logp [B]) in numpy, as the
    module's exploration distribution samples: Discrete -> Categorical (Gumbel-max),
    MultiDiscrete -> one Categorical per component (logp summed), Box -> diagonal Gaussian
    from [mean, log_std] halves (logp summed over the action dims). ``dist_cls``, when given,
    must be one of those (else OrtUnavailable)."""
    import gymnasium as gym

    from .. import distributions as D

    rng = np.random.default_rng(seed)
    if isinstance(action_space, gym.spaces.Discrete):
        want, kind = D.TorchCategorical, "categorical"
    elif isinstance(action_space, gym.spaces.MultiDiscrete):
        want, kind = D.TorchMultiCategorical, "multi"
    elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        want, kind = D.TorchDiagGaussian, "gaussian"
    else:
        raise OrtUnavailable(f"numpy sampling: action space {action_space} not supported "
                             "(Discrete, MultiDiscrete, 1-d Box)")
    if dist_cls is not None and not (isinstance(dist_cls, type) and issubclass(dist_cls, want)):
        raise OrtUnavailable(f"numpy sampling implements {want.__name__} for {type(action_space).__name__} "
                             f"actions; this module explores with {getattr(dist_cls, '__name__', dist_cls)}")

    rows: dict = {}  # np.arange(B) per batch size, for the per-row gather

    def arange(n: int) -> np.ndarray:
        r = rows.get(n)
        if r is None:
            r = rows[n] = np.arange(n)
        return r

    if kind == "categorical":
        start = int(action_space.start)

        def categorical(logits):
            z = rng.gumbel(size=logits.shape)  # Gumbel-max: argmax(logits + G) ~ softmax(logits)
            z += logits
            a = z.argmax(-1)
            sh = logits - logits.max(-1, keepdims=True)
            logp = sh[arange(len(a)), a] - np.log(np.exp(sh).sum(-1))
            return (a + start if start else a), logp
        return categorical

    if kind == "multi":
        sizes = [int(n) for n in np.asarray(action_space.nvec).ravel()]
        bounds = np.cumsum([0, *sizes])

        def multi(logits):
            z = rng.gumbel(size=logits.shape)
            z += logits
            r = arange(len(logits))
            acts, logp = [], 0.0
            for k in range(len(sizes)):
                lo, hi = bounds[k], bounds[k + 1]
                a = z[:, lo:hi].argmax(-1)
                sh = logits[:, lo:hi] - logits[:, lo:hi].max(-1, keepdims=True)
                logp = logp + sh[r, a] - np.log(np.exp(sh).sum(-1))
                acts.append(a)
            return np.stack(acts, axis=-1), logp
        return multi

    A = int(action_space.shape[0])

    def gaussian(mean_logstd):
        mean, log_std = mean_logstd[:, :A], mean_logstd[:, A:]
        eps = rng.standard_normal(mean.shape, dtype=np.float32)
        a = mean + np.exp(log_std) * eps
        logp = (-0.5 * eps * eps - log_std).sum(axis=-1) - np.float32(A * _HALF_LOG_2PI)
        return a, logp
    return gaussian


# --------------------------------------------------------------------------------------------
# the policy step of a module
# --------------------------------------------------------------------------------------------
def _state_leaves(state: dict, prefix: str = "state_in") -> list:
    """[(name, path tuple)] of the tensors of a (nested) state dict, sorted by key."""
    out = []
    for k in sorted(state):
        v = state[k]
        if isinstance(v, dict):
            out += [(n, (k, *p)) for n, p in _state_leaves(v, f"{prefix}.{k}")]
        else:
            out.append((f"{prefix}.{k}", (k,)))
    return out


def _nest(paths: list, values) -> dict:
    out: dict = {}
    for p, v in zip(paths, values):
        d = out
        for k in p[:-1]:
            d = d.setdefault(k, {})
        d[p[-1]] = v
    return out


def _get(d: dict, path: tuple):
    for k in path:
        d = d[k]
    return d


class LogitsPath(torch.nn.Module):
    """The torch layers of a module's policy step without sampling, as one traceable module:
    (obs, *state leaves) -> (action_dist_inputs, *state_out leaves). A ``PPOTorchRLModule`` runs
    its encoder and pi head (``_encode`` + ``pi``); any other RLModule its ``forward_train``'s
    ``action_dist_inputs`` (feed-forward only)."""

    def __init__(self, module, state_paths: list):
        super().__init__()
        self.m = module
        self.paths = state_paths

    def forward(self, obs, *state):
        from ..ppo import PPOTorchRLModule

        if isinstance(self.m, PPOTorchRLModule):
            batch = {"obs": obs}
            if self.paths:
                batch["state_in"] = _nest(self.paths, state)
            a, _, state_out, _ = self.m._encode(batch, critic=False)
            logits = self.m.pi(a)
            if not self.paths:
                return logits
            return (logits, *[_get(state_out, p).reshape(obs.shape[0], -1) for p in self.paths])
        if self.paths:
            raise OrtUnavailable(f"ONNX export of a stateful {type(self.m).__name__} is not wired "
                                 "(PPOTorchRLModule only)")
        return self.m.forward_train({"obs": obs})["action_dist_inputs"]


class OrtPolicy:
    """A module's policy step on ONNX Runtime. ``logits(obs, *state)`` -> list of numpy outputs
    (action_dist_inputs, then the state_out leaves); ``step(obs, *state)`` -> (actions, logp,
    *state_out leaves) with numpy sampling. State leaves are [B, H] arrays in ``state_names``
    order. ``exporter`` names the exporter used; ``max_abs_diff`` is the check against torch."""

    def __init__(self, module, obs: np.ndarray, state: Optional[dict] = None, seed: int = 0,
                 threads: Optional[int] = None, atol: float = 1e-3):
        from ..core.specs import to_torch
        from .cases import forced_backend

        ok, why = ort_status()
        if not ok:
            raise OrtUnavailable(why)
        if not isinstance(obs, np.ndarray):
            raise OrtUnavailable("ONNX Runtime takes one numpy observation array (not a dict/tuple obs)")
        leaves = _state_leaves(state) if state else []
        self.state_names = [n for n, _ in leaves]
        paths = [p for _, p in leaves]
        x = to_torch({"obs": obs})["obs"]
        st = tuple(torch.from_numpy(np.ascontiguousarray(
            np.asarray(_get(state, p)).reshape(obs.shape[0], -1))) for p in paths)
        wrapper = LogitsPath(module, paths).eval()
        in_names = ["obs", *self.state_names]
        out_names = ["action_dist_inputs", *[n.replace("state_in", "state_out", 1) for n in self.state_names]]
        with forced_backend("torch"), torch.no_grad():
            try:
                ref = wrapper(x, *st)
            except OrtUnavailable:
                raise
            except Exception as e:
                raise OrtUnavailable(f"the torch logits path failed: {type(e).__name__}: {_first_line(e)}")
            self.model_bytes, self.exporter = export(wrapper, (x, *st), in_names, out_names)
        self.sess = session(self.model_bytes, threads)
        self.in_names = [i.name for i in self.sess.get_inputs()]
        self.out_names = out_names
        self.obs_dtype = self.sess.get_inputs()[0].type
        ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        got = self.logits(np.asarray(obs), *[t.numpy() for t in st])
        self.max_abs_diff = max(float(np.abs(g - r.numpy()).max()) if g.size else 0.0 for g, r in zip(got, ref))
        scale = max([1.0] + [float(r.abs().max()) for r in ref if r.numel()])
        if not self.max_abs_diff <= atol * scale:
            raise OrtUnavailable(f"the exported model disagrees with the torch layers (max abs diff "
                                 f"{self.max_abs_diff:.2g} > {atol})")
        self._sample = numpy_sampler(module.action_space, seed, module.get_exploration_action_dist_cls())

    def logits(self, obs, *state) -> list:
        feed = dict(zip(self.in_names, (obs, *state)))
        return self.sess.run(self.out_names, feed)

    def step(self, obs, *state) -> tuple:
        out = self.sess.run(self.out_names, dict(zip(self.in_names, (obs, *state))))
        a, logp = self._sample(out[0])
        return (a, logp, *out[1:])


class ExportedPolicy:
    """``module.export_onnx(explore=True, with_value=False)`` in an ONNX Runtime session: the whole
    policy step (preprocessing, encoder, pi head, sampling with the graph's own random ops,
    logp) in one ``sess.run``. ``step(obs, *state)`` -> [actions, action_logp,
    action_dist_inputs, *state_out]; state leaves are the module's [B, 1, H] arrays in
    ``state_names`` order ("h", "c" or "actor.h", ...). ``max_abs_diff``: action_dist_inputs
    against the module's torch layers on the example inputs."""

    def __init__(self, module, obs: np.ndarray, state: Optional[dict] = None, threads: Optional[int] = None,
                 atol: float = 1e-3):
        import os
        import tempfile

        ok, why = ort_status()
        if not ok:
            raise OrtUnavailable(why)
        if importlib.util.find_spec("onnxscript") is None:
            raise OrtUnavailable("onnxscript not installed (module.export_onnx needs it; "
                                 "pip install 'rlmodule_fast[export]')")
        from ..export import PolicyStep
        from ..export.policy import flatten_state

        step = PolicyStep(module, explore=True, with_value=False)
        self.state_names = step.state_names
        self.in_names, self.out_names = step.input_names, step.output_names
        with tempfile.TemporaryDirectory() as d:
            try:
                with _quiet_torch_onnx():
                    path = module.export_onnx(os.path.join(d, "policy.onnx"), explore=True, with_value=False)
            except Exception as e:
                raise OrtUnavailable(f"module.export_onnx failed: {type(e).__name__}: {_first_line(e)}")
            with open(path, "rb") as f:
                self.model_bytes = f.read()
        self.sess = session(self.model_bytes, threads)
        flat = dict(flatten_state(state)) if state else {}
        args = (np.asarray(obs), *[np.ascontiguousarray(flat[n]) for n in self.state_names])
        got = self.step(*args)[2]
        with torch.no_grad():
            want = step(*[torch.from_numpy(np.asarray(a)) for a in args])[2].numpy()
        self.max_abs_diff = float(np.abs(got - want).max()) if got.size else 0.0
        if not self.max_abs_diff <= atol * max(1.0, float(np.abs(want).max()) if want.size else 1.0):
            raise OrtUnavailable(f"the exported model disagrees with the torch layers (max abs diff "
                                 f"{self.max_abs_diff:.2g} > {atol})")
        self.args = args

    def step(self, obs, *state) -> list:
        return self.sess.run(None, dict(zip(self.in_names, (obs, *state))))


def mlp_session(seq: torch.nn.Module, x: torch.Tensor, threads: Optional[int] = None, atol: float = 1e-3) -> tuple:
    """(session, exporter, max abs diff) of an ``nn.Sequential`` MLP (the ``fused_mlp`` op case)."""
    import copy

    if any(p.device.type != "cpu" for p in seq.parameters()):
        seq = copy.deepcopy(seq).cpu()  # ONNX Runtime runs on the CPU here; never move the caller's
    seq = seq.eval()
    xc = x.detach().cpu()
    data, exporter = export(seq, (xc,), ["x"], ["y"])
    sess = session(data, threads)
    with torch.no_grad():
        ref = seq(xc).numpy()
    got = sess.run(["y"], {"x": xc.numpy()})[0]
    diff = float(np.abs(got - ref).max()) if got.size else 0.0
    if not diff <= atol * max(1.0, float(np.abs(ref).max()) if ref.size else 1.0):
        raise OrtUnavailable(f"the exported MLP disagrees with torch (max abs diff {diff:.2g} > {atol})")
    return sess, exporter, diff


__all__ = ["INSTALL_HINT", "ExportedPolicy", "LogitsPath", "OrtPolicy", "OrtUnavailable", "export", "mlp_session",
           "numpy_sampler", "ort_status", "ort_version", "session"]
