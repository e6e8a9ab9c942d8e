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
