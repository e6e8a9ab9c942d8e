// ISA BODY (no include guard; see vmath.h): the whole policy step (encoder MLP [+ LSTM/GRU],
// pi head, distribution inputs, sampling, and [critic encoder +] value head) for a batch, in
// one call, row block by row block so that activations stay in cache. Torch-free.
//
// Shape legend: B batch, O obs dim, H rnn hidden, D dist-input dim, A action columns.


// sd[0:A] = exp(ls[0:A]) (ls finite): vexp, with inf past float's overflow as std::exp gives
// (vexp clamps at 88; below -87 it leaves ~1e-38 where std::exp is denormal or 0: |diff| < 2e-38).
static RF_T void std_row(const float* ls, int A, float* sd) {
    const int av = A / V::W * V::W;
    const reg big = V::set1(88.7228f), inf = V::set1(INFINITY);
    int j = 0;
    for (; j < av; j += V::W) {
        reg x = V::load(ls + j);
        V::store(sd + j, V::select_gt(x, big, inf, vexp(x)));
    }
    for (; j < A; ++j) sd[j] = std::exp(ls[j]);
}

// Diagonal-Gaussian rows with the normals' transcendental stage vectorised; same contract and
// same draws as sampling.h's sample_gaussian_rows (its scalar reference). The pairs of all rows
// run through fixed-size chunks: bm_split (scalar) -> box_muller (vector) -> bm_rotate + write.
static RF_T int64_t gaussian_rows(const float* ml, int64_t ld, int rows, int A, bool det, uint64_t key,
                                  uint64_t ctr0, float* actions, int64_t ald, float* logp) {
    if (det) return sample_gaussian_rows(ml, ld, rows, A, true, key, ctr0, actions, ald, logp);
    for (int r = 0; r < rows; ++r) {
        const float* m = ml + r * ld;
        bool finite = true;
        for (int j = 0; j < 2 * A; ++j) finite &= std::isfinite(m[j]);
        if (!finite) return -1 - r;
    }
    thread_local AlignedBuf sd;  // one row of exp(log_std)
    sd.resize(size_t(round_up(A, V::W)));
    constexpr int CH = 256;  // pairs per chunk (a multiple of every W)
    alignas(64) float bm[CH], be[CH], bf[CH], bc[CH], bs[CH];
    int bq[CH];
    const int np = (A + 1) / 2;  // pairs per row
    const int64_t total = int64_t(rows) * np;
    int r1 = 0, p1 = 0;             // stage-1 position (row, pair)
    int r3 = 0, p3 = 0;             // stage-3 position
    double acc = 0.0;               // sum of -eps^2 / 2 over row r3 so far
    for (int64_t g0 = 0; g0 < total; g0 += CH) {
        const int cnt = int(std::min<int64_t>(CH, total - g0));
        for (int i = 0; i < cnt; ++i) {
            bm_split(rng_bits(key, ctr0 + uint64_t(r1) * A + 2 * p1), bm + i, be + i, bf + i, bq + i);
            if (++p1 == np) { p1 = 0; ++r1; }
        }
        const int cv = (cnt + V::W - 1) / V::W * V::W;
        for (int i = cnt; i < cv; ++i) { bm[i] = 1.5f; be[i] = -1.0f; bf[i] = 0.5f; }
        box_muller(bm, be, bf, bc, bs, cv);
        for (int i = 0; i < cnt; ++i) {
            float e0, e1;
            bm_rotate(bq[i], bc[i], bs[i], &e0, &e1);
            const float* m = ml + r3 * ld;
            const float* ls = m + A;
            float* act = actions + r3 * ald;
            const int j = 2 * p3;
            if (p3 == 0) std_row(ls, A, sd.p);  // exp(log_std) of this row, vectorised
            act[j] = m[j] + sd.p[j] * e0;
            acc += -0.5 * double(e0) * e0;
            if (j + 1 < A) {
                act[j + 1] = m[j + 1] + sd.p[j + 1] * e1;
                acc += -0.5 * double(e1) * e1;
            }
            if (++p3 == np) {
                double lp = acc;
                for (int k = 0; k < A; ++k) lp -= double(ls[k]) + LOG_SQRT_2PI;
                logp[r3] = float(lp);
                acc = 0.0; p3 = 0; ++r3;
            }
        }
    }
    return 0;
}

