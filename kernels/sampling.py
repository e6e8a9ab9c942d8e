"""Triton samplers: categorical (Gumbel-max) and diagonal Gaussian, one pass over the inputs.

Shape legend: B batch, A actions (categorical: logits per row; Gaussian: action dims, the
input row being [mean (A) | log_std (A)]).

One launch reads each row once and writes the action, its log-probability (and optionally the
entropy); the reference needs log_softmax, rand, log, log, argmax and gather (six launches and
four [B, A] temporaries).

RNG: Philox4x32-10 (Triton's constants, ``tl.philox``) read from an int64 [2] device tensor
``rng = (key, counter)``: the 64-bit key is Philox's (k0, k1), the element index ``b * A + a``
its c0, the 64-bit counter its (c1, c2). Eager calls draw both words from torch's generator of
the device (``draw_seed``: 128 random bits a call, no host sync, ``torch.manual_seed``
reproduces a run); graph mode keeps one persistent ``rng`` per device whose counter a tiny
in-place add advances on the device after every launch (``advance_rng``), so a captured CUDA
graph draws fresh numbers at every replay. Draws repeat only if (key, counter) does: never in
practice (the old 31-bit per-call seed collided after ~46k calls by the birthday bound).

Non-finite inputs OR ``ERR`` into ``flag[0]`` (an int32 on the device) instead of failing in the
kernel; the host reads it (default) or leaves it for a later ``raise_if_error``.
"""
from __future__ import annotations

import triton
import triton.language as tl

_TINY = 1.1754943508222875e-38  # float32 tiny, as the reference clamps the uniform

#: error bits OR-ed into the flag by each kernel (ops.triton.raise_if_error names them);
#: ERR_MASK: an action mask with a value other than 0/1, or a row (segment) with none allowed
ERR_LOGITS, ERR_GAUSSIAN, ERR_POLICY, ERR_MASK = 1, 2, 4, 8
_ERR_MASK = tl.constexpr(ERR_MASK)

#: RLlib's FLOAT_MIN (rllib/utils/torch_utils.py), the logit a masked action gets
FLOAT_MIN = -3.4e38
_FLOAT_MIN = tl.constexpr(FLOAT_MIN)


@triton.jit
def _philox_bits(rng_ptr, offsets):
    """Four uint32 Philox blocks for int32 ``offsets``: key = rng[0] (64 bit), counter =
    (offset, rng[1] low, rng[1] high, 0)."""
    key = tl.load(rng_ptr)
    ctr = tl.load(rng_ptr + 1).to(tl.uint64, bitcast=True)
    c0 = offsets.to(tl.uint32)
    z = c0 * 0
    c1 = z + ctr.to(tl.uint32)
    c2 = z + (ctr >> 32).to(tl.uint32)
    return tl.philox(key, c0, c1, c2, z)


@triton.jit
def _rng_uniform(rng_ptr, offsets):
    """U[0, 1) float32 block (``tl.rand``'s conversion of Philox's first word)."""
    i1, _i2, _i3, _i4 = _philox_bits(rng_ptr, offsets)
    return tl.uint_to_uniform_float(i1)


@triton.jit
def _rng_normal(rng_ptr, offsets):
    """N(0, 1) float32 block (``tl.randn``'s Box-Muller of Philox's first two words)."""
    i1, i2, _i3, _i4 = _philox_bits(rng_ptr, offsets)
    n1, _n2 = tl.pair_uniform_to_normal(tl.uint_to_uniform_float(i1), tl.uint_to_uniform_float(i2))
    return n1


@triton.jit
def _load_action_mask(mask_ptr, rows, cols, valid, stride_mb, stride_ma):
    """(allowed [BLOCK_B, BLOCK_A] bool, bad [BLOCK_B, BLOCK_A]: an entry neither 0 nor 1) of a
    float action-mask tile; entries outside ``valid`` read as allowed and never bad."""
    m = tl.load(mask_ptr + rows[:, None] * stride_mb + cols[None, :] * stride_ma, mask=valid,
                other=1.0).to(tl.float32)
    return m != 0.0, valid & (m != 0.0) & (m != 1.0)


@triton.jit
def _none_allowed(allowed, seg_valid, row_ok):
    """int32 [BLOCK_B]: 1 where a valid row has no allowed entry inside ``seg_valid``."""
    n = tl.sum((seg_valid & allowed).to(tl.int32), axis=1)
    return (row_ok & (n == 0)).to(tl.int32)


@triton.jit
def _categorical_row_block(x, cols, valid, rng_ptr, rows, A, DETERMINISTIC: tl.constexpr):
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
        u = _rng_uniform(rng_ptr, rows[:, None] * A + cols[None, :])
        u = tl.maximum(u, 1.1754943508222875e-38)
        g = -tl.log(-tl.log(u))
        a = tl.argmax(tl.where(valid, x + g, float("-inf")), axis=1)
    xa = tl.sum(tl.where(cols[None, :] == a[:, None], x, 0.0), axis=1)
    return a, (xa - m_safe) - log_s, m_safe, log_s


