// The only file that knows pybind11. Python (rlmodule_fast/ops/cpp.py, fastpath.py) checks
// every argument -- dtype float32 (int64 for actions), shapes, row strides, liveness -- and
// hands raw data pointers (integers) and sizes; this file re-checks sizes, converts, releases
// the GIL around the work and turns kernel error codes into Python exceptions.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <vector>

#include "kernels.h"

namespace py = pybind11;
using namespace rf;

namespace {

std::atomic<int> g_isa{-1};

Isa current_isa() {
    int v = g_isa.load(std::memory_order_relaxed);
    if (v < 0) {
        Isa best = detect_isa();
        const char* env = std::getenv("RLMODULE_FAST_ISA");
        Isa want;
        if (env && *env && parse_isa(env, &want) && isa_supported(want)) best = want;
        g_isa.store(int(best));
        return best;
    }
    return Isa(v);
}
const KernelTable& K() { return kernel_table(current_isa()); }

template <class T> T* P(uint64_t p) { return reinterpret_cast<T*>(static_cast<uintptr_t>(p)); }

// A numpy array of native float32, compared by value: a dtype that went through pickle (Ray's
// protocol 5, multiprocessing queues) is an equal but distinct object from numpy's singleton.
bool is_f32(const py::array& a) {
    return py::detail::npy_api::get().PyArray_EquivTypes_(a.dtype().ptr(), py::dtype::of<float>().ptr());
}

#define RF_CHECK(cond, msg) do { if (!(cond)) throw py::value_error(msg); } while (0)

// ---------------------------------------------------------------------------------------------
// Argument checks at the border. _C takes raw pointers, so it cannot see buffer extents (that is
// ops/cpp.py's and fastpath.py's job); what it can check, every binding checks here before a
// pointer is touched or the GIL released: sizes > 0 and bounded (so that no int derived from
// them -- round_up, 4 * H -- overflows), B >= 0, leading dimensions >= row widths, non-null
// pointers wherever B > 0 dereferences them, activation / kind codes in range. Size arithmetic
// is 64-bit. Failures raise ValueError "<function>: <argument>: expected ..., got ...".

constexpr int64_t kMaxDim = int64_t(1) << 24;  // any one width (I, H, N, K, A)
constexpr int kGemvRows = 12;  // fused_mlp: up to this many rows, dot products from nn.Linear layout

[[noreturn]] void fail(const char* fn, const std::string& what, const std::string& msg) {
    throw py::value_error(std::string(fn) + ": " + what + ": " + msg);
}

void check_dim(const char* fn, const std::string& what, int64_t v) {
    if (v < 1 || v > kMaxDim)
        fail(fn, what, "expected a size in [1, " + std::to_string(kMaxDim) + "], got " + std::to_string(v));
}

void check_batch(const char* fn, int64_t B) {
    if (B < 0) fail(fn, "B", "expected >= 0, got " + std::to_string(B));
}

// A pointer that B > 0 will dereference.
void check_ptr(const char* fn, const std::string& what, uint64_t p, int64_t B) {
    if (B > 0 && p == 0) fail(fn, what, "null pointer for B = " + std::to_string(B) + " rows");
}

// Rows of a [B, width] float buffer at p with leading dimension ld (width checked by the caller).
void check_rows(const char* fn, const std::string& what, uint64_t p, int64_t B, int64_t ld, int64_t width) {
    check_ptr(fn, what, p, B);
    if (ld < width)
        fail(fn, "ld" + what, "expected >= " + std::to_string(width) + " (the row width of " + what + "), got " +
                                  std::to_string(ld));
}

void check_act(const char* fn, const std::string& what, int act) {
    if (act < ACT_LINEAR || act > ACT_ELU)
        fail(fn, what, "unknown activation code " + std::to_string(act) + " (expected 0..." + std::to_string(int(ACT_ELU)) + ")");
}

// (w_ptr, N, K, ldw, b_ptr, b_stride); b_ptr 0 = no bias
using LayerDesc = std::tuple<uint64_t, int, int, int64_t, uint64_t, int64_t>;

// The layers of an MLP: sizes, pointers, strides, activations and the K chain (layer 0 reads
// in_dim inputs; in_dim < 0: checked by the caller). Returns the output width (in_dim if empty).
int64_t check_layers(const char* fn, const std::vector<LayerDesc>& layers, const std::vector<int>& acts,
                     int64_t in_dim, bool allow_empty, const char* what = "layers") {
    const std::string w(what);
    if (layers.size() != acts.size())
        fail(fn, w, std::to_string(layers.size()) + " layers but " + std::to_string(acts.size()) + " activations");
    if (layers.empty() && !allow_empty) fail(fn, w, "expected at least one layer");
    int64_t k_in = in_dim;
    for (size_t i = 0; i < layers.size(); ++i) {
        auto [wp, N, Kd, ldw, bp, bs] = layers[i];
        const std::string li = w + "[" + std::to_string(i) + "]";
        check_dim(fn, li + ".N", N);
        check_dim(fn, li + ".K", Kd);
        if (k_in >= 0 && Kd != k_in)
            fail(fn, li + ".K", "expected " + std::to_string(k_in) + (i ? " (the previous layer's N)" : " (the input size)") +
                                    ", got " + std::to_string(Kd));
        if (wp == 0) fail(fn, li + ".weight", "null pointer");
        if (ldw < Kd) fail(fn, li + ".ldw", "expected >= K = " + std::to_string(Kd) + ", got " + std::to_string(ldw));
        if (bp != 0 && bs < 0) fail(fn, li + ".bias_stride", "expected >= 0, got " + std::to_string(bs));
        check_act(fn, "acts[" + std::to_string(i) + "]", acts[i]);
        k_in = N;
    }
    return layers.empty() ? in_dim : k_in;
}

// (kind, I, H, wih_ptr, ldwih, whh_ptr, ldwhh, bih_ptr, bhh_ptr); biases contiguous [G*H] or 0
using RnnDesc = std::tuple<int, int, int, uint64_t, int64_t, uint64_t, int64_t, uint64_t, uint64_t>;

void check_rnn_desc(const char* fn, const RnnDesc& d, const char* what = "rnn") {
    auto [kind, I, H, wih, ldi, whh, ldh, bih, bhh] = d;
    (void)bih; (void)bhh;
    const std::string w(what);
    if (kind != RNN_LSTM && kind != RNN_GRU)
        fail(fn, w + ".kind", "expected 0 (LSTM) or 1 (GRU), got " + std::to_string(kind));
    check_dim(fn, w + ".I", I);
    check_dim(fn, w + ".H", H);
    if (wih == 0) fail(fn, w + ".w_ih", "null pointer");
    if (whh == 0) fail(fn, w + ".w_hh", "null pointer");
    if (ldi < I) fail(fn, w + ".ldw_ih", "expected >= I = " + std::to_string(I) + ", got " + std::to_string(ldi));
    if (ldh < H) fail(fn, w + ".ldw_hh", "expected >= H = " + std::to_string(H) + ", got " + std::to_string(ldh));
}

// One recurrent step's buffers: x [B, I] (ldx), h [B, H] (ldh), c [B, H] (ldc, LSTM only),
// h_out / c_out contiguous [B, H] (c_out LSTM only; a GRU ignores c, ldc and c_out).
void check_rnn_io(const char* fn, const PackedRNN& R, int64_t B, uint64_t x, int64_t ldx, uint64_t h, int64_t ldh,
                  uint64_t c, int64_t ldc, uint64_t h_out, uint64_t c_out) {
    check_batch(fn, B);
    check_rows(fn, "x", x, B, ldx, R.I);
    check_rows(fn, "h", h, B, ldh, R.H);
    check_ptr(fn, "h_out", h_out, B);
    if (R.kind == RNN_LSTM) {
        check_rows(fn, "c", c, B, ldc, R.H);
        check_ptr(fn, "c_out", c_out, B);
    }
}

void pack_linear(PackedLinear& L, const LayerDesc& d) {  // d checked (check_layers)
    auto [wp, N, Kd, ldw, bp, bs] = d;
    L.init(Kd, N);
    L.put_weight(MatView{P<const float>(wp), N, Kd, ldw, 1}, 0, 0);
    L.add_bias(P<const float>(bp), bs, N, 0);
}

void pack_mlp(const char* fn, PackedMLP& m, const std::vector<LayerDesc>& layers, const std::vector<int>& acts,
              int64_t in_dim, bool allow_empty, const char* what = "layers") {
    check_layers(fn, layers, acts, in_dim, allow_empty, what);
    m.layers.resize(layers.size());  // existing layers keep their buffers (init only grows them)
    m.acts = acts;
    for (size_t i = 0; i < layers.size(); ++i) {
        m.layers[i].keep_rows = m.keep_rows;
        pack_linear(m.layers[i], layers[i]);
    }
}

// Optional spec[key] (absent or None: no norms): per layer of m, None or (gamma_ptr, beta_ptr,
// eps) of an nn.LayerNorm over that layer's N outputs; a 0 pointer means ones / zeros.
void pack_norms(const char* fn, PackedMLP& m, const py::dict& s, const char* key) {
    m.norms.clear();
    if (!s.contains(key) || s[key].is_none()) return;
    auto lst = s[key].cast<std::vector<py::object>>();
    if (lst.size() != m.layers.size())
        fail(fn, key, "expected one entry per layer (" + std::to_string(m.layers.size()) + "), got " +
                          std::to_string(lst.size()));
    m.norms.resize(lst.size());
    for (size_t i = 0; i < lst.size(); ++i) {
        if (lst[i].is_none()) continue;
        auto [gp, bp, eps] = lst[i].cast<std::tuple<uint64_t, uint64_t, float>>();
        if (!(eps >= 0.0f) || !std::isfinite(eps))
            fail(fn, std::string(key) + "[" + std::to_string(i) + "].eps", "expected a finite eps >= 0");
        PackedNorm& nm = m.norms[i];
        const PackedLinear& L = m.layers[i];
        nm.on = true;
        nm.N = L.N;
        nm.eps = eps;
        const size_t np = size_t(L.padded_n());
        nm.g.resize(np);
        nm.b.resize(np);
        std::memset(nm.g.p, 0, sizeof(float) * np);
        std::memset(nm.b.p, 0, sizeof(float) * np);
        const float* g = P<const float>(gp);
        const float* b = P<const float>(bp);
        for (int j = 0; j < L.N; ++j) {
            nm.g.p[j] = g ? g[j] : 1.0f;
            nm.b.p[j] = b ? b[j] : 0.0f;
        }
    }
}

void pack_rnn(const char* fn, PackedRNN& R, const RnnDesc& d, const char* what = "rnn") {
    check_rnn_desc(fn, d, what);
    auto [kind, I, H, wih, ldi, whh, ldh, bih, bhh] = d;
    R.kind = kind; R.I = I; R.H = H;
    R.gates.keep_rows = R.gnx.keep_rows = R.gnh.keep_rows = R.keep_rows;
    const float* Wi = P<const float>(wih);
    const float* Wh = P<const float>(whh);
    const float* Bi = P<const float>(bih);
    const float* Bh = P<const float>(bhh);
    if (kind == RNN_LSTM) {
        R.gates.init(I + H, 4 * H);
        R.gates.put_weight(MatView{Wi, 4 * H, I, ldi, 1}, 0, 0);
        R.gates.put_weight(MatView{Wh, 4 * H, H, ldh, 1}, 0, I);
        R.gates.add_bias(Bi, 1, 4 * H, 0);
        R.gates.add_bias(Bh, 1, 4 * H, 0);
    } else {
        // r, z: [x, h] with b_ih + b_hh; n_x: x with b_ih_n; n_h: h with b_hh_n (common.h)
        R.gates.init(I + H, 2 * H);
        R.gates.put_weight(MatView{Wi, 2 * H, I, ldi, 1}, 0, 0);
        R.gates.put_weight(MatView{Wh, 2 * H, H, ldh, 1}, 0, I);
        R.gates.add_bias(Bi, 1, 2 * H, 0);
        R.gates.add_bias(Bh, 1, 2 * H, 0);
        R.gnx.init(I, H);
        R.gnx.put_weight(MatView{Wi + 2 * int64_t(H) * ldi, H, I, ldi, 1}, 0, 0);
        R.gnx.add_bias(Bi ? Bi + 2 * H : nullptr, 1, H, 0);
        R.gnh.init(H, H);
        R.gnh.put_weight(MatView{Wh + 2 * int64_t(H) * ldh, H, H, ldh, 1}, 0, 0);
        R.gnh.add_bias(Bh ? Bh + 2 * H : nullptr, 1, H, 0);
        R.off_nx = R.gates.padded_n();
        R.off_nh = R.off_nx + R.gnx.padded_n();
    }
}

// The pool's bound: more threads than a few per hardware thread only costs memory and wake-ups.
int max_threads() {
    const int hw = int(std::thread::hardware_concurrency());
    return std::max(64, 4 * hw);
}

// First row of the [B, D] float block (row stride ld) holding a NaN or an inf, or -1.
int64_t first_nonfinite_row(const float* x, int B, int64_t ld, int D) {
    for (int r = 0; r < B; ++r) {
        const float* row = x + int64_t(r) * ld;
        uint32_t bad = 0;
        for (int j = 0; j < D; ++j) {
            uint32_t bits;
            std::memcpy(&bits, row + j, sizeof bits);
            bad |= uint32_t((bits & 0x7f800000u) == 0x7f800000u);  // exponent all ones: inf or NaN
        }
        if (bad) return r;
    }
    return -1;
}

void raise_nonfinite(int64_t err, const char* what) {
    int64_t row;
    const int kind = decode_err(err, &row);
    if (kind == ERRK_MASK_ALL)
        throw py::value_error("action_mask: every action is masked (row " + std::to_string(row) +
                              "); expected at least one allowed action per row (per segment)");
    if (kind == ERRK_MASK_VALUE)
        throw py::value_error("action_mask: expected values 0 or 1, got another value (row " + std::to_string(row) + ")");
    if (kind == ERRK_OBS_NONFINITE) throw py::value_error("obs: contains NaN or inf (row " + std::to_string(row) + ")");
    throw py::value_error(std::string(what) + ": contains NaN or inf (row " + std::to_string(row) + ")");
}

// A float32 action mask [B, n] for a step or sampler: a numpy array or a raw pointer (with its
// row stride ldm); None: no mask. Returns nullptr for None.
const float* mask_arg(py::handle o, int B, int n, int64_t ldm, int64_t* ld_out) {
    if (o.is_none()) return nullptr;
    if (py::isinstance<py::array>(o)) {
        auto arr = py::reinterpret_borrow<py::array>(o);
        RF_CHECK(is_f32(arr) && arr.ndim() == 2 && arr.shape(0) == B && arr.shape(1) == n &&
                     (arr.flags() & py::array::c_style),
                 "action_mask: expected a contiguous float32 array [" + std::to_string(B) + ", " + std::to_string(n) + "]");
        *ld_out = n;
        return static_cast<const float*>(arr.data());
    }
    RF_CHECK(ldm >= n, "action_mask: row stride " + std::to_string(ldm) + " < width " + std::to_string(n));
    *ld_out = ldm;
    const uint64_t p = o.cast<uint64_t>();
    RF_CHECK(B == 0 || p != 0, "action_mask: null pointer");
    return P<const float>(p);
}

// A packed object replaced atomically on repack, so concurrent steps see old or new, never half.
template <class T>
struct Holder {
    std::mutex mu;
    std::shared_ptr<const T> cur;
    std::shared_ptr<const T> get() { std::lock_guard<std::mutex> g(mu); return cur; }
    void set(std::shared_ptr<const T> p) { std::lock_guard<std::mutex> g(mu); cur = std::move(p); }
    // Repack: refill the current object in place when nobody holds it (a step copies the pointer
    // under mu first, so use_count() == 1 under mu means none runs or can start) and its sizes
    // fit (fits(): packing allocates nothing, so cannot throw half-way); else build a new object
    // and swap it in. Called with the GIL held and never releasing it while mu is held.
    template <class Fits, class Pack>
    void repack(Fits fits, Pack pack) {
        {
            std::lock_guard<std::mutex> g(mu);
            if (cur && cur.use_count() == 1 && fits(*cur)) {
                pack(*std::const_pointer_cast<T>(cur));
                return;
            }
        }
        auto p = std::make_shared<T>();
        pack(*p);
        set(std::move(p));
    }
};

struct PyMLP {
    Holder<PackedMLP> h;
    bool keep_rows;  // keep row-major copies: same() runs at memcmp speed (the one-shot op cache)
    PyMLP(const std::vector<LayerDesc>& layers, const std::vector<int>& acts, bool keep_rows_ = false)
        : keep_rows(keep_rows_) { repack(layers, acts); }
    void repack(const std::vector<LayerDesc>& layers, const std::vector<int>& acts) {
        check_layers("PackedMLP", layers, acts, -1, false);  // every failure before anything changes
        h.repack(
            [&](const PackedMLP& m) {
                if (m.layers.size() != layers.size()) return false;
                for (size_t i = 0; i < layers.size(); ++i)
                    if (m.layers[i].N != std::get<1>(layers[i]) || m.layers[i].K != std::get<2>(layers[i])) return false;
                return true;
            },
            [&](PackedMLP& m) { m.keep_rows = keep_rows; pack_mlp("PackedMLP", m, layers, acts, -1, false); });
    }
    // Whether packing (layers, acts) now would give exactly this object's contents (the one-shot
    // op cache in ops/cpp.py checks this before every reuse: never a stale result).
    bool same(const std::vector<LayerDesc>& layers, const std::vector<int>& acts, bool weights) {
        auto m = h.get();
        check_layers("PackedMLP.same", layers, acts, -1, false);
        if (layers.size() != m->layers.size() || acts != m->acts) return false;
        size_t work = 0;
        for (size_t i = 0; i < layers.size(); ++i) {
            auto [wp, N, Kd, ldw, bp, bs] = layers[i];
            const PackedLinear& L = m->layers[i];
            if (L.N != N || L.K != Kd) return false;
            work += size_t(N) * Kd;
        }
        auto cmp = [&] {
            for (size_t i = 0; i < layers.size(); ++i) {
                auto [wp, N, Kd, ldw, bp, bs] = layers[i];
                const PackedLinear& L = m->layers[i];
                if (weights && !L.same_weight(MatView{P<const float>(wp), N, Kd, ldw, 1}, 0, 0)) return false;
                if (!L.same_bias(P<const float>(bp), bs, nullptr, 0, N, 0)) return false;
            }
            return true;
        };
        if (!weights || work < (1u << 16)) return cmp();
        py::gil_scoped_release nogil;
        return cmp();
    }
    void forward(uint64_t x, int B, int64_t ldx, uint64_t y, int64_t ldy) {
        auto m = h.get();
        check_batch("PackedMLP.forward", B);
        check_rows("PackedMLP.forward", "x", x, B, ldx, m->in_dim());
        check_rows("PackedMLP.forward", "y", y, B, ldy, m->out_dim());
        py::gil_scoped_release nogil;
        K().mlp_forward(*m, P<const float>(x), ldx, B, P<float>(y), ldy);
    }
};

// An LSTM/GRU cell packed once (the one-shot ops keep these in a small cache keyed by the
// weight matrices' identity, checked with same() before each reuse: stepping the same cell does
// not repack every call, and never runs on stale weights).
struct PyRNN {
    Holder<PackedRNN> h;
    bool keep_rows;  // see PyMLP
    explicit PyRNN(const RnnDesc& d, bool keep_rows_ = false) : keep_rows(keep_rows_) { repack(d); }
    void repack(const RnnDesc& d) {
        check_rnn_desc("PackedRNN", d);  // every failure before anything changes
        h.repack(
            [&](const PackedRNN& r) { return r.kind == std::get<0>(d) && r.I == std::get<1>(d) && r.H == std::get<2>(d); },
            [&](PackedRNN& r) { r.keep_rows = keep_rows; pack_rnn("PackedRNN", r, d); });
    }
    // Whether packing d now would give exactly this cell's contents (see PyMLP::same).
    bool same(const RnnDesc& d, bool weights) {
        auto R = h.get();
        check_rnn_desc("PackedRNN.same", d);
        auto [kind, I, H, wih, ldi, whh, ldh, bih, bhh] = d;
        if (kind != R->kind || I != R->I || H != R->H) return false;
        const float* Wi = P<const float>(wih);
        const float* Wh = P<const float>(whh);
        const float* Bi = P<const float>(bih);
        const float* Bh = P<const float>(bhh);
        if (!weights) {  // the biases alone (the caller checked the weights' identity and versions)
            if (kind == RNN_LSTM) return R->gates.same_bias(Bi, 1, Bh, 1, 4 * H, 0);
            return R->gates.same_bias(Bi, 1, Bh, 1, 2 * H, 0) &&
                   R->gnx.same_bias(Bi ? Bi + 2 * H : nullptr, 1, nullptr, 0, H, 0) &&
                   R->gnh.same_bias(Bh ? Bh + 2 * H : nullptr, 1, nullptr, 0, H, 0);
        }
        auto cmp = [&] {
            if (kind == RNN_LSTM)
                return R->gates.same_weight(MatView{Wi, 4 * H, I, ldi, 1}, 0, 0) &&
                       R->gates.same_weight(MatView{Wh, 4 * H, H, ldh, 1}, 0, I) &&
                       R->gates.same_bias(Bi, 1, Bh, 1, 4 * H, 0);
            return R->gates.same_weight(MatView{Wi, 2 * H, I, ldi, 1}, 0, 0) &&
                   R->gates.same_weight(MatView{Wh, 2 * H, H, ldh, 1}, 0, I) &&
                   R->gates.same_bias(Bi, 1, Bh, 1, 2 * H, 0) &&
                   R->gnx.same_weight(MatView{Wi + 2 * int64_t(H) * ldi, H, I, ldi, 1}, 0, 0) &&
                   R->gnx.same_bias(Bi ? Bi + 2 * H : nullptr, 1, nullptr, 0, H, 0) &&
                   R->gnh.same_weight(MatView{Wh + 2 * int64_t(H) * ldh, H, H, ldh, 1}, 0, 0) &&
                   R->gnh.same_bias(Bh ? Bh + 2 * H : nullptr, 1, nullptr, 0, H, 0);
        };
        if (int64_t(H) * (I + H) < (1 << 14)) return cmp();
        py::gil_scoped_release nogil;
        return cmp();
    }
    void step(uint64_t x, int B, int64_t ldx, uint64_t hp, int64_t ldh, uint64_t c, int64_t ldc,
              uint64_t h_out, uint64_t c_out) {
        auto R = h.get();
        check_rnn_io("PackedRNN.step", *R, B, x, ldx, hp, ldh, c, ldc, h_out, c_out);
        py::gil_scoped_release nogil;
        K().rnn_forward(*R, P<const float>(x), ldx, B, P<const float>(hp), ldh, P<const float>(c), ldc,
                        P<float>(h_out), R->H, P<float>(c_out), R->H);
    }
};

// ---------------------------------------------------------------------------------------------
// conv2d (csrc/conv.h): (w_ptr, Cout, Cin, kh, kw, s0, s1, s2, s3, b_ptr, b_stride, sh, sw,
// pl, pr, pt, pb, act); weight in nn.Conv2d layout [Cout, Cin, kh, kw] with element strides
// s0..s3 (>= 0), bias [Cout] with stride b_stride or b_ptr = 0.
using ConvDesc = std::tuple<uint64_t, int, int, int, int, int64_t, int64_t, int64_t, int64_t, uint64_t, int64_t,
                            int, int, int, int, int, int, int>;
constexpr int kMaxKernel = 1 << 12;  // kernel size, stride, padding: each at most this

void check_conv_desc(const char* fn, const ConvDesc& d, const std::string& w) {
    auto [wp, Cout, Cin, kh, kw, s0, s1, s2, s3, bp, bs, sh, sw, pl, pr, pt, pb, act] = d;
    check_dim(fn, w + ".Cout", Cout);
    check_dim(fn, w + ".Cin", Cin);
    auto small = [&](const char* what, int64_t v, int64_t lo) {
        if (v < lo || v > kMaxKernel)
            fail(fn, w + "." + what, "expected " + std::to_string(lo) + " ... " + std::to_string(kMaxKernel) + ", got " +
                                         std::to_string(v));
    };
    small("kh", kh, 1); small("kw", kw, 1); small("stride_h", sh, 1); small("stride_w", sw, 1);
    small("pad_left", pl, 0); small("pad_right", pr, 0); small("pad_top", pt, 0); small("pad_bottom", pb, 0);
    if (int64_t(kh) * kw * Cin > kMaxDim)
        fail(fn, w + ".K", "expected kh * kw * Cin <= " + std::to_string(kMaxDim) + ", got " +
                               std::to_string(int64_t(kh) * kw * Cin));
    if (wp == 0) fail(fn, w + ".weight", "null pointer");
    if (s0 < 0 || s1 < 0 || s2 < 0 || s3 < 0) fail(fn, w + ".weight", "expected non-negative strides");
    if (bp != 0 && bs < 0) fail(fn, w + ".bias_stride", "expected >= 0, got " + std::to_string(bs));
    check_act(fn, w + ".act", act);
}

void pack_conv(PackedConv& L, const ConvDesc& d) {  // d checked (check_conv_desc)
    auto [wp, Cout, Cin, kh, kw, s0, s1, s2, s3, bp, bs, sh, sw, pl, pr, pt, pb, act] = d;
    L.init(Cin, Cout, kh, kw);
    const int64_t st[4] = {s0, s1, s2, s3};
    L.put_weight(P<const float>(wp), st);
    L.put_bias(P<const float>(bp), bs);
    L.sh = sh; L.sw = sw; L.pl = pl; L.pr = pr; L.pt = pt; L.pb = pb; L.act = act;
}

// Output size of one layer over H x W, or ValueError naming the layer.
std::pair<int, int> conv_out_size(const char* fn, const PackedConv& L, int64_t H, int64_t W, const std::string& w) {
    const int64_t Hp = H + L.pt + L.pb, Wp = W + L.pl + L.pr;
    if (Hp < L.kh || Wp < L.kw)
        fail(fn, w, "padded input " + std::to_string(Hp) + "x" + std::to_string(Wp) + " is smaller than the kernel " +
                        std::to_string(L.kh) + "x" + std::to_string(L.kw));
    return {int((Hp - L.kh) / L.sh + 1), int((Wp - L.kw) / L.sw + 1)};
}

// Image sizes at the border: each side in [1, 2^16], a whole image in [1, 2^28] elements.
void check_image(const char* fn, int64_t H, int64_t W, int64_t C) {
    auto side = [&](const char* what, int64_t v) {
        if (v < 1 || v > (1 << 16)) fail(fn, what, "expected 1 ... 65536, got " + std::to_string(v));
    };
    side("H", H); side("W", W);
    check_dim(fn, "C", C);
    if (H * W * C > (int64_t(1) << 28)) fail(fn, "H*W*C", "expected <= 2^28, got " + std::to_string(H * W * C));
}

// One conv layer packed once (the one-shot op keeps these in ops/cpp.py's pack cache, checked
// with same() before each reuse).
struct PyConv {
    Holder<PackedConv> h;
    explicit PyConv(const ConvDesc& d) { repack(d); }
    void repack(const ConvDesc& d) {
        check_conv_desc("PackedConv", d, "conv");
        h.repack([&](const PackedConv& c) { return c.Cout == std::get<1>(d) && c.Cin == std::get<2>(d) &&
                                                   c.kh == std::get<3>(d) && c.kw == std::get<4>(d); },
                 [&](PackedConv& c) { pack_conv(c, d); });
    }
    // Whether packing d now gives exactly this layer (weights=False: geometry and bias only).
    bool same(const ConvDesc& d, bool weights) {
        check_conv_desc("PackedConv.same", d, "conv");
        auto c = h.get();
        auto [wp, Cout, Cin, kh, kw, s0, s1, s2, s3, bp, bs, sh, sw, pl, pr, pt, pb, act] = d;
        (void)wp; (void)s0; (void)s1; (void)s2; (void)s3;
        if (c->Cout != Cout || c->Cin != Cin || c->kh != kh || c->kw != kw || c->sh != sh || c->sw != sw ||
            c->pl != pl || c->pr != pr || c->pt != pt || c->pb != pb || c->act != act)
            return false;
        const float* bias = P<const float>(bp);
        uint32_t diff = 0;
        for (int co = 0; co < Cout; ++co)
            diff |= PackedLinear::bits(bias ? bias[co * bs] : 0.0f) ^ PackedLinear::bits(c->b.p[co]);
        if (diff) return false;
        if (!weights) return true;
        thread_local PackedConv t;
        pack_conv(t, d);
        return !std::memcmp(c->w.p, t.w.p, sizeof(float) * size_t(t.P) * t.K * t.PW);
    }
    // x: B images [H, W, Cin] (contiguous HWC each, image b at x + b * ldx elements), float32 or
    // uint8; y: contiguous [B, Ho, Wo, Cout] float32. Returns (Ho, Wo).
    std::pair<int, int> forward(uint64_t x, bool u8, int64_t B, int64_t H, int64_t W, int64_t ldx, bool has_scale,
                                float scale, uint64_t y) {
        const char* fn = "conv2d_nhwc";
        auto c = h.get();
        check_batch(fn, B);
        RF_CHECK(B <= INT32_MAX, "conv2d_nhwc: B: more than 2^31 - 1 images");
        check_image(fn, H, W, c->Cin);
        check_rows(fn, "x", x, B, ldx, H * W * c->Cin);
        check_ptr(fn, "y", y, B);
        RF_CHECK(!has_scale || std::isfinite(scale), "conv2d_nhwc: scale: expected a finite number");
        auto [Ho, Wo] = conv_out_size(fn, *c, H, W, "x");
        py::gil_scoped_release nogil;
        K().conv_forward(c.get(), 1, int(H), int(W), P<const void>(x), u8, ldx, int(B), has_scale, scale, P<float>(y),
                         int64_t(Ho) * Wo * c->Cout);
        return {Ho, Wo};
    }
};

// spec[key], or ValueError naming the missing key
py::object item(const py::dict& s, const char* key) {
    if (!s.contains(key)) throw py::value_error(std::string("Policy: spec: missing key '") + key + "'");
    return s[key];
}

// (H, W, C, has_scale, scale, [ConvDesc...]): an encoder's conv stage over H x W x C images
// (the policy step's actor_conv / critic_conv, the DQN step's conv: qnet_bind.h). None or an
// absent key: no conv stage.
using ConvStackDesc = std::tuple<int64_t, int64_t, int64_t, bool, float, std::vector<ConvDesc>>;

std::shared_ptr<const ConvStack> build_conv_stack(const char* fn, const py::dict& s, const char* key) {
    if (!s.contains(key) || s[key].is_none()) return nullptr;
    auto [H, W, C, has_scale, scale, descs] = s[key].cast<ConvStackDesc>();
    const std::string w(key);
    check_image(fn, H, W, C);
    if (descs.empty()) fail(fn, w, "expected at least one conv layer");
    RF_CHECK(!has_scale || std::isfinite(scale), std::string(fn) + ": " + key + ": scale: expected a finite number");
    auto st = std::make_shared<ConvStack>();
    st->layers.resize(descs.size());
    st->has_scale = has_scale;
    st->scale = scale;
    int64_t h = H, wd = W, c = C;
    for (size_t l = 0; l < descs.size(); ++l) {
        const std::string li = w + "[" + std::to_string(l) + "]";
        check_conv_desc(fn, descs[l], li);
        if (std::get<2>(descs[l]) != c)
            fail(fn, li + ".Cin", "expected " + std::to_string(c) + (l ? " (the previous layer's Cout)" : " (the image's C)") +
                                      ", got " + std::to_string(std::get<2>(descs[l])));
        pack_conv(st->layers[l], descs[l]);
        auto [ho, wo] = conv_out_size(fn, st->layers[l], h, wd, li);
        check_image(fn, ho, wo, st->layers[l].Cout);
        h = ho; wd = wo; c = st->layers[l].Cout;
    }
    RF_CHECK(st->plan(int(H), int(W), int(C)), std::string(fn) + ": " + key + ": empty output");
    check_dim(fn, w + ".out_dim", st->out_dim());
    return st;
}

PolicyNet build_policy(const py::dict& s) {
    PolicyNet n;
    const char* fn = "Policy";
    n.obs_dim = item(s, "obs_dim").cast<int>();
    check_dim(fn, "obs_dim", n.obs_dim);
    n.actor_conv = build_conv_stack(fn, s, "actor_conv");
    n.critic_conv = build_conv_stack(fn, s, "critic_conv");
    for (auto* cs : {n.actor_conv.get(), n.critic_conv.get()})
        if (cs) RF_CHECK(cs->in_dim() == n.obs_dim, "Policy: conv image size H*W*C differs from obs_dim");
    // what each encoder's first stage reads: the observation or its conv features
    const int in_a = n.actor_conv ? n.actor_conv->out_dim() : n.obs_dim;
    const int in_c = n.critic_conv ? n.critic_conv->out_dim() : n.obs_dim;
    pack_mlp(fn, n.actor_mlp, item(s, "actor_mlp").cast<std::vector<LayerDesc>>(), item(s, "actor_acts").cast<std::vector<int>>(),
             in_a, true, "actor_mlp");
    pack_norms(fn, n.actor_mlp, s, "actor_norms");
    if (!item(s, "actor_rnn").is_none()) { n.actor_rnn_on = true; pack_rnn(fn, n.actor_rnn, item(s, "actor_rnn").cast<RnnDesc>(), "actor_rnn"); }
    n.critic_on = item(s, "critic_on").cast<bool>();
    if (n.critic_on) {
        pack_mlp(fn, n.critic_mlp, item(s, "critic_mlp").cast<std::vector<LayerDesc>>(), item(s, "critic_acts").cast<std::vector<int>>(),
                 in_c, true, "critic_mlp");
        pack_norms(fn, n.critic_mlp, s, "critic_norms");
        if (!item(s, "critic_rnn").is_none()) { n.critic_rnn_on = true; pack_rnn(fn, n.critic_rnn, item(s, "critic_rnn").cast<RnnDesc>(), "critic_rnn"); }
    }
    pack_mlp(fn, n.pi, item(s, "pi").cast<std::vector<LayerDesc>>(), item(s, "pi_acts").cast<std::vector<int>>(), -1, false, "pi");
    pack_norms(fn, n.pi, s, "pi_norms");
    if (!item(s, "vf").is_none()) {
        n.vf_on = true;
        pack_mlp(fn, n.vf, item(s, "vf").cast<std::vector<LayerDesc>>(), item(s, "vf_acts").cast<std::vector<int>>(), -1, false, "vf");
        pack_norms(fn, n.vf, s, "vf_norms");
        RF_CHECK(!n.vf.layers.empty() && n.vf.out_dim() == 1, "vf head must end in one output");
    }
    // defensive shape checks (fastpath.py validates first): every pointer walk stays in bounds
    auto in_of = [](const PackedMLP& m, int fallback) { return m.layers.empty() ? fallback : m.in_dim(); };
    auto out_of = [](const PackedMLP& m, bool rnn_on, const PackedRNN& r, int in) {
        int o = m.layers.empty() ? in : m.out_dim();
        if (rnn_on) { RF_CHECK(r.I == o, "rnn input size differs from its mlp's output size"); o = r.H; }
        return o;
    };
    RF_CHECK(!n.critic_conv || n.critic_on, "Policy: critic_conv given without a critic encoder (critic_on)");
    RF_CHECK(in_of(n.actor_mlp, in_a) == in_a, "actor mlp input size differs from obs_dim (or the conv output size)");
    if (n.actor_mlp.layers.empty() && n.actor_rnn_on) RF_CHECK(n.actor_rnn.I == in_a, "actor rnn input size differs from obs_dim");
    const int lat_a = out_of(n.actor_mlp, n.actor_rnn_on, n.actor_rnn, in_a);
    RF_CHECK(n.pi.in_dim() == lat_a, "pi input size differs from the actor latent size");
    int lat_c = lat_a;
    if (n.critic_on) {
        RF_CHECK(in_of(n.critic_mlp, in_c) == in_c, "critic mlp input size differs from obs_dim (or the conv output size)");
        if (n.critic_mlp.layers.empty() && n.critic_rnn_on) RF_CHECK(n.critic_rnn.I == in_c, "critic rnn input size differs from obs_dim");
        lat_c = out_of(n.critic_mlp, n.critic_rnn_on, n.critic_rnn, in_c);
    }
    if (n.vf_on) RF_CHECK(n.vf.in_dim() == lat_c, "vf input size differs from the critic latent size");
    n.dist = item(s, "dist").cast<int>();
    n.action_sizes = item(s, "action_sizes").cast<std::vector<int>>();
    n.log_std_clip = item(s, "log_std_clip").cast<float>();
    n.free_log_std = item(s, "free_log_std").cast<std::vector<float>>();
    RF_CHECK(!std::isnan(n.log_std_clip), "Policy: log_std_clip: expected < 0 (no clipping) or >= 0, got NaN");
    RF_CHECK(!n.action_sizes.empty(), "Policy: action_sizes: empty");
    RF_CHECK(n.dist >= DIST_CATEGORICAL && n.dist <= DIST_SQUASHED_GAUSSIAN, "unknown dist code");
    int want = 0;
    int64_t want64 = 0;
    for (int a : n.action_sizes) { check_dim(fn, "action_sizes", a); want64 += a; }
    RF_CHECK(want64 <= kMaxDim, "Policy: action_sizes: total too large");
    want = int(want64);
    if (is_gaussian(n.dist)) {
        RF_CHECK(n.action_sizes.size() == 1, "a Gaussian takes one action size");
        RF_CHECK(n.dist == DIST_DIAG_GAUSSIAN || n.free_log_std.empty(), "free_log_std is for diag_gaussian only");
        RF_CHECK(n.dist == DIST_DIAG_GAUSSIAN || n.log_std_clip < 0.0f,
                 "log_std_clip is for diag_gaussian only (squashed_gaussian clamps to [-5, 2])");
        want = 2 * n.action_sizes[0];
    } else {
        RF_CHECK(n.free_log_std.empty(), "free_log_std is for diag_gaussian only");
        RF_CHECK(n.dist == DIST_MULTI_CATEGORICAL || n.action_sizes.size() == 1, "categorical takes one action size");
    }
    RF_CHECK(n.dist_dim() == want, "pi output (+ free_log_std) size differs from the distribution's input size");
    return n;
}

// What a packed copy was made from, for a cheap freshness check: a hash of every parameter's
// version counter and data pointer (torch objects read through Python's attribute protocol only:
// this file never links torch).
uint64_t weights_stamp_of(const py::tuple& params) {
    static PyObject* s_version = PyUnicode_InternFromString("_version");
    static PyObject* s_data_ptr = PyUnicode_InternFromString("data_ptr");
    uint64_t h = 0x243F6A8885A308D3ULL;
    for (py::handle p : params) {
        PyObject* v = PyObject_GetAttr(p.ptr(), s_version);
        if (!v) throw py::error_already_set();
        const unsigned long long version = PyLong_AsUnsignedLongLongMask(v);
        Py_DECREF(v);
        if (version == (unsigned long long)-1 && PyErr_Occurred()) throw py::error_already_set();  // not an int
        PyObject* d = PyObject_CallMethodNoArgs(p.ptr(), s_data_ptr);
        if (!d) throw py::error_already_set();
        const unsigned long long ptr = PyLong_AsUnsignedLongLongMask(d);
        Py_DECREF(d);
        if (ptr == (unsigned long long)-1 && PyErr_Occurred()) throw py::error_already_set();
        h = mix64(h ^ version) + 0x9E3779B97F4A7C15ULL;
        h = mix64(h ^ ptr) + 0x9E3779B97F4A7C15ULL;
    }
    return h;
}

struct PyPolicy {
    Holder<PolicyNet> h;
    explicit PyPolicy(const py::dict& spec) { load(spec); }
    void load(const py::dict& spec) { h.set(std::make_shared<PolicyNet>(build_policy(spec))); }
    int dist_dim() { return h.get()->dist_dim(); }
    // obs: float32 numpy array [B, obs_dim] (row stride free, unit column stride) or an integer
    // data pointer with B and ldobs. states_in: 4 objects (ha, ca, hc, cc), each None, an integer
    // pointer or a float32 numpy array [B, H]. out: None (fresh numpy arrays are allocated and
    // returned) or 8 integer pointers (dist, actions, logp, value, ha, ca, hc, cc; 0 = absent).
    // Returns (dist, actions, logp, value, ha, ca, hc, cc), None where absent or when out given.
    py::tuple step(py::object obs, int B, int64_t ldobs, py::tuple states_in, bool det, bool want_value,
                   py::object out, py::object mask, int64_t ldmask) {
        auto net = h.get();
        const float* obs_p = nullptr;
        const uint8_t* obs_u8 = nullptr;
        // uint8 observations: only when every encoder that reads them converts them (a conv stage)
        const bool u8_ok = net->actor_conv && (!net->critic_on || net->critic_conv);
        if (py::isinstance<py::array_t<uint8_t>>(obs)) {
            auto arr = py::reinterpret_borrow<py::array>(obs);
            RF_CHECK(u8_ok, "obs: uint8 observations need conv encoders (every encoder reading obs has a conv stage)");
            RF_CHECK(arr.ndim() == 2 && arr.shape(1) == net->obs_dim && (arr.flags() & py::array::c_style),
                     "obs: expected a contiguous uint8 array [B, " + std::to_string(net->obs_dim) + "]");
            RF_CHECK(arr.shape(0) <= INT32_MAX, "obs: more than 2^31 - 1 rows");
            obs_u8 = static_cast<const uint8_t*>(arr.data());
            B = int(arr.shape(0));
            ldobs = net->obs_dim;
        } else if (py::isinstance<py::array>(obs)) {
            auto arr = py::reinterpret_borrow<py::array>(obs);
            RF_CHECK(is_f32(arr) && arr.ndim() == 2 && arr.shape(1) == net->obs_dim &&
                         (arr.shape(0) == 0 ||
                          (arr.strides(1) == sizeof(float) && arr.strides(0) % sizeof(float) == 0 &&
                           (arr.shape(0) == 1 || arr.strides(0) >= int64_t(sizeof(float)) * net->obs_dim))),
                     "obs: expected a float32 array [B, " + std::to_string(net->obs_dim) + "] with unit column stride");
            RF_CHECK(arr.shape(0) <= INT32_MAX, "obs: more than 2^31 - 1 rows");
            RF_CHECK(arr.shape(0) == 0 || reinterpret_cast<uintptr_t>(arr.data()) % alignof(float) == 0,
                     "obs: expected a 4-byte aligned float32 array (this one starts at an odd address)");
            obs_p = static_cast<const float*>(arr.data());
            B = int(arr.shape(0));
            ldobs = B > 1 ? arr.strides(0) / int64_t(sizeof(float)) : net->obs_dim;
        } else {
            obs_p = P<const float>(obs.cast<uint64_t>());
        }
        check_batch("Policy.step", B);
        check_rows("Policy.step", "obs", obs_u8 ? reinterpret_cast<uintptr_t>(obs_u8) : reinterpret_cast<uintptr_t>(obs_p),
                   B, ldobs, net->obs_dim);
        RF_CHECK(states_in.size() == 4, "states_in: expected 4 entries");
        const int Ha = net->actor_rnn_on ? net->actor_rnn.H : 0;
        const int Hc = net->critic_rnn_on ? net->critic_rnn.H : 0;
        auto state_ptr = [&](py::handle o, int H, const char* what) -> const float* {
            if (o.is_none()) return nullptr;
            const float* p;
            if (py::isinstance<py::array>(o)) {
                auto arr = py::reinterpret_borrow<py::array>(o);
                RF_CHECK(is_f32(arr) && arr.ndim() == 2 && arr.shape(0) == B &&
                             arr.shape(1) == H && (arr.flags() & py::array::c_style),
                         std::string(what) + ": expected a contiguous float32 array [" + std::to_string(B) + ", " +
                             std::to_string(H) + "]");
                p = static_cast<const float*>(arr.data());
            } else {
                p = P<const float>(o.cast<uint64_t>());
            }
            // the rnn kernels load the state as floats (UBSan: misaligned loads in rnn.h)
            RF_CHECK(B == 0 || reinterpret_cast<uintptr_t>(p) % alignof(float) == 0,
                     std::string(what) +
                         ": expected a 4-byte aligned float32 buffer (this one starts at an odd address)");
            return p;
        };
        StepIO io;
        io.obs = obs_p; io.obs_u8 = obs_u8; io.ldobs = ldobs; io.B = B;
        io.ha = state_ptr(states_in[0], Ha, "state h"); io.ca = state_ptr(states_in[1], Ha, "state c");
        io.hc = state_ptr(states_in[2], Hc, "critic state h"); io.cc = state_ptr(states_in[3], Hc, "critic state c");
        const int D = net->dist_dim();
        const bool lstm_a = net->actor_rnn_on && net->actor_rnn.kind == RNN_LSTM;
        const bool lstm_c = net->critic_rnn_on && net->critic_rnn.kind == RNN_LSTM;
        const bool gauss = is_gaussian(net->dist);
        const bool value = want_value && net->vf_on;
        RF_CHECK(!want_value || net->vf_on, "compute_value: this plan has no value head");
        py::object r_dist = py::none(), r_act = py::none(), r_logp = py::none(), r_val = py::none();
        py::object r_ha = py::none(), r_ca = py::none(), r_hc = py::none(), r_cc = py::none();
        auto fa = [](std::vector<py::ssize_t> shape) { return py::array_t<float>(shape); };
        auto fptr = [](py::object& o) { return static_cast<float*>(py::reinterpret_borrow<py::array>(o).mutable_data()); };
        if (out.is_none()) {
            r_dist = fa({B, D});
            const int na = net->n_action_cols();
            if (gauss) r_act = fa({B, na});
            else if (net->dist == DIST_MULTI_CATEGORICAL) r_act = py::array_t<int64_t>(std::vector<py::ssize_t>{B, na});
            else r_act = py::array_t<int64_t>(std::vector<py::ssize_t>{B});
            r_logp = fa({B});
            if (value) r_val = fa({B});
            if (net->actor_rnn_on) r_ha = fa({B, Ha});
            if (lstm_a) r_ca = fa({B, Ha});
            if (net->critic_rnn_on) r_hc = fa({B, Hc});
            if (lstm_c) r_cc = fa({B, Hc});
            io.dist = fptr(r_dist);
            if (gauss) io.act_f = fptr(r_act);
            else io.act_i = static_cast<int64_t*>(py::reinterpret_borrow<py::array>(r_act).mutable_data());
            io.logp = fptr(r_logp);
            io.value = value ? fptr(r_val) : nullptr;
            io.ha_out = net->actor_rnn_on ? fptr(r_ha) : nullptr;
            io.ca_out = lstm_a ? fptr(r_ca) : nullptr;
            io.hc_out = net->critic_rnn_on ? fptr(r_hc) : nullptr;
            io.cc_out = lstm_c ? fptr(r_cc) : nullptr;
        } else {
            auto t = out.cast<std::tuple<uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t>>();
            io.dist = P<float>(std::get<0>(t));
            if (gauss) io.act_f = P<float>(std::get<1>(t)); else io.act_i = P<int64_t>(std::get<1>(t));
            io.logp = P<float>(std::get<2>(t));
            io.value = value ? P<float>(std::get<3>(t)) : nullptr;
            io.ha_out = P<float>(std::get<4>(t)); io.ca_out = P<float>(std::get<5>(t));
            io.hc_out = P<float>(std::get<6>(t)); io.cc_out = P<float>(std::get<7>(t));
            if (B > 0) {  // pointers the step writes through
                RF_CHECK(io.dist && (io.act_f || io.act_i) && io.logp && (!value || io.value),
                         "Policy.step: out: null pointer for a dist/actions/logp/value buffer");
                RF_CHECK((!net->actor_rnn_on || io.ha_out) && (!lstm_a || io.ca_out) && (!net->critic_rnn_on || io.hc_out) &&
                             (!lstm_c || io.cc_out), "Policy.step: out: null pointer for a state_out buffer");
            }
        }
        io.det = det;
        if (!mask.is_none()) {
            RF_CHECK(!is_gaussian(net->dist), "action_mask: masking needs categorical actions (this plan samples a Gaussian)");
            io.mask = mask_arg(mask, B, D, ldmask, &io.ldmask);
        }
        run(*net, io);
        return py::make_tuple(r_dist, r_act, r_logp, r_val, r_ha, r_ca, r_hc, r_cc);
    }

