// ISA BODY (no include guard; see vmath.h): the register-blocked GEMM over packed weights
// (common.h: PackedLinear) with bias and activation fused, and the fused MLP over a row block.
//
// Shape legend: rows = batch rows of the block, K inputs, N outputs, NR = 32 panel width.
// A tile keeps MR rows x NP panels of outputs in registers for the whole K loop: every weight
// vector loaded feeds MR independent FMA chains and every broadcast x feeds NP*NR/W of them.

// Tile configuration per ISA: big tile for full row groups, and a GEMV tile for single rows.
#if RF_ISA_LEVEL == 2
constexpr int MR_BIG = 6, NP_BIG = 2, NP_ONE = 4;
#elif RF_ISA_LEVEL == 1
constexpr int MR_BIG = 3, NP_BIG = 1, NP_ONE = 2;
#else
constexpr int MR_BIG = 1, NP_BIG = 1, NP_ONE = 1;
#endif

// Y[m, q*NR + j] = act(bias[q*NR + j] + sum_k X[m, k] * W[q][k][j]) for m < MR, q < NPN, k in
// [k0, k1) (pstride: floats between panels, K * NR). cont: the sums continue from Y (a previous
// k range's partial sums, stored with act = ACT_LINEAR) instead of starting at the bias, so a
// K-blocked product runs every output's FMA chain in the same order as one pass over K.
template <int MR, int NPN>
static RF_T void tile_k(const float* X, int64_t ldx, int k0, int k1, size_t pstride, const float* W,
                        const float* bias, bool cont, float* Y, int64_t ldy, int act) {
    constexpr int VPP = NR / V::W;     // vectors per panel
    constexpr int NV = NPN * VPP;      // vectors per row of the tile
    reg acc[MR][NV];
    if (cont) {
        for (int m = 0; m < MR; ++m)
            for (int j = 0; j < NV; ++j) acc[m][j] = V::load(Y + m * ldy + (j / VPP) * NR + (j % VPP) * V::W);
    } else {
        for (int j = 0; j < NV; ++j) {
            reg b = V::load(bias + (j / VPP) * NR + (j % VPP) * V::W);
            for (int m = 0; m < MR; ++m) acc[m][j] = b;
        }
    }
    for (int k = k0; k < k1; ++k) {
        reg xb[MR];
        for (int m = 0; m < MR; ++m) xb[m] = V::set1(X[m * ldx + k]);
        for (int q = 0; q < NPN; ++q) {
            const float* wk = W + q * pstride + size_t(k) * NR;
            for (int v = 0; v < VPP; ++v) {
                reg w = V::load(wk + v * V::W);
                for (int m = 0; m < MR; ++m) acc[m][q * VPP + v] = V::fmadd(xb[m], w, acc[m][q * VPP + v]);
            }
        }
    }
    switch (act) {
        case ACT_LINEAR: break;
        case ACT_TANH:
            for (int m = 0; m < MR; ++m) for (int j = 0; j < NV; ++j) acc[m][j] = vtanh(acc[m][j]);
            break;
        case ACT_RELU:
            for (int m = 0; m < MR; ++m) for (int j = 0; j < NV; ++j) acc[m][j] = V::max(V::zero(), acc[m][j]);
            break;
        default:
            for (int m = 0; m < MR; ++m) for (int j = 0; j < NV; ++j) acc[m][j] = vact(acc[m][j], act);
    }
    for (int m = 0; m < MR; ++m)
        for (int j = 0; j < NV; ++j)
            V::store(Y + m * ldy + (j / VPP) * NR + (j % VPP) * V::W, acc[m][j]);
}

