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

static RF_AI RF_T reg vtanh(reg x) {
    reg a = V::min(V::set1(9.0f), V::abs(x));  // NaN-propagating order (see vexp)
    reg e = vexp(V::add(a, a));
    reg big = V::sub(V::set1(1.0f), V::div(V::set1(2.0f), V::add(e, V::set1(1.0f))));
    // |x| < 0.125: odd Taylor series (error < 1e-10), avoids the cancellation above
    reg a2 = V::mul(a, a);
    reg p = V::set1(-17.0f / 315.0f);
    p = V::fmadd(p, a2, V::set1(2.0f / 15.0f));
    p = V::fmadd(p, a2, V::set1(-1.0f / 3.0f));
    p = V::fmadd(V::mul(p, a2), a, a);
    reg t = V::select_gt(a, V::set1(0.125f), big, p);
    return V::xor_(t, V::signbit(x));
}

static RF_AI RF_T reg vsigmoid(reg x) {
    return V::div(V::set1(1.0f), V::add(V::set1(1.0f), vexp(V::sub(V::zero(), x))));
}

static RF_AI RF_T reg vact(reg x, int act) {
    switch (act) {
        case ACT_TANH: return vtanh(x);
        case ACT_RELU: return V::max(V::zero(), x);  // NaN-propagating order
        case ACT_SILU: return V::mul(x, vsigmoid(x));
        case ACT_ELU: return V::select_gt(x, V::zero(), x, V::sub(vexp(x), V::set1(1.0f)));
        default: return x;
    }
}

// In-place activation over n floats (n a multiple of V::W).
static RF_T void act_inplace(float* p, int n, int act) {
    if (act == ACT_LINEAR) return;
    for (int i = 0; i < n; i += V::W) V::store(p + i, vact(V::load(p + i), act));
}