    // The step on ``net`` once ``io`` is filled in (every pointer checked against net's sizes;
    // io.det and io.mask set): also the fast lane's (lane_bind.h) step.
    static void run(const PolicyNet& net, StepIO& io) {
        // An inf observation can saturate to a finite action: the kernel refuses non-finite
        // inputs (the torch path raises the same message) before it reserves any draw, testing
        // them inside the conv stage's parallel image load when there is one (no serial pass).
        io.check_obs = true;
        io.reserve_draws = !io.det;
        int64_t err;
        {
            py::gil_scoped_release nogil;
            err = K().policy_step(net, io);
        }
        if (err) raise_nonfinite(err, "action_dist_inputs");
    }
};

#include "qnet_bind.h"  // the fused DQN step (QNet)
#include "lane_bind.h"  // the per-call fast lane over Policy / QNet

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "rlmodule_fast C++ CPU backend (torch-free kernels on raw pointers)";
    m.attr("__version__") = "0.1.0";
    m.attr("ROW_BLOCK") = ROW_BLOCK;
    m.attr("GEMV_ROWS") = kGemvRows;
    // The codes Python passes in (common.h's enums are their one definition; ops/codes.py mirrors
    // them for the Triton kernels and tests/test_codes.py checks the two agree).
    py::dict acts, dists, rnns;
    acts["linear"] = int(ACT_LINEAR); acts["tanh"] = int(ACT_TANH); acts["relu"] = int(ACT_RELU);
    acts["silu"] = int(ACT_SILU); acts["elu"] = int(ACT_ELU);
    dists["categorical"] = int(DIST_CATEGORICAL); dists["multi_categorical"] = int(DIST_MULTI_CATEGORICAL);
    dists["diag_gaussian"] = int(DIST_DIAG_GAUSSIAN); dists["squashed_gaussian"] = int(DIST_SQUASHED_GAUSSIAN);
    rnns["lstm"] = int(RNN_LSTM); rnns["gru"] = int(RNN_GRU);
    m.attr("ACTIVATIONS") = acts;
    m.attr("DISTRIBUTIONS") = dists;
    m.attr("RNN_KINDS") = rnns;

