// The only file that knows pybind11. Python (rlmodule_fast/ops/cpp.py, fastpath.py) checks
// every argument -- dtype float32 (int64 for actions), shapes, row strides, liveness -- and
// hands raw data pointers (integers) and sizes; this file re-checks sizes, converts, releases
// the GIL around the work and turns kernel error codes into Python exceptions.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
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

#define RF_CHECK(cond, msg) do { if (!(cond)) throw py::value_error(msg); } while (0)

// (w_ptr, N, K, ldw, b_ptr, b_stride); b_ptr 0 = no bias
using LayerDesc = std::tuple<uint64_t, int, int, int64_t, uint64_t, int64_t>;

void pack_linear(PackedLinear& L, const LayerDesc& d) {
    auto [wp, N, Kd, ldw, bp, bs] = d;
    RF_CHECK(N > 0 && Kd > 0 && wp != 0, "layer with empty shape or null weight");
    L.init(Kd, N);
    L.put_weight(MatView{P<const float>(wp), N, Kd, ldw, 1}, 0, 0);
    L.add_bias(P<const float>(bp), bs, N, 0);
}

void pack_mlp(PackedMLP& m, const std::vector<LayerDesc>& layers, const std::vector<int>& acts) {
    RF_CHECK(layers.size() == acts.size(), "layers and activations differ in length");
    m.layers.resize(layers.size());  // existing layers keep their buffers (init only grows them)
    m.acts = acts;
    for (size_t i = 0; i < layers.size(); ++i) {
        pack_linear(m.layers[i], layers[i]);
        if (i > 0) RF_CHECK(m.layers[i].K == m.layers[i - 1].N, "layer " + std::to_string(i) + ": input size differs from the previous output size");
        RF_CHECK(acts[i] >= 0 && acts[i] <= ACT_ELU, "unknown activation code");
    }
}

// (kind, I, H, wih_ptr, ldwih, whh_ptr, ldwhh, bih_ptr, bhh_ptr); biases contiguous [G*H] or 0
using RnnDesc = std::tuple<int, int, int, uint64_t, int64_t, uint64_t, int64_t, uint64_t, uint64_t>;

void pack_rnn(PackedRNN& R, const RnnDesc& d) {
    auto [kind, I, H, wih, ldi, whh, ldh, bih, bhh] = d;
    RF_CHECK((kind == RNN_LSTM || kind == RNN_GRU) && I > 0 && H > 0, "bad rnn description");
    R.kind = kind; R.I = I; R.H = H;
    R.gates.init(I + H, 4 * H);
    const float* Wi = P<const float>(wih);
    const float* Wh = P<const float>(whh);
    const float* Bi = P<const float>(bih);
    const float* Bh = P<const float>(bhh);
    if (kind == RNN_LSTM) {
        R.gates.put_weight(MatView{Wi, 4 * H, I, ldi, 1}, 0, 0);
        R.gates.put_weight(MatView{Wh, 4 * H, H, ldh, 1}, 0, I);
        R.gates.add_bias(Bi, 1, 4 * H, 0);
        R.gates.add_bias(Bh, 1, 4 * H, 0);
    } else {
        // r, z: [x, h] with b_ih + b_hh; n_x: x with b_ih_n; n_h: h with b_hh_n
        R.gates.put_weight(MatView{Wi, 2 * H, I, ldi, 1}, 0, 0);
        R.gates.put_weight(MatView{Wh, 2 * H, H, ldh, 1}, 0, I);
        R.gates.put_weight(MatView{Wi + 2 * H * ldi, H, I, ldi, 1}, 2 * H, 0);
        R.gates.put_weight(MatView{Wh + 2 * H * ldh, H, H, ldh, 1}, 3 * H, I);
        R.gates.add_bias(Bi, 1, 2 * H, 0);
        R.gates.add_bias(Bh, 1, 2 * H, 0);
        R.gates.add_bias(Bi ? Bi + 2 * H : nullptr, 1, H, 2 * H);
        R.gates.add_bias(Bh ? Bh + 2 * H : nullptr, 1, H, 3 * H);
    }
}

void raise_nonfinite(int64_t err, const char* what) {
    throw py::value_error(std::string(what) + ": contains NaN or inf (row " + std::to_string(-1 - err) + ")");
}

// A packed object replaced atomically on repack, so concurrent steps see old or new, never half.
template <class T>
struct Holder {
    std::mutex mu;
    std::shared_ptr<const T> cur;
    std::shared_ptr<const T> get() { std::lock_guard<std::mutex> g(mu); return cur; }
    void set(std::shared_ptr<const T> p) { std::lock_guard<std::mutex> g(mu); cur = std::move(p); }
};