// SAC's squashed Gaussian over rows of [mean, log_std] (row stride ld; the caller's distribution
// inputs, left as they are): log-std clamped to [SQUASHED_LOG_STD_MIN, MAX] for the draw (RLlib's
// TorchSquashedGaussian.from_logits), u = mean + std * eps by gaussian_rows (deterministic:
// u = mean), then actions = tanh(u) and the Jacobian in the same row block (squash_rows).
// Non-finite inputs are refused before the clamp (which would hide an infinite log-std).
static RF_T int64_t squashed_gaussian_rows(const float* ml, int64_t ld, int rows, int A, bool det, uint64_t key,
                                           uint64_t ctr0, float* actions, int64_t ald, float* logp) {
    thread_local AlignedBuf clamped;  // [rows, 2A]
    clamped.resize(size_t(rows) * 2 * A);
    for (int r = 0; r < rows; ++r) {
        const float* m = ml + r * ld;
        float* c = clamped.p + int64_t(r) * 2 * A;
        for (int j = 0; j < 2 * A; ++j)
            if (!std::isfinite(m[j])) return -1 - r;
        std::memcpy(c, m, sizeof(float) * A);
        for (int j = A; j < 2 * A; ++j) c[j] = std::min(std::max(m[j], SQUASHED_LOG_STD_MIN), SQUASHED_LOG_STD_MAX);
    }
    const int64_t err = gaussian_rows(clamped.p, 2 * A, rows, A, det, key, ctr0, actions, ald, logp);
    if (err) return err;
    squash_rows(actions, ald, rows, A, logp);
    return 0;
}

struct Enc { const float* p; int64_t ld; };

// Encoder over a block: mlp (may be empty) then optional rnn whose h' is the latent.
static RF_T Enc encoder_block(const PackedMLP& mlp, bool rnn_on, const PackedRNN& rnn,
                              const float* X, int64_t ldx, int rows, float* b0, float* b1, int64_t ldb,
                              const float* h, const float* c, float* h_out, float* c_out, float* rscratch) {
    Enc e{X, ldx};
    if (!mlp.layers.empty()) e = Enc{mlp_block(mlp, X, ldx, rows, b0, b1, ldb), ldb};
    if (rnn_on) {
        rnn_block(rnn, e.p, e.ld, rows, h, rnn.H, c, rnn.H, h_out, rnn.H, c_out, rnn.H, rscratch);
        e = Enc{h_out, rnn.H};
    }
    return e;
}

static inline size_t policy_scratch_floats(const PolicyNet& net, int rb) {
    size_t ldb = net.max_padded();
    size_t r = 0;
    if (net.actor_rnn_on) r = std::max(r, rnn_scratch_floats(net.actor_rnn, rb));
    if (net.critic_rnn_on) r = std::max(r, rnn_scratch_floats(net.critic_rnn, rb));
    return 4 * size_t(rb) * ldb + r;
}

