// Thin SIMD vector types, one per ISA, with the few primitives the kernels need.
// Every member carries its ISA's target attribute and is always_inline, so it inlines into the
// per-ISA kernel bodies (see kernels.h) and never into generic code. Torch-free.
#pragma once
#include <immintrin.h>
#include <cstdint>

#define RF_TARGET_SSE2
#define RF_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define RF_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx2,fma")))
#define RF_AI inline __attribute__((always_inline))

namespace rf {

struct VSse2 {
    using reg = __m128;
    static constexpr int W = 4;
    static RF_AI reg zero() { return _mm_setzero_ps(); }
    static RF_AI reg set1(float a) { return _mm_set1_ps(a); }
    static RF_AI reg load(const float* p) { return _mm_loadu_ps(p); }
    static RF_AI void store(float* p, reg a) { _mm_storeu_ps(p, a); }
    static RF_AI reg add(reg a, reg b) { return _mm_add_ps(a, b); }
    static RF_AI reg sub(reg a, reg b) { return _mm_sub_ps(a, b); }
    static RF_AI reg mul(reg a, reg b) { return _mm_mul_ps(a, b); }
    static RF_AI reg div(reg a, reg b) { return _mm_div_ps(a, b); }
    static RF_AI reg sqrt(reg a) { return _mm_sqrt_ps(a); }
    // the 4 horizontal sums of a0..a3, as one 128-bit vector (lane j = sum of aj)
    static RF_AI __m128 hsum4(reg a0, reg a1, reg a2, reg a3) {
        __m128 t0 = _mm_unpacklo_ps(a0, a1), t1 = _mm_unpackhi_ps(a0, a1);  // a00 a10 a01 a11 | a02 a12 a03 a13
        __m128 t2 = _mm_unpacklo_ps(a2, a3), t3 = _mm_unpackhi_ps(a2, a3);
        __m128 s01 = _mm_add_ps(t0, t1), s23 = _mm_add_ps(t2, t3);         // (a0 a1 a0 a1) partials, (a2 a3 a2 a3)
        return _mm_add_ps(_mm_movelh_ps(s01, s23), _mm_movehl_ps(s23, s01));
    }
    static RF_AI reg fmadd(reg a, reg b, reg c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }
    static RF_AI reg max(reg a, reg b) { return _mm_max_ps(a, b); }
    static RF_AI reg min(reg a, reg b) { return _mm_min_ps(a, b); }
    static RF_AI reg abs(reg a) { return _mm_andnot_ps(_mm_set1_ps(-0.0f), a); }
    static RF_AI reg signbit(reg a) { return _mm_and_ps(_mm_set1_ps(-0.0f), a); }
    static RF_AI reg xor_(reg a, reg b) { return _mm_xor_ps(a, b); }
    // a > b ? x : y
    static RF_AI reg select_gt(reg a, reg b, reg x, reg y) {
        __m128 m = _mm_cmpgt_ps(a, b);
        return _mm_or_ps(_mm_and_ps(m, x), _mm_andnot_ps(m, y));
    }
    // x rounded to nearest (|x| < 2^31)
    static RF_AI reg round(reg x) { return _mm_cvtepi32_ps(_mm_cvtps_epi32(x)); }
    // 2^n for integral-valued n in [-126, 127]
    static RF_AI reg pow2(reg n) {
        __m128i i = _mm_add_epi32(_mm_cvtps_epi32(n), _mm_set1_epi32(127));
        return _mm_castsi128_ps(_mm_slli_epi32(i, 23));
    }
};

struct VAvx2 {
    using reg = __m256;
    static constexpr int W = 8;
#define RF_F static RF_AI RF_TARGET_AVX2
    RF_F reg zero() { return _mm256_setzero_ps(); }
    RF_F reg set1(float a) { return _mm256_set1_ps(a); }
    RF_F reg load(const float* p) { return _mm256_loadu_ps(p); }
    RF_F void store(float* p, reg a) { _mm256_storeu_ps(p, a); }
    RF_F reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
    RF_F reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
    RF_F reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
    RF_F reg div(reg a, reg b) { return _mm256_div_ps(a, b); }
    RF_F reg sqrt(reg a) { return _mm256_sqrt_ps(a); }
    RF_F __m128 hsum4(reg a0, reg a1, reg a2, reg a3) {
        auto h = [](__m256 a) RF_TARGET_AVX2 { return _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1)); };
        return VSse2::hsum4(h(a0), h(a1), h(a2), h(a3));
    }
    RF_F reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
    RF_F reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
    RF_F reg min(reg a, reg b) { return _mm256_min_ps(a, b); }
    RF_F reg abs(reg a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
    RF_F reg signbit(reg a) { return _mm256_and_ps(_mm256_set1_ps(-0.0f), a); }
    RF_F reg xor_(reg a, reg b) { return _mm256_xor_ps(a, b); }
    RF_F reg select_gt(reg a, reg b, reg x, reg y) {
        return _mm256_blendv_ps(y, x, _mm256_cmp_ps(a, b, _CMP_GT_OQ));
    }
    RF_F reg round(reg x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
    RF_F reg pow2(reg n) {
        __m256i i = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
        return _mm256_castsi256_ps(_mm256_slli_epi32(i, 23));
    }
#undef RF_F
};

struct VAvx512 {
    using reg = __m512;
    static constexpr int W = 16;
#define RF_F static RF_AI RF_TARGET_AVX512
    RF_F reg zero() { return _mm512_setzero_ps(); }
    RF_F reg set1(float a) { return _mm512_set1_ps(a); }
    RF_F reg load(const float* p) { return _mm512_loadu_ps(p); }
    RF_F void store(float* p, reg a) { _mm512_storeu_ps(p, a); }
    RF_F reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
    RF_F reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
    RF_F reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
    RF_F reg div(reg a, reg b) { return _mm512_div_ps(a, b); }
    RF_F reg sqrt(reg a) { return _mm512_sqrt_ps(a); }
    RF_F __m128 hsum4(reg a0, reg a1, reg a2, reg a3) {
        auto h = [](__m512 a) RF_TARGET_AVX512 {
            __m256 b = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
            return _mm_add_ps(_mm256_castps256_ps128(b), _mm256_extractf128_ps(b, 1));
        };
        return VSse2::hsum4(h(a0), h(a1), h(a2), h(a3));
    }
    RF_F reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
    RF_F reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
    RF_F reg min(reg a, reg b) { return _mm512_min_ps(a, b); }
    RF_F reg abs(reg a) { return _mm512_abs_ps(a); }
    RF_F reg signbit(reg a) { return _mm512_and_ps(_mm512_set1_ps(-0.0f), a); }
    RF_F reg xor_(reg a, reg b) { return _mm512_xor_ps(a, b); }
    RF_F reg select_gt(reg a, reg b, reg x, reg y) {
        return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_GT_OQ), y, x);
    }
    RF_F reg round(reg x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
    RF_F reg pow2(reg n) {
        __m512i i = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
        return _mm512_castsi512_ps(_mm512_slli_epi32(i, 23));
    }
#undef RF_F
};

}  // namespace rf
