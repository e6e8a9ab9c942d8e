"""Benchmark providers of the ``dqn_step`` op: a DQN env-runner step (Q-network, dueling
combine, argmax and epsilon-greedy draw) on the same weights everywhere, numpy observations in.

=================  ==========================================================================
``torch-eager``    the module's own ``nn.Sequential`` layers in plain torch: encoder, heads,
                   ``V + A - mean(A)``, ``argmax``, ``torch.rand < eps`` / ``torch.randint``
``torch-compile``  ``torch.compile`` of that function
``rf-torch``       ``DQNTorchRLModule.forward_exploration(batch, t=...)`` on its torch layers
                   (``RLMODULE_FAST_BACKEND=torch``)
``cpp``            the same call on the fused C++ step (one ``_C`` call)
``rllib``          RLlib 2.60's ``DefaultDQNTorchRLModule`` with the same weights,
                   ``forward_exploration(batch, t=...)`` (its own epsilon-greedy)
``ort``            ONNX Runtime: the Q-network and the greedy ``argmax`` (exported with
                   ``torch.onnx.export``), no epsilon draw
``ort-sampling``   ``ort`` plus the epsilon-greedy draw in numpy
``triton``         the same ``forward_exploration`` on a CUDA copy of the module (one Triton launch;
                   CUDA runs only, where the other rows say "timed in CPU runs")
=================  ==========================================================================

The timestep ``t`` is 5 000 with RLlib's default schedule [(0, 1.0), (10000, 0.05)]: epsilon
0.525, so about half the rows take the random branch.

Vision cases (``vision_dqn_setup``): the Nature CNN DQN on RLlib's Atari frames (84x84x4 float32
in [-1, 1], what ``wrap_atari_for_new_api_stack(dim=84, framestack=4)`` gives), Pong's 6 actions:
RLlib's CNN encoder (the convs, no dense layer after) and the Nature paper's 512-unit layer as
``head_fcnet_hiddens=[512]`` (relu) on both dueling heads; the same providers (the cpp row is the
fused conv + heads + draw step).
"""
from __future__ import annotations

import numpy as np
import torch

T = 5000


def image_dqn_module(obs_shape, n_actions: int, conv_filters, seed: int = 0, **cfg):
    """rf.dqn.DQNTorchRLModule for [H, W, C] float32 frames in [-1, 1] (RLlib's CNN encoder with
    ``conv_filters``; None: RLlib's default stack for the size), seeded weights, inference-only."""
    import gymnasium as gym

    from ..dqn import DQNTorchRLModule

    torch.manual_seed(seed)
    return DQNTorchRLModule(observation_space=gym.spaces.Box(-1.0, 1.0, tuple(obs_shape), np.float32),
                            action_space=gym.spaces.Discrete(n_actions),
                            model_config={"conv_filters": conv_filters, **cfg}, inference_only=True)


def dqn_module(env_id: str, seed: int = 0, **cfg):
    """rf.dqn.DQNTorchRLModule for a gymnasium env with RLlib's DQN defaults (dueling, double Q,
    [256, 256] tanh encoder, no head hiddens), seeded weights."""
    import gymnasium as gym

    from ..dqn import DQNTorchRLModule

    env = gym.make(env_id)
    torch.manual_seed(seed)
    return DQNTorchRLModule(observation_space=env.observation_space, action_space=env.action_space,
                            model_config=dict(cfg), inference_only=True)


class _QGreedy(torch.nn.Module):
    """obs [B, O] -> (Q [B, A], greedy actions [B]): the module's layers, for export / eager."""

    def __init__(self, m):
        from ..models.cnn import is_cnn_encoder

        super().__init__()
        # a CNN encoder reads the [B, H, W, C] frames itself (permute, convs, HWC flatten)
        self.enc = m.encoder if is_cnn_encoder(m.encoder) else m.encoder.net.mlp
        self.af = m.af.net.mlp
        self.vf = m.vf.net.mlp if m.uses_dueling else None

    def forward(self, obs):
        z = self.enc(obs)
        a = self.af(z)
        q = a if self.vf is None else self.vf(z) + a - a.mean(dim=-1, keepdim=True)
        return q, q.argmax(dim=-1)


def dqn_setup(case, ctx) -> dict:
    """{provider: factory of its Bench} for a ``dqn_step`` registry case (a gymnasium env's
    DQN module, standard-normal [B, O] observations)."""
    env_id, extra = case._params
    m = ctx.cached(("dqn-module", case.config_id, ctx.seed), lambda: dqn_module(env_id, seed=ctx.seed, **dict(extra)))
    obs = np.random.default_rng(ctx.seed).standard_normal((case.batch, m.observation_space.shape[0]), dtype=np.float32)
    return dqn_providers(m, obs, case, ctx)


def vision_dqn_setup(case, ctx) -> dict:
    """``dqn_setup`` for a vision case: ``case._params`` = (obs_shape, n_actions, conv_filters,
    model config); frames uniform in [-1, 1]."""
    shape, n, filters, extra = case._params
    m = ctx.cached(("dqn-module", case.config_id, ctx.seed),
                   lambda: image_dqn_module(shape, n, filters, seed=ctx.seed, **dict(extra)))
    obs = np.random.default_rng(ctx.seed).uniform(-1, 1, (case.batch, *shape)).astype(np.float32)
    return dqn_providers(m, obs, case, ctx)