    m.def("isa", []() { return std::string(isa_name(current_isa())); }, "ISA the kernels run with now.");
    m.def("best_isa", []() { return std::string(isa_name(detect_isa())); }, "Best ISA this CPU supports.");
    m.def("set_isa", [](const std::string& name) {
        Isa want;
        if (!parse_isa(name, &want)) throw py::value_error("isa: expected 'sse2', 'avx2' or 'avx512', got '" + name + "'");
        if (!isa_supported(want)) throw py::value_error("isa: '" + name + "' is not supported by this CPU");
        g_isa.store(int(want));
    }, "Force an ISA (tests); only ones the CPU supports.");

    m.def("set_num_threads", [](int64_t n) {
        const int mx = max_threads();
        if (n < 1 || n > mx)
            throw py::value_error("num_threads: expected 1 ... " + std::to_string(mx) + " (max_threads()), got " +
                                  std::to_string(n));
        try {
            py::gil_scoped_release nogil;  // may wait for a running job, then join or start workers
            ThreadPool::get().set_threads(int(n));
        } catch (const std::system_error& e) {
            throw std::runtime_error("num_threads: could not start " + std::to_string(n - 1) + " worker threads (" +
                                     e.what() + "); running with " + std::to_string(ThreadPool::get().threads()));
        }
    }, "Threads (caller included) that split large batches into row blocks: 1 ... max_threads().");
    m.def("max_threads", &max_threads, "Largest accepted set_num_threads: max(64, 4 * hardware threads).");
    m.def("get_num_threads", []() { return ThreadPool::get().threads(); });
    m.def("pool_workers", []() { return ThreadPool::get().workers(); },
          "Worker threads the pool holds now (get_num_threads() - 1 unless a start failed; 0 in a forked child).");

