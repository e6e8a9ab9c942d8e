"""Triton samplers: categorical (Gumbel-max) and diagonal Gaussian, one pass over the inputs.

Shape legend: B batch, A actions (categorical: logits per row; Gaussian: action dims, the
input row being [mean (A) | log_std (A)]).

One launch reads each row once and writes the action, its log-probability (and optionally the
entropy); the reference needs log_softmax, rand, log, log, argmax and gather (six launches and
four [B, A] temporaries). Randomness is Triton's counter-based Philox (``tl.rand`` /
``tl.randn``) keyed by a seed that is read from a device tensor drawn from torch's generator of
that device (``torch.randint``): no host sync, CUDA-graph safe (each replay draws a new seed),
and ``torch.manual_seed`` reproduces a run. The counter of element (b, a) is ``b * A + a``.

Non-finite inputs set ``flag[0]`` (an int32 the host checks) instead of failing in the kernel.
"""
from __future__ import annotations

import triton
import triton.language as tl

_TINY = 1.1754943508222875e-38  # float32 tiny, as the reference clamps the uniform


@triton.jit
def _categorical_row_block(x, cols, valid, seed, rows, A, DETERMINISTIC: tl.constexpr):
    """Gumbel-max over a [BLOCK_B, BLOCK_A] tile (invalid entries -inf).

    Returns (action int32 [BLOCK_B], logp [BLOCK_B], max [BLOCK_B], log_sum [BLOCK_B]) with
    log_softmax(x) = (x - max) - log_sum. logp is formed as (x[a] - max) - log_sum, never as
    x[a] - (max + log_sum): at logits ~1e4 the float32 sum max + log_sum alone loses ~5e-4."""
    m = tl.max(x, axis=1)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    e = tl.where(valid, tl.exp(x - m_safe[:, None]), 0.0)
    s = tl.sum(e, axis=1)
    log_s = tl.log(s)
    if DETERMINISTIC:
        a = tl.argmax(x, axis=1)
    else:
        u = tl.rand(seed, rows[:, None] * A + cols[None, :])
        u = tl.maximum(u, 1.1754943508222875e-38)
        g = -tl.log(-tl.log(u))
        a = tl.argmax(tl.where(valid, x + g, float("-inf")), axis=1)
    xa = tl.sum(tl.where(cols[None, :] == a[:, None], x, 0.0), axis=1)
    return a, (xa - m_safe) - log_s, m_safe, log_s


@triton.jit
def _sample_categorical_fwd_kernel(
    logits_ptr, actions_ptr, logp_ptr, entropy_ptr, flag_ptr, seed_ptr,
    B, A, stride_b, stride_a,
    DETERMINISTIC: tl.constexpr, HAS_ENTROPY: tl.constexpr, CHECK: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_A: tl.constexpr,
):
    """actions[B] (int64), logp[B] (= log softmax(logits)[action]), entropy[B] optional."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_A)
    row_ok = rows < B
    valid = row_ok[:, None] & (cols[None, :] < A)
    x = tl.load(logits_ptr + rows[:, None] * stride_b + cols[None, :] * stride_a,
                mask=valid, other=float("-inf")).to(tl.float32)
    if CHECK:
        bad = valid & ((x != x) | (tl.abs(x) == float("inf")))
        tl.atomic_max(flag_ptr, tl.max(tl.max(bad.to(tl.int32), axis=1), axis=0))
    seed = tl.load(seed_ptr)
    a, logp, m, log_s = _categorical_row_block(x, cols, valid, seed, rows, A, DETERMINISTIC)
    tl.store(actions_ptr + rows, a.to(tl.int64), mask=row_ok)
    tl.store(logp_ptr + rows, logp.to(logp_ptr.dtype.element_ty), mask=row_ok)
    if HAS_ENTROPY:
        # H = -sum p log p with log p = z - log_s, z = x - max (shift-invariant, no cancellation
        # of two large numbers): H = log_s - sum p z
        z = x - m[:, None]
        p = tl.where(valid, tl.exp(z - log_s[:, None]), 0.0)
        ent = log_s - tl.sum(tl.where(valid, p * z, 0.0), axis=1)
        tl.store(entropy_ptr + rows, ent.to(entropy_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _sample_diag_gaussian_fwd_kernel(
    inp_ptr, actions_ptr, logp_ptr, flag_ptr, seed_ptr,
    B, A, stride_b, stride_a, stride_ob, stride_oa,
    DETERMINISTIC: tl.constexpr, CHECK: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_A: tl.constexpr,
):
    """inp [B, 2A] = [mean | log_std] -> actions [B, A] = mean + exp(log_std) * eps, logp [B]."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_A)
    row_ok = rows < B
    valid = row_ok[:, None] & (cols[None, :] < A)
    base = inp_ptr + rows[:, None] * stride_b
    mean = tl.load(base + cols[None, :] * stride_a, mask=valid, other=0.0).to(tl.float32)
    log_std = tl.load(base + (A + cols[None, :]) * stride_a, mask=valid, other=0.0).to(tl.float32)
    if CHECK:
        bad = valid & ((mean != mean) | (tl.abs(mean) == float("inf"))
                       | (log_std != log_std) | (tl.abs(log_std) == float("inf")))
        tl.atomic_max(flag_ptr, tl.max(tl.max(bad.to(tl.int32), axis=1), axis=0))
    if DETERMINISTIC:
        eps = tl.zeros((BLOCK_B, BLOCK_A), dtype=tl.float32)
    else:
        seed = tl.load(seed_ptr)
        eps = tl.randn(seed, rows[:, None] * A + cols[None, :])
    act = mean + tl.exp(log_std) * eps
    lp = tl.where(valid, -0.5 * eps * eps - log_std - 0.9189385332046727, 0.0)
    tl.store(actions_ptr + rows[:, None] * stride_ob + cols[None, :] * stride_oa,
             act.to(actions_ptr.dtype.element_ty), mask=valid)
    tl.store(logp_ptr + rows, tl.sum(lp, axis=1).to(logp_ptr.dtype.element_ty), mask=row_ok)


