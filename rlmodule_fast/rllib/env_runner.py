"""FastEnvRunner: RLlib's ``SingleAgentEnvRunner`` without the per-step connector overhead.

Select it with ``config.env_runners(env_runner_cls=FastEnvRunner)`` (needs ray[rllib])::

    from ray.rllib.algorithms.ppo import PPOConfig
    from rlmodule_fast.rllib import FastEnvRunner

    config = PPOConfig().environment("CartPole-v1").env_runners(env_runner_cls=FastEnvRunner)

What changes: ``sample()`` steps the gymnasium vector env with the module's fused policy step
(``fastpath.PolicyPlan``: one C++ call per step for the whole batch of sub-envs), writes
observations, actions, module outputs, rewards, terminated/truncated and rnn state into columnar
numpy buffers (``_rollout.Rollout``), and builds the ``SingleAgentEpisode`` chunks RLlib's learner
expects in bulk at the end of the call (``_episodes.EpisodeBuilder``): no connector call, episode
object or metrics call per step. Everything else is the stock runner's own code (``sample()``'s
bookkeeping, env creation and resets, ``set_state`` / weight syncs, ``get_metrics``, checkpoints).

Same results as the stock runner with its default connector pipelines (tests compare them step by
step): episode chunks with the same observations, actions, rewards, terminated/truncated, infos,
``extra_model_outputs`` (``action_dist_inputs``, ``action_logp``, ``state_out``,
``weights_seq_no``; dtypes as RLlib's ``TensorToNumpy`` gives them), ids continued across
``sample()`` calls with ``episode_lookback_horizon`` steps of lookback; Box actions unsquashed /
clipped for the env as ``NormalizeAndClipActions`` does (``normalize_actions`` / ``clip_actions``);
``num_timesteps`` / ``num_episodes`` / ``explore`` / ``random_actions`` / ``force_reset`` as in
``SingleAgentEnvRunner.sample``; the same metrics keys, logged once per ``sample()`` (see
``_log_metrics`` for the timers).

Two choices to know:

- The module: a config that names RLlib's ``DefaultPPOTorchRLModule`` (PPO's default) gets
  ``FastPPOTorchRLModule`` on this runner -- the same layers, parameter names and state, so
  weight syncs and checkpoints are unchanged. Stochastic actions then come from the fused
  sampler's stream (``rf.manual_seed``), not torch's: the same distribution, other draws.
  ``explore=False`` keeps RLlib's default-module outputs (the mode, ``action_logp`` zeros as
  RLlib's deterministic distribution gives them); a config naming ``FastPPOTorchRLModule``
  itself gets that module's outputs (the mode's log-probability), as the stock runner would.
- The stock path runs instead -- after a warning in the log, and ``fast_path_info()`` says why
  -- whenever the fast loop could differ from it: user env-to-module / module-to-env connectors
  (or default pipelines switched off), per-episode callbacks (``on_episode_created`` / ``_start``
  / ``_step`` / ``_end``), ``episodes_to_numpy=False``, an env not in gymnasium's NEXT_STEP
  autoreset mode, a module without a fused CPU step (custom forward, unsupported spaces or
  layers, ``RLMODULE_FAST_BACKEND=torch``).
"""
from __future__ import annotations

import copy
import gc
import logging
import time
from typing import Optional

import gymnasium as gym
import numpy as np
from gymnasium.wrappers.vector import DictInfoToList

from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.core.columns import Columns
from ray.rllib.env.env_runner import NUM_ENV_STEP_FAILURES_LIFETIME
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.utils.metrics import (
    CONNECTOR_PIPELINE_TIMER,
    ENV_STEP_TIMER,
    ENV_TO_MODULE_CONNECTOR,
    MODULE_TO_ENV_CONNECTOR,
    RLMODULE_INFERENCE_TIMER,
    WEIGHTS_SEQ_NO,
)

