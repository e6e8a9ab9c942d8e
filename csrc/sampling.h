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
        for (int j = 0; j < A; ++j) s += std::exp(double(l[j] - mx));
        int a = amax;
        if (!det) {
            double u = u01_hi(rng_bits(key, ctr0 + uint64_t(r) * ctr_stride)) * s;
            double cum = 0.0;
            a = A - 1;
            for (int j = 0; j < A; ++j) {
                cum += std::exp(double(l[j] - mx));
                if (u < cum) { a = j; break; }
            }
        }
        actions[r * astride] = a;
        float lp = float(double(l[a] - mx) - std::log(s));
        logp[r] = accumulate ? logp[r] + lp : lp;
    }
    return 0;
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
        for (int j = 0; j < A; ++j) {
            float eps = det ? 0.0f : normal_from_bits(rng_bits(key, ctr0 + uint64_t(r) * A + j));
            actions[r * ald + j] = m[j] + std::exp(ls[j]) * eps;
            lp += -0.5 * double(eps) * eps - double(ls[j]) - LOG_SQRT_2PI;
        }
        logp[r] = float(lp);
    }
    return 0;
}

}  // namespace rf
