// Conv2d filters packed for the NHWC implicit-GEMM kernel (conv.h), and a stack of them (the CNN
// stage of the policy step). ISA-independent, torch-free.
//
// Shape legend: H, W input image (unpadded), C = Cin channels, Hp = H + pt + pb, Wp = W + pl + pr
// padded input, Ho, Wo output, Cout filters, kh, kw kernel, sh, sw stride.
//
// The GEMM view: M = output pixels, N = Cout, K = kh * kw * Cin with k = (ky * kw + kx) * Cin + ci,
// the order in which an NHWC image stores a receptive field: for one ky, the kw * Cin inputs of
// a pixel are contiguous, so the K loop is kh contiguous segments per output pixel.
#pragma once
#include "common.h"

namespace rf {

struct PackedConv {
    int Cin = 0, Cout = 0, kh = 0, kw = 0, sh = 1, sw = 1;
    int pl = 0, pr = 0, pt = 0, pb = 0;  // zero padding (nn.ZeroPad2d order: left, right, top, bottom)
    int act = ACT_LINEAR;
    int PW = 32;  // panel width: 16 when Cout <= 16 (a 32-wide panel would be half zeros), else 32
    int P = 0, K = 0;
    AlignedBuf w, b;  // w: P panels of [K][PW] (zero past Cout); b: P * PW (zero past Cout)

    void init(int Cin_, int Cout_, int kh_, int kw_) {
        Cin = Cin_; Cout = Cout_; kh = kh_; kw = kw_;
        PW = Cout <= 16 ? 16 : 32;
        P = (Cout + PW - 1) / PW;
        K = kh * kw * Cin;
        w.resize(size_t(P) * K * PW);
        b.resize(size_t(P) * PW);
        std::memset(w.p, 0, sizeof(float) * size_t(P) * K * PW);
        std::memset(b.p, 0, sizeof(float) * size_t(P) * PW);
    }
    // Weight in nn.Conv2d layout [Cout, Cin, kh, kw], element strides s[0..3] (in floats).
    void put_weight(const float* W, const int64_t* s) {
        for (int co = 0; co < Cout; ++co) {
            float* dst = w.p + size_t(co / PW) * K * PW + co % PW;
            for (int ky = 0; ky < kh; ++ky)
                for (int kx = 0; kx < kw; ++kx)
                    for (int ci = 0; ci < Cin; ++ci)
                        dst[size_t((ky * kw + kx) * Cin + ci) * PW] = W[co * s[0] + ci * s[1] + ky * s[2] + kx * s[3]];
        }
    }
    void put_bias(const float* bias, int64_t stride) {
        if (bias) for (int co = 0; co < Cout; ++co) b.p[co] = bias[co * stride];
    }
    // Output size for an H x W input (0 when the padded input is smaller than the kernel).
    int out_h(int H) const { return H + pt + pb < kh ? 0 : (H + pt + pb - kh) / sh + 1; }
    int out_w(int W) const { return W + pl + pr < kw ? 0 : (W + pl + pr - kw) / sw + 1; }
    size_t nbytes() const { return sizeof(float) * (w.n + b.n); }
};

// A chain of conv layers over one fixed image size; layer l reads layer l-1's output. The last
// layer's output row (Ho * Wo * Cout floats, HWC order) is the stack's feature row.
struct ConvStack {
    std::vector<PackedConv> layers;
    int H = 0, W = 0, C = 0;
    bool has_scale = false;  // the image is multiplied by `scale` first (float(x) * scale for uint8)
    float scale = 1.0f;
    std::vector<int> hin, win;  // input size of each layer (unpadded); hin.back() etc. of the output: ho, wo
    int ho = 0, wo = 0;
    // Computes the per-layer sizes; false when a layer's output would be empty.
    bool plan(int H_, int W_, int C_) {
        H = H_; W = W_; C = C_;
        hin.clear(); win.clear();
        int h = H, w_ = W;
        for (auto& L : layers) {
            hin.push_back(h); win.push_back(w_);
            const int oh = L.out_h(h), ow = L.out_w(w_);
            if (oh < 1 || ow < 1) return false;
            h = oh; w_ = ow;
        }
        ho = h; wo = w_;
        return true;
    }
    int in_dim() const { return H * W * C; }
    int out_dim() const { return layers.empty() ? in_dim() : ho * wo * layers.back().Cout; }
    // Floats of one padded layer-input buffer, the largest over layers 1.. (layer 0 reads the
    // observation, padded into this buffer too when it needs padding or conversion).
    size_t pad_floats() const {
        size_t m = 0;
        for (size_t l = 0; l < layers.size(); ++l) {
            const PackedConv& L = layers[l];
            m = std::max(m, size_t(hin[l] + L.pt + L.pb) * size_t(win[l] + L.pl + L.pr) * size_t(L.Cin));
        }
        return m;
    }
    size_t nbytes() const {
        size_t s = 0;
        for (auto& l : layers) s += l.nbytes();
        return s;
    }
};

}  // namespace rf