// Whether this call sweeps L's panels backwards: alternate calls run them in opposite orders.
// Weights about the size of L2 (an LSTM's 2 MB of gates in this machine's 2 MB L2, the caller's
// Python in between) are LRU's worst case when every call sweeps forwards: the lines the last
// sweep read first are the ones evicted since, and each of their misses evicts the line to be
// read next, so nearly every line comes from memory. A backward sweep starts with the lines
// read last, still in L2 (LSTM I=256 H=256 at B=1: 2 MB in ~45 us instead of ~80). The panel
// order changes no output's arithmetic.
static RF_AI RF_T bool sweep_backward(const PackedLinear& L) {
    const uint32_t s = __atomic_load_n(&L.sweeps, __ATOMIC_RELAXED);
    __atomic_store_n(&L.sweeps, s + 1, __ATOMIC_RELAXED);
    return s & 1;
}

// All panels for MR rows (the one-row GEMV: a single pass over the weights anyway), in groups
// of NPN panels then the last P % NPN one by one; rev: in the opposite order.
template <int MR, int NPN>
static RF_T void tile_row(const float* X, int64_t ldx, const PackedLinear& L, float* Y, int64_t ldy, int act,
                          bool rev) {
    const size_t pstride = size_t(L.K) * NR;
    const int ng = L.P / NPN;
    auto group = [&](int g) {
        const int q = g * NPN;
        tile_k<MR, NPN>(X, ldx, 0, L.K, pstride, L.w.p + q * pstride, L.b.p + q * NR, false, Y + q * NR, ldy, act);
    };
    auto single = [&](int q) {
        tile_k<MR, 1>(X, ldx, 0, L.K, pstride, L.w.p + q * pstride, L.b.p + q * NR, false, Y + q * NR, ldy, act);
    };
    if (!rev) {
        for (int g = 0; g < ng; ++g) group(g);
        for (int q = ng * NPN; q < L.P; ++q) single(q);
    } else {
        for (int q = L.P - 1; q >= ng * NPN; --q) single(q);
        for (int g = ng - 1; g >= 0; --g) group(g);
    }
}

// Narrow layer (N <= 8): per row, N dot products along K (vector accumulators, one per output),
// then bias and activation over the padded row. Two rows at a time share the weight loads.
template <int N>
static RF_T void gemm_narrow_n(const float* X, int64_t ldx, int rows, const PackedLinear& L, float* Y, int64_t ldy, int act) {
    const int K = L.K;
    const int kv = K / V::W * V::W;
    int r = 0;
    for (; r < rows; r += 2) {
        const bool two = r + 1 < rows;
        const float* x0 = X + r * ldx;
        const float* x1 = two ? x0 + ldx : x0;
        reg a0[N], a1[N];
        for (int n = 0; n < N; ++n) { a0[n] = V::zero(); a1[n] = V::zero(); }
        for (int k = 0; k < kv; k += V::W) {
            reg xv0 = V::load(x0 + k), xv1 = V::load(x1 + k);
            for (int n = 0; n < N; ++n) {
                reg w = V::load(L.wr.p + size_t(n) * K + k);
                a0[n] = V::fmadd(xv0, w, a0[n]);
                a1[n] = V::fmadd(xv1, w, a1[n]);
            }
        }
        for (int q = 0; q < (two ? 2 : 1); ++q) {
            const float* xr = q ? x1 : x0;
            float* y = Y + (r + q) * ldy;
            alignas(64) float t[V::W];
            for (int n = 0; n < N; ++n) {
                V::store(t, q ? a1[n] : a0[n]);
                float s = 0.0f;
                for (int i = 0; i < V::W; ++i) s += t[i];
                for (int k = kv; k < K; ++k) s += xr[k] * L.wr.p[size_t(n) * K + k];
                y[n] = s + L.b.p[n];
            }
            for (int i = N; i < NR; ++i) y[i] = 0.0f;
            act_inplace(y, NR, act);
        }
    }
}

