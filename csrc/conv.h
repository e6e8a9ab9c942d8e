// ISA BODY (no include guard; see vmath.h): NHWC conv2d as an implicit GEMM over filters packed
// by conv_pack.h (PackedConv), zero padding, bias and activation fused; a chain of such layers
// over one image (the CNN stage of the policy step) and over a batch on the thread pool.
//
// Shape legend: see conv_pack.h. A tile keeps MR output pixels (of one output row) x NPN panels
// of PW outputs in registers for the whole K loop, as mlp.h's GEMM tile does: every weight
// vector loaded feeds MR FMA chains, every broadcast input feeds NPN * PW / W of them. The K loop
// runs kh contiguous segments of kw * Cin floats per pixel, straight from the (padded) NHWC
// image: no im2col buffer. Filter rows that fall entirely into the zero padding above or below
// the image are skipped (they add exact zeros for finite weights).
//
// Padding: a layer reads a padded copy of its input (zero borders); layer l writes its output
// straight into the interior of layer l+1's padded buffer, so padding costs one border fill per
// layer, not a copy. Only the observation itself is copied (converted from uint8 and scaled,
// or padded) when the first layer needs it.

#if RF_ISA_LEVEL == 2
constexpr int CMR16 = 8, CMR32 = 8, CMR64 = 6;  // MR for PW=16 / PW=32 / two 32-wide panels
constexpr bool CONV_PAIR = true;
#elif RF_ISA_LEVEL == 1
constexpr int CMR16 = 6, CMR32 = 3, CMR64 = 1;
constexpr bool CONV_PAIR = false;
#else
constexpr int CMR16 = 2, CMR32 = 1, CMR64 = 1;
constexpr bool CONV_PAIR = false;
#endif

// out[m][0:nvalid] = act(bias + sum_{ky in [ky0, ky1)} sum_k x_m[ky * ldrow + k] * w[ky * seg + k])
// for the MR pixels whose receptive fields start at xp[m], outputs of NPN panels from Wq.
template <int PW, int MR, int NPN>
static RF_T void conv_tile(const float* const* xp, int64_t ldrow, int ky0, int ky1, int seg, const float* Wq,
                           size_t pstride, const float* bq, float* const* yp, int nvalid, int act) {
    constexpr int VPP = PW / V::W;
    constexpr int NV = NPN * VPP;
    reg acc[MR][NV];
    for (int j = 0; j < NV; ++j) {
        reg bv = V::load(bq + j * V::W);  // the NPN panels' biases are contiguous
        for (int m = 0; m < MR; ++m) acc[m][j] = bv;
    }
    for (int ky = ky0; ky < ky1; ++ky) {
        const float* xr[MR];
        for (int m = 0; m < MR; ++m) xr[m] = xp[m] + ky * ldrow;
        const float* wk = Wq + size_t(ky) * seg * PW;
        for (int k = 0; k < seg; ++k, wk += PW) {
            reg w[NV];
            for (int q = 0; q < NPN; ++q)
                for (int v = 0; v < VPP; ++v) w[q * VPP + v] = V::load(wk + q * pstride + v * V::W);
            for (int m = 0; m < MR; ++m) {
                const reg xb = V::set1(xr[m][k]);
                for (int j = 0; j < NV; ++j) acc[m][j] = V::fmadd(xb, w[j], acc[m][j]);
            }
        }
    }
    switch (act) {
        case ACT_LINEAR: break;
        case ACT_RELU:
            for (int m = 0; m < MR; ++m) for (int j = 0; j < NV; ++j) acc[m][j] = V::max(V::zero(), acc[m][j]);
            break;
        default:
            for (int m = 0; m < MR; ++m) for (int j = 0; j < NV; ++j) acc[m][j] = vact(acc[m][j], act);
    }
    if (nvalid == NV * V::W) {
        for (int m = 0; m < MR; ++m)
            for (int j = 0; j < NV; ++j) V::store(yp[m] + j * V::W, acc[m][j]);
    } else {
        alignas(64) float t[NV * V::W];
        for (int m = 0; m < MR; ++m) {
            for (int j = 0; j < NV; ++j) V::store(t + j * V::W, acc[m][j]);
            std::memcpy(yp[m], t, sizeof(float) * size_t(nvalid));
        }
    }
}

// conv_tile for cnt <= MR pixels (a tile of exactly cnt rows: no work on dummy pixels).
template <int PW, int MR, int NPN>
static RF_T void conv_tile_cnt(int cnt, const float* const* xp, int64_t ldrow, int ky0, int ky1, int seg,
                               const float* Wq, size_t pstride, const float* bq, float* const* yp, int nvalid,
                               int act) {
    if constexpr (MR > 1) {
        if (cnt < MR) {
            conv_tile_cnt<PW, MR - 1, NPN>(cnt, xp, ldrow, ky0, ky1, seg, Wq, pstride, bq, yp, nvalid, act);
            return;
        }
    }
    conv_tile<PW, MR, NPN>(xp, ldrow, ky0, ky1, seg, Wq, pstride, bq, yp, nvalid, act);
}

