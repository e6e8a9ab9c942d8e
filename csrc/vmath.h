// ISA BODY (no include guard): included once per ISA by kernels.h inside namespace rf::<isa>,
// with `V` the vector type (simd.h) and RF_T its target attribute. Vectorised exp, tanh,
// sigmoid and the activations, accurate to a few float32 ulps (absolute error < 1e-7 near 0).

using reg = typename V::reg;

static RF_AI RF_T reg vexp(reg x) {
    // operand order matters: min/max return their second operand when one is NaN, so x goes
    // second and NaN propagates (a NaN observation must reach the sampler's check)
    x = V::min(V::set1(88.0f), V::max(V::set1(-87.0f), x));
    reg fx = V::round(V::mul(x, V::set1(1.44269504088896341f)));
    reg r = V::fmadd(fx, V::set1(-0.693359375f), x);
    r = V::fmadd(fx, V::set1(2.12194440e-4f), r);
    reg y = V::set1(1.9875691500E-4f);
    y = V::fmadd(y, r, V::set1(1.3981999507E-3f));
    y = V::fmadd(y, r, V::set1(8.3334519073E-3f));
    y = V::fmadd(y, r, V::set1(4.1665795894E-2f));
    y = V::fmadd(y, r, V::set1(1.6666665459E-1f));
    y = V::fmadd(y, r, V::set1(5.0000001201E-1f));
    y = V::fmadd(y, V::mul(r, r), V::add(r, V::set1(1.0f)));
    return V::mul(y, V::pow2(fx));
}

// tanh as a 13/6 rational minimax approximation on [-7.9053, 7.9053] (the form Eigen uses):
// max abs error 3.4e-7, relative 2.6e-7 near 0, |tanh| <= 1; ~13 FMAs and one divide.
static RF_AI RF_T reg vtanh(reg x) {
    const float c = 7.90531110763549805f;
    x = V::min(V::set1(c), V::max(V::set1(-c), x));  // NaN-propagating order (see vexp)
    reg x2 = V::mul(x, x);
    reg p = V::set1(-2.76076847742355e-16f);
    p = V::fmadd(p, x2, V::set1(2.00018790482477e-13f));
    p = V::fmadd(p, x2, V::set1(-8.60467152213735e-11f));
    p = V::fmadd(p, x2, V::set1(5.12229709037114e-08f));
    p = V::fmadd(p, x2, V::set1(1.48572235717979e-05f));
    p = V::fmadd(p, x2, V::set1(6.37261928875436e-04f));
    p = V::fmadd(p, x2, V::set1(4.89352455891786e-03f));
    p = V::mul(p, x);
    reg q = V::set1(1.19825839466702e-06f);
    q = V::fmadd(q, x2, V::set1(1.18534705686654e-04f));
    q = V::fmadd(q, x2, V::set1(2.26843463243900e-03f));
    q = V::fmadd(q, x2, V::set1(4.89352518554385e-03f));
    return V::div(p, q);
}

// 1 / (1 + exp(-x)), exactly 0 where exp(-x) overflows (x < -88, as torch: the clamped exp
// would leave ~1e-38, and silu = x * sigmoid(x) would grow back to O(1) for x ~ -1e36).
// Select on the compare mask with x second, so a NaN x keeps its NaN.
static RF_AI RF_T reg vsigmoid(reg x) {
    reg s = V::div(V::set1(1.0f), V::add(V::set1(1.0f), vexp(V::sub(V::zero(), x))));
    return V::select_gt(V::set1(-88.0f), x, V::zero(), s);
}

// exp(x) - 1 without the cancellation near 0 (ELU's negative branch): for |x| < 0.35 the
// degree-8 Taylor polynomial of expm1 (truncation < 1e-9 relative), else vexp(x) - 1 (there
// |expm1(x)| > 0.29, so vexp's error of a few 1e-8 stays < ~4e-7 relative). NaN propagates
// (the compare is false, so the vexp branch, which keeps NaN, is taken); -inf gives -1.
static RF_AI RF_T reg vexpm1(reg x) {
    reg p = V::set1(1.0f / 40320.0f);
    p = V::fmadd(p, x, V::set1(1.0f / 5040.0f));
    p = V::fmadd(p, x, V::set1(1.0f / 720.0f));
    p = V::fmadd(p, x, V::set1(1.0f / 120.0f));
    p = V::fmadd(p, x, V::set1(1.0f / 24.0f));
    p = V::fmadd(p, x, V::set1(1.0f / 6.0f));
    p = V::fmadd(p, x, V::set1(0.5f));
    p = V::fmadd(V::mul(p, x), x, x);  // x + x^2 (1/2 + x/6 + ...)
    reg e = V::sub(vexp(x), V::set1(1.0f));
    return V::select_gt(V::set1(0.35f), V::abs(x), p, e);
}