static RF_T void gemm_narrow(const float* X, int64_t ldx, int rows, const PackedLinear& L, float* Y, int64_t ldy, int act) {
    switch (L.N) {
        case 1: gemm_narrow_n<1>(X, ldx, rows, L, Y, ldy, act); break;
        case 2: gemm_narrow_n<2>(X, ldx, rows, L, Y, ldy, act); break;
        case 3: gemm_narrow_n<3>(X, ldx, rows, L, Y, ldy, act); break;
        case 4: gemm_narrow_n<4>(X, ldx, rows, L, Y, ldy, act); break;
        case 5: gemm_narrow_n<5>(X, ldx, rows, L, Y, ldy, act); break;
        case 6: gemm_narrow_n<6>(X, ldx, rows, L, Y, ldy, act); break;
        case 7: gemm_narrow_n<7>(X, ldx, rows, L, Y, ldy, act); break;
        default: gemm_narrow_n<8>(X, ldx, rows, L, Y, ldy, act); break;
    }
}

// Panels [q, q + np) (np <= NP_BIG) for MR rows, k in [k0, k1) (see tile_k for cont).
template <int MR>
static RF_T void tile_group(const float* X, int64_t ldx, const PackedLinear& L, int q, int np, float* Y,
                            int64_t ldy, int act, int k0, int k1, bool cont) {
    const size_t pstride = size_t(L.K) * NR;
    if (np == NP_BIG) {
        tile_k<MR, NP_BIG>(X, ldx, k0, k1, pstride, L.w.p + q * pstride, L.b.p + q * NR, cont, Y + q * NR, ldy, act);
        return;
    }
    for (const int e = q + np; q < e; ++q)
        tile_k<MR, 1>(X, ldx, k0, k1, pstride, L.w.p + q * pstride, L.b.p + q * NR, cont, Y + q * NR, ldy, act);
}

// Every row group of the block over panels [q, q + np), k in [k0, k1).
static RF_T void gemm_group_rows(const float* X, int64_t ldx, int rows, const PackedLinear& L, int q, int np,
                                 float* Y, int64_t ldy, int act, int k0, int k1, bool cont) {
    int r = 0;
    for (; r + MR_BIG <= rows; r += MR_BIG)
        tile_group<MR_BIG>(X + r * ldx, ldx, L, q, np, Y + r * ldy, ldy, act, k0, k1, cont);
    const float* Xr = X + r * ldx;
    float* Yr = Y + r * ldy;
    switch (rows - r) {
        case 0: break;
        case 1: tile_group<1>(Xr, ldx, L, q, np, Yr, ldy, act, k0, k1, cont); break;
#if RF_ISA_LEVEL >= 1
        case 2: tile_group<(MR_BIG > 2 ? 2 : 1)>(Xr, ldx, L, q, np, Yr, ldy, act, k0, k1, cont); break;
#endif
#if RF_ISA_LEVEL >= 2
        case 3: tile_group<3>(Xr, ldx, L, q, np, Yr, ldy, act, k0, k1, cont); break;
        case 4: tile_group<4>(Xr, ldx, L, q, np, Yr, ldy, act, k0, k1, cont); break;
        case 5: tile_group<5>(Xr, ldx, L, q, np, Yr, ldy, act, k0, k1, cont); break;
#endif
        default: break;
    }
}

// Weights of one panel group (NP_BIG panels) that every row group of a block re-reads: a taller
// group (a head over 7744 conv features: 2 x 7744 x 32 floats, 2 MB) runs K in chunks of this
// size, so that a chunk is loaded from memory once and re-read from L2.
constexpr size_t GEMM_GROUP_FLOATS = size_t(1) << 15;  // 128 KB

