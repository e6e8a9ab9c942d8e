// pybind11 side of the fused DQN step (qnet.h): included by bindings.cpp inside its anonymous
// namespace, after its checks and packers (check_dim, pack_mlp, Holder, first_nonfinite_row, ...),
// so this file adds no second copy of them. The only file besides bindings.cpp that knows pybind11.

using QStepFn = int64_t (*)(const QNet&, const QStepIO&);

QStepFn qnet_kernel() {
    switch (current_isa()) {
        case Isa::AVX512: return &avx512::qnet_step;
        case Isa::AVX2: return &avx2::qnet_step;
        default: return &sse2::qnet_step;
    }
}

py::object qitem(const py::dict& s, const char* key) {
    if (!s.contains(key)) throw py::value_error(std::string("QNet: spec: missing key '") + key + "'");
    return s[key];
}

// spec: obs_dim, enc / enc_acts (may be empty), af / af_acts, vf / vf_acts (None: no value head),
// num_actions, num_atoms, z (the support, num_atoms floats when num_atoms > 1); optional
// enc_norms / af_norms / vf_norms (bindings.cpp's pack_norms: per layer None or an nn.LayerNorm's
// (gamma, beta, eps), applied between the layer and its activation by mlp_block); optional conv
// (bindings.cpp's build_conv_stack: the encoder's conv stage over obs_dim = H * W * C images; the
// encoder MLP, or the heads when it is empty, then read its out_dim features).
QNet build_qnet(const py::dict& s) {
    QNet n;
    const char* fn = "QNet";
    n.obs_dim = qitem(s, "obs_dim").cast<int>();
    check_dim(fn, "obs_dim", n.obs_dim);
    n.conv = build_conv_stack(fn, s, "conv");
    if (n.conv) RF_CHECK(n.conv->in_dim() == n.obs_dim, "QNet: conv image size H*W*C differs from obs_dim");
    const int in = n.conv ? n.conv->out_dim() : n.obs_dim;  // what the encoder's first stage reads
    n.A = qitem(s, "num_actions").cast<int>();
    n.N = qitem(s, "num_atoms").cast<int>();
    check_dim(fn, "num_actions", n.A);
    check_dim(fn, "num_atoms", n.N);
    RF_CHECK(int64_t(n.A) * n.N <= kMaxDim, "QNet: num_actions * num_atoms: too large");
    pack_mlp(fn, n.enc, qitem(s, "enc").cast<std::vector<LayerDesc>>(), qitem(s, "enc_acts").cast<std::vector<int>>(),
             in, true, "enc");
    pack_norms(fn, n.enc, s, "enc_norms");
    const int lat = n.enc.layers.empty() ? in : n.enc.out_dim();
    pack_mlp(fn, n.af, qitem(s, "af").cast<std::vector<LayerDesc>>(), qitem(s, "af_acts").cast<std::vector<int>>(),
             lat, false, "af");
    pack_norms(fn, n.af, s, "af_norms");
    RF_CHECK(n.af.out_dim() == n.A * n.N, "QNet: af: last layer must have num_actions * num_atoms outputs");
    if (!qitem(s, "vf").is_none()) {
        n.vf_on = true;
        pack_mlp(fn, n.vf, qitem(s, "vf").cast<std::vector<LayerDesc>>(), qitem(s, "vf_acts").cast<std::vector<int>>(),
                 lat, false, "vf");
        pack_norms(fn, n.vf, s, "vf_norms");
        RF_CHECK(n.vf.out_dim() == 1, "QNet: vf: last layer must have 1 output");
    }
    n.z = qitem(s, "z").cast<std::vector<float>>();
    RF_CHECK(n.N == 1 || int(n.z.size()) == n.N, "QNet: z: expected num_atoms values");
    for (float v : n.z) RF_CHECK(std::isfinite(v), "QNet: z: expected finite values");
    return n;
}

struct PyQNet {
    Holder<QNet> h;
    explicit PyQNet(const py::dict& spec) { load(spec); }
    void load(const py::dict& spec) { h.set(std::make_shared<QNet>(build_qnet(spec))); }

