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
=================  ==========================================================================

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

PROVIDERS = ("torch-eager", "torch-compile", "rf-torch", "cpp", "triton", "rllib")
BASELINE = "torch-eager"
OPS = ("fused_mlp", "sample_categorical", "sample_diag_gaussian", "lstm_step", "gru_step", "policy_step")
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

    return {
        "torch-eager": lambda: Bench(lambda: seq(x), cuda=cuda, graphable=cuda),
        "torch-compile": compiled,
        "rf-torch": lambda: Bench(lambda: ops.fused_mlp(x, W, b, act, backend="torch"), cuda=cuda, graphable=cuda),
        "cpp": cpp,
        "triton": triton,
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


def eager_lstm_policy(module) -> Callable:
    """The torch-eager peer of one LSTM policy step of ``module`` (use_lstm, shared encoder):
    tokenizer ``nn.Sequential``, an ``nn.LSTMCell`` sharing the module's ``nn.LSTM`` weights,
    pi head, ``Categorical``. Returns step(obs [B, O], h [B, H], c [B, H]) -> (a, logp, h', c')."""
    enc = module.encoder.actor
    act = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "linear": torch.nn.Identity}[enc.tokenizer.activation]
    layers = []
    for lin in enc.tokenizer.net.linears:
        layers += [lin, act()]
    tok = torch.nn.Sequential(*layers)
    rnn = enc.rnn
    cell = torch.nn.LSTMCell(rnn.input_size, rnn.hidden_size)
    cell.weight_ih, cell.weight_hh = rnn.weight_ih_l0, rnn.weight_hh_l0  # shared, not copied
    cell.bias_ih, cell.bias_hh = rnn.bias_ih_l0, rnn.bias_hh_l0
    pis = module.pi.net.linears
    head_act = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU,
                "linear": torch.nn.Identity}[module.catalog.model_config_dict["head_fcnet_activation"]]
    pi = torch.nn.Sequential(*[m for lin in pis[:-1] for m in (lin, head_act())], pis[-1])

    def step(x, h, c):
        h2, c2 = cell(tok(x), (h, c))
        a, logp = _eager_categorical(pi(h2))
        return a, logp, h2, c2
    return step


def eager_policy(module, device: str = "cpu") -> Callable:
    """The torch-eager peer of ``module.forward_exploration`` + sampling, on the same weights:
    ``nn.Sequential`` + ``torch.distributions`` (Categorical, or Normal for Box actions).
    Returns step(obs_tensor [B, O]) -> (actions, logp) tensors."""
    import gymnasium as gym

    enc = module.encoder.actor.net
    layers = []
    act = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "linear": torch.nn.Identity}
    for lin in enc.linears:
        layers += [lin, act.get(module.catalog.model_config_dict["fcnet_activation"], torch.nn.Tanh)()]
    pis = module.pi.net.linears
    for lin in pis[:-1]:
        layers += [lin, act.get(module.catalog.model_config_dict["head_fcnet_activation"], torch.nn.ReLU)()]
    layers.append(pis[-1])
    seq = torch.nn.Sequential(*layers)
    if device != "cpu":  # a copy: .to() would move the module's own layers
        import copy

        seq = copy.deepcopy(seq).to(device)
    if isinstance(module.action_space, gym.spaces.Discrete):
        return lambda x: _eager_categorical(seq(x))
    clip = float(module.catalog.model_config_dict["log_std_clip_param"])

    def gauss(x):
        mean, log_std = seq(x).chunk(2, dim=-1)
        d = torch.distributions.Normal(mean, log_std.clamp(-clip, clip).exp())
        a = d.sample()
        return a, d.log_prob(a).sum(-1)
    return gauss


def _policy_step(case: Case, ctx: Context) -> dict:
    env_id, extra = case._params
    key = ("module", case.config_id, ctx.seed)
    if key not in ctx._cache:
        ctx._cache[key] = ppo_module(env_id, seed=ctx.seed, **dict(extra))
    module = ctx._cache[key]
    if module.is_stateful():
        return _policy_step_lstm(case, ctx, module)
    O = module.observation_space.shape[0]
    obs = np.random.default_rng(ctx.seed).standard_normal((case.batch, O), dtype=np.float32)
    cuda = ctx.device == "cuda"
    dev = _dev(ctx)

    def eager():
        step = eager_policy(module, ctx.device)
        if ctx.device == "cpu":
            return Bench(lambda: tuple(t.numpy() for t in step(torch.from_numpy(obs))))
        return Bench(lambda: tuple(t.cpu().numpy() for t in step(torch.from_numpy(obs).to(dev))), cuda=True)

    def compiled():
        step = eager_policy(module, ctx.device)
        c, s = _compiled(step, ctx, lambda f: f(torch.from_numpy(obs).to(dev)))
        return Bench(lambda: tuple(t.cpu().numpy() for t in c(torch.from_numpy(obs).to(dev))), cuda=cuda,
                     note=f"compile {s:.1f} s")

    dist_cls = module.get_exploration_action_dist_cls()

    def rf_torch():
        def f():
            out = module.forward_exploration({"obs": obs})
            d = dist_cls.from_logits(out["action_dist_inputs"])
            a = d.sample()
            return a.numpy(), d.logp(a).numpy()
        return Bench(f, context=lambda: forced_backend("torch"))

    def cpp():
        _need_cpp()
        _check_fast(module, {"obs": obs}, "cpp")

        def f():
            out = module.forward_exploration({"obs": obs})
            return out["actions"].numpy(), out["action_logp"].numpy()
        return Bench(f, context=lambda: forced_backend("cpp"))

    def triton():
        _need_triton(ctx)
        ckey = ("module-cuda", case.config_id, ctx.seed)
        if ckey not in ctx._cache:
            ctx._cache[ckey] = ppo_module(env_id, seed=ctx.seed, **dict(extra)).to(dev)
        m = ctx._cache[ckey]

        def f():
            out = m.forward_exploration({"obs": torch.from_numpy(obs).to(dev, non_blocking=True)})
            return out["actions"].cpu().numpy(), out["action_logp"].cpu().numpy()
        return Bench(f, context=lambda: forced_backend("triton"), cuda=True)

    def rllib():
        rm = _rllib_module(module)
        rcls = rm.get_exploration_action_dist_cls()

        def f():
            out = rm.forward_exploration({"obs": torch.from_numpy(obs)})
            d = rcls.from_logits(out["action_dist_inputs"])
            a = d.sample()
            return a.numpy(), d.logp(a).numpy()
        return Bench(f)

    return {"torch-eager": eager, "torch-compile": compiled, "rf-torch": rf_torch, "cpp": cpp,
            "triton": triton, "rllib": rllib}


