"""THE registry of benchmark cases and providers, shared by ``rlmodule-fast-bench`` and the
pytest-benchmark suite (``bench/test_bench_suite.py``).

A case is one op, one model configuration and one batch size; its providers are the ways of
computing the same thing on the same weights:

=================  ==========================================================================
``torch-eager``    what users write today: ``nn.Sequential`` / ``nn.LSTMCell`` / ``nn.GRUCell``
                   and ``torch.distributions.Categorical`` / ``Normal`` ``sample`` + ``log_prob``
``torch-compile``  ``torch.compile`` of the torch-eager function (inductor; skipped by
                   ``--quick`` because each shape compiles for seconds; a failure is "n/a")
``rf-torch``       rlmodule_fast on its torch reference: ``rf.ops.<op>(backend="torch")``;
                   policy step: ``forward_exploration`` under ``RLMODULE_FAST_BACKEND=torch``
                   plus the distribution's ``sample`` / ``logp`` (what an env runner adds)
``cpp``            the C++ backend: ``rf.ops.<op>(backend="cpp")``; policy step:
                   ``forward_exploration`` under ``RLMODULE_FAST_BACKEND=cpp`` (one fused call
                   returning actions and logp), numpy observations
``triton``         the Triton backend, CUDA only
``rllib``          policy step only: RLlib's own ``DefaultPPOTorchRLModule`` with the same
                   weights, ``forward_exploration`` + its distribution's ``sample`` / ``logp``
``ort``            ONNX Runtime (``bench/ort.py``): the same layers exported with
                   ``torch.onnx.export``, one intra-op thread (``--threads``); policy step:
                   the logits only, from numpy obs; ``fused_mlp``: the MLP
``ort-sampling``   policy step only: ``ort`` logits, then action + logp sampled in numpy
                   (Gumbel-max / Gaussian), i.e. the whole step on ONNX Runtime + numpy
``ort-exported``   policy step only: ``module.export_onnx(explore=True)`` in ONNX Runtime:
                   the whole step (sampling, logp) in the graph, one ``sess.run``
=================  ==========================================================================

``--checkpoint DIR`` builds policy-step cases from a saved module (:func:`load_checkpoint`,
:func:`checkpoint_cases`), observations sampled from its observation space.

Shape legend: B batch, I input, H hidden, A actions.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from .timing import Bench

PROVIDERS = ("torch-eager", "torch-compile", "rf-torch", "cpp", "triton", "rllib", "ort", "ort-sampling",
             "ort-exported")
BASELINE = "torch-eager"
OPS = ("fused_mlp", "sample_categorical", "sample_diag_gaussian", "lstm_step", "gru_step", "policy_step", "dqn_step")
QUICK_BATCHES = (1, 256)
FULL_BATCHES = (1, 16, 256, 4096)


class Unavailable(Exception):
    """A provider that cannot run this case here; the message is the reason shown as "n/a"."""


@dataclass
class Context:
    """Where and how cases run. device: "cpu" or "cuda" (torch providers and triton run there;
    cpp always on CPU). quick: skip slow-to-set-up providers (torch.compile)."""

    device: str = "cpu"
    quick: bool = False
    seed: int = 0
    _cache: dict = field(default_factory=dict)

    def cached(self, key, build):
        """``build()``'s result, built the first time ``key`` is asked for and kept for the run."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]


@dataclass(frozen=True)
class Case:
    op: str
    config: str            # human-readable model configuration, e.g. "4->[256,256]->2 tanh"
    config_id: str         # short id, e.g. "4x256x256x2"
    batch: int
    providers: tuple       # providers that apply to this case (others print "-")
    _make: Callable = field(repr=False, compare=False, default=None)
    _params: tuple = field(repr=False, compare=False, default=())

    @property
    def id(self) -> str:
        return f"{self.op}-{self.config_id}-B{self.batch}"

    def build(self, provider: str, ctx: Context) -> Bench:
        """The timed call of ``provider`` for this case; raises Unavailable(reason)."""
        if provider not in self.providers:
            raise Unavailable(f"{provider} does not apply to {self.op}")
        setup = _setup(self, ctx)
        factory = setup.get(provider)
        if factory is None:
            raise Unavailable(f"{provider} does not apply to {self.op}")
        return factory()


# --------------------------------------------------------------------------------------------
# provider availability
# --------------------------------------------------------------------------------------------
def _need_cpp() -> None:
    from .. import backend_info

    e = backend_info()["cpp"]
    if not e["available"]:
        raise Unavailable(f"cpp backend unavailable: {e['reason']}")


def _need_triton(ctx: Context) -> None:
    if ctx.device != "cuda":
        raise Unavailable("CUDA only (no CUDA device here; the Triton interpreter is for tests, not timing)")
    from .. import backend_info

    e = backend_info()["triton"]
    if not e["available"]:
        raise Unavailable(f"triton backend unavailable: {e['reason']}")


def ort_status() -> tuple:
    """(usable, reason) of the ONNX Runtime providers (onnxruntime and onnx importable)."""
    from .ort import ort_status as st

    return st()


def ray_status() -> tuple:
    """(importable, reason)."""
    if importlib.util.find_spec("ray") is None:
        return False, "ray[rllib] not installed (pip install -e '.[rllib]')"
    return True, ""