@triton.jit
def _sample_categorical_fwd_kernel(
    logits_ptr, actions_ptr, logp_ptr, entropy_ptr, flag_ptr, seed_ptr, mask_ptr,
    B, A, stride_b, stride_a, stride_mb, stride_ma,
    DETERMINISTIC: tl.constexpr, HAS_ENTROPY: tl.constexpr, CHECK: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_A: tl.constexpr, HAS_MASK: tl.constexpr = False, ERR: tl.constexpr = 1,
):
    """actions[B] (int64), logp[B] (= log softmax(logits)[action]), entropy[B] optional.
    HAS_MASK: mask [B, A] (0/1) excludes masked entries (-inf: RLlib's FLOAT_MIN logits give
    the same numbers, exp underflowing to 0); bad masks OR ERR_MASK into the flag."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_A)
    row_ok = rows < B
    valid = row_ok[:, None] & (cols[None, :] < A)
    x = tl.load(logits_ptr + rows[:, None] * stride_b + cols[None, :] * stride_a,
                mask=valid, other=float("-inf")).to(tl.float32)
    if CHECK:
        bad = valid & ((x != x) | (tl.abs(x) == float("inf")))
        tl.atomic_or(flag_ptr, tl.max(tl.max(bad.to(tl.int32), axis=1), axis=0) * ERR)
    if HAS_MASK:
        allowed, mbad = _load_action_mask(mask_ptr, rows, cols, valid, stride_mb, stride_ma)
        merr = tl.maximum(tl.max(tl.max(mbad.to(tl.int32), axis=1), axis=0),
                          tl.max(_none_allowed(allowed, valid, row_ok), axis=0))
        tl.atomic_or(flag_ptr, merr * _ERR_MASK)
        valid = valid & allowed
        x = tl.where(valid, x, float("-inf"))
    a, logp, m, log_s = _categorical_row_block(x, cols, valid, seed_ptr, rows, A, DETERMINISTIC)
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
    BLOCK_B: tl.constexpr, BLOCK_A: tl.constexpr, ERR: tl.constexpr = 2,
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
        tl.atomic_or(flag_ptr, tl.max(tl.max(bad.to(tl.int32), axis=1), axis=0) * ERR)
    if DETERMINISTIC:
        eps = tl.zeros((BLOCK_B, BLOCK_A), dtype=tl.float32)
    else:
        eps = _rng_normal(seed_ptr, rows[:, None] * A + cols[None, :])
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
    """int64 [2] (key, counter) device tensor, 128 bits from torch's generator of ``device``
    (no host sync; ``torch.manual_seed`` reproduces it)."""
    import torch

    return torch.randint(-2**63, 2**63 - 1, (2,), dtype=torch.int64, device=device)


def advance_rng(rng) -> None:
    """Advance the counter word of a persistent ``rng`` by one on its device (a tiny in-place
    kernel on the current stream: no host sync, captured by a CUDA graph)."""
    rng[1:].add_(1)


def _check_offsets(B: int, A: int) -> None:
    if B * A >= 2**31:
        raise ValueError(f"sampler: B * A = {B * A} elements exceed the int32 Philox offsets "
                         f"(split the batch)")


def sample_categorical(logits, deterministic: bool = False, *, entropy: bool = False,
                       check: bool = True, seed=None, flag=None, mask=None):
    """logits [B, A] -> (actions [B] int64, logp [B], flag [1] int32[, entropy [B]]).

    ``flag`` (fresh zeros unless given: then OR-ed into) gets ERR_LOGITS when an input was
    NaN/inf (only with ``check``); the caller raises. ``seed``: an int64 [2] (key, counter)
    tensor (``draw_seed`` when None). ``mask``: None or a float [B, A] action mask (0/1) on the
    logits' device; its errors set ERR_MASK (always checked)."""
    import torch

    B, A = logits.shape
    dev = logits.device
    out_dtype = logits.dtype
    actions = torch.empty((B,), dtype=torch.int64, device=dev)
    logp = torch.empty((B,), dtype=out_dtype, device=dev)
    ent = torch.empty((B,), dtype=out_dtype, device=dev) if entropy else logp
    if flag is None:
        flag = torch.zeros((1,), dtype=torch.int32, device=dev)
    if B:
        _check_offsets(B, A)
        if seed is None:
            seed = flag if deterministic else draw_seed(dev)
        block_b, block_a = _blocks(B, A)
        _sample_categorical_fwd_kernel[(triton.cdiv(B, block_b),)](
            logits, actions, logp, ent, flag, seed, mask if mask is not None else logits,
            B, A, logits.stride(0), logits.stride(1),
            mask.stride(0) if mask is not None else 0, mask.stride(1) if mask is not None else 0,
            DETERMINISTIC=bool(deterministic), HAS_ENTROPY=bool(entropy), CHECK=bool(check),
            BLOCK_B=block_b, BLOCK_A=block_a, HAS_MASK=mask is not None,
        )
    return (actions, logp, flag, ent) if entropy else (actions, logp, flag)


def sample_diag_gaussian(mean_logstd, deterministic: bool = False, *, check: bool = True,
                         seed=None, flag=None):
    """mean_logstd [B, 2A] -> (actions [B, A], logp [B], flag [1] int32) (flag, seed: as
    ``sample_categorical``; the flag bit is ERR_GAUSSIAN)."""
    import torch

    B, A2 = mean_logstd.shape
    A = A2 // 2
    dev = mean_logstd.device
    out_dtype = mean_logstd.dtype
    actions = torch.empty((B, A), dtype=out_dtype, device=dev)
    logp = torch.empty((B,), dtype=out_dtype, device=dev)
    if flag is None:
        flag = torch.zeros((1,), dtype=torch.int32, device=dev)
    if B:
        _check_offsets(B, A)
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
