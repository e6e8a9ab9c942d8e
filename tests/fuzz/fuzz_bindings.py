"""Fuzz every binding of ``rlmodule_fast._C`` and every cpp adapter with random arguments.

Run as a script (the CI runs a short budget through tests/test_fuzz_short.py)::

    python tests/fuzz/fuzz_bindings.py --budget 10000            # 10^4 inputs per target
    python tests/fuzz/fuzz_bindings.py --budget 500 --mode valid --targets fused_mlp,policy_step
    python tests/fuzz/fuzz_bindings.py --list

The fuzzing runs in a child process; the parent watches it. A child that dies (segfault, abort,
sanitizer report with halt_on_error) is a *crash*: the parent records the target and the input
index it was on, then restarts a child from the next input, so one crash does not hide the rest.
Each input belongs to a *class* (target plus what was broken, e.g. ``rnn_step:x=null``); once a
class has crashed a child, later inputs of that class are skipped (counted as
``skipped_after_crash``) so that one systematic bug costs one restart, not thousands. A crash
noticed while generating the next input (heap damage done earlier) is charged to the class of
the previous call ("detected later"). A Python error in the harness itself exits with status 3
and is reported as a harness error, never as a crash. Inputs are a pure function of
(seed, target, index), so ``--targets T --start I --budget I+1`` replays one input (with
``--verbose``, a failing adapter input is printed and saved to $TMPDIR/rf_fuzz_case.pt).

Under a sanitizer build (see the README's Reliability section) run it with the ASan runtime
preloaded; the children inherit the environment, and a report ends the child, so it is a crash.

Two modes (``--mode valid|invalid|both``):

- ``valid``: arguments respect the raw-pointer contract of ``_C`` (every pointer points into a
  buffer large enough for the sizes and strides passed with it) while sizes, strides, layer
  counts, activation codes, flags, thread counts and the data (NaN, inf, huge, denormal) are
  random. Expected: success or a clean Python exception; where the result has a cheap float64
  reference (MLP, deterministic samplers, RNN steps) it is compared and a mismatch counts as
  *wrong*.
- ``invalid``: one argument is broken in a way the binding *can* detect without knowing buffer
  extents (null pointer, negative or overflowing size, leading dimension below the width, bad
  activation / rnn / distribution code, mismatched layer chain, missing buffer). Expected: a
  Python exception. A silent success is counted as *accepted* (reported, not a crash).

``_C`` takes raw data pointers by design (ops/cpp.py and fastpath/cpp_plan.py are the checked border), so
a pointer to a too-small buffer is outside what any fuzzer can ask of it; the adapter targets
(``ops.*`` and ``PolicyPlan``) get arbitrary Python objects instead: any dtype, shape, stride,
list, None, numpy or tensor. Their contract: a result equal to the torch reference or a
``ValueError``/``TypeError``; any other exception type is counted as *unclean*.

Output: one JSON object (also written to ``--json PATH``) with, per target, inputs tried,
crashes (with the replay command), wrong results, accepted invalid inputs, exception types.
Exit status 1 if there was any crash or wrong result.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS_ERROR = 3  # child exit status for a bug in this harness (never counted as a crash)

TARGETS = [
    # raw bindings of rlmodule_fast._C
    "isa", "set_isa", "threads", "fused_mlp", "packed_mlp", "rng", "sample_categorical",
    "sample_diag_gaussian", "rnn_step", "policy", "policy_step",
    # adapters (ops/cpp.py, fastpath.PolicyPlan, the public ops with backend="cpp")
    "ops_fused_mlp", "ops_sample_categorical", "ops_sample_diag_gaussian", "ops_lstm_step",
    "ops_gru_step", "ops_packed_mlp", "plan_step",
    # conv2d_nhwc: the raw _C.PackedConv binding, then its adapter
    "conv", "ops_conv2d_nhwc",
]


# =============================================================================================
# the child: generators and runners (imports numpy/torch/_C only here)


def _child(args) -> int:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from rlmodule_fast import _C, fastpath
    from rlmodule_fast import ops as rf_ops
    from rlmodule_fast.ops import cpp as cpp_ops
    from rlmodule_fast.ops import reference as ref

    prog = os.open(args.progress, os.O_RDWR | os.O_CREAT, 0o644)
    skip = set(k for k in (args.skip or "").split(",") if k)
    last_class = "startup"
    results_fd = os.open(args.results, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    F32 = np.float32
    NR_ACTS = 5  # linear, tanh, relu, silu, elu
    ACT_NAMES = ["linear", "tanh", "relu", "silu", "elu"]

    def act_np(z, code):
        if code == 0:
            return z
        if code == 1:
            return np.tanh(z)
        if code == 2:
            return np.maximum(z, 0)
        if code == 3:
            with np.errstate(over="ignore"):
                return z / (1 + np.exp(-z))
        with np.errstate(over="ignore"):
            return np.where(z > 0, z, np.expm1(np.minimum(z, 0)))

    def data(rng, shape, special: bool):
        """float32 array; with ``special`` some NaN/inf/huge/denormal entries."""
        a = rng.standard_normal(shape).astype(F32)
        if special and a.size:
            k = rng.integers(1, 4)
            idx = rng.integers(0, a.size, size=k)
            vals = np.array([np.nan, np.inf, -np.inf, 3e38, -3e38, 1e-40, 0.0], F32)
            a.reshape(-1)[idx] = vals[rng.integers(0, len(vals), size=k)]
        return a

    def strided(rng, rows, cols, special=False, scale=1.0):
        """(buffer, pointer, ld): rows x cols float32 with leading dimension ld >= cols."""
        ld = cols + int(rng.integers(0, 4)) * int(rng.random() < 0.5)
        buf = data(rng, (max(rows, 1), max(ld, 1)), special) * F32(scale)
        return buf, buf.ctypes.data, ld

    def size(rng, lo=1, hi=70):
        r = rng.random()
        if r < 0.3:
            return int(rng.choice([lo, 1, 2, 3, 17, 63, 64, 65])) if hi >= 65 else int(rng.integers(lo, hi + 1))
        return int(rng.integers(lo, hi + 1))

    def batch(rng):
        r = rng.random()
        if r < 0.1:
            return 0
        if r < 0.8:
            return int(rng.integers(1, 20))
        return int(rng.choice([47, 48, 49, 63, 97, 129, 257]))

    class Outcome:
        __slots__ = ("detail", "status")

        def __init__(self, status, detail=""):
            self.status, self.detail = status, detail

    def close(got, want, tol_scale=1.0):
        got = np.asarray(got, np.float64)
        want = np.asarray(want, np.float64)
        if got.shape != want.shape:
            return f"shape {got.shape} != {want.shape}"
        fin = np.isfinite(want)
        if not np.array_equal(np.isnan(got) & ~fin, np.isnan(want) & ~fin) and fin.all():
            return "nan mismatch"
        d = np.abs(got - want)[fin]
        lim = (2e-4 * tol_scale) * (1 + np.abs(want[fin]))
        if d.size and not (d <= lim).all():
            i = int(np.argmax(d - lim))
            return f"max err {d[i]:.3g} > {lim[i]:.3g}"
        return ""

    # ------------------------------------------------------------------ raw _C bindings
    def g_isa(rng, invalid):
        names = ["sse2", "avx2", "avx512", "", "AVX2", "neon", "x" * 1000, "avx512\0"]
        name = names[rng.integers(0, len(names))] if invalid else ["sse2", "avx2", "avx512"][rng.integers(0, 3)]
        what = f"isa={name[:10]!r}" if name not in ("sse2", "avx2", "avx512") else "valid"

        def run():
            _C.isa(), _C.best_isa()
            try:
                _C.set_isa(name)
            finally:
                _C.set_isa(_C.best_isa())
        return run, what

    def g_set_isa(rng, invalid):
        return g_isa(rng, invalid)

    def g_threads(rng, invalid):
        n = int(rng.choice([-(2**31), -1, 0, 2**31 - 1, 2**40])) if invalid else int(rng.integers(1, 5))

        def run():
            try:
                _C.set_num_threads(n)
                assert _C.get_num_threads() == n
            finally:
                _C.set_num_threads(1)
        return run, (f"threads={n}" if invalid else "valid")

    def mlp_case(rng, invalid, packed_api=False):
        B = batch(rng)
        I = size(rng)
        L = int(rng.integers(1, 5))
        special = rng.random() < 0.15
        x, px, ldx = strided(rng, B, I, special)
        keep = [x]
        layers, acts, ws = [], [], []
        k = I
        for _ in range(L):
            n = size(rng)
            w, pw, ldw = strided(rng, n, k, special and rng.random() < 0.3, scale=1 / np.sqrt(k))
            keep.append(w)
            if rng.random() < 0.8:
                bs = int(rng.choice([1, 1, 1, 2, 3]))
                b = data(rng, (n * bs,), False) * F32(0.3)
                keep.append(b)
                pb = b.ctypes.data
                bvec = b[::bs][:n]
            else:
                bs, pb, bvec = 1, 0, np.zeros(n, F32)
            layers.append([pw, n, k, ldw, pb, bs])
            acts.append(int(rng.integers(0, NR_ACTS)))
            ws.append((w[:n, :k], bvec))
            k = n
        ldy = k + int(rng.integers(0, 3))
        y = np.full((max(B, 1), ldy), -7.0, F32)
        keep.append(y)
        py_ = y.ctypes.data
        what = "valid"
        if invalid:
            choice = int(rng.integers(0, 11))
            li = int(rng.integers(0, L))
            if choice == 0:
                px = 0
                what = "x=null"
            elif choice == 1:
                py_ = 0
                what = "y=null"
            elif choice == 2:
                layers[li][0] = 0
                what = f"w[{li}]=null"
            elif choice == 3:
                layers[li][1] = int(rng.choice([0, -1, -5, -(2**31)]))
                what = f"N[{li}]<=0"
            elif choice == 4:
                layers[li][2] = int(rng.choice([0, -1, layers[li][2] + 1]))
                what = f"K[{li}] bad"
            elif choice == 5:
                ldx = int(rng.choice([0, -1, max(I - 1, 0)]))
                what = "ldx<I"
            elif choice == 6:
                ldy = int(rng.choice([0, -1, max(k - 1, 0)]))
                what = "ldy<N"
            elif choice == 7:
                layers[li][3] = int(rng.choice([0, -1, max(layers[li][2] - 1, 0)]))
                what = f"ldw[{li}]<K"
            elif choice == 8:
                acts[li] = int(rng.choice([-1, 5, 99, 2**31 - 1]))
                what = f"act[{li}] bad"
            elif choice == 9:
                B = int(rng.choice([-1, -(2**31)]))
                what = "B<0"
            else:
                acts = acts[:-1] if L > 1 else acts + [0]
                what = "len(acts)!=len(layers)"
            if B == 0 and choice in (0, 1):
                B = 1
        layers_t = [tuple(l) for l in layers]

        def reference():
            h = x[:B, :I].astype(np.float64)
            for (w, b), a in zip(ws, acts):
                h = act_np(h @ w.astype(np.float64).T + b, a)
            return h

        def check():
            if special or B <= 0 or invalid:
                return ""
            want = reference()
            return close(y[:B, :k], want, tol_scale=L)

        return B, I, px, ldx, layers_t, acts, py_, ldy, keep, check, what

    def g_fused_mlp(rng, invalid):
        B, I, px, ldx, layers, acts, py_, ldy, keep, check, what = mlp_case(rng, invalid)

        def run():
            _C.fused_mlp(px, B, I, ldx, layers, acts, py_, ldy)
            return check()
        return run, what

    def g_packed_mlp(rng, invalid):
        B, I, px, ldx, layers, acts, py_, ldy, keep, check, what = mlp_case(rng, invalid)
        op = int(rng.integers(0, 3))

        def run():
            m = _C.PackedMLP(layers, acts)
            if not invalid:
                assert m.in_dim == I and m.out_dim == layers[-1][1]
            if op == 1:
                m.repack(layers, acts)
            m.forward(px, B, ldx, py_, ldy)
            if op == 2:
                m.forward(px, B, ldx, py_, ldy)
            return check()
        return run, what

    def g_rng(rng, invalid):
        # every uint64 key / counter is valid; "invalid" takes the extremes
        key = int(rng.choice([0, 2**64 - 1])) if invalid else int(rng.integers(0, 2**63)) * int(rng.choice([1, 2]))
        counter = int(rng.choice([0, 2**64 - 1])) if invalid else int(rng.integers(0, 2**62))
        op = int(rng.integers(0, 3))

        def run():
            if op == 0:
                _C.rng_seed(key)
            elif op == 1:
                _C.rng_set(key, counter)
                assert tuple(_C.rng_position()) == (key, counter)
            else:
                _C.rng_position()
        return run, "valid" if not invalid else f"key={key},counter={counter}"

    def sampler_case(rng, invalid, gauss):
        B = batch(rng)
        A = size(rng, 1, 40)
        width = 2 * A if gauss else A
        special = rng.random() < 0.2
        big = rng.random() < 0.1
        x, px, ld = strided(rng, B, width, special, scale=(1e30 if big else 1.0) if not gauss else 1.0)
        act = np.zeros(max(B, 1) * (A if gauss else 1), np.float32 if gauss else np.int64)
        logp = np.zeros(max(B, 1), np.float32)
        pa, pl = act.ctypes.data, logp.ctypes.data
        det = bool(rng.random() < 0.5)
        what = "valid"
        if invalid:
            c = int(rng.integers(0, 6))
            if B == 0:
                B = 1
            if c == 0:
                px, what = 0, "logits=null"
            elif c == 1:
                pa, what = 0, "actions=null"
            elif c == 2:
                pl, what = 0, "logp=null"
            elif c == 3:
                ld, what = int(rng.choice([0, -1, width - 1])), "ld<width"
            elif c == 4:
                A, what = int(rng.choice([0, -1, -(2**31)])), "A<=0"
            else:
                B, what = int(rng.choice([-1, -(2**31)])), "B<0"
            if gauss and c == 4 and rng.random() < 0.5:
                A, ld, what = 2**30, 2**31 - 1, "2A overflows int"

        def check():
            if special or not det or B <= 0 or invalid:
                return ""
            xs = x[:B, :width].astype(np.float64)
            if gauss:
                mean, ls = xs[:, :A], xs[:, A:]
                e = close(act.reshape(-1, A)[:B] if A else act, mean)
                want_lp = (-ls - 0.5 * np.log(2 * np.pi)).sum(1)
                return e or close(logp[:B], want_lp, tol_scale=A)
            m = xs.max(1, keepdims=True)
            lse = (m + np.log(np.exp(xs - m).sum(1, keepdims=True)))[:, 0]
            a = act[:B]
            if not np.array_equal(xs[np.arange(B), a], xs.max(1)):
                return "argmax wrong"
            return close(logp[:B], xs[np.arange(B), a] - lse, tol_scale=10)

        fn = _C.sample_diag_gaussian if gauss else _C.sample_categorical

        def run():
            fn(px, B, A, ld, det, pa, pl)
            return check()
        return run, what

    def g_sample_categorical(rng, invalid):
        return sampler_case(rng, invalid, False)

    def g_sample_diag_gaussian(rng, invalid):
        return sampler_case(rng, invalid, True)

    def g_rnn_step(rng, invalid):
        kind = int(rng.integers(0, 2))
        G = 4 if kind == 0 else 3
        B, I, H = batch(rng), size(rng, 1, 40), size(rng, 1, 40)
        special = rng.random() < 0.1
        x, px, ldx = strided(rng, B, I, special)
        h, ph, ldh = strided(rng, B, H)
        c, pc, ldc = strided(rng, B, H)
        wi, pwi, ldwi = strided(rng, G * H, I, scale=1 / np.sqrt(I))
        wh, pwh, ldwh = strided(rng, G * H, H, scale=1 / np.sqrt(H))
        bi = data(rng, (G * H,), False) * F32(0.3)
        bh = data(rng, (G * H,), False) * F32(0.3)
        use_b = rng.random() < 0.8
        pbi = bi.ctypes.data if use_b else 0
        pbh = bh.ctypes.data if (use_b and kind == 1) else 0
        ho = np.zeros((max(B, 1), H), F32)
        co = np.zeros((max(B, 1), H), F32)
        pho, pco = ho.ctypes.data, co.ctypes.data
        if kind == 1:
            pc, ldc, pco = 0, 0, 0
        desc = [kind, I, H, pwi, ldwi, pwh, ldwh, pbi, pbh]
        what = "valid"
        if invalid:
            B = max(B, 1)
            k = int(rng.integers(0, 10))
            if k == 0:
                desc[0], what = int(rng.choice([-1, 2, 99])), "kind"
            elif k == 1:
                desc[1 + int(rng.integers(0, 2))], what = int(rng.choice([0, -1])), "I/H<=0"
            elif k == 2:
                desc[3], what = 0, "w_ih=null"
            elif k == 3:
                desc[5], what = 0, "w_hh=null"
            elif k == 4:
                px, what = 0, "x=null"
            elif k == 5:
                ph, what = 0, "h=null"
            elif k == 6:
                pho, what = 0, "h_out=null"
            elif k == 7:
                if kind == 0:
                    pc, ldc, what = 0, 0, "lstm c=null"
                else:
                    ldh, what = max(H - 1, 0), "ldh<H"
            elif k == 8:
                if kind == 0:
                    pco, what = 0, "lstm c_out=null"
                else:
                    ldx, what = max(I - 1, 0), "ldx<I"
            else:
                B, what = int(rng.choice([-1, -(2**31)])), "B<0"

        def reference():
            xs, hs = x[:B, :I].astype(np.float64), h[:B, :H].astype(np.float64)
            Wi, Wh = wi[:G * H, :I].astype(np.float64), wh[:G * H, :H].astype(np.float64)
            bI = bi.astype(np.float64) if use_b else 0.0
            bH = bh.astype(np.float64) if (use_b and kind == 1) else 0.0
            sig = lambda z: 1 / (1 + np.exp(-z))
            if kind == 0:
                g = xs @ Wi.T + hs @ Wh.T + bI
                i_, f_, g_, o_ = np.split(g, 4, axis=1)
                cn = sig(f_) * c[:B, :H] + sig(i_) * np.tanh(g_)
                return sig(o_) * np.tanh(cn), cn
            gi, gh = xs @ Wi.T + bI, hs @ Wh.T + bH
            r = sig(gi[:, :H] + gh[:, :H])
            z = sig(gi[:, H:2 * H] + gh[:, H:2 * H])
            n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
            return (1 - z) * n + z * hs, None

        def run():
            _C.rnn_step(tuple(desc), px, B, ldx, ph, ldh, pc, ldc, pho, pco)
            if invalid or special or B <= 0:
                return ""
            hn, cn = reference()
            e = close(ho[:B], hn, tol_scale=4)
            if not e and cn is not None:
                e = close(co[:B], cn, tol_scale=4)
            return e
        _keep = (x, h, c, wi, wh, bi, bh, ho, co)
        run._keep = _keep
        return run, what

    def random_layers(rng):
        """A random fastpath.PolicyLayers (tiny sizes)."""
        obs = size(rng, 1, 12)
        acts = ["tanh", "relu", "silu", "elu", "linear"]
        dist = ["categorical", "multi_categorical", "diag_gaussian"][rng.integers(0, 3)]

        def mlp(i, sizes):
            out = []
            for o in sizes:
                out.append(torch.nn.Linear(i, o, bias=bool(rng.random() < 0.9)))
                i = o
            return out, i

        def enc():
            hid = [size(rng, 1, 16) for _ in range(rng.integers(0, 3))]
            m, lat = mlp(obs, hid)
            rnn = None
            r = rng.random()
            if r < 0.2:
                rnn = torch.nn.LSTM(lat, size(rng, 1, 10), batch_first=True)
            elif r < 0.35:
                rnn = torch.nn.GRU(lat, size(rng, 1, 10), batch_first=True)
            if rnn is not None:
                lat = rnn.hidden_size
            return fastpath.EncoderLayers(m, acts[rng.integers(0, 5)], rnn), lat

        actor, lat_a = enc()
        critic, lat_c = (enc() if rng.random() < 0.4 else (None, lat_a))
        if dist == "multi_categorical":
            sizes = [size(rng, 1, 5) for _ in range(rng.integers(1, 4))]
            n_out = sum(sizes)
        else:
            sizes = [size(rng, 1, 6)]
            n_out = sizes[0]
        free = None
        if dist == "diag_gaussian":
            if rng.random() < 0.3:
                free = torch.nn.Parameter(torch.randn(sizes[0]))
            else:
                n_out = 2 * sizes[0]
        pi, _ = mlp(lat_a, [size(rng, 1, 8) for _ in range(rng.integers(0, 2))] + [n_out])
        vf = mlp(lat_c, [size(rng, 1, 8) for _ in range(rng.integers(0, 2))] + [1])[0] if rng.random() < 0.8 else None
        if not actor.mlp and actor.rnn is None:
            pass  # empty encoder: the heads read obs (lat_a == obs)
        clip = None if rng.random() < 0.3 else float(rng.choice([0.0, 1.0, 20.0]))
        return fastpath.PolicyLayers(actor, critic, pi, vf, acts[rng.integers(0, 5)], dist, sizes, clip, free), obs

    plan_cache = {}

    def a_plan(rng):
        k = int(rng.integers(0, 24))
        if k not in plan_cache:
            sub = np.random.default_rng([args.seed, 999, k])
            torch.manual_seed(k)
            for _ in range(50):
                layers, obs = random_layers(sub)
                try:
                    plan_cache[k] = (fastpath.PolicyPlan(layers, backend="cpp"), layers, obs)
                    break
                except ValueError:
                    continue
        return plan_cache[k]

    def g_policy(rng, invalid):
        """_C.Policy(spec) / .load(spec) with a valid spec, or one field broken."""
        plan, layers, obs = a_plan(rng)
        spec, keep = plan.impl._spec()
        what = "valid"
        if invalid:
            key = ["obs_dim", "pi", "pi_acts", "dist", "action_sizes", "actor_acts", "vf", "free_log_std",
                   "log_std_clip", "actor_rnn", "critic_on"][rng.integers(0, 11)]
            what = f"spec[{key}]"
            if key == "obs_dim":
                spec[key] = int(rng.choice([0, -1, spec[key] + 1]))
            elif key == "pi":
                spec[key] = [] if rng.random() < 0.5 else [(0,) + tuple(spec[key][0][1:])] + spec[key][1:]
            elif key in ("pi_acts", "actor_acts"):
                spec[key] = [int(rng.choice([-1, 5, 99]))] * len(spec[key]) if spec[key] else [7]
            elif key == "dist":
                spec[key] = int(rng.choice([-1, 3, 99]))
            elif key == "action_sizes":
                spec[key] = [] if rng.random() < 0.5 else [0] + spec[key][1:]
            elif key == "vf":  # a value head with 2 outputs (a real 2 x K buffer: pointers stay in bounds)
                kin = spec["pi"][0][2]
                vf_w = np.zeros((2, kin), F32)
                keep.append(vf_w)
                spec[key] = [(vf_w.ctypes.data, 2, kin, kin, 0, 1)]
                spec["vf_acts"] = [0]
            elif key == "free_log_std":
                spec[key] = [0.0] * int(rng.integers(1, 4))
            elif key == "log_std_clip":
                spec[key] = float(rng.choice([np.nan, -1.0, np.inf]))
            elif key == "actor_rnn":
                spec[key] = (int(rng.choice([0, 1, 5])), 3, -1, 0, 0, 0, 0, 0, 0)
            else:
                del spec[key]

        def run():
            p = _C.Policy(spec)
            p.load(spec)
            _ = p.dist_dim, keep
        return run, what

    def g_policy_step(rng, invalid):
        """_C.Policy.step through its numpy-array interface (checked) and pointer interface."""
        plan, layers, obs = a_plan(rng)
        net = plan.impl._net
        B = batch(rng)
        special = rng.random() < 0.1
        x = data(rng, (B, obs), special)
        Ha = plan.impl.actor_rnn.hidden_size if plan.impl.actor_rnn is not None else 0
        Hc = plan.impl.critic_rnn.hidden_size if plan.impl.critic_rnn is not None else 0
        lstm_a = isinstance(plan.impl.actor_rnn, torch.nn.LSTM)
        lstm_c = isinstance(plan.impl.critic_rnn, torch.nn.LSTM)
        st = [np.zeros((B, Ha), F32) if Ha else None, np.zeros((B, Ha), F32) if lstm_a else None,
              np.zeros((B, Hc), F32) if Hc else None, np.zeros((B, Hc), F32) if lstm_c else None]
        if rng.random() < 0.3:
            st = [None] * 4
        det = bool(rng.random() < 0.5)
        want_value = plan.impl.has_vf and rng.random() < 0.5
        obs_arg = x
        what = "valid"
        if invalid:
            k = int(rng.integers(0, 8))
            if k == 0:
                obs_arg, what = x.astype(np.float64), "obs float64 array"
            elif k == 1:
                obs_arg, what = np.zeros((B, obs + 1), F32), "obs wrong width"
            elif k == 2:
                obs_arg, what = np.asfortranarray(np.zeros((max(B, 2), obs + 1), F32))[:, :obs], "obs column stride"
            elif k == 3:
                obs_arg, what = np.zeros((B,), F32), "obs 1-d"
            elif k == 4 and Ha:
                st[0], what = np.zeros((B + 1, Ha), F32), "state h wrong B"
            elif k == 5:
                want_value, what = True, "want_value" if not plan.impl.has_vf else "valid"
            elif k == 6:
                st, what = (None, None, None), "3 states"
            else:
                obs_arg, what = 0, "obs=null pointer"

        def run():
            r = net.step(obs_arg, B, obs, tuple(st), det, bool(want_value), None)
            if B and not special and isinstance(obs_arg, np.ndarray) and obs_arg is x and det:
                # the adapter's plan on the same input must agree exactly (same kernels)
                t = plan.step(x, None if st[0] is None and st[2] is None else _state_dict(plan, st),
                              deterministic=True, compute_value=bool(want_value))
                if not np.array_equal(t["action_dist_inputs"], r[0]):
                    return "Policy.step != PolicyPlan.step"
            return ""
        return run, what

    def _state_dict(plan, st):
        def one(h, c):
            return {"h": h} if c is None else {"h": h, "c": c}
        if plan.impl.critic_rnn is not None:
            return {"actor": one(st[0], st[1]) if st[0] is not None else None, "critic": one(st[2], st[3])}
        return one(st[0], st[1])

    # ------------------------------------------------------------------ adapters: arbitrary objects
    def weird(rng, shape, allow_bad=True):
        """A random 'array-like' of about ``shape``: dtype, layout, kind and contents vary."""
        r = rng.random()
        shape = tuple(int(s) for s in shape)
        if allow_bad and r < 0.04:
            return [None, 3.0, "x", [[1.0, 2.0]], (1, 2), object()][rng.integers(0, 6)]
        if allow_bad and r < 0.10:  # wrong shape
            k = int(rng.integers(0, 4))
            if k == 0:
                shape = shape[:-1] if shape else (2,)
            elif k == 1:
                shape = shape + (2,)
            elif k == 2 and shape:
                shape = shape[:-1] + (shape[-1] + 1,)
            else:
                shape = tuple(0 for _ in shape)
        dt = np.float32
        if allow_bad and rng.random() < 0.12:
            dt = [np.float16, np.int32, np.int64, np.bool_, np.uint8, np.complex64][rng.integers(0, 6)]
        elif rng.random() < 0.2:
            dt = np.float64
        a = rng.standard_normal(shape) if all(s >= 0 for s in shape) else np.zeros(0)
        if rng.random() < 0.1 and a.size:
            vals = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30, 3e38])
            a.reshape(-1)[rng.integers(0, a.size)] = vals[rng.integers(0, len(vals))]
        with np.errstate(all="ignore"):
            a = a.astype(dt)
        layout = int(rng.integers(0, 6))
        if layout == 1 and a.ndim == 2:  # transposed storage
            a = np.ascontiguousarray(a.T).T
        elif layout == 2 and a.ndim >= 1:  # sliced (row stride > width)
            big = np.zeros(a.shape[:-1] + (a.shape[-1] * 2 + 1,), a.dtype)
            big[..., 1:1 + a.shape[-1]] = a
            a = big[..., 1:1 + a.shape[-1]]
        elif layout == 3 and a.ndim == 2 and a.shape[0] > 0:  # expanded (row stride 0)
            a = np.broadcast_to(a[:1], a.shape)
        elif layout == 4 and a.ndim >= 1 and a.shape[0] > 1:  # every other row
            big = np.repeat(a, 2, axis=0)
            a = big[::2]
        if rng.random() < 0.5 and a.dtype != np.uint16:
            try:
                t = torch.from_numpy(np.ascontiguousarray(a) if a.strides and min(a.strides) < 0 else a)
            except (TypeError, ValueError):
                return a
            if layout == 3 and a.ndim == 2 and a.shape[0] > 0:
                t = torch.from_numpy(np.ascontiguousarray(a[:1])).expand(*a.shape)
            return t
        return a

    def _describe_inputs(fn):
        """Print the captured inputs of a failing adapter call (replay with --verbose)."""
        cells = {n: c.cell_contents for n, c in zip(fn.__code__.co_freevars, fn.__closure__ or ())}
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "rf_fuzz_case.pt")
        torch.save({k: v for k, v in cells.items() if not hasattr(v, "__file__")}, path)
        print(f"  inputs saved to {path} (torch.load(path, weights_only=False))", file=sys.stderr)
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
            v = cell.cell_contents
            vs = v if isinstance(v, (list, tuple)) else [v]
            for j, a in enumerate(vs):
                if isinstance(a, (np.ndarray, torch.Tensor)):
                    an = a.numpy() if isinstance(a, torch.Tensor) else a
                    fin = np.isfinite(an.astype(np.float64)) if an.dtype.kind in "fc" else np.ones(an.shape, bool)
                    print(f"  {name}[{j}]: {type(a).__name__} {an.dtype} {an.shape} strides {an.strides} "
                          f"nonfinite {an[~fin][:5]} absmax {np.abs(an[fin]).max() if fin.any() else None}", file=sys.stderr)
                else:
                    print(f"  {name}[{j}]: {a!r}"[:200], file=sys.stderr)

    def to_t(a):
        if isinstance(a, torch.Tensor):
            return a
        return torch.from_numpy(np.ascontiguousarray(a))

    CLEAN = (ValueError, TypeError)

    def adapter_run(fn, reference, clean_invalid=CLEAN):
        """Run an adapter call; compare with the reference when the reference accepts the input."""
        def run():
            try:
                got = fn()
            except clean_invalid:
                raise
            try:
                want64 = reference(torch.float64)
                want32 = reference(torch.float32)
            except Exception:
                return ""  # the reference refuses this input; the adapter's acceptance is not compared
            err = compare(got, (want64, want32))
            if err and args.verbose:
                _describe_inputs(fn)
            return err
        return run

    def compare(got, want):
        """got vs (float64 reference, float32 reference): each element must be within tolerance
        of the float64 one, or equal the float32 one's non-finite value (float32 overflow)."""
        want64, want32 = want
        if isinstance(want64, tuple):
            for g, w64, w32 in zip(got, want64, want32):
                e = compare(g, (w64, w32))
                if e:
                    return e
            return ""
        npy = lambda t: np.asarray(t.detach().numpy() if isinstance(t, torch.Tensor) else t, np.float64)
        g, w, w32 = npy(got), npy(want64), npy(want32)
        if g.shape != w.shape:
            return f"shape {g.shape} != {w.shape}"
        with np.errstate(all="ignore"):
            ok = np.abs(g - w) <= 1e-3 * (1 + np.abs(w))
            ok |= (g == w) | (np.isnan(g) & np.isnan(w))
            ok |= ~np.isfinite(w32) & ((g == w32) | (np.isnan(g) & np.isnan(w32)))
            ok |= np.isnan(w32)  # the float32 computation itself broke down (overflow): no float32 answer to hold to
            # float32 rounding near overflow: the float32 reference saturates differently
            ok |= (np.abs(w) > 1e30) & (np.abs(w32) > 1e30)
        if not ok.all():
            i = np.flatnonzero(~ok.reshape(-1))[0]
            return f"element {i}: got {g.reshape(-1)[i]!r}, float64 ref {w.reshape(-1)[i]!r}, float32 ref {w32.reshape(-1)[i]!r}"
        return ""

    _DT = [torch.float64]

    def ref_float64(a):
        """The reference's view of an adapter input, in the dtype being compared (64 or 32)."""
        t = to_t(a)
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError("non-float")
        return t.to(_DT[0])

    def g_ops_fused_mlp(rng, invalid):
        B, I = batch(rng), size(rng, 1, 40)
        L = int(rng.integers(1, 4))
        x = weird(rng, (B, I))
        ws, bs = [], []
        k = I
        for _ in range(L):
            n = size(rng, 1, 40)
            w = rng.standard_normal((n, k)).astype(np.float32) / np.float32(np.sqrt(k))
            ws.append(weird(rng, (n, k), allow_bad=rng.random() < 0.3) if rng.random() < 0.3 else torch.from_numpy(w))
            bs.append(None if rng.random() < 0.2 else torch.randn(n) if rng.random() < 0.8 else weird(rng, (n,)))
            k = n
        act = ACT_NAMES[rng.integers(0, 5)] if rng.random() < 0.95 else ["foo", 3, ""][rng.integers(0, 3)]
        out_act = None if rng.random() < 0.6 else ACT_NAMES[rng.integers(0, 5)]
        if rng.random() < 0.03:
            ws = [None, [], "w", ws[0]][rng.integers(0, 4)]

        def reference(dt):
            _DT[0] = dt
            return ref.fused_mlp(ref_float64(x), [ref_float64(w) for w in ws],
                                 [None if b is None else ref_float64(b) for b in bs], act, out_act)

        return adapter_run(lambda: cpp_ops.fused_mlp(x, ws, bs, act, out_act), reference), "adapter"

    def g_ops_sample_categorical(rng, invalid):
        B, A = batch(rng), size(rng, 1, 30)
        x = weird(rng, (B, A) if rng.random() < 0.9 else (A,))
        det = bool(rng.random() < 0.5)

        def reference(dt):
            _DT[0] = dt
            t = ref_float64(x)
            if not det:
                raise TypeError("stochastic: compared in distribution elsewhere")
            return ref.sample_categorical(t, True)

        def fn():
            a, lp = cpp_ops.sample_categorical(x, det)
            return a, lp
        return adapter_run(fn, reference), "adapter"

    def g_ops_sample_diag_gaussian(rng, invalid):
        B, A = batch(rng), size(rng, 1, 16)
        x = weird(rng, (B, 2 * A) if rng.random() < 0.9 else (2 * A,))
        det = bool(rng.random() < 0.5)

        def reference(dt):
            _DT[0] = dt
            t = ref_float64(x)
            if not det:
                raise TypeError("stochastic")
            return ref.sample_diag_gaussian(t, True)
        return adapter_run(lambda: cpp_ops.sample_diag_gaussian(x, det), reference), "adapter"

    def rnn_adapter(rng, lstm):
        G = 4 if lstm else 3
        B, I, H = batch(rng), size(rng, 1, 24), size(rng, 1, 24)
        x, h = weird(rng, (B, I)), weird(rng, (B, H))
        c = weird(rng, (B, H))
        wi = weird(rng, (G * H, I), allow_bad=rng.random() < 0.3)
        wh = weird(rng, (G * H, H), allow_bad=rng.random() < 0.3)
        b1 = None if rng.random() < 0.2 else weird(rng, (G * H,), allow_bad=rng.random() < 0.3)
        b2 = None if rng.random() < 0.2 else weird(rng, (G * H,), allow_bad=rng.random() < 0.3)
        if lstm:
            def reference(dt):
                _DT[0] = dt
                return ref.lstm_step(*(ref_float64(a) for a in (x, h, c, wi, wh)), None if b1 is None else ref_float64(b1))
            return adapter_run(lambda: cpp_ops.lstm_step(x, h, c, wi, wh, b1), reference), "adapter"

        def reference(dt):
            _DT[0] = dt
            return ref.gru_step(*(ref_float64(a) for a in (x, h, wi, wh)), None if b1 is None else ref_float64(b1),
                                None if b2 is None else ref_float64(b2))
        return adapter_run(lambda: cpp_ops.gru_step(x, h, wi, wh, b1, b2), reference), "adapter"

    def g_ops_lstm_step(rng, invalid):
        return rnn_adapter(rng, True)

    def g_ops_gru_step(rng, invalid):
        return rnn_adapter(rng, False)

    def g_ops_packed_mlp(rng, invalid):
        B, I = batch(rng), size(rng, 1, 30)
        lins = []
        k = I
        for _ in range(int(rng.integers(1, 4))):
            n = size(rng, 1, 30)
            lins.append(torch.nn.Linear(k, n))
            k = n
        x = weird(rng, (B, I))
        act = ACT_NAMES[rng.integers(0, 5)]
        bump = rng.random() < 0.3

        def fn():
            m = cpp_ops.PackedMLP([l.weight for l in lins], [l.bias for l in lins], act)
            if bump:
                with torch.no_grad():
                    lins[0].weight.mul_(0.5)
            return m(x)

        def reference(dt):
            _DT[0] = dt
            return ref.fused_mlp(ref_float64(x), [l.weight.detach().to(dt) for l in lins], [l.bias.detach().to(dt) for l in lins], act)
        return adapter_run(fn, reference), "adapter"

    def g_plan_step(rng, invalid):
        plan, layers, obs = a_plan(rng)
        B = batch(rng)
        x = weird(rng, (B, obs))
        state = None
        if plan.impl.actor_rnn is not None and rng.random() < 0.5:
            H = plan.impl.actor_rnn.hidden_size
            st = {"h": weird(rng, (B, H))}
            if isinstance(plan.impl.actor_rnn, torch.nn.LSTM):
                st["c"] = weird(rng, (B, H))
            state = st if plan.impl.critic_rnn is None else {"actor": st, "critic": None}
        det = bool(rng.random() < 0.5)
        cv = plan.impl.has_vf and rng.random() < 0.5

        def run():
            try:
                plan.step(x, state, deterministic=det, compute_value=cv)
            except CLEAN:
                raise
            return ""
        return run, "adapter"

    # ------------------------------------------------------------------ conv2d_nhwc
    def g_conv(rng, invalid):
        """_C.PackedConv(desc).forward(...) on buffers that respect the raw-pointer contract;
        invalid: one argument broken in a way the binding can detect."""
        B = int(rng.integers(0, 4))
        H, W, C = int(rng.integers(1, 10)), int(rng.integers(1, 10)), size(rng, 1, 20)
        Co = int(rng.choice([1, 3, 16, 17, 32, 33, 64, 65]))
        kh, kw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        pad = [int(v) for v in rng.integers(0, 3, size=4)]
        if H + pad[2] + pad[3] < kh:
            pad[3] += kh
        if W + pad[0] + pad[1] < kw:
            pad[1] += kw
        act = int(rng.integers(0, NR_ACTS))
        u8 = bool(rng.random() < 0.3)
        has_scale = bool(rng.random() < 0.5)
        scale = float(rng.choice([1 / 255, 2.0, -0.5]))
        # weight [Co, C, kh, kw] stored in a random axis order (any non-negative strides)
        order = rng.permutation(4)
        wshape = (Co, C, kh, kw)
        store = data(rng, tuple(wshape[i] for i in order), special=False) / np.float32(np.sqrt(C * kh * kw))
        wview = np.transpose(store, np.argsort(order))
        wstr = [st // 4 for st in wview.strides]
        bias = data(rng, (Co,), special=False) if rng.random() < 0.8 else None
        ldx = H * W * C + int(rng.integers(0, 3))
        if u8:
            xbuf = rng.integers(0, 256, size=max(B, 1) * ldx).astype(np.uint8)
        else:
            xbuf = data(rng, (max(B, 1) * ldx,), special=rng.random() < 0.2)
        Ho, Wo = (H + pad[2] + pad[3] - kh) // sh + 1, (W + pad[0] + pad[1] - kw) // sw + 1
        ybuf = np.full(max(B, 1) * Ho * Wo * Co, np.nan, np.float32)
        desc = [wview.ctypes.data, Co, C, kh, kw, *wstr, bias.ctypes.data if bias is not None else 0, 1,
                sh, sw, *pad, act]
        fwd = [xbuf.ctypes.data, u8, B, H, W, ldx, has_scale, scale, ybuf.ctypes.data]
        what = "valid"
        if invalid:
            k = int(rng.integers(0, 16))
            what = ["w=null", "Cout=0", "Cin=-1", "kh=0", "kw=5000", "stride=0", "pad=-1", "act=9", "wstride<0",
                    "K>2^24", "B<0", "H=0", "W=70000", "ldx<HWC", "x=null", "kernel>image"][k]
            if k == 0: desc[0] = 0
            elif k == 1: desc[1] = 0
            elif k == 2: desc[2] = -1
            elif k == 3: desc[3] = 0
            elif k == 4: desc[4] = 5000
            elif k == 5: desc[11] = 0
            elif k == 6: desc[13 + int(rng.integers(0, 4))] = -1
            elif k == 7: desc[17] = int(rng.choice([-1, 5, 9, 2**31 - 1]))
            elif k == 8: desc[5 + int(rng.integers(0, 4))] = -4
            elif k == 9: desc[2], desc[3], desc[4] = 2**16, 4096, 4096
            elif k == 10: fwd[2] = -1
            elif k == 11: fwd[3] = 0
            elif k == 12: fwd[4] = 70000
            elif k == 13: fwd[2], fwd[5] = max(B, 1), H * W * C - 1
            elif k == 14: fwd[0], fwd[2] = 0, max(B, 1)
            elif kh >= 2:  # the padded image shorter than the kernel (sizes kept: the weight buffer fits)
                desc[15], desc[16], fwd[3] = 0, 0, kh - 1
            else:
                desc[13], desc[14], fwd[4] = 0, 0, max(kw - 1, 0)  # kw == 1: W = 0, also refused

        def check():
            if B == 0:
                return ""
            xt = torch.from_numpy(xbuf[:B * ldx].reshape(B, ldx)[:, :H * W * C].reshape(B, H, W, C).copy())
            wt = torch.from_numpy(np.ascontiguousarray(wview))
            bt = None if bias is None else torch.from_numpy(bias)
            # float64 truth, and float32 where float32 itself overflows (huge / inf data)
            want = [ref.conv2d_nhwc(xt.to(dt), wt.to(dt), None if bt is None else bt.to(dt), (sh, sw), pad,
                                    ACT_NAMES[act], scale if has_scale else None) for dt in (torch.float64, torch.float32)]
            return compare(ybuf[:B * Ho * Wo * Co].reshape(B, Ho, Wo, Co), tuple(want))

        def run():
            p = _C.PackedConv(tuple(desc))
            if not invalid and rng.random() < 0.3:
                p.repack(tuple(desc))
                assert p.same(tuple(desc), True)
            got = p.forward(*fwd)
            if not invalid:
                assert tuple(got) == (Ho, Wo), (got, (Ho, Wo))
                return check()
            return ""
        return run, what

    def g_ops_conv2d_nhwc(rng, invalid):
        B, H, W = int(rng.integers(0, 4)), int(rng.integers(1, 9)), int(rng.integers(1, 9))
        C, Co = size(rng, 1, 12), int(rng.choice([1, 5, 16, 33]))
        kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        x = weird(rng, (B, H, W, C))
        if rng.random() < 0.15:
            x = torch.randint(0, 256, (B, H, W, C), dtype=torch.uint8)
        w = weird(rng, (Co, C, kh, kw), allow_bad=rng.random() < 0.3) if rng.random() < 0.4 else \
            torch.randn(Co, C, kh, kw) / np.sqrt(C * kh * kw)
        b = None if rng.random() < 0.2 else torch.randn(Co) if rng.random() < 0.8 else weird(rng, (Co,))
        stride = [1, 2, 3, (1, 2), (2, 1), 0, -1, (1,), 1.5, "2"][int(rng.integers(0, 10))] if rng.random() < 0.3 \
            else int(rng.integers(1, 3))
        pad = tuple(int(v) for v in rng.integers(0, 3, size=4))
        if rng.random() < 0.2:
            pad = [(0, 0, -1, 0), (1, 1), 5000, None, 2, (0.5, 0, 0, 0), "same"][int(rng.integers(0, 7))]
        act = ACT_NAMES[rng.integers(0, 5)] if rng.random() < 0.95 else ["foo", 3, ""][rng.integers(0, 3)]
        scale = [None, None, 1 / 255, float("nan"), True, "x"][int(rng.integers(0, 6))]

        def fn():
            return rf_ops.conv2d_nhwc(x, w, b, stride, pad, act, scale=scale, backend="cpp")

        def reference(dt):
            _DT[0] = dt
            xt = to_t(x)
            xr = xt.to(dt) if xt.dtype == torch.uint8 else ref_float64(x)
            return ref.conv2d_nhwc(xr, ref_float64(w), None if b is None else ref_float64(b), stride, pad, act, scale)
        return adapter_run(fn, reference), "adapter"

    _loc = locals()
    gens = {name: _loc["g_" + name] for name in TARGETS}

    for ti, name in enumerate(TARGETS):
        if name not in args.targets:
            continue
        start = args.start if name == args.resume_target else (0 if args.resume_target is None or
                                                                 TARGETS.index(name) > TARGETS.index(args.resume_target) else None)
        if start is None:
            continue
        stats = {"target": name, "tried": 0, "ok": 0, "exceptions": {}, "accepted_invalid": {}, "wrong": [],
                 "unclean": {}}
        t0 = time.perf_counter()
        for i in range(start, args.budget):
            # a crash while generating the next input is heap damage done by the previous call
            os.pwrite(prog, struct.pack("<ii", ti, i) + f"{last_class} (detected later)".encode()[:200].ljust(200), 0)
            rng = np.random.default_rng([args.seed, ti, i])
            if args.mode == "both":
                invalid = bool(rng.random() < 0.5)
            else:
                invalid = args.mode == "invalid"
            if name.startswith(("ops_", "plan_")):
                invalid = False  # adapters: arbitrary objects either way
                if args.mode == "invalid":
                    continue
            try:
                run, what = gens[name](rng, invalid)
            except Exception as e:  # generator bug: report, do not count as a target failure
                stats["exceptions"]["GENERATOR:" + type(e).__name__] = stats["exceptions"].get("GENERATOR:" + type(e).__name__, 0) + 1
                if args.verbose:
                    traceback.print_exc()
                continue
            klass = f"{name}:{what.split('[')[0]}".replace(",", ";")
            if klass in skip:  # this class of input already crashed a child: counted once
                stats["skipped_known_crash"] = stats.get("skipped_known_crash", 0) + 1
                continue
            os.pwrite(prog, struct.pack("<ii", ti, i) + klass.encode()[:200].ljust(200, b" "), 0)
            last_class = klass
            stats["tried"] += 1
            try:
                err = run()
            except Exception as e:  # noqa: BLE001 -- any Python exception is "not a crash"
                k = type(e).__name__
                stats["exceptions"][k] = stats["exceptions"].get(k, 0) + 1
                if name.startswith(("ops_", "plan_")) and not isinstance(e, CLEAN):
                    u = stats["unclean"].setdefault(k, {"count": 0, "example": f"input {i}: {str(e)[:200]}"})
                    u["count"] += 1
                continue
            if err:
                if len(stats["wrong"]) < 20:
                    stats["wrong"].append(f"input {i} ({what}): {err}")
                stats["n_wrong"] = stats.get("n_wrong", 0) + 1
                continue
            if invalid and what not in ("valid", "adapter"):
                stats["accepted_invalid"][what.split("[")[0]] = stats["accepted_invalid"].get(what.split("[")[0], 0) + 1
            stats["ok"] += 1
        stats["seconds"] = round(time.perf_counter() - t0, 2)
        stats["start"] = start
        os.write(results_fd, (json.dumps(stats) + "\n").encode())
    os.pwrite(prog, struct.pack("<ii", -1, -1), 0)
    return 0


# =============================================================================================
# the parent: runs children, survives their crashes


def _describe_rc(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def run_parent(args) -> dict:
    import tempfile

    tmp = tempfile.mkdtemp(prefix="rf_fuzz_")
    progress = os.path.join(tmp, "progress")
    results = os.path.join(tmp, "results.jsonl")
    crashes = []
    resume_target, start = None, 0
    t0 = time.perf_counter()
    while True:
        with open(progress, "wb") as f:
            f.write(struct.pack("<ii", -2, -2) + b" " * 200)
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--progress", progress, "--results", results,
               "--budget", str(args.budget), "--seed", str(args.seed), "--mode", args.mode,
               "--targets", ",".join(args.targets), "--skip", ",".join(c["class"].replace(" (detected later)", "") for c in crashes)]
        if resume_target is not None:
            cmd += ["--resume-target", resume_target, "--start", str(start)]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=args.timeout)
        with open(progress, "rb") as f:
            raw = f.read(208)
        ti, i = struct.unpack("<ii", raw[:8])
        klass = raw[8:].decode(errors="replace").strip()
        if p.returncode == 0 and ti == -1:
            break
        if p.returncode == HARNESS_ERROR:
            raise RuntimeError(f"fuzz harness error (not a crash) at target {ti} input {i}:\n{p.stderr[-3000:]}")
        if ti < 0:
            raise RuntimeError(f"fuzz child failed before fuzzing ({_describe_rc(p.returncode)}):\n{p.stderr[-3000:]}")
        name = TARGETS[ti]
        tail = "\n".join(l for l in p.stderr.splitlines()[-15:])
        crashes.append({"target": name, "input": i, "class": klass, "how": _describe_rc(p.returncode),
                        "replay": f"python {os.path.relpath(__file__)} --targets {name} --start {i} --budget {i + 1} "
                                  f"--seed {args.seed} --mode {args.mode}",
                        "stderr_tail": tail[-1500:]})
        if len(crashes) >= args.max_crashes:
            break
        resume_target, start = name, i + 1
        if start >= args.budget:
            later = [t for t in args.targets if TARGETS.index(t) > ti]
            if not later:
                break
            resume_target, start = later[0], 0
    per = {}
    if os.path.exists(results):
        with open(results) as f:
            for line in f:
                s = json.loads(line)
                agg = per.setdefault(s["target"], {"tried": 0, "ok": 0, "exceptions": {}, "accepted_invalid": {},
                                                   "wrong": [], "n_wrong": 0, "unclean": {}, "seconds": 0.0})
                agg["tried"] += s["tried"]
                agg["ok"] += s["ok"]
                agg["seconds"] += s["seconds"]
                agg["n_wrong"] += s.get("n_wrong", 0)
                agg["skipped_known_crash"] = agg.get("skipped_known_crash", 0) + s.get("skipped_known_crash", 0)
                agg["wrong"] += s["wrong"]
                for k in ("exceptions", "accepted_invalid"):
                    for kk, v in s[k].items():
                        agg[k][kk] = agg[k].get(kk, 0) + v
                for kk, v in s["unclean"].items():
                    u = agg["unclean"].setdefault(kk, {"count": 0, "example": v["example"]})
                    u["count"] += v["count"]
    for c in crashes:
        a = per.setdefault(c["target"], {"tried": 0, "ok": 0, "exceptions": {}, "accepted_invalid": {}, "wrong": [],
                                         "n_wrong": 0, "unclean": {}, "seconds": 0.0})
        a["tried"] += 1
        a["crashes"] = a.get("crashes", 0) + 1
    summary = {
        "budget_per_target": args.budget, "seed": args.seed, "mode": args.mode,
        "sanitizer": "LD_PRELOAD" in os.environ and "asan" in os.environ.get("LD_PRELOAD", ""),
        "total_inputs": sum(v["tried"] for v in per.values()),
        "crashes": len(crashes), "crash_classes": sorted(c["class"] for c in crashes),
        "skipped_after_crash": sum(v.get("skipped_known_crash", 0) for v in per.values()),
        "wrong": sum(v["n_wrong"] for v in per.values()),
        "unclean": sum(u["count"] for v in per.values() for u in v["unclean"].values()),
        "seconds": round(time.perf_counter() - t0, 1),
        "targets": per, "crash_list": crashes,
    }
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=int, default=10000, help="inputs per target (default 10000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", choices=["valid", "invalid", "both"], default="both")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset of --list")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--json", help="also write the summary here")
    ap.add_argument("--max-crashes", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--progress", help=argparse.SUPPRESS)
    ap.add_argument("--results", help=argparse.SUPPRESS)
    ap.add_argument("--resume-target", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help="first input index (replaying one input)")
    ap.add_argument("--skip", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(TARGETS))
        return 0
    args.targets = [t for t in args.targets.split(",") if t]
    bad = [t for t in args.targets if t not in TARGETS]
    if bad:
        ap.error(f"--targets: unknown {bad}; see --list")
    if args.child:
        try:
            return _child(args)
        except BaseException:  # a harness error, not a crash of the code under test
            traceback.print_exc()
            return HARNESS_ERROR
    if args.start:
        if len(args.targets) != 1:
            ap.error("--start replays one target: give exactly one --targets")
        summary = run_replay(args)
    else:
        summary = run_parent(args)
    text = json.dumps(summary, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    print(text)
    return 1 if summary["crashes"] or summary["wrong"] else 0


def run_replay(args) -> dict:
    """Inputs --start .. --budget-1 of one target in one child (stderr shown): replays a crash."""
    import tempfile

    tmp = tempfile.mkdtemp(prefix="rf_fuzz_")
    progress = os.path.join(tmp, "progress")
    results = os.path.join(tmp, "results.jsonl")
    with open(progress, "wb") as f:
        f.write(struct.pack("<ii", -2, -2))
    name = args.targets[0]
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--progress", progress, "--results", results,
           "--budget", str(args.budget), "--seed", str(args.seed), "--mode", args.mode, "--targets", name,
           "--resume-target", name, "--start", str(args.start), "--verbose"]
    p = subprocess.run(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=args.timeout)
    sys.stderr.write(p.stderr[-5000:])
    per = {}
    if os.path.exists(results):
        with open(results) as f:
            for line in f:
                s = json.loads(line)
                per[s["target"]] = s
    return {"replay": name, "start": args.start, "budget": args.budget, "crashes": int(p.returncode != 0),
            "how": _describe_rc(p.returncode), "wrong": sum(s.get("n_wrong", 0) for s in per.values()), "targets": per}


if __name__ == "__main__":
    sys.exit(main())