    m.def("fused_mlp", [](uint64_t x, int B, int I, int64_t ldx, const std::vector<LayerDesc>& layers,
                          const std::vector<int>& acts, uint64_t y, int64_t ldy) {
        // every check before either branch (the GEMV branch never packs)
        const char* fn = "fused_mlp";
        check_batch(fn, B);
        check_dim(fn, "I", I);
        const int64_t N_L = check_layers(fn, layers, acts, I, false);
        check_rows(fn, "x", x, B, ldx, I);
        check_rows(fn, "y", y, B, ldy, N_L);
        if (B == 0) return;
        const KernelTable& kt = K();
        if (B <= kGemvRows) {  // GEMV straight from nn.Linear layout: packing would cost more
            int maxp = NR;
            for (auto& l : layers) maxp = std::max(maxp, round_up(std::get<1>(l), NR));
            py::gil_scoped_release nogil;
            AlignedBuf buf(size_t(2) * maxp);
            for (int r = 0; r < B; ++r) {
                const float* in = P<const float>(x) + int64_t(r) * ldx;
                float* outp = buf.p;
                for (size_t l = 0; l < layers.size(); ++l) {
                    auto [wp, N, Kd, ldw, bp, bs] = layers[l];
                    outp = buf.p + (l % 2) * maxp;
                    kt.gemv_rowmajor(in, MatView{P<const float>(wp), N, Kd, ldw, 1}, P<const float>(bp), bs, outp, acts[l]);
                    in = outp;
                }
                std::memcpy(P<float>(y) + int64_t(r) * ldy, outp, sizeof(float) * size_t(N_L));
            }
            return;
        }
        // packed per call into this thread's reused buffers (no allocation, no page faults)
        thread_local PackedMLP mlp;
        pack_mlp(fn, mlp, layers, acts, I, false);
        py::gil_scoped_release nogil;
        kt.mlp_forward(mlp, P<const float>(x), ldx, B, P<float>(y), ldy);
    }, "y[B, N_L] = MLP(x[B, I]); pointers to float32 rows; weights (ptr, N, K, ldw, bias_ptr, bias_stride).");