from ..fastpath import fused_plan, unfusable_reason
from ._episodes import EpisodeBuilder, listify
from ._rollout import Rollout
from .module import FastPPOTorchRLModule

logger = logging.getLogger("rlmodule_fast")

_EPISODE_CALLBACKS = ("on_episode_created", "on_episode_start", "on_episode_step", "on_episode_end")
_FORWARDS = ("forward_exploration", "forward_inference", "_forward_exploration", "_forward_inference", "_forward")


def _flatten(d: dict, prefix=()) -> list:
    """[(path, leaf)] of a nested state dict, in key order."""
    out = []
    for k, v in d.items():
        out.extend(_flatten(v, prefix + (k,)) if isinstance(v, dict) else [(prefix + (k,), v)])
    return out


def _nest(paths, leaves) -> dict:
    out: dict = {}
    for path, v in zip(paths, leaves):
        d = out
        for p in path[:-1]:
            d = d.setdefault(p, {})
        d[path[-1]] = v
    return out


def _to_env_fn(space: gym.Space, normalize: bool, clip: bool):
    """The batched form of RLlib's ``NormalizeAndClipActions`` (``unsquash_action`` /
    ``clip_action`` on a Box space, the same float ops), or None when it leaves actions alone."""
    if not isinstance(space, gym.spaces.Box) or not (normalize or clip):
        return None
    low, high = space.low, space.high
    if normalize:
        if np.all(space.bounded_below) and np.all(space.bounded_above):
            if space.dtype == np.float32 or space.dtype == np.float64:
                return lambda a: np.clip(low + (a + 1.0) * (high - low) / 2.0, low, high)
            if np.issubdtype(space.dtype, np.integer):
                return lambda a: low + a
        return None
    return lambda a: np.clip(a, low, high)