def _compiled(fn: Callable, ctx: Context, example_call: Callable[[Callable], object]) -> tuple:
    """(compiled fn, compile seconds) or Unavailable with the reason."""
    if ctx.quick:
        raise Unavailable("skipped under --quick (inductor compiles each shape for seconds)")
    import time

    try:
        # One compiled function per case; dynamo's per-code-object recompile limit (8) would
        # otherwise send later cases of the same code (nn.Sequential.forward) back to eager
        # without an error. reset() drops the compiled code of earlier cases, measured already.
        torch._dynamo.reset()
        c = torch.compile(fn, dynamic=False)
        t0 = time.perf_counter()
        with torch.no_grad():
            example_call(c)
        return c, time.perf_counter() - t0
    except Unavailable:
        raise
    except Exception as e:  # inductor needs a C++ compiler on CPU; anything failing is reported
        msg = (str(e).strip().splitlines() or [""])[0][:160]
        raise Unavailable(f"torch.compile failed: {type(e).__name__}: {msg}")


@contextlib.contextmanager
def forced_backend(name: Optional[str]):
    """RLMODULE_FAST_BACKEND=name inside the block (None: unset), restored after."""
    key = "RLMODULE_FAST_BACKEND"
    old = os.environ.get(key)
    if name is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


# --------------------------------------------------------------------------------------------
# the cases
# --------------------------------------------------------------------------------------------
def _dev(ctx: Context) -> torch.device:
    return torch.device(ctx.device)


def _gen(ctx: Context, *key) -> torch.Generator:
    import zlib

    return torch.Generator().manual_seed(zlib.crc32(repr((ctx.seed,) + key).encode()))