    py::class_<PyMLP>(m, "PackedMLP")
        .def(py::init<const std::vector<LayerDesc>&, const std::vector<int>&, bool>(), py::arg("layers"),
             py::arg("acts"), py::arg("keep_rows") = false)
        .def("repack", &PyMLP::repack)
        .def("same", &PyMLP::same, py::arg("layers"), py::arg("acts"), py::arg("weights") = true,
             "Whether packing these layers now would give exactly this object's contents (weights=False: "
             "the biases only).")
        .def("forward", &PyMLP::forward)
        .def_property_readonly("nbytes", [](PyMLP& s) { return s.h.get()->nbytes(); })
        .def_property_readonly("in_dim", [](PyMLP& s) { return s.h.get()->in_dim(); })
        .def_property_readonly("out_dim", [](PyMLP& s) { return s.h.get()->out_dim(); });

    m.def("rng_seed", [](uint64_t seed) { rng_stream().seed(seed); }, "Key the sampler stream from a seed, counter 0.");
    m.def("rng_set", [](uint64_t key, uint64_t counter) { rng_stream().set(key, counter); },
          "Restore a (key, counter) position returned by rng_position.");
    m.def("weights_stamp", &weights_stamp_of, "Hash of the parameters' (version, data pointer) pairs: changes when any of them does.");
    m.def("rng_position", []() {
        RngStream& s = rng_stream();
        std::lock_guard<std::mutex> g(s.mu);
        return std::make_tuple(s.key, s.counter);
    });