// Output rows [oy0, oy1) of one layer. in: the padded input image (pixel (iy, ix) of the padded
// Hin+pt+pb x Win+pl+pr image at in + (iy * Wp + ix) * Cin); out: output pixel (oy, ox) at
// out + oy * ldo + ox * Cout.
template <int PW, int MR, int NPN>
static RF_T void conv_rows_t(const PackedConv& L, int q0, const float* in, int Hin, int Win, float* out, int64_t ldo,
                             int oy0, int oy1) {
    const int Wp = Win + L.pl + L.pr;
    const int Wo = L.out_w(Win);
    const int64_t ldrow = int64_t(Wp) * L.Cin;
    const int seg = L.kw * L.Cin;
    const size_t pstride = size_t(L.K) * PW;
    const int nvalid = std::min(L.Cout - q0 * PW, NPN * PW);
    const float* Wq = L.w.p + q0 * pstride;
    const float* bq = L.b.p + q0 * PW;
    // a row of Wo pixels in nt tiles of nearly equal size (21 = 7 + 7 + 7, not 8 + 8 + 5)
    const int nt = (Wo + MR - 1) / MR, base = Wo / nt, extra = Wo % nt;
    for (int oy = oy0; oy < oy1; ++oy) {
        const int iy0 = oy * L.sh;  // padded row of the receptive field's top
        const int ky0 = std::max(0, L.pt - iy0), ky1 = std::min(L.kh, L.pt + Hin - iy0);
        const float* xrow = in + int64_t(iy0) * ldrow;
        float* yrow = out + int64_t(oy) * ldo;
        for (int t = 0, ox = 0; t < nt; ++t) {
            const int cnt = base + (t < extra);
            const float* xp[MR];
            float* yp[MR];
            for (int m = 0; m < cnt; ++m) {
                xp[m] = xrow + int64_t(ox + m) * L.sw * L.Cin;
                yp[m] = yrow + int64_t(ox + m) * L.Cout + q0 * PW;
            }
            // ky0 >= ky1 (the receptive field is all padding) gives act(bias)
            conv_tile_cnt<PW, MR, NPN>(cnt, xp, ldrow, ky0, ky1, seg, Wq, pstride, bq, yp, nvalid, L.act);
            ox += cnt;
        }
    }
}

static RF_T void conv_rows(const PackedConv& L, const float* in, int Hin, int Win, float* out, int64_t ldo, int oy0,
                           int oy1) {
    if (L.PW == 16) {
        conv_rows_t<16, CMR16, 1>(L, 0, in, Hin, Win, out, ldo, oy0, oy1);
        return;
    }
    int q = 0;
    if (CONV_PAIR && L.P >= 2)
        for (; q + 2 <= L.P; q += 2) conv_rows_t<32, CMR64, 2>(L, q, in, Hin, Win, out, ldo, oy0, oy1);
    for (; q < L.P; ++q) conv_rows_t<32, CMR32, 1>(L, q, in, Hin, Win, out, ldo, oy0, oy1);
}

// Zero the border of a padded Hin x Win x C image (the interior is written by the producer).
static RF_T void conv_zero_border(float* p, int Hin, int Win, int C, int pl, int pr, int pt, int pb) {
    const int Wp = Win + pl + pr;
    const size_t row = size_t(Wp) * C;
    if (pt) std::memset(p, 0, sizeof(float) * row * pt);
    if (pb) std::memset(p + row * size_t(pt + Hin), 0, sizeof(float) * row * pb);
    if (pl || pr)
        for (int y = pt; y < pt + Hin; ++y) {
            float* r = p + row * y;
            if (pl) std::memset(r, 0, sizeof(float) * size_t(pl) * C);
            if (pr) std::memset(r + size_t(pl + Win) * C, 0, sizeof(float) * size_t(pr) * C);
        }
}

// d[0:n] = s[0:n] (times scale when has_scale: s * scale, as torch computes x * scale); returns
// false when s holds a NaN or inf (s * 0 is 0 for every finite s, NaN otherwise: one extra
// multiply-add per vector, no second pass over the image).
static RF_T bool copy_row_f32(const float* s, float* d, size_t n, bool has_scale, float scale) {
    const reg z = V::zero(), sc = V::set1(scale);
    reg acc = z;
    size_t i = 0;
    for (; i + V::W <= n; i += V::W) {
        const reg x = V::load(s + i);
        acc = V::fmadd(x, z, acc);
        V::store(d + i, has_scale ? V::mul(x, sc) : x);
    }
    float t = 0.0f;
    for (; i < n; ++i) {
        t += s[i] * 0.0f;
        d[i] = has_scale ? s[i] * scale : s[i];
    }
    t += hsum_store(acc);
    return t == t;
}

