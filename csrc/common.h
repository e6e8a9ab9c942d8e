// ISA-independent pieces shared by every kernel: activation codes, the packed weight layout,
// aligned buffers, the counter-based RNG. Torch-free; pointers and sizes only.
//
// Shape legend: B batch, K inputs of a layer, N outputs, P = ceil(N / NR) panels.
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <vector>

namespace rf {

enum Act : int { ACT_LINEAR = 0, ACT_TANH = 1, ACT_RELU = 2, ACT_SILU = 3, ACT_ELU = 4 };

// Panel width of the packed layout: 32 floats = 2 AVX-512 / 4 AVX2 / 8 SSE vectors.
constexpr int NR = 32;
// Rows of the batch processed together through every layer (keeps activations in L1/L2).
constexpr int ROW_BLOCK = 48;

inline int round_up(int n, int m) { return (n + m - 1) / m * m; }

// Splits B rows into blocks for the thread pool. Up to ROW_BLOCK rows: one block (the caller
// runs it; waking a worker costs more than it saves). Beyond: about 4 blocks per thread, in
// multiples of 6 rows (the widest register tile), 12..ROW_BLOCK rows each, taken dynamically,
// so threads finish together. Block b covers [b * rows_per, min(B, (b + 1) * rows_per)).
// (Block size does not change results: every row's math and RNG counter are independent.)
struct RowSplit {
    int nb, rows_per;
    RowSplit(int B, int threads) {
        if (B <= ROW_BLOCK || threads <= 1) {
            rows_per = ROW_BLOCK;
        } else {
            int target = (B + 4 * threads - 1) / (4 * threads);
            rows_per = std::min(ROW_BLOCK, std::max(12, round_up(target, 6)));
        }
        nb = std::max(1, (B + rows_per - 1) / rows_per);
    }
    int start(int b) const { return b * rows_per; }
    int count(int b, int B) const { return std::min(rows_per, B - b * rows_per); }
};

// 64-byte aligned float buffer.
struct AlignedBuf {
    float* p = nullptr;
    size_t n = 0;
    AlignedBuf() = default;
    explicit AlignedBuf(size_t count) { resize(count); }
    AlignedBuf(const AlignedBuf&) = delete;
    AlignedBuf& operator=(const AlignedBuf&) = delete;
    AlignedBuf(AlignedBuf&& o) noexcept : p(o.p), n(o.n) { o.p = nullptr; o.n = 0; }
    AlignedBuf& operator=(AlignedBuf&& o) noexcept {
        std::swap(p, o.p); std::swap(n, o.n); return *this;
    }
    ~AlignedBuf() { std::free(p); }
    void resize(size_t count) {  // contents are not kept
        if (count <= n) return;
        std::free(p);
        size_t bytes = (count * sizeof(float) + 63) / 64 * 64;
        p = static_cast<float*>(std::aligned_alloc(64, bytes ? bytes : 64));
        if (!p) throw std::bad_alloc();
        n = count;
    }
};

// A strided float32 matrix view handed in from Python: element (r, c) at p[r*s0 + c*s1].
struct MatView {
    const float* p = nullptr;
    int rows = 0, cols = 0;
    int64_t s0 = 0, s1 = 1;
    float at(int r, int c) const { return p[r * s0 + c * s1]; }
};

// One linear layer packed for the kernels: W^T in P panels, panel q holding
// w[q][k][j] = W[q*NR + j][k] (zero past N), bias padded with zeros to P*NR.
struct PackedLinear {
    int K = 0, N = 0, P = 0;
    AlignedBuf w, b;
    // Narrow layers (N <= NARROW_N, e.g. a policy's logits) also keep W row-major [N][K]:
    // a row of outputs is then N dot products, not a 32-wide panel of mostly zero columns.
    // keep_rows (set before init) keeps that row-major copy for every layer: same_weight then
    // compares the caller's rows with it by memcmp (the one-shot op cache, ops/cpp.py).
    static constexpr int NARROW_N = 8;
    AlignedBuf wr;
    bool keep_rows = false;
    // Calls of the dense kernel so far: mlp.h's gemm_packed sweeps the panels in alternating
    // directions by its parity. Read and bumped with relaxed atomics, racy by design (a lost
    // update costs a few cache hits, never a different result).
    mutable uint32_t sweeps = 0;
    bool narrow() const { return N <= NARROW_N; }
    bool has_rows() const { return narrow() || keep_rows; }
    void init(int K_, int N_) {
        K = K_; N = N_; P = (N + NR - 1) / NR;
        w.resize(size_t(P) * K * NR);
        b.resize(size_t(P) * NR);
        std::memset(w.p, 0, sizeof(float) * size_t(P) * K * NR);
        std::memset(b.p, 0, sizeof(float) * size_t(P) * NR);
        if (has_rows()) {
            wr.resize(size_t(N) * K);
            std::memset(wr.p, 0, sizeof(float) * size_t(N) * K);
        }
    }
    // Copies rows of W (an [n, k] block, nn.Linear layout) to output rows n0.., input cols k0..
    // With the row-major copy, W is copied there first and the panels are built from that copy:
    // panels and copy then always agree, even if another thread writes W meanwhile (same_weight
    // compares the caller's W with the copy, so it must describe exactly what the panels hold).
    void put_weight(const MatView& Win, int n0, int k0) {
        MatView W = Win;
        if (has_rows()) {
            for (int n = 0; n < Win.rows; ++n) {
                float* dst = wr.p + size_t(n0 + n) * K + k0;
                if (Win.s1 == 1) std::memcpy(dst, Win.p + n * Win.s0, sizeof(float) * size_t(Win.cols));
                else for (int k = 0; k < Win.cols; ++k) dst[k] = Win.at(n, k);
            }
            W = MatView{wr.p + size_t(n0) * K + k0, Win.rows, Win.cols, K, 1};
        }
        // blocked transpose: 32 output rows (one panel) x 64 inputs at a time stay in L1
        constexpr int KB = 64;
        for (int nb = 0; nb < W.rows; nb += NR) {
            const int ne = std::min(W.rows, nb + NR);
            for (int kb = 0; kb < W.cols; kb += KB) {
                const int ke = std::min(W.cols, kb + KB);
                for (int n = nb; n < ne; ++n) {
                    int on = n0 + n, q = on / NR, j = on % NR;
                    float* dst = w.p + size_t(q) * K * NR + j;
                    const float* src = W.p + n * W.s0;
                    if (W.s1 == 1)
                        for (int k = kb; k < ke; ++k) dst[size_t(k0 + k) * NR] = src[k];
                    else
                        for (int k = kb; k < ke; ++k) dst[size_t(k0 + k) * NR] = W.at(n, k);
                }
            }
        }
    }
    void add_bias(const float* bias, int64_t stride, int count, int n0) {
        if (!bias) return;
        for (int n = 0; n < count; ++n) b.p[n0 + n] += bias[n * stride];
    }
    int padded_n() const { return P * NR; }