// Rows [r0, r0 + rows) of the step (rows <= ROW_BLOCK). Returns 0, or -1 - row (global row)
// for the first row whose distribution inputs hold a NaN/inf.
static RF_T int64_t policy_rows(const PolicyNet& net, const StepIO& io, int r0, int rows) {
    const int64_t ldb = net.max_padded();
    const int D = net.dist_dim();
    const int npi = net.pi.out_dim();
    const int draws = net.draws_per_row();
    thread_local AlignedBuf scratch;
    scratch.resize(policy_scratch_floats(net, ROW_BLOCK));
    const int rb = ROW_BLOCK;
    float* e0 = scratch.p;
    float* e1 = e0 + size_t(rb) * ldb;
    float* h0 = e1 + size_t(rb) * ldb;
    float* h1 = h0 + size_t(rb) * ldb;
    float* rs = h1 + size_t(rb) * ldb;
    const int Ha = net.actor_rnn_on ? net.actor_rnn.H : 0;
    const int Hc = net.critic_rnn_on ? net.critic_rnn.H : 0;
    {
        const float* X = io.obs ? io.obs + r0 * io.ldobs : nullptr;
        // encoders read the conv features when they have a conv stage (policy_step computed them)
        const float* Xa = io.feat_a ? io.feat_a + r0 * io.ld_fa : X;
        const int64_t ldxa = io.feat_a ? io.ld_fa : io.ldobs;
        // actor encoder -> pi head -> distribution inputs
        Enc a = encoder_block(net.actor_mlp, net.actor_rnn_on, net.actor_rnn, Xa, ldxa, rows, e0, e1, ldb,
                              io.ha ? io.ha + int64_t(r0) * Ha : nullptr, io.ca ? io.ca + int64_t(r0) * Ha : nullptr,
                              io.ha_out ? io.ha_out + int64_t(r0) * Ha : nullptr,
                              io.ca_out ? io.ca_out + int64_t(r0) * Ha : nullptr, rs);
        const float* pio = a.p;
        int64_t ldp = a.ld;
        if (!net.pi.layers.empty()) { pio = mlp_block(net.pi, a.p, a.ld, rows, h0, h1, ldb); ldp = ldb; }
        float* dist = io.dist + int64_t(r0) * D;
        for (int r = 0; r < rows; ++r) {
            float* d = dist + int64_t(r) * D;
            std::memcpy(d, pio + r * ldp, sizeof(float) * npi);
            if (!net.free_log_std.empty())
                std::memcpy(d + npi, net.free_log_std.data(), sizeof(float) * net.free_log_std.size());
            if (net.dist == DIST_DIAG_GAUSSIAN && net.log_std_clip >= 0.0f) {
                const int A = D / 2;
                for (int j = A; j < D; ++j) d[j] = std::min(std::max(d[j], -net.log_std_clip), net.log_std_clip);
            }
        }
        // action mask (masked logits become MASKED_LOGIT in dist, so the samplers below never
        // draw them and their logp normalises over the allowed actions only)
        int64_t err = 0;
        if (io.mask) {
            const bool multi = net.dist == DIST_MULTI_CATEGORICAL;
            err = apply_action_mask_rows(dist, D, rows, multi ? net.action_sizes.data() : &D,
                                         multi ? int(net.action_sizes.size()) : 1, io.mask + int64_t(r0) * io.ldmask,
                                         io.ldmask);
            if (err) return err - r0;
        }
        // sampling
        const uint64_t ctr = io.ctr0 + uint64_t(r0) * draws;
        if (net.dist == DIST_CATEGORICAL) {
            err = sample_categorical_rows(dist, D, rows, D, io.det, io.key, ctr, 1, io.act_i + r0, 1, io.logp + r0, false);
        } else if (net.dist == DIST_MULTI_CATEGORICAL) {
            const int nc = int(net.action_sizes.size());
            int off = 0;
            for (int j = 0; j < nc && err == 0; ++j) {
                err = sample_categorical_rows(dist + off, D, rows, net.action_sizes[j], io.det, io.key, ctr + j, nc,
                                              io.act_i + int64_t(r0) * nc + j, nc, io.logp + r0, j > 0);
                off += net.action_sizes[j];
            }
        } else if (net.dist == DIST_SQUASHED_GAUSSIAN) {
            const int A = D / 2;
            err = squashed_gaussian_rows(dist, D, rows, A, io.det, io.key, ctr, io.act_f + int64_t(r0) * A, A,
                                         io.logp + r0);
        } else {
            const int A = D / 2;
            err = gaussian_rows(dist, D, rows, A, io.det, io.key, ctr, io.act_f + int64_t(r0) * A, A, io.logp + r0);
        }
        if (err) return err - r0;
        // critic encoder (always when it carries state, so state_out advances) and value head
        Enc v = a;
        if (net.critic_on && (io.value || net.critic_rnn_on)) {
            const float* Xc = io.feat_c ? io.feat_c + r0 * io.ld_fc : X;
            v = encoder_block(net.critic_mlp, net.critic_rnn_on, net.critic_rnn, Xc, io.feat_c ? io.ld_fc : io.ldobs,
                              rows, e0, e1, ldb,
                              io.hc ? io.hc + int64_t(r0) * Hc : nullptr, io.cc ? io.cc + int64_t(r0) * Hc : nullptr,
                              io.hc_out ? io.hc_out + int64_t(r0) * Hc : nullptr,
                              io.cc_out ? io.cc_out + int64_t(r0) * Hc : nullptr, rs);
        }
        if (io.value && net.vf_on) {
            const float* vo = mlp_block(net.vf, v.p, v.ld, rows, h0, h1, ldb);
            for (int r = 0; r < rows; ++r) io.value[r0 + r] = vo[r * ldb];
        }
    }
    return 0;
}

