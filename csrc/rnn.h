// ISA BODY (no include guard; see vmath.h): one LSTM / GRU step over a block of rows, as packed
// GEMMs over [x, h] (common.h: PackedRNN) followed by a vectorised elementwise update.
//
// Shape legend: rows batch rows, I inputs, H hidden units.
// LSTM (nn.LSTMCell): c' = s(f) c + s(i) tanh(g), h' = s(o) tanh(c'), gates i, f, g, o.
// GRU (nn.GRUCell):   r = s(.), z = s(.), n = tanh(n_x + r n_h), h' = (1 - z) n + z h.

// 1 / (1 + exp(-x)): exp overflows to inf for x < -88.7, giving 0 as torch does.
static inline float sigm_s(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// scratch: >= rnn_scratch_floats(R, rows) floats. h_out/c_out may alias h/c.
static RF_T void rnn_block(const PackedRNN& R, const float* X, int64_t ldx, int rows,
                           const float* h, int64_t ldh, const float* c, int64_t ldc,
                           float* h_out, int64_t ldho, float* c_out, int64_t ldco, float* scratch) {
    const int I = R.I, H = R.H;
    const int64_t ldcat = I + H;
    const int64_t ldg = R.ld_gates();
    float* cat = scratch;
    float* G = scratch + size_t(rows) * ldcat;
    for (int r = 0; r < rows; ++r) {
        std::memcpy(cat + r * ldcat, X + r * ldx, sizeof(float) * I);
        if (h) std::memcpy(cat + r * ldcat + I, h + r * ldh, sizeof(float) * H);
        else std::memset(cat + r * ldcat + I, 0, sizeof(float) * H);
    }
    gemm_packed(cat, ldcat, rows, R.gates, G, ldg, ACT_LINEAR);
    if (R.kind == RNN_GRU) {
        gemm_packed(cat, ldcat, rows, R.gnx, G + R.off_nx, ldg, ACT_LINEAR);
        gemm_packed(cat + I, ldcat, rows, R.gnh, G + R.off_nh, ldg, ACT_LINEAR);
    }
    const int hv = H / V::W * V::W;
    for (int r = 0; r < rows; ++r) {
        const float* g = G + r * ldg;
        const float* hr = h ? h + r * ldh : nullptr;
        float* ho = h_out + r * ldho;
        if (R.kind == RNN_LSTM) {
            const float* cr = c ? c + r * ldc : nullptr;
            float* co = c_out + r * ldco;
            int j = 0;
            for (; j < hv; j += V::W) {
                reg i_ = vsigmoid(V::load(g + j));
                reg f_ = vsigmoid(V::load(g + H + j));
                reg g_ = vtanh(V::load(g + 2 * H + j));
                reg o_ = vsigmoid(V::load(g + 3 * H + j));
                reg cv = cr ? V::load(cr + j) : V::zero();
                reg cn = V::fmadd(f_, cv, V::mul(i_, g_));
                V::store(co + j, cn);
                V::store(ho + j, V::mul(o_, vtanh(cn)));
            }
            for (; j < H; ++j) {
                float cn = sigm_s(g[H + j]) * (cr ? cr[j] : 0.0f) + sigm_s(g[j]) * std::tanh(g[2 * H + j]);
                co[j] = cn;
                ho[j] = sigm_s(g[3 * H + j]) * std::tanh(cn);
            }
        } else {
            // r, z in [0, 1] (robust sigmoid), n_h finite for finite h: an infinite input gives
            // n_x = +-inf, n = +-1 and a finite h' as in torch.
            const float* gnx = g + R.off_nx;
            const float* gnh = g + R.off_nh;
            int j = 0;
            for (; j < hv; j += V::W) {
                reg r_ = vsigmoid(V::load(g + j));
                reg z_ = vsigmoid(V::load(g + H + j));
                reg n_ = vtanh(V::fmadd(r_, V::load(gnh + j), V::load(gnx + j)));
                reg hp = hr ? V::load(hr + j) : V::zero();
                // (1 - z) n + z h = n + z (h - n)
                V::store(ho + j, V::fmadd(z_, V::sub(hp, n_), n_));
            }
            for (; j < H; ++j) {
                float rr = sigm_s(g[j]), zz = sigm_s(g[H + j]);
                float nn = std::tanh(gnx[j] + rr * gnh[j]);
                float hp = hr ? hr[j] : 0.0f;
                ho[j] = nn + zz * (hp - nn);
            }
        }
    }
}

static inline size_t rnn_scratch_floats(const PackedRNN& R, int rows) {
    return size_t(rows) * (size_t(R.I) + R.H + R.ld_gates());
}

static RF_T void rnn_rows(const PackedRNN& R, const float* X, int64_t ldx, int r0, int rows,
                          const float* h, int64_t ldh, const float* c, int64_t ldc,
                          float* h_out, int64_t ldho, float* c_out, int64_t ldco) {
    thread_local AlignedBuf scratch;
    scratch.resize(rnn_scratch_floats(R, ROW_BLOCK));
    rnn_block(R, X + r0 * ldx, ldx, rows, h ? h + r0 * ldh : nullptr, ldh, c ? c + r0 * ldc : nullptr, ldc,
              h_out + r0 * ldho, ldho, c_out ? c_out + r0 * ldco : nullptr, ldco, scratch.p);
}

// A whole batch, row blocks spread over the thread pool.
static RF_T void rnn_forward(const PackedRNN& R, const float* X, int64_t ldx, int B,
                             const float* h, int64_t ldh, const float* c, int64_t ldc,
                             float* h_out, int64_t ldho, float* c_out, int64_t ldco) {
    if (B <= 0) return;
    const RowSplit sp(B, ThreadPool::get().threads());
    if (sp.nb == 1) { rnn_rows(R, X, ldx, 0, B, h, ldh, c, ldc, h_out, ldho, c_out, ldco); return; }
    ThreadPool::get().run(sp.nb, [&](int b) {
        rnn_rows(R, X, ldx, sp.start(b), sp.count(b, B), h, ldh, c, ldc, h_out, ldho, c_out, ldco);
    });
}