static RF_AI RF_T reg vact(reg x, int act) {
    switch (act) {
        case ACT_TANH: return vtanh(x);
        case ACT_RELU: return V::max(V::zero(), x);  // NaN-propagating order
        case ACT_SILU: return V::mul(x, vsigmoid(x));  // x < -88: x * 0 = -0 (-inf: NaN, as torch)
        case ACT_ELU: return V::select_gt(x, V::zero(), x, vexpm1(x));  // expm1: exact near 0-
        default: return x;
    }
}

// In-place activation over n floats (n a multiple of V::W).
static RF_T void act_inplace(float* p, int n, int act) {
    if (act == ACT_LINEAR) return;
    for (int i = 0; i < n; i += V::W) V::store(p + i, vact(V::load(p + i), act));
}

// log(m * 2^e) for m in [1, 2] (Cephes logf: fold m > sqrt(2) to m / 2, then a degree-9
// polynomial in x = m - 1 in [-0.29, 0.42]); float accuracy. For Box-Muller's u1 only.
static RF_AI RF_T reg vlog_me(reg m, reg e) {
    const reg sqrt2 = V::set1(1.41421356237f);
    e = V::select_gt(m, sqrt2, V::add(e, V::set1(1.0f)), e);
    m = V::select_gt(m, sqrt2, V::mul(m, V::set1(0.5f)), m);
    const reg x = V::sub(m, V::set1(1.0f));
    const reg z = V::mul(x, x);
    reg y = V::set1(7.0376836292E-2f);
    y = V::fmadd(y, x, V::set1(-1.1514610310E-1f));
    y = V::fmadd(y, x, V::set1(1.1676998740E-1f));
    y = V::fmadd(y, x, V::set1(-1.2420140846E-1f));
    y = V::fmadd(y, x, V::set1(1.4249322787E-1f));
    y = V::fmadd(y, x, V::set1(-1.6668057665E-1f));
    y = V::fmadd(y, x, V::set1(2.0000714765E-1f));
    y = V::fmadd(y, x, V::set1(-2.4999993993E-1f));
    y = V::fmadd(y, x, V::set1(3.3333331174E-1f));
    y = V::mul(V::mul(y, x), z);
    y = V::fmadd(V::set1(-0.5f), z, y);
    return V::fmadd(e, V::set1(0.693147180559945f), V::add(x, y));
}

// Box-Muller's middle stage (sampling.h: bm_split / bm_rotate): for i < n (a multiple of W),
// rad = sqrt(-2 log(m[i] 2^e[i])), a = f[i] pi / 2; c[i] = rad cos(a), s[i] = rad sin(a).
// sin/cos from Cephes' [-pi/4, pi/4] polynomials at b = a - pi/4, rotated back by pi/4.
static RF_T void box_muller(const float* m, const float* e, const float* f, float* c, float* s, int n) {
    for (int i = 0; i < n; i += V::W) {
        reg l = vlog_me(V::load(m + i), V::load(e + i));
        reg rad = V::sqrt(V::max(V::zero(), V::mul(V::set1(-2.0f), l)));
        reg b = V::fmadd(V::load(f + i), V::set1(1.57079632679f), V::set1(-0.785398163397f));
        reg b2 = V::mul(b, b);
        reg sp = V::fmadd(V::fmadd(V::set1(-1.9515295891E-4f), b2, V::set1(8.3321608736E-3f)), b2,
                          V::set1(-1.6666654611E-1f));
        reg sb = V::fmadd(V::mul(sp, b2), b, b);
        reg cp = V::fmadd(V::fmadd(V::set1(2.443315711809948E-5f), b2, V::set1(-1.388731625493765E-3f)), b2,
                          V::set1(4.166664568298827E-2f));
        reg cb = V::fmadd(V::mul(cp, b2), b2, V::fmadd(V::set1(-0.5f), b2, V::set1(1.0f)));
        reg k = V::mul(rad, V::set1(0.70710678118654752f));
        V::store(c + i, V::mul(k, V::sub(cb, sb)));  // cos(b + pi/4) = (cos b - sin b) / sqrt 2
        V::store(s + i, V::mul(k, V::add(sb, cb)));  // sin(b + pi/4) = (sin b + cos b) / sqrt 2
    }
}