    // obs: float32 [B, obs_dim] (unit column stride), or with a conv stage a C-contiguous uint8
    // [B, obs_dim] (the image rows, HWC; converted inside the conv kernels); mask: None or a
    // C-contiguous float32 [B, A] of 0 / 1. Returns fresh numpy arrays (q [B, A] float32,
    // actions [B] int64, logp [B] float32).
    py::tuple step(const py::array& obs, py::object mask, double eps, bool det) {
        auto net = h.get();
        QStepIO io;
        if (py::isinstance<py::array_t<uint8_t>>(obs)) {
            RF_CHECK(net->conv, "obs: uint8 observations need a conv encoder (this QNet has none)");
            RF_CHECK(obs.ndim() == 2 && obs.shape(1) == net->obs_dim && (obs.flags() & py::array::c_style),
                     "obs: expected a contiguous uint8 array [B, " + std::to_string(net->obs_dim) + "]");
            RF_CHECK(obs.shape(0) <= INT32_MAX, "obs: more than 2^31 - 1 rows");
            io.B = int(obs.shape(0));
            io.obs_u8 = static_cast<const uint8_t*>(obs.data());
            io.ldobs = net->obs_dim;
        } else {
            RF_CHECK(is_f32(obs) && obs.ndim() == 2 && obs.shape(1) == net->obs_dim &&
                         (obs.shape(0) == 0 ||
                          (obs.strides(1) == sizeof(float) && obs.strides(0) % sizeof(float) == 0 &&
                           (obs.shape(0) == 1 || obs.strides(0) >= int64_t(sizeof(float)) * net->obs_dim))),
                     "obs: expected a float32 array [B, " + std::to_string(net->obs_dim) + "] with unit column stride" +
                         (net->conv ? " (or a contiguous uint8 one)" : ""));
            RF_CHECK(obs.shape(0) <= INT32_MAX, "obs: more than 2^31 - 1 rows");
            RF_CHECK(obs.shape(0) == 0 || reinterpret_cast<uintptr_t>(obs.data()) % alignof(float) == 0,
                     "obs: expected a 4-byte aligned float32 array (this one starts at an odd address)");
            io.B = int(obs.shape(0));
            io.obs = static_cast<const float*>(obs.data());
            io.ldobs = io.B > 1 ? obs.strides(0) / int64_t(sizeof(float)) : net->obs_dim;
        }
        RF_CHECK(eps >= 0.0 && eps <= 1.0, "epsilon: expected a value in [0, 1], got " + std::to_string(eps));
        const int A = net->A;
        if (!mask.is_none()) {
            auto m = py::reinterpret_borrow<py::array>(mask);
            RF_CHECK(py::isinstance<py::array>(mask) && is_f32(m) && m.ndim() == 2 && m.shape(0) == io.B &&
                         m.shape(1) == A && (m.flags() & py::array::c_style),
                     "action_mask: expected a contiguous float32 array [" + std::to_string(io.B) + ", " +
                         std::to_string(A) + "]");
            io.mask = static_cast<const float*>(m.data());
            io.ldmask = A;
            for (int r = 0; r < io.B; ++r) {
                const float* row = io.mask + int64_t(r) * A;
                int valid = 0;
                for (int a = 0; a < A; ++a) {
                    if (row[a] != 0.0f && row[a] != 1.0f)
                        throw py::value_error("action_mask: expected 0 or 1, got " + std::to_string(row[a]) +
                                              " (row " + std::to_string(r) + ", action " + std::to_string(a) + ")");
                    valid += row[a] != 0.0f;
                }
                if (!valid) throw py::value_error("action_mask: every action is masked (row " + std::to_string(r) + ")");
            }
        }
        const int64_t bad_row = io.obs_u8 ? -1 : first_nonfinite_row(io.obs, io.B, io.ldobs, net->obs_dim);
        if (bad_row >= 0) throw py::value_error("obs: contains NaN or inf (row " + std::to_string(bad_row) + ")");
        py::array_t<float> q(std::vector<py::ssize_t>{io.B, A});
        py::array_t<int64_t> act(std::vector<py::ssize_t>{io.B});
        py::array_t<float> logp(std::vector<py::ssize_t>{io.B});
        io.q = q.mutable_data();
        io.act = act.mutable_data();
        io.logp = logp.mutable_data();
        io.eps = eps;
        io.det = det;
        if (!det && eps > 0.0) rng_stream().reserve(uint64_t(io.B), &io.key, &io.ctr0);
        const QStepFn fn = qnet_kernel();
        int64_t err;
        {
            py::gil_scoped_release nogil;
            err = fn(*net, io);
        }
        if (err) raise_nonfinite(err, "qf_preds");
        return py::make_tuple(q, act, logp);
    }
};

void bind_qnet(py::module_& m) {
    m.attr("QNET_FLOAT_MIN") = QNET_FLOAT_MIN;
    py::class_<PyQNet>(m, "QNet")
        .def(py::init<const py::dict&>())
        .def("load", &PyQNet::load, "Repack from a spec (replaced atomically: a running step sees old or new).")
        .def("step", &PyQNet::step, py::arg("obs"), py::arg("mask"), py::arg("eps"), py::arg("det"),
             "(q [B, A], actions [B], logp [B]): the epsilon-greedy step (det: greedy).");
}