    m.def("sample_categorical", [](uint64_t logits, int B, int A, int64_t ld, bool det, uint64_t act, uint64_t logp,
                                   uint64_t mask, int64_t ldm) {
        const char* fn = "sample_categorical";
        check_batch(fn, B);
        check_dim(fn, "A", A);
        check_rows(fn, "logits", logits, B, ld, A);
        check_ptr(fn, "actions", act, B);
        check_ptr(fn, "logp", logp, B);
        if (mask) check_rows(fn, "action_mask", mask, B, ldm, A);
        uint64_t key = 0, ctr = 0;
        if (!det) rng_stream().reserve(uint64_t(B), &key, &ctr);
        int64_t err = 0;
        {
            py::gil_scoped_release nogil;
            const float* x = P<const float>(logits);
            int64_t ldx = ld;
            thread_local AlignedBuf masked;  // the caller's logits are never written
            if (mask && B > 0) {
                masked.resize(size_t(B) * size_t(A));
                for (int r = 0; r < B; ++r) std::memcpy(masked.p + int64_t(r) * A, x + int64_t(r) * ld, sizeof(float) * A);
                err = apply_action_mask_rows(masked.p, A, B, &A, 1, P<const float>(mask), ldm);
                x = masked.p;
                ldx = A;
            }
            if (!err)
                err = sample_categorical_rows(x, ldx, B, A, det, key, ctr, 1, P<int64_t>(act), 1, P<float>(logp), false);
        }
        if (err) raise_nonfinite(err, "logits");
    }, py::arg("logits"), py::arg("B"), py::arg("A"), py::arg("ld"), py::arg("det"), py::arg("actions"), py::arg("logp"),
       py::arg("mask") = 0, py::arg("ldm") = 0,
       "One draw per row of logits [B, A]; mask (0: none) a float32 [B, A] of 0/1 (row stride ldm).");
    m.def("sample_diag_gaussian", [](uint64_t ml, int B, int A, int64_t ld, bool det, uint64_t act, uint64_t logp) {
        const char* fn = "sample_diag_gaussian";
        check_batch(fn, B);
        check_dim(fn, "A", A);
        check_rows(fn, "mean_logstd", ml, B, ld, int64_t(2) * A);
        check_ptr(fn, "actions", act, B);
        check_ptr(fn, "logp", logp, B);
        uint64_t key = 0, ctr = 0;
        if (!det) rng_stream().reserve(uint64_t(B) * A, &key, &ctr);
        int64_t err;
        {
            py::gil_scoped_release nogil;
            err = K().sample_gaussian(P<const float>(ml), ld, B, A, det, key, ctr, P<float>(act), A, P<float>(logp));
        }
        if (err) raise_nonfinite(err, "mean_logstd");
    });