// False when x[0:n] holds a NaN or inf (the test copy_row_f32 applies, without the copy).
static RF_T bool all_finite_f32(const float* x, size_t n) {
    const reg z = V::zero();
    reg acc = z;
    size_t i = 0;
    for (; i + V::W <= n; i += V::W) acc = V::fmadd(V::load(x + i), z, acc);
    float t = 0.0f;
    for (; i < n; ++i) t += x[i] * 0.0f;
    t += hsum_store(acc);
    return t == t;
}

// One image [H, W, C] (contiguous HWC; float32 or uint8) into the interior of a padded buffer,
// times `scale` (when has_scale): float(x) * scale, the order torch computes x.float() * scale.
// Returns false when a float32 image holds a NaN or inf (uint8 images are always finite).
static RF_T bool conv_load_image(const void* src, bool u8, float scale, bool has_scale, float* dst, int H, int W,
                                 int C, int pl, int pr, int pt, int pb) {
    conv_zero_border(dst, H, W, C, pl, pr, pt, pb);
    const size_t row = size_t(W + pl + pr) * C, n = size_t(W) * C;
    bool finite = true;
    for (int y = 0; y < H; ++y) {
        float* d = dst + row * (pt + y) + size_t(pl) * C;
        if (u8) {
            const uint8_t* s = static_cast<const uint8_t*>(src) + n * y;
            if (has_scale) for (size_t i = 0; i < n; ++i) d[i] = float(s[i]) * scale;
            else for (size_t i = 0; i < n; ++i) d[i] = float(s[i]);
        } else {
            finite &= copy_row_f32(static_cast<const float*>(src) + n * y, d, n, has_scale, scale);
        }
    }
    return finite;
}

// Where an image enters a conv chain and how: the observation row (u8 or float32, HWC) and the
// scale applied to it.
struct ConvSrc {
    const void* x = nullptr;
    bool u8 = false;
    bool has_scale = false;
    float scale = 1.0f;
};

// Floats of one ping-pong buffer for a chain of n layers over H x W images.
static inline size_t conv_chain_floats(const PackedConv* Ls, int n, int H, int W) {
    size_t m = 1;
    for (int l = 0; l < n; ++l) {
        const PackedConv& L = Ls[l];
        m = std::max(m, size_t(H + L.pt + L.pb) * size_t(W + L.pl + L.pr) * size_t(L.Cin));
        const int h2 = L.out_h(H), w2 = L.out_w(W);
        H = h2; W = w2;
    }
    return m;
}

// Multiply-accumulates of one layer at this input size (for the intra-image split decision).
static inline double conv_macs(const PackedConv& L, int H, int W) {
    return double(L.out_h(H)) * L.out_w(W) * L.K * L.Cout;
}

// The chain of n layers (sizes checked by the caller: every output non-empty) over one image;
// writes its last layer's output (HWC) to y. bufA/bufB: conv_chain_floats each. split: spread
// the output rows of large layers over the thread pool (the caller is not itself a pool job).
// check: test a float32 image for NaN / inf while it is loaded (returns false if it holds one;
// the chain still runs). Returns true otherwise.
static RF_T bool conv_chain_image(const PackedConv* Ls, int n, int H, int W, const ConvSrc& src, float* y, float* bufA,
                                  float* bufB, bool split, bool check = false) {
    const float* in = nullptr;
    bool finite = true;
    {
        const PackedConv& L0 = Ls[0];
        if (!src.u8 && !src.has_scale && !(L0.pl | L0.pr | L0.pt | L0.pb)) {
            in = static_cast<const float*>(src.x);
            if (check) finite = all_finite_f32(in, size_t(H) * W * L0.Cin);
        } else {
            finite = conv_load_image(src.x, src.u8, src.scale, src.has_scale, bufA, H, W, L0.Cin, L0.pl, L0.pr, L0.pt,
                                     L0.pb) || !check;
            in = bufA;
        }
    }
    float* nxt = bufB;
    for (int l = 0; l < n; ++l) {
        const PackedConv& L = Ls[l];
        const int Ho = L.out_h(H), Wo = L.out_w(W);
        float* out;
        int64_t ldo;
        if (l + 1 < n) {
            const PackedConv& N = Ls[l + 1];
            conv_zero_border(nxt, Ho, Wo, L.Cout, N.pl, N.pr, N.pt, N.pb);
            ldo = int64_t(Wo + N.pl + N.pr) * L.Cout;
            out = nxt + N.pt * ldo + int64_t(N.pl) * L.Cout;
        } else {
            out = y;
            ldo = int64_t(Wo) * L.Cout;
        }
        const int T = split ? ThreadPool::get().threads() : 1;
        if (T > 1 && Ho > 1 && conv_macs(L, H, W) >= 4e5) {
            const int nb = std::min(Ho, 2 * T);
            ThreadPool::get().run(nb, [&](int b) {
                conv_rows(L, in, H, W, out, ldo, int(int64_t(Ho) * b / nb), int(int64_t(Ho) * (b + 1) / nb));
            });
        } else {
            conv_rows(L, in, H, W, out, ldo, 0, Ho);
        }
        if (l + 1 < n) {
            in = nxt;
            nxt = (nxt == bufB) ? bufA : bufB;
        }
        H = Ho; W = Wo;
    }
    return finite;
}