def _fused_mlp(case: Case, ctx: Context) -> dict:
    from .. import ops

    i, hiddens, o, act = case._params
    torch.manual_seed(ctx.seed)
    dims = [i, *hiddens, o]
    lins = [torch.nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])]
    mods = []
    for k, lin in enumerate(lins):
        mods.append(lin)
        if k < len(lins) - 1:
            mods.append({"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[act]())
    seq = torch.nn.Sequential(*mods).to(_dev(ctx))
    x = torch.randn(case.batch, i, generator=_gen(ctx, case.id)).to(_dev(ctx))
    W = [lin.weight for lin in lins]
    b = [lin.bias for lin in lins]
    cuda = ctx.device == "cuda"

    def cpp():
        _need_cpp()
        xc, Wc, bc = x.cpu(), [w.detach().cpu() for w in W], [v.detach().cpu() for v in b]
        return Bench(lambda: ops.fused_mlp(xc, Wc, bc, act, backend="cpp"))

    def triton():
        _need_triton(ctx)
        return Bench(lambda: ops.fused_mlp(x, W, b, act, backend="triton"), cuda=True, graphable=True)

    def compiled():
        c, s = _compiled(seq, ctx, lambda f: f(x))
        return Bench(lambda: c(x), cuda=cuda, graphable=cuda, note=f"compile {s:.1f} s")

    def ort():
        from .ort import OrtUnavailable, mlp_session

        try:
            sess, exporter, diff = mlp_session(seq, x)
        except OrtUnavailable as e:
            raise Unavailable(str(e))
        feed = {"x": x.detach().cpu().numpy()}
        return Bench(lambda: sess.run(["y"], feed), note=f"{exporter}, max abs diff vs torch {diff:.1e}, numpy in/out")

    return {
        "torch-eager": lambda: Bench(lambda: seq(x), cuda=cuda, graphable=cuda),
        "torch-compile": compiled,
        "rf-torch": lambda: Bench(lambda: ops.fused_mlp(x, W, b, act, backend="torch"), cuda=cuda, graphable=cuda),
        "cpp": cpp,
        "triton": triton,
        "ort": ort,
    }


def _eager_categorical(logits):
    d = torch.distributions.Categorical(logits=logits)
    a = d.sample()
    return a, d.log_prob(a)


def _eager_gaussian(mean_logstd):
    mean, log_std = mean_logstd.chunk(2, dim=-1)
    d = torch.distributions.Normal(mean, log_std.exp())
    a = d.sample()
    return a, d.log_prob(a).sum(-1)


def _sampler(case: Case, ctx: Context) -> dict:
    from .. import ops

    (A,) = case._params
    gauss = case.op == "sample_diag_gaussian"
    width = 2 * A if gauss else A
    x = torch.randn(case.batch, width, generator=_gen(ctx, case.id)).to(_dev(ctx))
    eager = _eager_gaussian if gauss else _eager_categorical
    op = ops.sample_diag_gaussian if gauss else ops.sample_categorical
    cuda = ctx.device == "cuda"

    def cpp():
        _need_cpp()
        xc = x.cpu()
        return Bench(lambda: op(xc, backend="cpp"))

    def triton():
        _need_triton(ctx)
        return Bench(lambda: op(x, backend="triton"), cuda=True, graphable=True)

    def compiled():
        c, s = _compiled(eager, ctx, lambda f: f(x))
        return Bench(lambda: c(x), cuda=cuda, note=f"compile {s:.1f} s")

    return {
        # torch.distributions' sampling syncs the host on CUDA (validation): not graphable
        "torch-eager": lambda: Bench(lambda: eager(x), cuda=cuda),
        "torch-compile": compiled,
        "rf-torch": lambda: Bench(lambda: op(x, backend="torch"), cuda=cuda),
        "cpp": cpp,
        "triton": triton,
    }


def _rnn(case: Case, ctx: Context) -> dict:
    from .. import ops

    I, H = case._params
    lstm = case.op == "lstm_step"
    torch.manual_seed(ctx.seed)
    cell = (torch.nn.LSTMCell(I, H) if lstm else torch.nn.GRUCell(I, H)).to(_dev(ctx))
    g = _gen(ctx, case.id)
    x = torch.randn(case.batch, I, generator=g).to(_dev(ctx))
    h = torch.randn(case.batch, H, generator=g).to(_dev(ctx))
    c = torch.randn(case.batch, H, generator=g).to(_dev(ctx))
    w_ih, w_hh, b_ih, b_hh = (cell.weight_ih.detach(), cell.weight_hh.detach(),
                              cell.bias_ih.detach(), cell.bias_hh.detach())
    b = b_ih + b_hh
    cuda = ctx.device == "cuda"
    if lstm:
        eager = lambda: cell(x, (h, c))
        call = lambda be, t: ops.lstm_step(*t, backend=be)
        args = (x, h, c, w_ih, w_hh, b)
    else:
        eager = lambda: cell(x, h)
        call = lambda be, t: ops.gru_step(*t, backend=be)
        args = (x, h, w_ih, w_hh, b_ih, b_hh)

    def cpp():
        _need_cpp()
        cargs = tuple(a.cpu() for a in args)
        return Bench(lambda: call("cpp", cargs))

    def triton():
        _need_triton(ctx)
        return Bench(lambda: call("triton", args), cuda=True, graphable=True)

    def compiled():
        cc, s = _compiled(cell, ctx, lambda f: f(x, (h, c)) if lstm else f(x, h))
        fn = (lambda: cc(x, (h, c))) if lstm else (lambda: cc(x, h))
        return Bench(fn, cuda=cuda, graphable=cuda, note=f"compile {s:.1f} s")

    return {
        "torch-eager": lambda: Bench(eager, cuda=cuda, graphable=cuda),
        "torch-compile": compiled,
        "rf-torch": lambda: Bench(lambda: call("torch", args), cuda=cuda, graphable=cuda),
        "cpp": cpp,
        "triton": triton,
    }


def ppo_module(env_id: str, hiddens=(256, 256), seed: int = 0, **model_config):
    """Our PPOTorchRLModule for a gymnasium env's spaces (fcnet_hiddens = hiddens, tanh, plus
    ``model_config``, e.g. use_lstm=True)."""
    import gymnasium as gym

    from .. import RLModuleSpec
    from ..ppo import PPOCatalog, PPOTorchRLModule

    env = gym.make(env_id)
    torch.manual_seed(seed)
    m = RLModuleSpec(module_class=PPOTorchRLModule, observation_space=env.observation_space,
                     action_space=env.action_space,
                     model_config_dict={"fcnet_hiddens": list(hiddens), **model_config},
                     catalog_class=PPOCatalog).build()
    env.close()
    return m


#: activation name (model config) -> torch module, as rlmodule_fast's encoders build them
_ACT = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "silu": torch.nn.SiLU, "swish": torch.nn.SiLU,
        "elu": torch.nn.ELU, "linear": torch.nn.Identity, None: torch.nn.Identity}


def eager_lstm_policy(module) -> Callable:
    """The torch-eager peer of one LSTM policy step of ``module`` (use_lstm; the actor's encoder):
    tokenizer ``nn.Sequential``, an ``nn.LSTMCell`` sharing the module's ``nn.LSTM`` weights,
    pi head, ``torch.distributions`` (as ``eager_policy``).
    Returns step(obs [B, O], h [B, H], c [B, H]) -> (a, logp, h', c')."""
    enc = module.encoder.actor
    act = _ACT[enc.tokenizer.activation]
    layers = []
    for lin in enc.tokenizer.net.linears:
        layers += [lin, act()]
    tok = torch.nn.Sequential(*layers)
    rnn = enc.rnn
    cell = torch.nn.LSTMCell(rnn.input_size, rnn.hidden_size)
    cell.weight_ih, cell.weight_hh = rnn.weight_ih_l0, rnn.weight_hh_l0  # shared, not copied
    cell.bias_ih, cell.bias_hh = rnn.bias_ih_l0, rnn.bias_hh_l0
    pis = module.pi.net.linears
    head_act = _ACT[module.catalog.model_config_dict["head_fcnet_activation"]]
    pi = torch.nn.Sequential(*[m for lin in pis[:-1] for m in (lin, head_act())], pis[-1])
    sample = _eager_sampler(module)

    def step(x, h, c):
        h2, c2 = cell(tok(x), (h, c))
        a, logp = sample(pi(h2))
        return a, logp, h2, c2
    return step


class _EagerCNNPolicy(torch.nn.Module):
    """What users write for RLlib's CNN policy: ZeroPad2d / Conv2d / activation on the NCHW view of
    the [B, H, W, C] obs, NHWC flatten, then the pi head (the module's own layers)."""

    def __init__(self, module):
        super().__init__()
        from ..models.cnn import cnn_conv_layers

        layers = []
        for conv, pad, act in cnn_conv_layers(module.encoder.actor):
            layers += [torch.nn.ZeroPad2d(pad), conv, _ACT[act]()]
        self.cnn = torch.nn.Sequential(*layers)
        pis = module.pi.net.linears
        head_act = _ACT[module.catalog.model_config_dict["head_fcnet_activation"]]
        self.pi = torch.nn.Sequential(*[m for lin in pis[:-1] for m in (lin, head_act())], pis[-1])

    def forward(self, x):
        return self.pi(self.cnn(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).flatten(1))


def eager_policy(module, device: str = "cpu") -> Callable:
    """The torch-eager peer of ``module.forward_exploration`` + sampling, on the same weights:
    ``nn.Sequential`` + ``torch.distributions`` (Categorical; per component for MultiDiscrete;
    Normal for Box actions); a CNN encoder as ``_EagerCNNPolicy``.
    Returns step(obs_tensor [B, O] or [B, H, W, C]) -> (actions, logp) tensors."""
    from ..models.cnn import is_cnn_encoder

    if is_cnn_encoder(module.encoder.actor):
        seq = _EagerCNNPolicy(module)
        if device != "cpu":
            import copy

            seq = copy.deepcopy(seq).to(device)
        sample = _eager_sampler(module, device)
        return lambda x: sample(seq(x))
    enc = module.encoder.actor.net
    layers = []
    cfg = module.catalog.model_config_dict
    for lin in enc.linears:
        layers += [lin, _ACT[cfg["fcnet_activation"]]()]
    pis = module.pi.net.linears
    for lin in pis[:-1]:
        layers += [lin, _ACT[cfg["head_fcnet_activation"]]()]
    layers.append(pis[-1])
    seq = torch.nn.Sequential(*layers)
    if device != "cpu":  # a copy: .to() would move the module's own layers
        import copy

        seq = copy.deepcopy(seq).to(device)
    sample = _eager_sampler(module, device)
    return lambda x: sample(seq(x))


def _eager_sampler(module, device: str = "cpu") -> Callable:
    """fn(pi's linear output) -> (actions, logp) with ``torch.distributions``: Categorical
    (Discrete), one Categorical per component (MultiDiscrete), Normal from [mean, log_std]
    halves or from the head's free log-std parameter (Box), log-std clamped as the head does."""
    import gymnasium as gym

    space = module.action_space
    if isinstance(space, gym.spaces.Discrete):
        return _eager_categorical
    if isinstance(space, gym.spaces.MultiDiscrete):
        sizes = [int(n) for n in np.asarray(space.nvec).ravel()]

        def multi(logits):
            acts, logps = zip(*(_eager_categorical(p) for p in logits.split(sizes, dim=-1)))
            return torch.stack(acts, dim=-1), sum(logps)
        return multi
    clip = float(module.catalog.model_config_dict["log_std_clip_param"])
    free_log_std = getattr(module.pi, "log_std", None)  # free_log_std=True: a parameter, not an output
    if free_log_std is not None and device != "cpu":
        free_log_std = free_log_std.detach().to(device)

    def gauss(out):
        if free_log_std is None:
            mean, log_std = out.chunk(2, dim=-1)
        else:
            mean, log_std = out, free_log_std.expand_as(out)
        d = torch.distributions.Normal(mean, log_std.clamp(-clip, clip).exp())
        a = d.sample()
        return a, d.log_prob(a).sum(-1)
    return gauss


def _policy_step(case: Case, ctx: Context) -> dict:
    """A registry policy-step case: our PPOTorchRLModule for a gymnasium env (seeded weights),
    standard-normal observations (LSTM: and a small random state)."""
    env_id, extra = case._params
    module = ctx.cached(("module", case.config_id, ctx.seed), lambda: ppo_module(env_id, seed=ctx.seed, **dict(extra)))
    rng = np.random.default_rng(ctx.seed)
    O = module.observation_space.shape[0]
    B = case.batch

    def on_cuda():
        return ctx.cached(("module-cuda", case.config_id, ctx.seed),
                          lambda: ppo_module(env_id, seed=ctx.seed, **dict(extra)).to(_dev(ctx)))

    if module.is_stateful():
        H = module.get_initial_state()["h"].shape[-1]
        obs = rng.standard_normal((B, 1, O), dtype=np.float32)
        h = (0.1 * rng.standard_normal((B, 1, H))).astype(np.float32)
        c = (0.1 * rng.standard_normal((B, 1, H))).astype(np.float32)
        return module_policy_step(module, {"obs": obs, "state_in": {"h": h, "c": c}}, ctx)
    obs = rng.standard_normal((B, O), dtype=np.float32)
    return module_policy_step(module, {"obs": obs}, ctx, cuda_module=on_cuda)


def module_policy_step(module, batch: dict, ctx: Context, cuda_module: Optional[Callable] = None) -> dict:
    """{provider: factory of its Bench} for one policy step of ``module`` on ``batch`` (numpy:
    {"obs": [B, ...]}, recurrent modules also {"state_in": {...}} of [B, 1, H] arrays), the same
    weights everywhere. ``cuda_module``: a factory of the module's copy on CUDA (triton)."""
    obs = batch["obs"]
    state = batch.get("state_in")
    stateful = state is not None
    cuda = ctx.device == "cuda"
    dev = _dev(ctx)
    dist_cls = module.get_exploration_action_dist_cls()

    image = getattr(getattr(module, "catalog", None), "encoder_kind", None) == "cnn"

    def flat_obs() -> torch.Tensor:
        rank = (3 if stateful else 2) + (2 if image else 0)
        if not (isinstance(obs, np.ndarray) and obs.dtype.kind == "f" and obs.ndim == rank):
            raise Unavailable("the torch-eager peer takes float observations of a 1-d Box or an image Box")
        if image and stateful:
            raise Unavailable("no torch-eager peer for a CNN -> LSTM policy")
        return torch.from_numpy(obs[:, 0] if stateful else obs)

    def lstm_state() -> tuple:
        st = state.get("actor", state)  # separate actor / critic encoders: the actor's state
        if not (isinstance(st, dict) and set(st) == {"h", "c"}):
            raise Unavailable("the torch-eager peer is built for LSTM encoders (state {'h', 'c'})")
        return torch.from_numpy(st["h"][:, 0]), torch.from_numpy(st["c"][:, 0])

    def peer():
        try:
            return eager_lstm_policy(module) if stateful else eager_policy(module, ctx.device)
        except Exception as e:  # a module whose layers are not the PPO layout
            raise Unavailable(f"no torch-eager peer for {type(module).__name__} (built for PPOTorchRLModule "
                              f"MLP / LSTM policies): {type(e).__name__}: {_line(e)}")

    def eager():
        step, x = peer(), flat_obs()
        if stateful:
            ht, ct = lstm_state()
            return Bench(lambda: tuple(t.numpy() for t in step(x, ht, ct)))
        if ctx.device == "cpu":
            return Bench(lambda: tuple(t.numpy() for t in step(x)))
        return Bench(lambda: tuple(t.cpu().numpy() for t in step(x.to(dev))), cuda=True)

    def compiled():
        step, x = peer(), flat_obs()
        if stateful:
            ht, ct = lstm_state()
            cc, s = _compiled(step, ctx, lambda f: f(x, ht, ct))
            return Bench(lambda: tuple(t.numpy() for t in cc(x, ht, ct)), note=f"compile {s:.1f} s")
        c, s = _compiled(step, ctx, lambda f: f(x.to(dev)))
        return Bench(lambda: tuple(t.cpu().numpy() for t in c(x.to(dev))), cuda=cuda, note=f"compile {s:.1f} s")

    def outputs(out: dict, d=None) -> tuple:
        if d is not None:
            a = d.sample()
            res = (a.numpy(), d.logp(a).numpy())
        else:
            res = (out["actions"].numpy(), out["action_logp"].numpy())
        if stateful:
            res += tuple(_leaf_arrays(out["state_out"]))
        return res

    def rf_torch():
        def f():
            out = module.forward_exploration(batch)
            return outputs(out, dist_cls.from_logits(out["action_dist_inputs"]))
        return Bench(f, context=lambda: forced_backend("torch"))

    def cpp():
        _need_cpp()
        _check_fast(module, batch, "cpp")
        return Bench(lambda: outputs(module.forward_exploration(batch)), context=lambda: forced_backend("cpp"))

    def triton():
        _need_triton(ctx)
        if stateful:
            raise Unavailable("not wired for the LSTM policy step yet (the bench steps it on CPU only)")
        if cuda_module is None:
            raise Unavailable("no CUDA copy of this module was set up")
        m = cuda_module()
        with forced_backend("triton"):
            fi = m.fast_path_info()
        if not fi.get("active"):
            raise Unavailable(f"no fused triton step for this module: {fi.get('reason')}")

        def f():
            out = m.forward_exploration({"obs": torch.from_numpy(obs).to(dev, non_blocking=True)})
            return out["actions"].cpu().numpy(), out["action_logp"].cpu().numpy()
        return Bench(f, context=lambda: forced_backend("triton"), cuda=True)

    def rllib():
        rm = _rllib_module(module)
        rcls = rm.get_exploration_action_dist_cls()
        tb = {"obs": torch.from_numpy(obs) if isinstance(obs, np.ndarray) else obs}
        if stateful:
            tb["state_in"] = _map_leaves(state, torch.from_numpy)

        def f():
            out = rm.forward_exploration(tb)
            return outputs(out, rcls.from_logits(out["action_dist_inputs"]))
        return Bench(f)

    held: dict = {}  # one exported session for both ORT providers of this case

    def ort_policy():
        if "ort" not in held:
            from .ort import OrtPolicy, OrtUnavailable

            try:
                st = _map_leaves(state, lambda v: v[:, 0]) if stateful else None
                held["ort"] = OrtPolicy(module, obs[:, 0] if stateful else obs, st, seed=ctx.seed)
            except OrtUnavailable as e:
                held["ort"] = Unavailable(str(e))
        p = held["ort"]
        if isinstance(p, Unavailable):
            raise p
        return p

    def ort_args(p) -> tuple:
        x = np.ascontiguousarray(obs[:, 0] if stateful else obs)
        if not stateful:
            return (x,)
        st = _map_leaves(state, lambda v: np.ascontiguousarray(v[:, 0]))
        from .ort import _get, _state_leaves

        return (x, *[_get(st, path) for _, path in _state_leaves(st)])

    def ort_logits():
        p = ort_policy()
        args = ort_args(p)
        return Bench(lambda: p.logits(*args), note=f"{p.exporter}, max abs diff vs torch {p.max_abs_diff:.1e}")

    def ort_sampling():
        p = ort_policy()
        args = ort_args(p)
        return Bench(lambda: p.step(*args), note=f"{p.exporter}, numpy sampling")

    def ort_exported():
        from .ort import ExportedPolicy, OrtUnavailable

        try:
            p = ExportedPolicy(module, obs[:, 0] if stateful else obs, state)
        except OrtUnavailable as e:
            raise Unavailable(str(e))
        return Bench(lambda: p.step(*p.args), note=f"module.export_onnx, max abs diff vs torch {p.max_abs_diff:.1e}")

    return {"torch-eager": eager, "torch-compile": compiled, "rf-torch": rf_torch, "cpp": cpp,
            "triton": triton, "rllib": rllib, "ort": ort_logits, "ort-sampling": ort_sampling,
            "ort-exported": ort_exported}


def _line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:160]