    m.def("rnn_step", [](const RnnDesc& d, uint64_t x, int B, int64_t ldx, uint64_t h, int64_t ldh, uint64_t c,
                         int64_t ldc, uint64_t h_out, uint64_t c_out) {
        check_rnn_desc("rnn_step", d);
        PackedRNN io;
        io.kind = std::get<0>(d); io.I = std::get<1>(d); io.H = std::get<2>(d);
        check_rnn_io("rnn_step", io, B, x, ldx, h, ldh, c, ldc, h_out, c_out);  // before packing: cheap failures
        if (B == 0) return;
        // packed per call into this thread's reused buffers (no allocation, no page faults)
        thread_local PackedRNN R;
        pack_rnn("rnn_step", R, d);
        py::gil_scoped_release nogil;
        K().rnn_forward(R, P<const float>(x), ldx, B, P<const float>(h), ldh, P<const float>(c), ldc,
                        P<float>(h_out), R.H, P<float>(c_out), R.H);
    }, "One LSTM/GRU step; h_out/c_out contiguous [B, H].");

    py::class_<PyRNN>(m, "PackedRNN")
        .def(py::init<const RnnDesc&, bool>(), py::arg("desc"), py::arg("keep_rows") = false)
        .def("repack", &PyRNN::repack)
        .def("same", &PyRNN::same, py::arg("desc"), py::arg("weights") = true,
             "Whether packing this description now would give exactly this cell's contents (weights=False: "
             "the biases only).")
        .def("step", &PyRNN::step, "One step; h_out/c_out contiguous [B, H].")
        .def_property_readonly("nbytes", [](PyRNN& s) { return s.h.get()->nbytes(); });

