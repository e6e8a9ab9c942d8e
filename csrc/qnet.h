// ISA BODY (no include guard; see vmath.h): the fused epsilon-greedy step of a DQN module for a
// batch, in one call: [the conv stage over the whole batch (conv.h, the policy step's),] then
// row block by row block: encoder MLP, advantage / Q head, [value head],
// dueling combine or distributional expectation, [action mask], argmax, epsilon coin and random
// action (qnet_types.h: QNet, QStepIO). Torch-free.
//
// Shape legend: B batch, O obs dim, A actions, N atoms.

// q[a] = sum_j z_j softmax(l[a, :])_j for a < A (l: [A, N] row-major); exps vectorised.
static RF_T void q_expectation(const float* l, int A, int N, const float* z, float* q) {
    const int nv = N / V::W * V::W;
    alignas(64) float t[64];  // V::W <= 16
    for (int a = 0; a < A; ++a) {
        const float* la = l + size_t(a) * N;
        float mx = la[0];
        for (int j = 1; j < N; ++j) mx = std::max(mx, la[j]);
        double se = 0.0, sz = 0.0;
        const reg m = V::set1(mx);
        int j = 0;
        for (; j < nv; j += V::W) {
            V::store(t, vexp(V::sub(V::load(la + j), m)));
            for (int i = 0; i < V::W; ++i) { se += t[i]; sz += double(t[i]) * z[j + i]; }
        }
        for (; j < N; ++j) {
            const double e = std::exp(double(la[j] - mx));
            se += e; sz += e * z[j];
        }
        q[a] = float(sz / se);
    }
}

// Rows [r0, r0 + rows) (rows <= ROW_BLOCK). Returns 0, or -1 - row (global) for the first row
// whose Q-values hold a NaN/inf.
static RF_T int64_t qnet_rows(const QNet& net, const QStepIO& io, int r0, int rows) {
    const int64_t ldb = net.max_padded();
    const int A = net.A, N = net.N;
    thread_local AlignedBuf scratch;
    scratch.resize(size_t(6) * ROW_BLOCK * ldb);
    float* b[6];
    for (int i = 0; i < 6; ++i) b[i] = scratch.p + size_t(i) * ROW_BLOCK * ldb;
    // the encoder MLP reads the conv features when there is a conv stage (qnet_step computed them)
    const int64_t ldx = io.feat ? io.ldfeat : io.ldobs;
    const float* X = (io.feat ? io.feat : io.obs) + int64_t(r0) * ldx;
    const float* e = X;
    int64_t lde = ldx;
    if (!net.enc.layers.empty()) { e = mlp_block(net.enc, X, ldx, rows, b[0], b[1], ldb); lde = ldb; }
    const float* af = mlp_block(net.af, e, lde, rows, b[2], b[3], ldb);
    const float* vf = (net.vf_on && N == 1) ? mlp_block(net.vf, e, lde, rows, b[4], b[5], ldb) : nullptr;
    for (int r = 0; r < rows; ++r) {
        const int g = r0 + r;
        float* q = io.q + int64_t(g) * A;
        const float* ar = af + r * ldb;
        if (N > 1) {
            q_expectation(ar, A, N, net.z.data(), q);
        } else if (vf) {
            // RLlib: A - nanmean(nan_to_num(A, neginf=nan)) + V (NaN and -inf leave the mean)
            double s = 0.0;
            int cnt = 0;
            for (int a = 0; a < A; ++a)
                if (!std::isnan(ar[a]) && ar[a] != -INFINITY) { s += ar[a]; ++cnt; }
            const float mean = cnt ? float(s / cnt) : NAN;
            const float v = vf[r * ldb];
            for (int a = 0; a < A; ++a) q[a] = (ar[a] - mean) + v;
        } else {
            std::memcpy(q, ar, sizeof(float) * A);
        }
        bool finite = true;
        for (int a = 0; a < A; ++a) finite &= std::isfinite(q[a]);
        if (!finite) return -1 - g;
        const float* mk = io.mask ? io.mask + int64_t(g) * io.ldmask : nullptr;
        int nvalid = A, best = -1;
        float mx = 0.0f;
        if (mk) {
            nvalid = 0;
            for (int a = 0; a < A; ++a) {
                if (mk[a] == 0.0f) q[a] = QNET_FLOAT_MIN;
                else ++nvalid;
            }
        }
        for (int a = 0; a < A; ++a)  // first maximum among valid actions, as torch.argmax
            if ((!mk || mk[a] != 0.0f) && (best < 0 || q[a] > mx)) { best = a; mx = q[a]; }
        int act = best;
        if (!io.det && io.eps > 0.0) {
            const uint64_t bits = rng_bits(io.key, io.ctr0 + uint64_t(g));
            if (u01_hi(bits) < io.eps) {
                int k = std::min(nvalid - 1, int(u01_lo(bits) * nvalid));
                if (!mk) act = k;
                else for (int a = 0; a < A; ++a) if (mk[a] != 0.0f && k-- == 0) { act = a; break; }
            }
        }
        double s = 0.0;
        for (int a = 0; a < A; ++a) s += std::exp(double(q[a]) - double(mx));
        io.act[g] = act;
        io.logp[g] = float(double(q[act]) - double(mx) - std::log(s));
    }
    return 0;
}

// The whole batch; row blocks spread over the thread pool. Same return as qnet_rows.
static RF_T int64_t qnet_step(const QNet& net, const QStepIO& io_in) {
    if (io_in.B <= 0) return 0;
    QStepIO io = io_in;
    if (net.conv) {  // the conv stage over the whole batch first (threads over images), as policy_step
        thread_local AlignedBuf feat;
        io.feat = conv_stack_features(*net.conv, io.obs_u8, io.obs, io.ldobs, io.B, feat);
        io.ldfeat = net.conv->out_dim();
    }
    const RowSplit sp(io.B, ThreadPool::get().threads());
    if (sp.nb == 1) return qnet_rows(net, io, 0, io.B);
    std::atomic<int64_t> err{0};
    ThreadPool::get().run(sp.nb, [&](int bk) {
        int64_t e = qnet_rows(net, io, sp.start(bk), sp.count(bk, io.B));
        if (e) {  // keep the lowest failing row (code -1 - row: the largest code)
            int64_t cur = err.load();
            while ((cur == 0 || e > cur) && !err.compare_exchange_weak(cur, e)) {}
        }
    });
    return err.load();
}