// The chain over a batch: image b at x + b * ldx elements (uint8 or float32), output row b at
// y + b * ldy. Images are spread over the thread pool, each taken through every layer by one
// thread (no barrier between layers); with fewer images than threads, each image's large layers
// are split by output rows instead. check: float32 images are tested for NaN / inf as they are
// loaded (in parallel); returns the lowest such image's index, or -1 (also when not checking).
static RF_T int64_t conv_chain_forward_checked(const PackedConv* Ls, int n, int H, int W, const void* x, bool u8,
                                               int64_t ldx, int B, bool has_scale, float scale, float* y, int64_t ldy,
                                               bool check) {
    if (B <= 0 || n <= 0) return -1;
    check = check && !u8;
    const size_t nf = conv_chain_floats(Ls, n, H, W);
    const int T = ThreadPool::get().threads();
    auto image = [&](int b, float* bufA, float* bufB, bool split) {
        ConvSrc s;
        s.u8 = u8;
        s.x = u8 ? static_cast<const void*>(static_cast<const uint8_t*>(x) + int64_t(b) * ldx)
                 : static_cast<const void*>(static_cast<const float*>(x) + int64_t(b) * ldx);
        s.has_scale = has_scale;
        s.scale = scale;
        return conv_chain_image(Ls, n, H, W, s, y + int64_t(b) * ldy, bufA, bufB, split, check);
    };
    if (T <= 1 || B < T) {
        thread_local AlignedBuf scratch;
        scratch.resize(2 * nf);
        int64_t bad = -1;
        for (int b = 0; b < B; ++b)
            if (!image(b, scratch.p, scratch.p + nf, T > 1) && bad < 0) bad = b;
        return bad;
    }
    std::atomic<int64_t> bad{int64_t(B)};  // lowest bad image (B: none)
    ThreadPool::get().run(B, [&](int b) {
        thread_local AlignedBuf scratch;
        scratch.resize(2 * nf);
        if (!image(b, scratch.p, scratch.p + nf, false)) {
            int64_t cur = bad.load();
            while (b < cur && !bad.compare_exchange_weak(cur, b)) {}
        }
    });
    const int64_t r = bad.load();
    return r < B ? r : -1;
}

// conv_chain_forward_checked without the check (the one-shot conv op: NaN propagates, as in torch).
static RF_T void conv_chain_forward(const PackedConv* Ls, int n, int H, int W, const void* x, bool u8, int64_t ldx,
                                    int B, bool has_scale, float scale, float* y, int64_t ldy) {
    conv_chain_forward_checked(Ls, n, H, W, x, u8, ldx, B, has_scale, scale, y, ldy, false);
}

// The conv stage of an encoder (a ConvStack: the policy step's actor / critic stage, the DQN
// step's encoder stage) over the whole batch into feat [B, out_dim] (the caller's buffer,
// resized here): image b at obs_u8 (when not null) or obs, + b * ldobs elements. Images spread
// over the pool, or one image's rows when B is below the thread count. bad_row (when not null):
// float32 images are tested for NaN / inf while they are loaded (in parallel) and *bad_row is
// set to the lowest such image's index, or -1.
static RF_T const float* conv_stack_features(const ConvStack& S, const uint8_t* obs_u8, const float* obs,
                                             int64_t ldobs, int B, AlignedBuf& feat, int64_t* bad_row = nullptr) {
    const int64_t nf = S.out_dim();
    feat.resize(size_t(B) * nf);
    const bool u8 = obs_u8 != nullptr;
    const void* x = u8 ? static_cast<const void*>(obs_u8) : static_cast<const void*>(obs);
    const int64_t bad = conv_chain_forward_checked(S.layers.data(), int(S.layers.size()), S.H, S.W, x, u8, ldobs, B,
                                                   S.has_scale, S.scale, feat.p, nf, bad_row != nullptr);
    if (bad_row) *bad_row = bad;
    return feat.p;
}