// The first row of x [B, D] (row stride ld) holding a NaN or inf, or -1.
static RF_T int64_t first_nonfinite_obs_row(const float* x, int B, int64_t ld, int D) {
    for (int r = 0; r < B; ++r)
        if (!all_finite_f32(x + int64_t(r) * ld, size_t(D))) return r;
    return -1;
}

// Row blocks of the heads. After a conv stage a batch of one row block is still split, into
// about two blocks per thread (an even number of rows each: the narrow heads pair rows): the
// heads read wide feature rows there, and the workers are awake from the conv stage.
static inline RowSplit head_split(int B, int T, bool after_conv) {
    RowSplit sp(B, T);
    if (after_conv && T > 1 && sp.nb < 2 * T) {
        sp.rows_per = std::min(ROW_BLOCK, round_up((B + 2 * T - 1) / (2 * T), 2));
        sp.nb = (B + sp.rows_per - 1) / sp.rows_per;
    }
    return sp;
}

// The whole batch; row blocks spread over the thread pool. Same return as policy_rows, or
// ERR_OBS_NONFINITE - row when io.check_obs finds a NaN / inf observation (then nothing is
// sampled and, with io.reserve_draws, no draw is reserved).
static RF_T int64_t policy_step(const PolicyNet& net, const StepIO& io_in) {
    if (io_in.B <= 0) return 0;
    StepIO io = io_in;
    const bool check = io.check_obs && !io.obs_u8;  // uint8 frames are always finite
    if (check && !net.actor_conv) {  // no conv stage to test the observations in
        const int64_t bad = first_nonfinite_obs_row(io.obs, io.B, io.ldobs, net.obs_dim);
        if (bad >= 0) return ERR_OBS_NONFINITE - bad;
    }
    thread_local AlignedBuf feat_a, feat_c;
    if (net.actor_conv) {
        int64_t bad = -1;
        io.feat_a = conv_stack_features(*net.actor_conv, io.obs_u8, io.obs, io.ldobs, io.B, feat_a,
                                        check ? &bad : nullptr);
        if (bad >= 0) return ERR_OBS_NONFINITE - bad;
        io.ld_fa = net.actor_conv->out_dim();
    }
    if (net.critic_on && net.critic_conv && (io.value || net.critic_rnn_on)) {
        io.feat_c = conv_stack_features(*net.critic_conv, io.obs_u8, io.obs, io.ldobs, io.B, feat_c);
        io.ld_fc = net.critic_conv->out_dim();
    }
    if (io.reserve_draws) rng_stream().reserve(uint64_t(io.B) * net.draws_per_row(), &io.key, &io.ctr0);
    const RowSplit sp = head_split(io.B, ThreadPool::get().threads(), io.feat_a || io.feat_c);
    if (sp.nb == 1) return policy_rows(net, io, 0, io.B);
    std::atomic<int64_t> err{0};
    ThreadPool::get().run(sp.nb, [&](int b) {
        int64_t e = policy_rows(net, io, sp.start(b), sp.count(b, io.B));
        if (e) {  // keep the lowest failing row (code -1 - row: the largest code)
            int64_t cur = err.load();
            while ((cur == 0 || e > cur) && !err.compare_exchange_weak(cur, e)) {}
        }
    });
    return err.load();
}