    size_t nbytes() const { return sizeof(float) * (w.n + b.n + wr.n); }

    // Whether put_weight(W, n0, k0) would write exactly what this layer holds now (bit for bit:
    // -0.0 vs 0.0 and NaN payloads count as changes). With the row-major copy: a memcmp per row
    // (memory speed; 2-6x cheaper than repacking); without: the panels, in put_weight's blocked
    // order (about as costly as repacking, but no stores).
    bool same_weight(const MatView& W, int n0, int k0) const {
        if (has_rows() && W.s1 == 1) {
            for (int n = 0; n < W.rows; ++n)
                if (std::memcmp(wr.p + size_t(n0 + n) * K + k0, W.p + n * W.s0, sizeof(float) * size_t(W.cols)))
                    return false;
            return true;
        }
        constexpr int KB = 64;
        for (int nb = 0; nb < W.rows; nb += NR) {
            const int ne = std::min(W.rows, nb + NR);
            for (int kb = 0; kb < W.cols; kb += KB) {
                const int ke = std::min(W.cols, kb + KB);
                uint32_t diff = 0;
                for (int n = nb; n < ne; ++n) {
                    const int on = n0 + n, q = on / NR, j = on % NR;
                    const float* dst = w.p + size_t(q) * K * NR + j;
                    const float* src = W.p + n * W.s0;
                    for (int k = kb; k < ke; ++k) diff |= bits(dst[size_t(k0 + k) * NR]) ^ bits(src[k * W.s1]);
                }
                if (diff) return false;
            }
        }
        return true;
    }
    // Whether add_bias(b1, s1, count, n0) then add_bias(b2, s2, count, n0) on a fresh layer would
    // give exactly the biases held now (either pointer may be null).
    bool same_bias(const float* b1, int64_t s1, const float* b2, int64_t s2, int count, int n0) const {
        uint32_t diff = 0;
        for (int n = 0; n < count; ++n) {
            float v = 0.0f;
            if (b1) v += b1[n * s1];
            if (b2) v += b2[n * s2];
            diff |= bits(v) ^ bits(b.p[n0 + n]);
        }
        return diff == 0;
    }
    static uint32_t bits(float f) {
        uint32_t u;
        std::memcpy(&u, &f, sizeof u);
        return u;
    }
};

// A stack of packed layers with an activation after each.
// nn.LayerNorm over a layer's N outputs (between the layer and its activation): gamma / beta
// zero-padded to the layer's padded width, so padded columns stay 0 after the norm.
struct PackedNorm {
    bool on = false;
    int N = 0;
    float eps = 1e-5f;
    AlignedBuf g, b;
};

struct PackedMLP {
    std::vector<PackedLinear> layers;
    std::vector<int> acts;
    std::vector<PackedNorm> norms;  // empty, or one per layer (off: no norm after that layer)
    bool keep_rows = false;  // every layer keeps a row-major copy (PackedLinear::keep_rows)
    int in_dim() const { return layers.empty() ? 0 : layers.front().K; }
    int out_dim() const { return layers.empty() ? 0 : layers.back().N; }
    int max_padded() const {
        int m = 0;
        for (auto& l : layers) m = std::max(m, l.padded_n());
        return m;
    }
    size_t nbytes() const {
        size_t s = 0;
        for (auto& l : layers) s += l.nbytes();
        return s;
    }
};

// Recurrent cell packed as GEMMs over [x, h] (K = I + H) followed by an elementwise step.
// LSTM: one GEMM, N = 4H, gates i, f, g, o, bias b_ih + b_hh.
// GRU:  three GEMMs, none multiplying an input by a structural zero (0 * inf would turn an
//       infinite input into NaN where torch stays finite): `gates` reads [x, h] -> [r | z]
//       with b_ih + b_hh; `gnx` reads x -> n_x with b_ih_n; `gnh` reads h -> n_h with b_hh_n
//       (so that n = tanh(n_x + r * n_h)). A row of gate pre-activations holds [r | z] at 0,
//       n_x at off_nx, n_h at off_nh (each block padded to NR), ld_gates() floats in all.
enum RnnKind : int { RNN_LSTM = 0, RNN_GRU = 1 };
struct PackedRNN {
    int kind = RNN_LSTM, I = 0, H = 0;
    bool keep_rows = false;  // every GEMM keeps a row-major copy (PackedLinear::keep_rows)
    PackedLinear gates;     // LSTM: [x, h] -> 4H; GRU: [x, h] -> [r | z] (2H)
    PackedLinear gnx, gnh;  // GRU only: x -> n_x (H), h -> n_h (H)
    int off_nx = 0, off_nh = 0;
    int ld_gates() const { return kind == RNN_GRU ? off_nh + gnh.padded_n() : gates.padded_n(); }
    size_t nbytes() const { return gates.nbytes() + gnx.nbytes() + gnh.nbytes(); }
};

struct ConvStack;  // conv_pack.h: an encoder's conv layers (the CNN stage of the policy step)

// The whole policy network of a PPO-style module, packed (fastpath.PolicyPlan builds it).
// DIST_SQUASHED_GAUSSIAN: SAC's tanh-squashed Gaussian (actions in [-1, 1]; log-std clamped to
// [SQUASHED_LOG_STD_MIN, SQUASHED_LOG_STD_MAX] for sampling, as RLlib's TorchSquashedGaussian).
enum DistKind : int { DIST_CATEGORICAL = 0, DIST_MULTI_CATEGORICAL = 1, DIST_DIAG_GAUSSIAN = 2,
                      DIST_SQUASHED_GAUSSIAN = 3 };
constexpr float SQUASHED_LOG_STD_MIN = -5.0f, SQUASHED_LOG_STD_MAX = 2.0f;
inline bool is_gaussian(int dist) { return dist == DIST_DIAG_GAUSSIAN || dist == DIST_SQUASHED_GAUSSIAN; }
struct PolicyNet {
    int obs_dim = 0;
    // Conv stages (null: the encoder's mlp reads the observation): the observation row is an
    // H x W x C image (HWC); the mlp (or, when it is empty, the head) reads the flattened output.
    std::shared_ptr<const ConvStack> actor_conv, critic_conv;
    PackedMLP actor_mlp;
    bool actor_rnn_on = false;
    PackedRNN actor_rnn;
    bool critic_on = false;  // false: the value head reads the actor latent
    PackedMLP critic_mlp;
    bool critic_rnn_on = false;
    PackedRNN critic_rnn;
    PackedMLP pi;
    bool vf_on = false;
    PackedMLP vf;
    int dist = DIST_CATEGORICAL;
    std::vector<int> action_sizes;
    float log_std_clip = -1.0f;      // < 0: no clipping
    std::vector<float> free_log_std;  // empty: log-std comes from pi's output
    int dist_dim() const { return pi.out_dim() + int(free_log_std.size()); }
    int n_action_cols() const {
        return dist == DIST_MULTI_CATEGORICAL ? int(action_sizes.size()) : dist == DIST_CATEGORICAL ? 1 : action_sizes[0];
    }
    int draws_per_row() const { return dist == DIST_CATEGORICAL ? 1 : n_action_cols(); }
    int max_padded() const {
        int m = std::max({actor_mlp.max_padded(), critic_mlp.max_padded(), pi.max_padded(), vf.max_padded()});
        return std::max(m, NR);
    }
};

// Inputs and outputs of one policy step (policy.h).
struct StepIO {
    const float* obs = nullptr; int64_t ldobs = 0; int B = 0;
    const uint8_t* obs_u8 = nullptr;  // uint8 observations instead of obs (conv encoders only), same ldobs
    // conv features (set inside policy_step): [B, ld] rows the actor / critic encoder reads instead of obs
    const float* feat_a = nullptr; int64_t ld_fa = 0;
    const float* feat_c = nullptr; int64_t ld_fc = 0;
    // recurrent state in (nullptr: zeros) and out, all [B, H] contiguous
    const float* ha = nullptr; const float* ca = nullptr; const float* hc = nullptr; const float* cc = nullptr;
    float* ha_out = nullptr; float* ca_out = nullptr; float* hc_out = nullptr; float* cc_out = nullptr;
    float* dist = nullptr;         // [B, D]
    int64_t* act_i = nullptr;      // [B] or [B, ncomp] (categorical kinds)
    float* act_f = nullptr;        // [B, A] (Gaussian)
    float* logp = nullptr;         // [B]
    float* value = nullptr;        // [B] or nullptr (no value head run)
    bool det = false;
    uint64_t key = 0, ctr0 = 0;
    // action mask [B, D] (row stride ldmask; categorical kinds only), nullptr: no masking
    const float* mask = nullptr; int64_t ldmask = 0;
    // check_obs: policy_step refuses float32 observations holding NaN / inf (ERR_OBS_NONFINITE,
    // before any draw), testing them inside the conv stage's parallel image load when there is
    // one. reserve_draws: policy_step reserves key / ctr0 from rng_stream() itself, after that
    // check (else the caller has set them).
    bool check_obs = false, reserve_draws = false;
};

// Counter-based RNG: every draw is a pure function of (key, counter), so blocks of rows (and
// threads) draw independent streams and a run is reproducible from the key alone.
inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
inline uint64_t rng_bits(uint64_t key, uint64_t ctr) {
    return mix64(mix64(key ^ (ctr * 0x9E3779B97F4A7C15ULL)) + key);
}
// Uniform in the open interval (0, 1), 32 bits of resolution.
inline double u01_hi(uint64_t z) { return ((z >> 32) + 0.5) * (1.0 / 4294967296.0); }
inline double u01_lo(uint64_t z) { return ((z & 0xffffffffULL) + 0.5) * (1.0 / 4294967296.0); }

// The process-wide sampler stream owned by rlmodule_fast: a key and a counter. Each sampling
// call reserves a range of counters atomically, so concurrent callers never share draws. It
// never reads or advances torch's generators; ops/cpp.py keys it from a seed.
struct RngStream {
    std::mutex mu;
    uint64_t key = 0x853c49e6748fea9bULL;
    uint64_t counter = 0;
    void reserve(uint64_t n, uint64_t* key_out, uint64_t* ctr_out) {
        std::lock_guard<std::mutex> g(mu);
        *key_out = key;
        *ctr_out = counter;
        counter += n;
    }
    void seed(uint64_t k) {
        std::lock_guard<std::mutex> g(mu);
        key = mix64(k + 0x9E3779B97F4A7C15ULL);
        counter = 0;
    }
    void set(uint64_t k, uint64_t c) {
        std::lock_guard<std::mutex> g(mu);
        key = k;
        counter = c;
    }
};
inline RngStream& rng_stream() {
    static RngStream s;
    return s;
}

}  // namespace rf