// Y[rows, P*NR] (ldy >= P*NR) = act(X[rows, K] W^T + b). Columns past N come out as act(0) = 0.
//
// A block of several rows runs panel groups outermost and its row groups innermost: each group
// of weights comes from memory once and is re-read from L1/L2 by every row group. (With rows
// outermost, all of W streamed once per MR_BIG rows: 3 times at 16 rows, 8 times at 48; an LSTM's
// 2 MB of gates does not stay in L2, so each pass came from memory.) A K-chunk continues each
// output's sum from the partial sums the previous chunk stored (activation by the last chunk
// only), so every output's FMA chain runs k = 0 .. K-1 in order: the bits of a one-row product.
// Alternate calls take the panel groups in opposite orders (sweep_backward).
static RF_T void gemm_packed(const float* X, int64_t ldx, int rows, const PackedLinear& L,
                             float* Y, int64_t ldy, int act) {
    if (L.narrow() && L.K >= 2 * V::W) {
        gemm_narrow(X, ldx, rows, L, Y, ldy, act);
        return;
    }
    const bool rev = sweep_backward(L);
    if (rows == 1) {
        tile_row<1, NP_ONE>(X, ldx, L, Y, ldy, act, rev);
        return;
    }
    // one row group reads each weight once anyway: no chunks
    const int kc = rows <= MR_BIG ? L.K : int(std::max<size_t>(16, GEMM_GROUP_FLOATS / (size_t(NP_BIG) * NR)));
    const int ng = (L.P + NP_BIG - 1) / NP_BIG;
    for (int i = 0; i < ng; ++i) {
        const int q = (rev ? ng - 1 - i : i) * NP_BIG;
        const int np = std::min(NP_BIG, L.P - q);
        for (int k0 = 0; k0 < L.K; k0 += kc) {
            const int k1 = std::min(L.K, k0 + kc);
            gemm_group_rows(X, ldx, rows, L, q, np, Y, ldy, k1 == L.K ? act : int(ACT_LINEAR), k0, k1, k0 > 0);
        }
    }
}

static RF_AI RF_T float hsum_store(reg v) {
    alignas(64) float t[V::W];
    V::store(t, v);
    float s = 0.0f;
    for (int i = 0; i < V::W; ++i) s += t[i];
    return s;
}

// Layer norm of `rows` rows of Y (the layer's pre-activations, padded to np columns, zero past
// N), as torch's nn.LayerNorm: mean and biased variance over the N columns (two passes), eps
// inside the square root; then gamma, beta and the activation over the padded row (gamma and
// beta are zero past N, so the padded columns stay act(0) = 0). NaN/inf propagate.
static RF_T void layernorm_rows(const PackedNorm& nm, float* Y, int64_t ldy, int rows, int np, int act) {
    const int N = nm.N;
    const int nv = N / V::W * V::W;
    const float inv_n = 1.0f / float(N);
    for (int r = 0; r < rows; ++r) {
        float* y = Y + r * ldy;
        reg acc = V::zero();
        int j = 0;
        for (; j < nv; j += V::W) acc = V::add(acc, V::load(y + j));
        float sum = hsum_store(acc);
        for (; j < N; ++j) sum += y[j];
        const float mean = sum * inv_n;
        const reg m = V::set1(mean);
        acc = V::zero();
        for (j = 0; j < nv; j += V::W) {
            reg d = V::sub(V::load(y + j), m);
            acc = V::fmadd(d, d, acc);
        }
        float ss = hsum_store(acc);
        for (; j < N; ++j) ss += (y[j] - mean) * (y[j] - mean);
        const reg rs = V::set1(1.0f / std::sqrt(ss * inv_n + nm.eps));
        for (j = 0; j < np; j += V::W) {
            reg x = V::mul(V::sub(V::load(y + j), m), rs);
            V::store(y + j, V::fmadd(x, V::load(nm.g.p + j), V::load(nm.b.p + j)));
        }
        act_inplace(y, np, act);
    }
}

// Runs the MLP on `rows` rows of X. buf0/buf1: scratch of rows*ldb floats each, ldb >= every
// layer's padded width. Returns the buffer holding the output ([rows, ldb], N_L valid columns).
// A layer with a norm runs GEMM + bias, then layernorm_rows (norm, affine, activation).
static RF_T float* mlp_block(const PackedMLP& mlp, const float* X, int64_t ldx, int rows,
                             float* buf0, float* buf1, int64_t ldb) {
    const float* in = X;
    int64_t ldin = ldx;
    float* out = buf0;
    for (size_t l = 0; l < mlp.layers.size(); ++l) {
        out = (l % 2 == 0) ? buf0 : buf1;
        const bool ln = l < mlp.norms.size() && mlp.norms[l].on;
        gemm_packed(in, ldin, rows, mlp.layers[l], out, ldb, ln ? int(ACT_LINEAR) : mlp.acts[l]);
        if (ln) layernorm_rows(mlp.norms[l], out, ldb, rows, mlp.layers[l].padded_n(), mlp.acts[l]);
        in = out;
        ldin = ldb;
    }
    return out;
}