struct PyMLP {
    Holder<PackedMLP> h;
    PyMLP(const std::vector<LayerDesc>& layers, const std::vector<int>& acts) { repack(layers, acts); }
    void repack(const std::vector<LayerDesc>& layers, const std::vector<int>& acts) {
        auto m = std::make_shared<PackedMLP>();
        pack_mlp(*m, layers, acts);
        RF_CHECK(!m->layers.empty(), "an MLP needs at least one layer");
        h.set(m);
    }
    void forward(uint64_t x, int B, int64_t ldx, uint64_t y, int64_t ldy) {
        auto m = h.get();
        RF_CHECK(B >= 0 && ldx >= m->in_dim() && ldy >= m->out_dim(), "forward: bad sizes");
        py::gil_scoped_release nogil;
        K().mlp_forward(*m, P<const float>(x), ldx, B, P<float>(y), ldy);
    }
};

// An LSTM/GRU cell packed once (the one-shot ops keep these in a small cache keyed by the
// weights' identity and version, so stepping the same cell does not repack every call).
struct PyRNN {
    Holder<PackedRNN> h;
    explicit PyRNN(const RnnDesc& d) { repack(d); }
    void repack(const RnnDesc& d) {
        auto r = std::make_shared<PackedRNN>();
        pack_rnn(*r, d);
        h.set(r);
    }
    void step(uint64_t x, int B, int64_t ldx, uint64_t hp, int64_t ldh, uint64_t c, int64_t ldc,
              uint64_t h_out, uint64_t c_out) {
        auto R = h.get();
        RF_CHECK(B >= 0 && ldx >= R->I && ldh >= R->H && ldc >= (c ? R->H : 0), "rnn step: bad strides");
        RF_CHECK(R->kind != RNN_LSTM || (c && c_out), "rnn step: an LSTM needs c and c_out");
        py::gil_scoped_release nogil;
        K().rnn_forward(*R, P<const float>(x), ldx, B, P<const float>(hp), ldh, P<const float>(c), ldc,
                        P<float>(h_out), R->H, P<float>(c_out), R->H);
    }
};

