// Samplers over rows of distribution inputs (scalar per row: action counts are small, and the
// cost is a few exps per row next to the MLP). Torch-free; pointers and sizes only.
//
// Shape legend: rows batch rows, A logits (categorical) or action dims (Gaussian).
// Draws come from the counter-based stream of common.h: row r, component j uses counter
// ctr0 + r * draws_per_row + j, so a result depends only on (key, ctr0), never on threading.
#pragma once
#include "common.h"

namespace rf {

constexpr double LOG_SQRT_2PI = 0.9189385332046727;

// RLlib's FLOAT_MIN (rllib/utils/torch_utils.py: -3.4e38), the logit of a masked action: RLlib
// adds clamp(log(mask), FLOAT_MIN) to the logits, which in float32 is exactly this value.
constexpr float MASKED_LOGIT = -3.4e38f;

// Error codes of the samplers and the policy step, for row r: -1 - r (a NaN/inf input),
// ERR_MASK_ALL - r (every action of the row, or of one of its segments, is masked),
// ERR_MASK_VALUE - r (a mask entry other than 0 or 1), ERR_OBS_NONFINITE - r (the policy step's
// observation row holds a NaN/inf). decode_err() splits a code again.
constexpr int64_t ERR_MASK_ALL = -(int64_t(1) << 40) - 1;
constexpr int64_t ERR_MASK_VALUE = -(int64_t(2) << 40) - 1;
constexpr int64_t ERR_OBS_NONFINITE = -(int64_t(3) << 40) - 1;
enum ErrKind : int { ERRK_NONFINITE = 0, ERRK_MASK_ALL = 1, ERRK_MASK_VALUE = 2, ERRK_OBS_NONFINITE = 3 };
inline int decode_err(int64_t err, int64_t* row) {
    const int64_t m = -1 - err;  // >= 0
    const int kind = int(m >> 40);
    *row = m & ((int64_t(1) << 40) - 1);
    return kind;
}

// Action masking, reusable by every discrete head (categorical policies, Q-value argmax): for
// rows of x [rows, sum(seg)] (row stride ld) and mask [rows, sum(seg)] (row stride ldm; entries
// exactly 0 or 1), x[j] = MASKED_LOGIT where mask[j] == 0. Segments (nseg sizes; a categorical is
// one segment) must each keep at least one allowed entry; a NaN/inf x is an error even where it is
// masked (never hidden by the overwrite). Returns 0 or an error code (above).
// After it, the unmasked samplers below are exact masked samplers: exp(MASKED_LOGIT - max) is 0
// in double, so a masked action has probability exactly 0 and logp is the log-softmax over the
// allowed actions only; the argmax (first maximum) is an allowed action.
inline int64_t apply_action_mask_rows(float* x, int64_t ld, int rows, const int* seg, int nseg,
                                      const float* mask, int64_t ldm) {
    for (int r = 0; r < rows; ++r) {
        float* xr = x + r * ld;
        const float* mr = mask + r * ldm;
        int off = 0;
        for (int s = 0; s < nseg; ++s) {
            bool any = false;
            for (int j = off; j < off + seg[s]; ++j) {
                const float m = mr[j];
                if (!std::isfinite(xr[j])) return -1 - r;
                if (m == 1.0f) { any = true; continue; }
                if (m != 0.0f) return ERR_MASK_VALUE - r;  // NaN included
                xr[j] = MASKED_LOGIT;
            }
            if (!any) return ERR_MASK_ALL - r;
            off += seg[s];
        }
    }
    return 0;
}

// exp(z) for z <= 0, with 0 straight away where double's exp underflows to 0 anyway (z < -746:
// masked logits, z ~ -3.4e38): glibc's underflow path (errno, FP flags) costs ~10x a normal exp.
inline double exp_or_zero(double z) { return z < -746.0 ? 0.0 : std::exp(z); }

// One categorical draw per row (inverse CDF on softmax). actions[r * astride], logp[r] (logp
// is log softmax(logits)[action]). Returns -1 - r for the first row r holding a NaN/inf, else 0.
inline int64_t sample_categorical_rows(const float* logits, int64_t ld, int rows, int A, bool det,
                                       uint64_t key, uint64_t ctr0, int64_t ctr_stride,
                                       int64_t* actions, int64_t astride, float* logp, bool accumulate) {
    for (int r = 0; r < rows; ++r) {
        const float* l = logits + r * ld;
        float mx = l[0];
        int amax = 0;
        bool finite = true;
        for (int j = 0; j < A; ++j) {
            finite &= std::isfinite(l[j]);
            if (l[j] > mx) { mx = l[j]; amax = j; }
        }
        if (!finite) return -1 - r;
        double s = 0.0;
        for (int j = 0; j < A; ++j) s += exp_or_zero(double(l[j] - mx));
        int a = amax;
        if (!det) {
            double u = u01_hi(rng_bits(key, ctr0 + uint64_t(r) * ctr_stride)) * s;
            double cum = 0.0;
            // u < s, so the loop always breaks; amax (never a masked action) only guards rounding
            a = amax;
            for (int j = 0; j < A; ++j) {
                cum += exp_or_zero(double(l[j] - mx));
                if (u < cum) { a = j; break; }
            }
        }
        actions[r * astride] = a;
        float lp = float(double(l[a] - mx) - std::log(s));
        logp[r] = accumulate ? logp[r] + lp : lp;
    }
    return 0;
}

// Two independent standard normals from one 64-bit draw z (Box-Muller, cosine and sine
// branches): u1 = (hi32(z) + 0.5) / 2^32, theta = 2 pi (lo32(z) + 0.5) / 2^32 (so |eps| <= 6.8).
// In three stages so that the transcendental middle runs vectorised (vmath.h: box_muller):
// bm_split writes u1 = m * 2^e (m in [1, 2]) and theta = (q + f) pi / 2 (f in (0, 1));
// box_muller gives c = rad cos(f pi / 2), s = rad sin(f pi / 2); bm_rotate applies quadrant q.
inline void bm_split(uint64_t z, float* m, float* e, float* f, int* q) {
    const uint64_t t = ((z >> 32) << 1) | 1;  // u1 = t * 2^-33, t odd in [1, 2^33)
    const int p = 63 - __builtin_clzll(t);
    const uint64_t bits = uint64_t(1023 - p) << 52;  // 2^-p
    double sc;
    std::memcpy(&sc, &bits, sizeof sc);
    *m = float(double(t) * sc);
    *e = float(p - 33);
    const uint32_t k2 = uint32_t(z);
    *q = int(k2 >> 30);
    *f = float((double(k2 & 0x3fffffffu) + 0.5) * (1.0 / 1073741824.0));
}
inline void bm_rotate(int q, float c, float s, float* n0, float* n1) {
    // (c, s) -> (c, s), (-s, c), (-c, -s), (s, -c) for q = 0..3, without branches (q is random)
    static const float sg0[4] = {1.0f, -1.0f, -1.0f, 1.0f}, sg1[4] = {1.0f, 1.0f, -1.0f, -1.0f};
    const float cs[2] = {c, s};
    q &= 3;
    *n0 = sg0[q] * cs[q & 1];
    *n1 = sg1[q] * cs[(q & 1) ^ 1];
}

// Diagonal Gaussian: mean = row[0:A], log_std = row[A:2A] of mean_logstd (row stride ld).
// actions [rows, A] (row stride ald); logp [rows]. deterministic: actions = mean (eps = 0).
inline int64_t sample_gaussian_rows(const float* ml, int64_t ld, int rows, int A, bool det,
                                    uint64_t key, uint64_t ctr0, float* actions, int64_t ald, float* logp) {
    for (int r = 0; r < rows; ++r) {
        const float* m = ml + r * ld;
        const float* ls = m + A;
        bool finite = true;
        for (int j = 0; j < 2 * A; ++j) finite &= std::isfinite(m[j]);
        if (!finite) return -1 - r;
        double lp = 0.0;
        float* act = actions + r * ald;
        if (det) {
            for (int j = 0; j < A; ++j) {
                act[j] = m[j];
                lp -= double(ls[j]) + LOG_SQRT_2PI;
            }
        } else {
            // components (j, j + 1) share the draw of counter r * A + j (scalar reference of
            // the ISA bodies' gaussian_rows, which must give the same numbers up to rounding)
            const uint64_t c = ctr0 + uint64_t(r) * A;
            for (int j = 0; j < A; j += 2) {
                float mm, ee, ff, e0, e1;
                int q;
                bm_split(rng_bits(key, c + j), &mm, &ee, &ff, &q);
                const float rad = std::sqrt(std::max(0.0f, -2.0f * (std::log(mm) + ee * 0.6931471805599453f)));
                const float th = ff * 1.5707963267948966f;
                bm_rotate(q, rad * std::cos(th), rad * std::sin(th), &e0, &e1);
                act[j] = m[j] + std::exp(ls[j]) * e0;
                lp += -0.5 * double(e0) * e0 - double(ls[j]) - LOG_SQRT_2PI;
                if (j + 1 < A) {
                    act[j + 1] = m[j + 1] + std::exp(ls[j + 1]) * e1;
                    lp += -0.5 * double(e1) * e1 - double(ls[j + 1]) - LOG_SQRT_2PI;
                }
            }
        }
        logp[r] = float(lp);
    }
    return 0;
}

// Squashed Gaussian, second half: rows of pre-squash Gaussian draws u (actions [rows, A], row
// stride ald) with their Normal log-densities (logp [rows]) become SAC's actions tanh(u) in
// [-1, 1] and their log-densities, minus the tanh Jacobian sum_j log(1 - tanh(u_j)^2), computed
// as 2 (log 2 - u - softplus(-2u)) (RLlib's TorchSquashedGaussian; finite for any finite u,
// where 1 - tanh(u)^2 underflows to 0 past |u| ~ 9 in float).
inline void squash_rows(float* actions, int64_t ald, int rows, int A, float* logp) {
    constexpr double LOG2 = 0.6931471805599453;
    for (int r = 0; r < rows; ++r) {
        float* act = actions + r * ald;
        double jac = 0.0;
        for (int j = 0; j < A; ++j) {
            const double u = act[j];
            const double x = -2.0 * u;  // softplus(x) = max(x, 0) + log1p(exp(-|x|))
            const double sp = std::max(x, 0.0) + std::log1p(std::exp(-std::fabs(x)));
            jac += 2.0 * (LOG2 - u - sp);
            act[j] = float(std::tanh(u));
        }
        logp[r] = float(double(logp[r]) - jac);
    }
}

}  // namespace rf