def _check_fast(module, batch: dict, backend: str) -> None:
    with torch.no_grad(), forced_backend(backend):
        if "actions" not in module.forward_exploration(batch):
            raise Unavailable(f"forward_exploration returned no actions under RLMODULE_FAST_BACKEND={backend}")


def _rllib_module(module):
    ok, why = ray_status()
    if not ok:
        raise Unavailable(why)
    try:
        from ..rllib.convert import to_rllib_module

        return to_rllib_module(module)
    except Exception as e:
        raise Unavailable(f"RLlib module: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}")


def _policy_step_lstm(case: Case, ctx: Context, module) -> dict:
    """One env step of an LSTM policy in RLlib's layout: obs [B, 1, O], state_in {"h", "c"}
    [B, 1, H] (numpy), returning actions, logp and state_out. CPU only (triton: n/a)."""
    B = case.batch
    O = module.observation_space.shape[0]
    H = module.get_initial_state()["h"].shape[-1]
    rng = np.random.default_rng(ctx.seed)
    obs = rng.standard_normal((B, 1, O), dtype=np.float32)
    h = (0.1 * rng.standard_normal((B, 1, H))).astype(np.float32)
    c = (0.1 * rng.standard_normal((B, 1, H))).astype(np.float32)
    batch = {"obs": obs, "state_in": {"h": h, "c": c}}
    dist_cls = module.get_exploration_action_dist_cls()

    def eager():
        step = eager_lstm_policy(module)
        x, ht, ct = torch.from_numpy(obs[:, 0]), torch.from_numpy(h[:, 0]), torch.from_numpy(c[:, 0])
        return Bench(lambda: tuple(t.numpy() for t in step(x, ht, ct)))

    def compiled():
        step = eager_lstm_policy(module)
        x, ht, ct = torch.from_numpy(obs[:, 0]), torch.from_numpy(h[:, 0]), torch.from_numpy(c[:, 0])
        cc, s = _compiled(step, ctx, lambda f: f(x, ht, ct))
        return Bench(lambda: tuple(t.numpy() for t in cc(x, ht, ct)), note=f"compile {s:.1f} s")

    def rf_torch():
        def f():
            out = module.forward_exploration(batch)
            d = dist_cls.from_logits(out["action_dist_inputs"])
            a = d.sample()
            return a.numpy(), d.logp(a).numpy(), out["state_out"]["h"].numpy(), out["state_out"]["c"].numpy()
        return Bench(f, context=lambda: forced_backend("torch"))

    def cpp():
        _need_cpp()
        _check_fast(module, batch, "cpp")

        def f():
            out = module.forward_exploration(batch)
            return (out["actions"].numpy(), out["action_logp"].numpy(), out["state_out"]["h"].numpy(),
                    out["state_out"]["c"].numpy())
        return Bench(f, context=lambda: forced_backend("cpp"))

    def triton():
        _need_triton(ctx)
        raise Unavailable("not wired for the LSTM policy step yet (the bench steps it on CPU only)")

    def rllib():
        rm = _rllib_module(module)
        rcls = rm.get_exploration_action_dist_cls()

        def f():
            out = rm.forward_exploration({"obs": torch.from_numpy(obs),
                                          "state_in": {"h": torch.from_numpy(h), "c": torch.from_numpy(c)}})
            d = rcls.from_logits(out["action_dist_inputs"])
            a = d.sample()
            return a.numpy(), d.logp(a).numpy(), out["state_out"]["h"].numpy(), out["state_out"]["c"].numpy()
        return Bench(f)

    return {"torch-eager": eager, "torch-compile": compiled, "rf-torch": rf_torch, "cpp": cpp,
            "triton": triton, "rllib": rllib}


_SETUPS = {"fused_mlp": _fused_mlp, "sample_categorical": _sampler, "sample_diag_gaussian": _sampler,
           "lstm_step": _rnn, "gru_step": _rnn, "policy_step": _policy_step}


def _setup(case: Case, ctx: Context) -> dict:
    key = ("setup", case.id)
    if key not in ctx._cache:
        ctx._cache[key] = _SETUPS[case.op](case, ctx)
    return ctx._cache[key]


_OP_PROVIDERS = ("torch-eager", "torch-compile", "rf-torch", "cpp", "triton")

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
]


def cases(ops=None, batches=None, quick: bool = False) -> list:
    """Every case of the registry, filtered: ``ops`` (names from OPS, None = all), ``batches``
    (None = QUICK_BATCHES or FULL_BATCHES), ``quick`` (only the configs marked quick)."""
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
        provs = PROVIDERS if op == "policy_step" else _OP_PROVIDERS
        for b in batches:
            out.append(Case(op, label, cid, int(b), provs, None, params))
    return out