PolicyNet build_policy(const py::dict& s) {
    PolicyNet n;
    n.obs_dim = s["obs_dim"].cast<int>();
    pack_mlp(n.actor_mlp, s["actor_mlp"].cast<std::vector<LayerDesc>>(), s["actor_acts"].cast<std::vector<int>>());
    if (!s["actor_rnn"].is_none()) { n.actor_rnn_on = true; pack_rnn(n.actor_rnn, s["actor_rnn"].cast<RnnDesc>()); }
    n.critic_on = s["critic_on"].cast<bool>();
    if (n.critic_on) {
        pack_mlp(n.critic_mlp, s["critic_mlp"].cast<std::vector<LayerDesc>>(), s["critic_acts"].cast<std::vector<int>>());
        if (!s["critic_rnn"].is_none()) { n.critic_rnn_on = true; pack_rnn(n.critic_rnn, s["critic_rnn"].cast<RnnDesc>()); }
    }
    pack_mlp(n.pi, s["pi"].cast<std::vector<LayerDesc>>(), s["pi_acts"].cast<std::vector<int>>());
    RF_CHECK(!n.pi.layers.empty(), "pi head needs at least one layer");
    if (!s["vf"].is_none()) {
        n.vf_on = true;
        pack_mlp(n.vf, s["vf"].cast<std::vector<LayerDesc>>(), s["vf_acts"].cast<std::vector<int>>());
        RF_CHECK(!n.vf.layers.empty() && n.vf.out_dim() == 1, "vf head must end in one output");
    }
    // defensive shape checks (fastpath.py validates first): every pointer walk stays in bounds
    auto in_of = [](const PackedMLP& m, int fallback) { return m.layers.empty() ? fallback : m.in_dim(); };
    auto out_of = [](const PackedMLP& m, bool rnn_on, const PackedRNN& r, int in) {
        int o = m.layers.empty() ? in : m.out_dim();
        if (rnn_on) { RF_CHECK(r.I == o, "rnn input size differs from its mlp's output size"); o = r.H; }
        return o;
    };
    RF_CHECK(in_of(n.actor_mlp, n.obs_dim) == n.obs_dim, "actor mlp input size differs from obs_dim");
    if (n.actor_mlp.layers.empty() && n.actor_rnn_on) RF_CHECK(n.actor_rnn.I == n.obs_dim, "actor rnn input size differs from obs_dim");
    const int lat_a = out_of(n.actor_mlp, n.actor_rnn_on, n.actor_rnn, n.obs_dim);
    RF_CHECK(n.pi.in_dim() == lat_a, "pi input size differs from the actor latent size");
    int lat_c = lat_a;
    if (n.critic_on) {
        RF_CHECK(in_of(n.critic_mlp, n.obs_dim) == n.obs_dim, "critic mlp input size differs from obs_dim");
        lat_c = out_of(n.critic_mlp, n.critic_rnn_on, n.critic_rnn, n.obs_dim);
    }
    if (n.vf_on) RF_CHECK(n.vf.in_dim() == lat_c, "vf input size differs from the critic latent size");
    n.dist = s["dist"].cast<int>();
    n.action_sizes = s["action_sizes"].cast<std::vector<int>>();
    n.log_std_clip = s["log_std_clip"].cast<float>();
    n.free_log_std = s["free_log_std"].cast<std::vector<float>>();
    RF_CHECK(!n.action_sizes.empty(), "action_sizes is empty");
    RF_CHECK(n.dist >= DIST_CATEGORICAL && n.dist <= DIST_DIAG_GAUSSIAN, "unknown dist code");
    int want = 0;
    for (int a : n.action_sizes) { RF_CHECK(a > 0, "action sizes must be positive"); want += a; }
    if (n.dist == DIST_DIAG_GAUSSIAN) {
        RF_CHECK(n.action_sizes.size() == 1, "diag_gaussian takes one action size");
        want = 2 * n.action_sizes[0];
    } else {
        RF_CHECK(n.free_log_std.empty(), "free_log_std is for diag_gaussian only");
        RF_CHECK(n.dist == DIST_MULTI_CATEGORICAL || n.action_sizes.size() == 1, "categorical takes one action size");
    }
    RF_CHECK(n.dist_dim() == want, "pi output (+ free_log_std) size differs from the distribution's input size");
    return n;
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
                   py::object out) {
        auto net = h.get();
        const float* obs_p = nullptr;
        if (py::isinstance<py::array>(obs)) {
            auto arr = py::reinterpret_borrow<py::array>(obs);
            RF_CHECK(arr.dtype().is(py::dtype::of<float>()) && arr.ndim() == 2 && arr.shape(1) == net->obs_dim &&
                         (arr.shape(0) == 0 ||
                          (arr.strides(1) == sizeof(float) && arr.strides(0) % sizeof(float) == 0 &&
                           (arr.shape(0) == 1 || arr.strides(0) >= int64_t(sizeof(float)) * net->obs_dim))),
                     "obs: expected a float32 array [B, " + std::to_string(net->obs_dim) + "] with unit column stride");
            obs_p = static_cast<const float*>(arr.data());
            B = int(arr.shape(0));
            ldobs = B > 1 ? arr.strides(0) / int64_t(sizeof(float)) : net->obs_dim;
        } else {
            obs_p = P<const float>(obs.cast<uint64_t>());
        }
        RF_CHECK(B >= 0 && ldobs >= net->obs_dim, "obs: bad sizes");
        RF_CHECK(states_in.size() == 4, "states_in: expected 4 entries");
        const int Ha = net->actor_rnn_on ? net->actor_rnn.H : 0;
        const int Hc = net->critic_rnn_on ? net->critic_rnn.H : 0;
        auto state_ptr = [&](py::handle o, int H, const char* what) -> const float* {
            if (o.is_none()) return nullptr;
            if (py::isinstance<py::array>(o)) {
                auto arr = py::reinterpret_borrow<py::array>(o);
                RF_CHECK(arr.dtype().is(py::dtype::of<float>()) && arr.ndim() == 2 && arr.shape(0) == B &&
                             arr.shape(1) == H && (arr.flags() & py::array::c_style),
                         std::string(what) + ": expected a contiguous float32 array [" + std::to_string(B) + ", " +
                             std::to_string(H) + "]");
                return static_cast<const float*>(arr.data());
            }
            return P<const float>(o.cast<uint64_t>());
        };
        StepIO io;
        io.obs = obs_p; io.ldobs = ldobs; io.B = B;
        io.ha = state_ptr(states_in[0], Ha, "state h"); io.ca = state_ptr(states_in[1], Ha, "state c");
        io.hc = state_ptr(states_in[2], Hc, "critic state h"); io.cc = state_ptr(states_in[3], Hc, "critic state c");
        const int D = net->dist_dim();
        const bool lstm_a = net->actor_rnn_on && net->actor_rnn.kind == RNN_LSTM;
        const bool lstm_c = net->critic_rnn_on && net->critic_rnn.kind == RNN_LSTM;
        const bool gauss = net->dist == DIST_DIAG_GAUSSIAN;
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
            RF_CHECK(io.dist && (io.act_f || io.act_i) && io.logp && (!value || io.value), "out: missing buffers");
            RF_CHECK((!net->actor_rnn_on || io.ha_out) && (!lstm_a || io.ca_out) && (!net->critic_rnn_on || io.hc_out) &&
                         (!lstm_c || io.cc_out), "out: missing state buffers");
        }
        io.det = det;
        if (!det) rng_stream().reserve(uint64_t(B) * net->draws_per_row(), &io.key, &io.ctr0);
        int64_t err;
        {
            py::gil_scoped_release nogil;
            err = K().policy_step(*net, io);
        }
        if (err) raise_nonfinite(err, "action_dist_inputs");
        return py::make_tuple(r_dist, r_act, r_logp, r_val, r_ha, r_ca, r_hc, r_cc);
    }
};

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "rlmodule_fast C++ CPU backend (torch-free kernels on raw pointers)";
    m.attr("__version__") = "0.1.0";
    m.attr("ROW_BLOCK") = ROW_BLOCK;

    m.def("isa", []() { return std::string(isa_name(current_isa())); }, "ISA the kernels run with now.");
    m.def("best_isa", []() { return std::string(isa_name(detect_isa())); }, "Best ISA this CPU supports.");
    m.def("set_isa", [](const std::string& name) {
        Isa want;
        if (!parse_isa(name, &want)) throw py::value_error("isa: expected 'sse2', 'avx2' or 'avx512', got '" + name + "'");
        if (!isa_supported(want)) throw py::value_error("isa: '" + name + "' is not supported by this CPU");
        g_isa.store(int(want));
    }, "Force an ISA (tests); only ones the CPU supports.");

    m.def("set_num_threads", [](int n) {
        if (n < 1) throw py::value_error("num_threads: expected >= 1, got " + std::to_string(n));
        ThreadPool::get().set_threads(n);
    }, "Threads (caller included) that split large batches into row blocks.");
    m.def("get_num_threads", []() { return ThreadPool::get().threads(); });

    m.def("fused_mlp", [](uint64_t x, int B, int I, int64_t ldx, const std::vector<LayerDesc>& layers,
                          const std::vector<int>& acts, uint64_t y, int64_t ldy) {
        RF_CHECK(!layers.empty() && layers.size() == acts.size(), "fused_mlp: layers/activations mismatch");
        RF_CHECK(std::get<2>(layers[0]) == I, "fused_mlp: input size mismatch");
        const KernelTable& kt = K();
        if (B <= 12) {  // GEMV straight from nn.Linear layout: packing would cost more
            int maxp = NR;
            for (auto& l : layers) maxp = std::max(maxp, round_up(std::get<1>(l), NR));
            for (size_t i = 1; i < layers.size(); ++i)
                RF_CHECK(std::get<2>(layers[i]) == std::get<1>(layers[i - 1]), "fused_mlp: layer sizes mismatch");
            py::gil_scoped_release nogil;
            AlignedBuf buf(size_t(2) * maxp + round_up(I, NR));
            for (int r = 0; r < B; ++r) {
                const float* in = P<const float>(x) + r * ldx;
                float* outp = buf.p;
                for (size_t l = 0; l < layers.size(); ++l) {
                    auto [wp, N, Kd, ldw, bp, bs] = layers[l];
                    outp = buf.p + (l % 2) * maxp;
                    kt.gemv_rowmajor(in, MatView{P<const float>(wp), N, Kd, ldw, 1}, P<const float>(bp), bs, outp, acts[l]);
                    in = outp;
                }
                std::memcpy(P<float>(y) + r * ldy, outp, sizeof(float) * std::get<1>(layers.back()));
            }
            return;
        }
        // packed per call into this thread's reused buffers (no allocation, no page faults)
        thread_local PackedMLP mlp;
        pack_mlp(mlp, layers, acts);
        py::gil_scoped_release nogil;
        kt.mlp_forward(mlp, P<const float>(x), ldx, B, P<float>(y), ldy);
    }, "y[B, N_L] = MLP(x[B, I]); pointers to float32 rows; weights (ptr, N, K, ldw, bias_ptr, bias_stride).");

    py::class_<PyMLP>(m, "PackedMLP")
        .def(py::init<const std::vector<LayerDesc>&, const std::vector<int>&>())
        .def("repack", &PyMLP::repack)
        .def("forward", &PyMLP::forward)
        .def_property_readonly("in_dim", [](PyMLP& s) { return s.h.get()->in_dim(); })
        .def_property_readonly("out_dim", [](PyMLP& s) { return s.h.get()->out_dim(); });

    m.def("rng_seed", [](uint64_t seed) { rng_stream().seed(seed); }, "Re-key the sampler stream, counter 0.");
    m.def("rng_matches", [](uint64_t p, size_t n) {
        RngStream& s = rng_stream();
        std::lock_guard<std::mutex> g(s.mu);
        return n > 0 && s.fingerprint.size() == n && std::memcmp(s.fingerprint.data(), P<const uint8_t>(p), n) == 0;
    }, "Whether torch's generator state (bytes) equals the one recorded at the last re-key.");
    m.def("rng_rekey", [](uint64_t key, uint64_t p, size_t n) {
        RngStream& s = rng_stream();
        std::lock_guard<std::mutex> g(s.mu);
        s.key = mix64(key ^ 0x243F6A8885A308D3ULL);
        s.counter = 0;
        if (n) s.fingerprint.assign(P<const uint8_t>(p), P<const uint8_t>(p) + n);
        else s.fingerprint.clear();
    }, "Re-key from a draw of torch's generator and record the generator state after it.");
    m.def("rng_position", []() {
        RngStream& s = rng_stream();
        std::lock_guard<std::mutex> g(s.mu);
        return std::make_tuple(s.key, s.counter);
    });

    m.def("sample_categorical", [](uint64_t logits, int B, int A, int64_t ld, bool det, uint64_t act, uint64_t logp) {
        RF_CHECK(B >= 0 && A > 0 && ld >= A, "sample_categorical: bad sizes");
        uint64_t key = 0, ctr = 0;
        if (!det) rng_stream().reserve(uint64_t(B), &key, &ctr);
        int64_t err;
        {
            py::gil_scoped_release nogil;
            err = sample_categorical_rows(P<const float>(logits), ld, B, A, det, key, ctr, 1, P<int64_t>(act), 1,
                                          P<float>(logp), false);
        }
        if (err) raise_nonfinite(err, "logits");
    });
    m.def("sample_diag_gaussian", [](uint64_t ml, int B, int A, int64_t ld, bool det, uint64_t act, uint64_t logp) {
        RF_CHECK(B >= 0 && A > 0 && ld >= 2 * A, "sample_diag_gaussian: bad sizes");
        uint64_t key = 0, ctr = 0;
        if (!det) rng_stream().reserve(uint64_t(B) * A, &key, &ctr);
        int64_t err;
        {
            py::gil_scoped_release nogil;
            err = sample_gaussian_rows(P<const float>(ml), ld, B, A, det, key, ctr, P<float>(act), A, P<float>(logp));
        }
        if (err) raise_nonfinite(err, "mean_logstd");
    });

    m.def("rnn_step", [](const RnnDesc& d, uint64_t x, int B, int64_t ldx, uint64_t h, int64_t ldh, uint64_t c,
                         int64_t ldc, uint64_t h_out, uint64_t c_out) {
        PackedRNN R;
        pack_rnn(R, d);
        RF_CHECK(ldx >= R.I && ldh >= R.H && ldc >= (c ? R.H : 0), "rnn_step: bad strides");
        py::gil_scoped_release nogil;
        K().rnn_forward(R, P<const float>(x), ldx, B, P<const float>(h), ldh, P<const float>(c), ldc,
                        P<float>(h_out), R.H, P<float>(c_out), R.H);
    }, "One LSTM/GRU step; h_out/c_out contiguous [B, H].");

    py::class_<PyRNN>(m, "PackedRNN")
        .def(py::init<const RnnDesc&>())
        .def("repack", &PyRNN::repack)
        .def("step", &PyRNN::step, "One step; h_out/c_out contiguous [B, H].");

    py::class_<PyPolicy>(m, "Policy")
        .def(py::init<const py::dict&>())
        .def("load", &PyPolicy::load)
        .def("step", &PyPolicy::step)
        .def_property_readonly("dist_dim", &PyPolicy::dist_dim);
}