def dqn_providers(m, obs: np.ndarray, case, ctx) -> dict:
    """{provider: factory of its Bench}: module ``m``'s epsilon-greedy step on ``obs`` (its
    observation batch, [B, O] or [B, H, W, C]) by every provider of the module docstring."""
    from . import cases as C
    from .timing import Bench

    A, B = int(m.action_space.n), case.batch
    batch = {"obs": obs}
    eps = m.epsilon_schedule.at(T)
    qg = _QGreedy(m)

    def eager_fn(x):
        q, greedy = qg(x)
        coin = torch.rand(x.shape[0]) < eps
        return torch.where(coin, torch.randint(0, A, (x.shape[0],)), greedy)

    def eager():
        def f():
            with torch.no_grad():
                return eager_fn(torch.from_numpy(obs)).numpy()
        return Bench(f)

    def compiled():
        x = torch.from_numpy(obs)
        c, s = C._compiled(eager_fn, ctx, lambda fn: fn(x))
        return Bench(lambda: c(torch.from_numpy(obs)).numpy(), note=f"compile {s:.1f} s")

    def rf_torch():
        return Bench(lambda: m.forward_exploration(batch, t=T)["actions"].numpy(),
                     context=lambda: C.forced_backend("torch"))

    def cpp():
        C._need_cpp()
        with C.forced_backend("cpp"):
            if not m.fast_path_info()["active"]:
                raise C.Unavailable(f"no fused cpp step: {m.fast_path_info()['reason']}")
        return Bench(lambda: m.forward_exploration(batch, t=T)["actions"].numpy(),
                     context=lambda: C.forced_backend("cpp"))

    def rllib():
        rm = rllib_dqn_module(m)
        tb = {"obs": torch.from_numpy(obs)}
        return Bench(lambda: rm.forward_exploration(tb, t=T)["actions"].numpy())

    held: dict = {}

    def session():
        if "s" not in held:
            from .ort import OrtUnavailable, export
            from .ort import session as make_session

            try:
                model, how = export(qg, (torch.from_numpy(obs),), ["obs"], ["q", "greedy"])
                s = make_session(model)
                q_ort = s.run(["q"], {"obs": obs})[0]
                with torch.no_grad():
                    diff = float(np.abs(q_ort - qg(torch.from_numpy(obs))[0].numpy()).max())
                held["s"] = (s, how, diff)
            except OrtUnavailable as e:
                held["s"] = C.Unavailable(str(e))
        if isinstance(held["s"], C.Unavailable):
            raise held["s"]
        return held["s"]

    def ort_greedy():
        s, how, diff = session()
        return Bench(lambda: s.run(["greedy"], {"obs": obs})[0], note=f"{how}, max abs diff vs torch {diff:.1e}")

    def ort_sampling():
        s, how, _ = session()
        g = np.random.default_rng(ctx.seed)

        def f():
            greedy = s.run(["greedy"], {"obs": obs})[0]
            return np.where(g.random(B) < eps, g.integers(0, A, B), greedy)
        return Bench(f, note=f"{how}, numpy epsilon-greedy")

    def triton():
        C._need_triton(ctx)
        import copy

        dev = C._dev(ctx)
        mc = ctx.cached(("dqn-module-cuda", case.config_id, ctx.seed), lambda: copy.deepcopy(m).to(dev))

        def f():
            x = torch.from_numpy(obs).to(dev, non_blocking=True)
            return mc.forward_exploration({"obs": x}, t=T)["actions"].cpu().numpy()
        return Bench(f, context=lambda: C.forced_backend("triton"), cuda=True)

    factories = {"torch-eager": eager, "torch-compile": compiled, "rf-torch": rf_torch, "cpp": cpp, "rllib": rllib,
                 "ort": ort_greedy, "ort-sampling": ort_sampling, "triton": triton}
    if ctx.device != "cpu":  # a GPU run times the Triton step; the CPU rows come from a CPU run
        def cpu_only():
            raise C.Unavailable("the dqn_step rows other than triton are timed in CPU runs (--device cpu)")
        factories = {k: (v if k == "triton" else cpu_only) for k, v in factories.items()}
    return factories


def rllib_dqn_module(m):
    """RLlib's DefaultDQNTorchRLModule with ``m``'s spaces, model config and weights."""
    from . import cases as C

    ok, why = C.ray_status()
    if not ok:
        raise C.Unavailable(why)
    try:
        from ray.rllib.algorithms.dqn.torch.default_dqn_torch_rl_module import DefaultDQNTorchRLModule

        from ..rllib.dqn_convert import to_rllib_dqn_module
    except Exception as e:
        raise C.Unavailable(f"RLlib import: {type(e).__name__}: {C._line(e)}")
    del DefaultDQNTorchRLModule
    return to_rllib_dqn_module(m)