// Rows [r0, r0 + rows) of the MLP, rows <= ROW_BLOCK, with this thread's scratch.
static RF_T void mlp_rows(const PackedMLP& mlp, const float* X, int64_t ldx, int r0, int rows, float* Y, int64_t ldy) {
    const int ldb = mlp.max_padded();
    thread_local AlignedBuf scratch;
    scratch.resize(size_t(2) * ROW_BLOCK * ldb);
    float* o = mlp_block(mlp, X + r0 * ldx, ldx, rows, scratch.p, scratch.p + size_t(ROW_BLOCK) * ldb, ldb);
    const int nout = mlp.out_dim();
    for (int r = 0; r < rows; ++r) std::memcpy(Y + (r0 + r) * ldy, o + size_t(r) * ldb, sizeof(float) * nout);
}

// The MLP over a whole batch: X [B, ldx], Y [B, ldy] (first out_dim columns written); row
// blocks spread over the thread pool.
static RF_T void mlp_forward(const PackedMLP& mlp, const float* X, int64_t ldx, int B, float* Y, int64_t ldy) {
    if (mlp.layers.empty() || B <= 0) return;
    const RowSplit sp(B, ThreadPool::get().threads());
    if (sp.nb == 1) { mlp_rows(mlp, X, ldx, 0, B, Y, ldy); return; }
    ThreadPool::get().run(sp.nb, [&](int b) { mlp_rows(mlp, X, ldx, sp.start(b), sp.count(b, B), Y, ldy); });
}

// Unpacked GEMV for a few rows straight from nn.Linear's [N, K] layout (the one-shot op at
// tiny batch, where packing would cost more than the product). Four output rows at a time,
// each a vector accumulator along K; y must have room for round_up(N, NR) floats.
static RF_T void gemv_rowmajor(const float* x, const MatView& W, const float* bias, int64_t bstride,
                               float* y, int act) {
    const int N = W.rows, K = W.cols;
    const int kv = K / V::W * V::W;
    int n = 0;
    for (; n + 4 <= N; n += 4) {
        const float* w0 = W.p + n * W.s0;
        reg a0 = V::zero(), a1 = V::zero(), a2 = V::zero(), a3 = V::zero();
        for (int k = 0; k < kv; k += V::W) {
            reg xv = V::load(x + k);
            a0 = V::fmadd(V::load(w0 + k), xv, a0);
            a1 = V::fmadd(V::load(w0 + W.s0 + k), xv, a1);
            a2 = V::fmadd(V::load(w0 + 2 * W.s0 + k), xv, a2);
            a3 = V::fmadd(V::load(w0 + 3 * W.s0 + k), xv, a3);
        }
        alignas(16) float s[4];
        _mm_store_ps(s, V::hsum4(a0, a1, a2, a3));  // shuffle-add tree, not 4 x W scalar adds
        for (int k = kv; k < K; ++k) {
            for (int j = 0; j < 4; ++j) s[j] += w0[j * W.s0 + k] * x[k];
        }
        for (int j = 0; j < 4; ++j) y[n + j] = s[j] + (bias ? bias[(n + j) * bstride] : 0.0f);
    }
    for (; n < N; ++n) {
        const float* wn = W.p + n * W.s0;
        float s = 0;
        for (int k = 0; k < K; ++k) s += wn[k] * x[k];
        y[n] = s + (bias ? bias[n * bstride] : 0.0f);
    }
    int np = round_up(N, NR);
    for (int i = N; i < np; ++i) y[i] = 0.0f;
    act_inplace(y, np, act);
}