def _map_leaves(d: dict, fn) -> dict:
    return {k: (_map_leaves(v, fn) if isinstance(v, dict) else fn(v)) for k, v in d.items()}


def _leaf_arrays(d: dict) -> list:
    out = []
    for k in sorted(d):
        v = d[k]
        out += _leaf_arrays(v) if isinstance(v, dict) else [v.numpy()]
    return out


def _check_fast(module, batch: dict, backend: str) -> None:
    info = getattr(module, "fast_path_info", None)
    with torch.no_grad(), forced_backend(backend):
        if info is not None:
            fi = info()
            if not fi.get("active"):
                raise Unavailable(f"no fused {backend} step for this module: {fi.get('reason')}")
        if "actions" not in module.forward_exploration(batch):
            raise Unavailable(f"forward_exploration returned no actions under RLMODULE_FAST_BACKEND={backend}")


def _rllib_module(module):
    ok, why = ray_status()
    if not ok:
        raise Unavailable(why)
    import logging

    try:
        # imported first: importing ray configures its loggers (resetting levels set before)
        from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule  # noqa: F401

        from ..rllib.convert import to_rllib_module
    except Exception as e:
        raise Unavailable(f"RLlib import: {type(e).__name__}: {_line(e)}")
    quiet = [logging.getLogger(n) for n in ("ray", "ray.rllib", "ray._common.deprecation")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:  # RLlib warns about its own RLModuleConfig use while building its module
            lg.setLevel(logging.ERROR)
        return to_rllib_module(module)
    except Exception as e:
        raise Unavailable(f"RLlib module: {type(e).__name__}: {_line(e)}")
    finally:
        for lg, lv in zip(quiet, levels):
            lg.setLevel(lv)


# --------------------------------------------------------------------------------------------
# the user's own policy: --checkpoint DIR
# --------------------------------------------------------------------------------------------
def checkpoint_kind(path) -> str:
    """"rlmodule_fast" (``class_and_ctor_args.json``: ``RLModule.save_to_path``) or "rllib"
    (``module_state.pkl`` / ``class_and_ctor_args.pkl``, or an RLlib Algorithm / MultiRLModule
    checkpoint holding one); FileNotFoundError / ValueError otherwise."""
    import pathlib

    from ..core import checkpoint as ckpt

    p = pathlib.Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {p}")
    if (p / ckpt.CLASS_AND_CTOR_ARGS_FILE_NAME).is_file():
        return "rlmodule_fast"
    names = {"module_state.pkl", "module_state.msgpack", "class_and_ctor_args.pkl", "rllib_checkpoint.json"}
    if any((p / n).is_file() for n in names) or (p / "learner_group").is_dir() or (p / "rl_module").is_dir() \
            or any((sub / "module_state.pkl").is_file() for sub in p.iterdir() if sub.is_dir()):
        return "rllib"
    raise ValueError(f"{p}: neither an rlmodule_fast checkpoint ({ckpt.CLASS_AND_CTOR_ARGS_FILE_NAME}) nor an "
                     "RLlib one (module_state.pkl, rl_module/, learner_group/)")


def load_checkpoint(path, module_id: Optional[str] = None) -> tuple:
    """(module, kind, module id or None) of a checkpoint directory: ours through
    ``RLModule.from_checkpoint`` (a MultiRLModule: its ``module_id`` module, or its only one),
    RLlib's through ``rlmodule_fast.rllib.load_rllib_checkpoint``."""
    from .. import DEFAULT_MODULE_ID, MultiRLModule, RLModule

    kind = checkpoint_kind(path)
    if kind == "rllib":
        from ..rllib import load_rllib_checkpoint

        mid = module_id or DEFAULT_MODULE_ID
        return load_rllib_checkpoint(path, module_id=mid), kind, mid
    m = RLModule.from_checkpoint(path)
    if isinstance(m, MultiRLModule):
        ids = list(m.keys())
        mid = module_id or (ids[0] if len(ids) == 1 else DEFAULT_MODULE_ID)
        if mid not in m:
            raise ValueError(f"{path}: a MultiRLModule with modules {ids}; pick one with --module-id")
        return m[mid], kind, mid
    if module_id is not None:
        raise ValueError(f"{path}: --module-id {module_id!r} given, but the checkpoint holds a single module")
    return m, kind, None


def sample_obs(space, batch: int, seed: int = 0):
    """A batch [B, ...] of observations sampled from a gymnasium space (Dict / Tuple: nested)."""
    import gymnasium as gym

    if isinstance(space, gym.spaces.Dict):
        return {k: sample_obs(s, batch, seed + i) for i, (k, s) in enumerate(space.spaces.items())}
    if isinstance(space, gym.spaces.Tuple):
        return tuple(sample_obs(s, batch, seed + i) for i, s in enumerate(space.spaces))
    space.seed(seed)
    return np.stack([np.asarray(space.sample()) for _ in range(batch)]).astype(
        space.dtype if space.dtype is not None else np.float32, copy=False)


def describe_module(module) -> str:
    """A short label: class, observation and action spaces, encoder / head sizes if PPO."""
    import gymnasium as gym

    def sp(s):
        if isinstance(s, gym.spaces.Box):
            return f"Box{tuple(s.shape)}"
        if isinstance(s, gym.spaces.Discrete):
            return f"Discrete({int(s.n)})"
        if isinstance(s, gym.spaces.MultiDiscrete):
            return f"MultiDiscrete({list(np.asarray(s.nvec).ravel())})"
        return type(s).__name__
    cat = getattr(module, "catalog", None)
    cfg = getattr(cat, "model_config_dict", None) or {}
    arch = ""
    if getattr(cat, "encoder_kind", None) == "cnn":
        arch = f" CNN {cat.conv_filters}"
        if cfg.get("use_lstm") or cfg.get("use_gru"):
            arch += f" {'LSTM' if cfg.get('use_lstm') else 'GRU'} {cfg.get('lstm_cell_size')}"
    elif "fcnet_hiddens" in cfg:
        arch = f" {list(cfg['fcnet_hiddens'])}"
        if cfg.get("use_lstm"):
            arch += f" LSTM {cfg.get('lstm_cell_size')}"
        elif cfg.get("use_gru"):
            arch += f" GRU {cfg.get('lstm_cell_size')}"
    return f"{type(module).__name__} {sp(module.observation_space)}->{arch.strip() or '?'}->{sp(module.action_space)}"


def checkpoint_cases(module, label: str, batches, seed: int = 0) -> list:
    """Policy-step cases of a loaded module at the given batch sizes (obs sampled from its
    observation space; a recurrent module steps from its initial state plus small noise)."""
    import functools

    out = []
    for b in batches:
        out.append(Case("policy_step", label, "checkpoint", int(b), POLICY_PROVIDERS,
                        functools.partial(_checkpoint_setup, module), (seed,)))
    return out


def _checkpoint_setup(module, case: Case, ctx: Context) -> dict:
    B = case.batch
    obs = sample_obs(module.observation_space, B, ctx.seed)
    batch = {"obs": obs}
    if module.is_stateful():
        rng = np.random.default_rng(ctx.seed)

        def init(v):
            v = np.asarray(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v, dtype=np.float32)
            v = np.broadcast_to(v.reshape(-1), (B, 1, v.size)).copy()
            return v + (0.1 * rng.standard_normal(v.shape)).astype(np.float32)
        batch["state_in"] = _map_leaves(module.get_initial_state(), init)
        if isinstance(obs, np.ndarray):
            batch["obs"] = obs[:, None]

    def on_cuda():
        import copy

        return ctx.cached(("checkpoint-cuda", id(module)), lambda: copy.deepcopy(module).to(_dev(ctx)))
    return module_policy_step(module, batch, ctx, cuda_module=on_cuda)


def _dqn_step(case: Case, ctx: Context) -> dict:
    from .dqn_cases import dqn_setup  # a DQN env-runner step (bench/dqn_cases.py)

    return dqn_setup(case, ctx)


_SETUPS = {"fused_mlp": _fused_mlp, "sample_categorical": _sampler, "sample_diag_gaussian": _sampler,
           "lstm_step": _rnn, "gru_step": _rnn, "policy_step": _policy_step, "dqn_step": _dqn_step}


def _setup(case: Case, ctx: Context) -> dict:
    return ctx.cached(("setup", case.id, case.config), lambda: (case._make or _SETUPS[case.op])(case, ctx))


_OP_PROVIDERS = ("torch-eager", "torch-compile", "rf-torch", "cpp", "triton")
#: which providers apply to which op ("-" in a table where one does not)
OP_PROVIDERS = {op: _OP_PROVIDERS for op in OPS}
OP_PROVIDERS["fused_mlp"] = _OP_PROVIDERS + ("ort",)
OP_PROVIDERS["policy_step"] = PROVIDERS
OP_PROVIDERS["dqn_step"] = ("torch-eager", "torch-compile", "rf-torch", "cpp", "triton", "rllib", "ort", "ort-sampling")
POLICY_PROVIDERS = PROVIDERS

# (op, config label, config id, params, quick?) -- quick configs run under --quick too
_CONFIGS = [
    ("fused_mlp", "4->[256,256]->2 tanh", "4x256x256x2", (4, (256, 256), 2, "tanh"), True),
    ("fused_mlp", "64->[256,256]->18 relu", "64x256x256x18", (64, (256, 256), 18, "relu"), False),
    ("sample_categorical", "A=6", "A6", (6,), True),
    ("sample_diag_gaussian", "A=6 (mean+log_std)", "A6", (6,), True),
    ("lstm_step", "I=64 H=256", "I64H256", (64, 256), True),
    ("gru_step", "I=64 H=256", "I64H256", (64, 256), True),
    ("policy_step", "CartPole 4->[256,256]->2 categorical", "CartPole", ("CartPole-v1", ()), True),
    ("policy_step", "CartPole 4->[64,64]->2 categorical", "CartPole64",
     ("CartPole-v1", (("fcnet_hiddens", [64, 64]),)), False),
    ("policy_step", "Pendulum 3->[256,256]->2 gaussian", "Pendulum", ("Pendulum-v1", ()), False),
    ("policy_step", "CartPole LSTM 4->[256]->LSTM 256->2", "CartPoleLSTM",
     ("CartPole-v1", (("fcnet_hiddens", [256]), ("use_lstm", True), ("lstm_cell_size", 256))), False),
    ("dqn_step", "CartPole DQN 4->[256,256]->2 dueling, eps-greedy", "CartPoleDQN", ("CartPole-v1", ()), True),
]


#: Vision policy steps (issue 14): RLlib's Atari observation (84x84x4 float32 frames in [-1, 1], what
#: ``wrap_atari_for_new_api_stack(dim=84, framestack=4)`` gives) and Pong's 6 actions; default
#: batches VISION_BATCHES (the CNNs cost ~12-123 MMAC a frame). Not under --quick.
VISION_BATCHES = (1, 32)
ATARI_OBS_SHAPE = (84, 84, 4)
ATARI_TUNED_FILTERS = [[16, 4, 2], [32, 4, 2], [64, 4, 2], [128, 4, 2]]
NATURE_FILTERS = [[32, 8, 4], [64, 4, 2], [64, 3, 1]]
_VISION_CONFIGS = [
    ("Atari 84x84x4 CNN [[16,4,2],[32,4,2],[64,4,2],[128,4,2]] -> 6", "AtariCNN", ATARI_TUNED_FILTERS),
    ("Atari 84x84x4 Nature CNN [[32,8,4],[64,4,2],[64,3,1]] -> 6", "NatureCNN", NATURE_FILTERS),
    ("Atari 84x84x4 RLlib default CNN [[16,8,4],[32,4,2],[256,11,1]] -> 6", "RLlibDefaultCNN", None),
]


#: Vision DQN steps (issues 14 + 15): the Nature CNN DQN on the same frames (bench/dqn_cases.py,
#: ``vision_dqn_setup``): (label, config id, conv_filters, model config). Batches VISION_BATCHES,
#: not under --quick.
_VISION_DQN_CONFIGS = [
    ("Atari 84x84x4 Nature CNN DQN [[32,8,4],[64,4,2],[64,3,1]] -> [512] dueling -> 6, eps-greedy", "NatureCNNDQN",
     NATURE_FILTERS, (("head_fcnet_hiddens", [512]), ("head_fcnet_activation", "relu"))),
]


def image_module(obs_shape=ATARI_OBS_SHAPE, n_actions: int = 6, conv_filters=None, seed: int = 0, **model_config):
    """Our PPOTorchRLModule for [H, W, C] float32 frames in [-1, 1] and Discrete(n_actions)
    (``conv_filters`` None: RLlib's default stack for the size), seeded weights."""
    import gymnasium as gym

    from .. import RLModuleSpec
    from ..ppo import PPOCatalog, PPOTorchRLModule

    torch.manual_seed(seed)
    return RLModuleSpec(module_class=PPOTorchRLModule,
                        observation_space=gym.spaces.Box(-1.0, 1.0, tuple(obs_shape), np.float32),
                        action_space=gym.spaces.Discrete(n_actions),
                        model_config_dict={"conv_filters": conv_filters, **model_config},
                        catalog_class=PPOCatalog).build()


def _vision_policy_step(case: Case, ctx: Context) -> dict:
    (filters,) = case._params
    module = ctx.cached(("module", case.config_id, ctx.seed), lambda: image_module(conv_filters=filters, seed=ctx.seed))
    obs = np.random.default_rng(ctx.seed).uniform(-1, 1, (case.batch, *ATARI_OBS_SHAPE)).astype(np.float32)

    def on_cuda():
        return ctx.cached(("module-cuda", case.config_id, ctx.seed),
                          lambda: image_module(conv_filters=filters, seed=ctx.seed).to(_dev(ctx)))
    return module_policy_step(module, {"obs": obs}, ctx, cuda_module=on_cuda)


def _vision_dqn_step(case: Case, ctx: Context) -> dict:
    from .dqn_cases import vision_dqn_setup

    return vision_dqn_setup(case, ctx)


def config_ids() -> list:
    """Every config id of the registry (the middle part of a case id)."""
    return list(dict.fromkeys([c[2] for c in _CONFIGS] + [c[1] for c in _VISION_CONFIGS]
                              + [c[1] for c in _VISION_DQN_CONFIGS]))


def cases(ops=None, batches=None, quick: bool = False, configs=None) -> list:
    """Every case of the registry, filtered: ``ops`` (names from OPS, None = all), ``batches``
    (None = QUICK_BATCHES or FULL_BATCHES; the vision cases: VISION_BATCHES), ``quick`` (only
    the configs marked quick; no vision cases), ``configs`` (config ids, None = all)."""
    given = batches
    ops = list(OPS) if ops is None else list(ops)
    bad = [o for o in ops if o not in OPS]
    if bad:
        raise ValueError(f"ops: unknown {bad}; expected names from {list(OPS)}")
    batches = list(QUICK_BATCHES if quick else FULL_BATCHES) if batches is None else list(batches)
    if not batches or min(batches) < 1:
        raise ValueError(f"batches: expected positive batch sizes, got {batches}")
    out = []
    for op, label, cid, params, in_quick in _CONFIGS:
        if op not in ops or (quick and not in_quick):
            continue
        provs = OP_PROVIDERS[op]
        for b in batches:
            out.append(Case(op, label, cid, int(b), provs, None, params))
    if "policy_step" in ops and not quick:
        for label, cid, filters in _VISION_CONFIGS:
            for b in (VISION_BATCHES if given is None else batches):
                out.append(Case("policy_step", label, cid, int(b), POLICY_PROVIDERS, _vision_policy_step, (filters,)))
    if "dqn_step" in ops and not quick:
        for label, cid, filters, extra in _VISION_DQN_CONFIGS:
            for b in (VISION_BATCHES if given is None else batches):
                out.append(Case("dqn_step", label, cid, int(b), OP_PROVIDERS["dqn_step"], _vision_dqn_step,
                                (ATARI_OBS_SHAPE, 6, filters, extra)))
    if configs is not None:
        out = [c for c in out if c.config_id in set(configs)]
    return out