    py::class_<PyConv>(m, "PackedConv")
        .def(py::init<const ConvDesc&>(), py::arg("desc"))
        .def("repack", &PyConv::repack)
        .def("same", &PyConv::same, py::arg("desc"), py::arg("weights") = true,
             "Whether packing this description now gives exactly this layer (weights=False: geometry and bias).")
        .def("forward", &PyConv::forward, py::arg("x"), py::arg("u8"), py::arg("B"), py::arg("H"), py::arg("W"),
             py::arg("ldx"), py::arg("has_scale"), py::arg("scale"), py::arg("y"),
             "y[B, Ho, Wo, Cout] = act(conv(pad(x[B, H, W, Cin] (* scale)))); returns (Ho, Wo).")
        .def_property_readonly("nbytes", [](PyConv& s) { return s.h.get()->nbytes(); });

    py::class_<PyPolicy>(m, "Policy")
        .def(py::init<const py::dict&>())
        .def("load", &PyPolicy::load)
        .def("step", &PyPolicy::step, py::arg("obs"), py::arg("B"), py::arg("ldobs"), py::arg("states_in"),
             py::arg("det"), py::arg("want_value"), py::arg("out"), py::arg("mask") = py::none(),
             py::arg("ldmask") = 0,
             "One policy step; mask: None, or the action mask [B, dist_dim] (float32 0/1 array, or pointer + ldmask).")
        .def_property_readonly("dist_dim", &PyPolicy::dist_dim);
    bind_qnet(m);
    bind_lane(m);
}