# ----------------------------------------------------------------------------- host launchers

def _blocks(B: int, A: int) -> tuple[int, int]:
    block_a = max(16, triton.next_power_of_2(max(int(A), 1)))
    block_b = max(1, min(64, triton.next_power_of_2(max(int(B), 1)), 4096 // block_a))
    return block_b, block_a


def draw_seed(device):
    """A 1-element int64 device tensor from torch's generator of ``device`` (no host sync)."""
    import torch

    return torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64, device=device)


def sample_categorical(logits, deterministic: bool = False, *, entropy: bool = False,
                       check: bool = True, seed=None):
    """logits [B, A] -> (actions [B] int64, logp [B], flag [1] int32[, entropy [B]]).

    ``flag`` is nonzero when an input was NaN/inf (only with ``check``); the caller raises."""
    import torch

    B, A = logits.shape
    dev = logits.device
    out_dtype = logits.dtype
    actions = torch.empty((B,), dtype=torch.int64, device=dev)
    logp = torch.empty((B,), dtype=out_dtype, device=dev)
    ent = torch.empty((B,), dtype=out_dtype, device=dev) if entropy else logp
    flag = torch.zeros((1,), dtype=torch.int32, device=dev)
    if B:
        if seed is None:
            seed = flag if deterministic else draw_seed(dev)
        block_b, block_a = _blocks(B, A)
        _sample_categorical_fwd_kernel[(triton.cdiv(B, block_b),)](
            logits, actions, logp, ent, flag, seed, B, A, logits.stride(0), logits.stride(1),
            DETERMINISTIC=bool(deterministic), HAS_ENTROPY=bool(entropy), CHECK=bool(check),
            BLOCK_B=block_b, BLOCK_A=block_a,
        )
    return (actions, logp, flag, ent) if entropy else (actions, logp, flag)


def sample_diag_gaussian(mean_logstd, deterministic: bool = False, *, check: bool = True,
                         seed=None):
    """mean_logstd [B, 2A] -> (actions [B, A], logp [B], flag [1] int32)."""
    import torch

    B, A2 = mean_logstd.shape
    A = A2 // 2
    dev = mean_logstd.device
    out_dtype = mean_logstd.dtype
    actions = torch.empty((B, A), dtype=out_dtype, device=dev)
    logp = torch.empty((B,), dtype=out_dtype, device=dev)
    flag = torch.zeros((1,), dtype=torch.int32, device=dev)
    if B:
        if seed is None:
            seed = flag if deterministic else draw_seed(dev)
        block_b, block_a = _blocks(B, A)
        _sample_diag_gaussian_fwd_kernel[(triton.cdiv(B, block_b),)](
            mean_logstd, actions, logp, flag, seed, B, A,
            mean_logstd.stride(0), mean_logstd.stride(1), actions.stride(0), actions.stride(1),
            DETERMINISTIC=bool(deterministic), CHECK=bool(check),
            BLOCK_B=block_b, BLOCK_A=block_a,
        )
    return actions, logp, flag