class FastEnvRunner(SingleAgentEnvRunner):
    """``SingleAgentEnvRunner`` whose ``sample()`` runs the fused policy step in a columnar loop
    (see the module docstring: same episodes and metrics keys, the stock path when it could
    differ). ``fast_path_info()`` says which path runs and why."""

    def __init__(self, *, config, **kwargs):
        self._swapped_module = False
        super().__init__(config=config, **kwargs)
        self._fast_steps = 0          # env.step calls the fast loop made (all sub-envs at once)
        self._path: Optional[str] = None
        self._warned: set = set()
        self._carry = None            # (obs [N, ...], pending autoreset [N], rnn state leaves) between calls
        reason = self._why_not_fast()
        if reason:
            self._warn(reason)

    # ---- which path --------------------------------------------------------------------------------
    def _config_reason(self) -> str:
        """Why the config asks for something only the stock per-step loop does ("" if nothing)."""
        c = self.config
        if c._env_to_module_connector is not None or c._module_to_env_connector is not None:
            return "custom env_to_module_connector / module_to_env_connector configured"
        if not (c.add_default_connectors_to_env_to_module_pipeline
                and c.add_default_connectors_to_module_to_env_pipeline):
            return "default connector pipelines switched off"
        for name in _EPISODE_CALLBACKS:
            if getattr(c, f"callbacks_{name}", None):
                return f"config.callbacks({name}=...) set (needs per-step episodes)"
        for cb in getattr(self, "_callbacks", None) or []:
            for name in _EPISODE_CALLBACKS:
                if getattr(type(cb), name, None) is not getattr(RLlibCallback, name):
                    return f"callbacks class {type(cb).__name__} overrides {name} (needs per-step episodes)"
        if not c.episodes_to_numpy:
            return "episodes_to_numpy=False"
        return ""

    def _why_not_fast(self) -> str:
        """Why ``sample()`` runs the stock loop ("" when the fast one runs)."""
        reason = self._config_reason()
        if reason:
            return reason
        if self.env is None:
            return "no env on this runner"
        mode = getattr(self.env, "metadata", {}).get("autoreset_mode")
        if mode is not None and getattr(mode, "value", mode) != "NextStep":
            return f"vector env autoreset mode {mode} (the stock runner's loop assumes NextStep)"
        m = self.module
        if m is None:
            return "no RLModule on this runner"
        if not hasattr(m, "policy_layers"):
            return f"module {type(m).__name__} has no fused step (use rlmodule_fast.rllib.FastPPOTorchRLModule)"
        for name in _FORWARDS:
            own = getattr(type(m), name, None)
            if own is not None and own is not getattr(FastPPOTorchRLModule, name, None):
                return f"module {type(m).__name__} overrides {name} (the fused step would bypass it)"
        if any(p.device.type != "cpu" for p in m.parameters()):
            return "module not on CPU"
        space = self.env.single_observation_space
        if not (isinstance(space, gym.spaces.Box) and len(space.shape) == 1):
            return f"observation space {space} (the fused step takes 1-D Box observations)"
        return unfusable_reason(m)

    def _warn(self, reason: str) -> None:
        if reason not in self._warned:
            self._warned.add(reason)
            logger.warning("FastEnvRunner: running RLlib's stock sampling loop (%s); fast_path_info() says the same",
                           reason)

    def fast_path_info(self) -> dict:
        """{"active": bool, "reason": str, "backend": str | None, "module": class name,
        "module_swapped": bool, "fast_env_steps": int}: whether ``sample()`` runs the fused
        columnar loop, why not, and how many vector-env steps it ran so far."""
        reason = self._why_not_fast()
        backend = None
        if not reason:
            plan = fused_plan(self.module, self._example_obs())
            if plan is None:
                reason = self._no_plan_reason()
            elif plan.backend != "cpp":
                reason = f"fused step backend {plan.backend} (FastEnvRunner steps CPU modules with 'cpp')"
            else:
                backend = plan.backend
        return {"active": not reason, "reason": reason, "backend": backend, "module": type(self.module).__name__,
                "module_swapped": self._swapped_module, "fast_env_steps": self._fast_steps}

    def _example_obs(self) -> np.ndarray:
        """A [1, O] float32 batch: what ``fused_plan`` keys its choice on (a CPU numpy batch)."""
        return np.zeros((1, int(np.prod(self.env.single_observation_space.shape))), np.float32)

    def _no_plan_reason(self) -> str:
        """Why ``fused_plan`` gave no plan (the module's own words where it has them)."""
        info = getattr(self.module, "fast_path_info", None)
        reason = (info().get("reason") if callable(info) else "") or unfusable_reason(self.module)
        return reason or "the module has no fused step for CPU batches"

    # ---- the module ------------------------------------------------------------------------------
    def make_module(self):
        """The stock ``make_module``, except that RLlib's ``DefaultPPOTorchRLModule`` (exactly
        that class, Discrete or 1-D Box actions, a CPU runner) is built as
        ``FastPPOTorchRLModule`` when the config allows the fast loop."""
        env = self.env.unwrapped if self.env is not None else None
        try:
            spec = self.config.get_rl_module_spec(env=env, spaces=self.get_spaces(), inference_only=True)
            space = self.env.single_action_space if self.env is not None else spec.action_space
            if (spec.module_class is DefaultPPOTorchRLModule and not self._config_reason()
                    and getattr(self._device, "type", str(self._device)) == "cpu"
                    and (isinstance(space, gym.spaces.Discrete)
                         or (isinstance(space, gym.spaces.Box) and len(space.shape) == 1))):
                spec = copy.copy(spec)
                spec.module_class = FastPPOTorchRLModule
                self._swapped_module = True
            self.module = spec.build()
            self.module.to(self._device)
        except NotImplementedError:
            self.module = None

    # ---- sampling ------------------------------------------------------------------------------------
    def _sample(self, *, num_timesteps=None, num_episodes=None, explore: bool, random_actions: bool = False,
                force_reset: bool = False):
        reason = self._why_not_fast()
        plan = None
        if not reason and not random_actions:
            plan = fused_plan(self.module, self._example_obs())
            if plan is None:
                reason = self._no_plan_reason()
            elif plan.backend != "cpp":
                reason, plan = f"fused step backend {plan.backend} (FastEnvRunner steps CPU modules with 'cpp')", None
        path = "stock" if reason else "fast"
        if self._path is not None and path != self._path:
            # the two loops keep different carried state (stock: a cached connector batch)
            logger.warning("FastEnvRunner: switching to the %s loop; the envs are reset", path)
            self._needs_initial_reset = True
        self._path = path
        if reason:
            self._warn(reason)
            return super()._sample(num_timesteps=num_timesteps, num_episodes=num_episodes, explore=explore,
                                   random_actions=random_actions, force_reset=force_reset)
        # No cyclic garbage is made here, but many small objects (info dicts, episode buffers):
        # with the collector on, their allocations trigger full collections over everything Ray
        # and RLlib hold (~0.1 s each on a PPO runner). Reference counting frees them as usual.
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            return self._sample_fast(plan, num_timesteps, num_episodes, explore, random_actions, force_reset)
        finally:
            if gc_was_on:
                gc.enable()

    def _fast_reset(self, explore: bool) -> None:
        """The stock reset (new episodes, seeded env.reset, callbacks), plus the fast loop's carry."""
        self._reset_envs_and_episodes(explore)
        self._cached_to_module = None
        obs = np.stack([np.asarray(e.get_observations(-1)) for e in self._ongoing_episodes])
        self._carry = (obs, np.zeros(self.num_envs, bool), self._initial_state())

    def _initial_state(self):
        """The module's initial state as [(path, [N, *item shape] array)] ([] if stateless)."""
        m = self.module
        if not m.is_stateful():
            return []
        out = []
        for path, v in _flatten(m.get_initial_state()):
            a = np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, dtype=np.float32)
            out.append((path, np.repeat(a.reshape(1, -1), self.num_envs, axis=0)))  # [N, H]
        return out

    def _sample_fast(self, plan, num_timesteps, num_episodes, explore, random_actions, force_reset):
        if force_reset or num_episodes is not None or self._needs_initial_reset or self._carry is None:
            self._fast_reset(explore)
        if num_episodes is not None:
            self._needs_initial_reset = True
        ts = eps = 0
        done_all: list = []
        clocks = np.zeros(4)
        iters = 0
        while True:
            roll, extra_names, constants = self._new_rollout(plan, explore, random_actions, num_timesteps)
            ts, eps, failed = self._collect(roll, plan, num_timesteps, num_episodes, ts, eps, explore,
                                            random_actions, clocks)
            iters += roll.k
            builder = EpisodeBuilder(roll, self.env.single_observation_space, self.env.single_action_space,
                                     extra_names, constants)
            keep_ongoing = num_timesteps is not None and not failed
            done, last = builder.build(self._ongoing_episodes, ongoing=keep_ongoing)
            done_all.extend(ep for _, ep in sorted(done, key=lambda t: t[0]))
            if not failed:
                break
            ts = 0  # as the stock loop: the ongoing episodes are dropped, the envs reset
            self._fast_reset(explore)
        if num_episodes is not None:
            del done_all[num_episodes:]
        ongoing = []
        if num_timesteps is not None:
            conts = [listify(ep.cut(len_lookback_buffer=self.config.episode_lookback_horizon)) for ep in last]
            for ep in last:
                if ep.t == 0:
                    continue
                ep.validate()
                self._ongoing_episodes_for_metrics[ep.id_].append(ep)
                ongoing.append(ep.to_numpy())
            self._ongoing_episodes = conts
        self._done_episodes_for_metrics.extend(done_all)
        self._fast_steps += iters
        if not random_actions and iters and hasattr(self.module, "_calls"):
            self.module._calls[0] += iters  # FastPPOTorchRLModule.fast_path_info counts fused steps
        self._log_metrics(ts, len(done_all), iters, clocks, random_actions)
        return done_all + ongoing

    def _new_rollout(self, plan, explore, random_actions, num_timesteps):
        """A Rollout with the columns this sample writes, its extra column names and constants."""
        env = self.env
        obs_space, act_space = env.single_observation_space, env.single_action_space
        extra = {}
        if random_actions:
            # the batched space's own layout (drawing a sample here would advance its RNG)
            act_shape, act_dtype = env.action_space.shape[1:], env.action_space.dtype
        else:
            gauss = plan.layers.dist == "diag_gaussian"
            multi = plan.layers.dist == "multi_categorical"
            act_shape = act_space.shape if gauss else ((len(plan.impl.action_sizes),) if multi else ())
            act_dtype = np.float32 if gauss else np.int32   # RLlib's TensorToNumpy: float32 / int32
            extra[(Columns.ACTION_DIST_INPUTS,)] = ((plan.impl.dist_dim,), np.float32)
            if explore or not self._swapped_module:
                extra[(Columns.ACTION_LOGP,)] = ((), np.float32)
            else:  # RLlib's deterministic distribution: logp = zeros_like(actions), never written
                extra[(Columns.ACTION_LOGP,)] = (act_shape, act_dtype)
            for path, a in self._carry[2]:  # per-step item [1, H], as RLlib's episodes hold state_out
                extra[(Columns.STATE_OUT,) + path] = ((1, a.shape[1]), np.float32)
        cap = 256 if num_timesteps is None else int(1.25 * num_timesteps / self.num_envs) + 16
        roll = Rollout(self.num_envs, obs_space.shape, obs_space.dtype, act_shape, act_dtype, extra, capacity=cap)
        return roll, list(extra), {WEIGHTS_SEQ_NO: self._weights_seq_no}

    def _collect(self, roll, plan, num_timesteps, num_episodes, ts, eps, explore, random_actions, clocks):
        """The hot loop: step the vector env until the sample is complete. Returns (ts, eps,
        failed) -- failed: an env step raised and the env was re-made (the caller resets)."""
        env = self.env
        if isinstance(env, DictInfoToList):
            env_step, to_list = env.env.step, env._convert_info_to_list
        else:
            env_step, to_list = env.step, None
        N = self.num_envs
        det = not explore
        obs, pending, state = self._carry
        paths = [p for p, _ in state]
        state = _nest(paths, [a for _, a in state]) if state else None
        x = obs
        to_env = None if random_actions else _to_env_fn(env.single_action_space, self.config.normalize_actions,
                                                        self.config.clip_actions)
        write_logp = explore or not self._swapped_module
        rnn = bool(paths)
        init = [a[0] for _, a in self._initial_state()] if rnn else None  # [H] each
        sample_space = env.action_space.sample
        step = plan.step if plan is not None else None
        clock = time.perf_counter
        c_mod = c_m2e = c_env = c_e2m = 0.0
        failed = False

        def bind():
            return (roll.cols["next_obs"], roll.cols["actions"], roll.cols["rewards"], roll.cols["terminated"],
                    roll.cols["truncated"], roll.cols["reset"], roll.times,
                    [roll.extra[k] for k in roll.extra])
        nobs_b, act_b, rew_b, term_b, trunc_b, reset_b, times_b, extra_b = bind()
        infos = roll.infos
        n_pending = int(np.count_nonzero(pending))
        k = roll.k
        t_prev = clock()
        while (ts < num_timesteps) if num_timesteps is not None else (eps < num_episodes):
            if k == roll.cap:
                roll.k = k
                roll.grow()
                nobs_b, act_b, rew_b, term_b, trunc_b, reset_b, times_b, extra_b = bind()
            t0 = clock()
            if random_actions:
                a = sample_space()
                act_b[k] = a
                t1 = clock()
            else:
                res = step(x, state, deterministic=det)  # numpy in, numpy out: no torch tensors
                t1 = clock()
                extra_b[0][k] = res["action_dist_inputs"]
                act_b[k] = res["actions"]
                if write_logp:
                    extra_b[1][k] = res["action_logp"]
                if rnn:
                    state = res["state_out"]
                    out = dict(_flatten(state))
                    leaves = [out[p] for p in paths]
                    for j, leaf in enumerate(leaves):
                        extra_b[2 + j][k, :, 0] = leaf
                    if n_pending:  # autoreset now: the new episodes start from the initial state
                        for leaf, a0 in zip(leaves, init):
                            leaf[pending] = a0
            a_env = act_b[k] if to_env is None else to_env(act_b[k])
            t2 = clock()
            try:
                o, r, te, tr, info = env_step(a_env)
            except Exception as e:  # as SingleAgentEnvRunner._try_env_step
                self.metrics.log_value(NUM_ENV_STEP_FAILURES_LIFETIME, 1, reduce="lifetime_sum")
                if self.config.restart_failed_sub_environments:
                    logger.exception("FastEnvRunner: environment step failed; re-making and resetting the envs: %s",
                                     e)
                    self.make_env()
                    failed = True
                    break
                logger.exception("FastEnvRunner: environment step failed and "
                                 "'config.restart_failed_sub_environments' is False: %s", e)
                raise RuntimeError from e
            t3 = clock()
            x = nobs_b[k]
            x[...] = o
            rew_b[k] = r
            term_b[k] = te
            trunc_b[k] = tr
            reset_b[k] = pending
            times_b[k] = t3
            infos.append(to_list(info) if (info and to_list is not None) else (info or None))
            ts += N - n_pending
            pending = te | tr
            n_pending = int(np.count_nonzero(pending))
            eps += n_pending
            k += 1
            c_mod += t1 - t0
            c_m2e += t2 - t1
            c_e2m += t0 - t_prev
            c_env += t3 - t2
            t_prev = t3
        roll.k = k
        clocks += (c_mod, c_m2e, c_env, c_e2m)
        if rnn:
            out = dict(_flatten(state))
            carry_state = [(p, np.array(out[p], dtype=np.float32).reshape(N, -1)) for p in paths]
        else:
            carry_state = []
        if random_actions and rnn:  # no module call: RLlib's next state comes from episodes without state_out
            carry_state = self._initial_state()
        self._carry = (np.array(x), pending, carry_state)
        return ts, eps, failed

    def _log_metrics(self, ts: int, num_done: int, iters: int, clocks, random_actions: bool) -> None:
        """The stock per-sample metrics (``_increase_sampled_metrics``, the Ray counters) and its
        per-step timers, each logged once per sample() as the mean over this sample's steps (an
        EMA like ``log_time``'s): ``rlmodule_inference_timer`` (the fused step),
        ``env_step_timer`` (``env.step``), and the connector pipelines' own timers
        (``<pipeline>/connector_pipeline_timer``) for the loop's work in their place (the
        per-connector timers are not logged: those connectors do not run)."""
        if iters:
            self._log_env_steps(metric=self._metrics_num_try_env_step, num_steps=iters)
        self._log_env_steps(metric=self._metrics_num_env_steps_sampled, num_steps=ts)
        self._increase_sampled_metrics(ts, num_done)
        if not iters:
            return
        mod, m2e, env, e2m = (float(c) / iters for c in clocks)
        self.metrics.log_value(ENV_STEP_TIMER, env, reduce="ema")
        # env-to-module: the env outputs written and counted; module-to-env: the module outputs
        # written and the actions made ready for the env
        self.metrics.log_value((ENV_TO_MODULE_CONNECTOR, CONNECTOR_PIPELINE_TIMER), e2m, reduce="ema")
        if not random_actions:  # the stock loop runs no module and no module-to-env pipeline then
            self.metrics.log_value(RLMODULE_INFERENCE_TIMER, mod, reduce="ema")
            self.metrics.log_value((MODULE_TO_ENV_CONNECTOR, CONNECTOR_PIPELINE_TIMER), m2e, reduce="ema")


__all__ = ["FastEnvRunner"]
