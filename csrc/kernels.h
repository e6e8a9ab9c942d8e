// Instantiates the ISA bodies (vmath.h, mlp.h, rnn.h, policy.h) once per instruction set, each
// in its own namespace with its own target attribute, and exposes a table of entry points per
// ISA. cpu.h decides at run time which table runs. Torch-free.
#pragma once
#include "common.h"
#include "conv_pack.h"
#include "cpu.h"
#include "sampling.h"
#include "simd.h"
#include "threads.h"
#include "qnet_types.h"

namespace rf {

#define RF_ISA_LEVEL 0
#define RF_T RF_TARGET_SSE2
namespace sse2 {
using V = VSse2;
#include "vmath.h"
#include "mlp.h"
#include "rnn.h"
#include "conv.h"
#include "policy.h"
#include "qnet.h"
}  // namespace sse2
#undef RF_T
#undef RF_ISA_LEVEL

#define RF_ISA_LEVEL 1
#define RF_T RF_TARGET_AVX2
namespace avx2 {
using V = VAvx2;
#include "vmath.h"
#include "mlp.h"
#include "rnn.h"
#include "conv.h"
#include "policy.h"
#include "qnet.h"
}  // namespace avx2
#undef RF_T
#undef RF_ISA_LEVEL

#define RF_ISA_LEVEL 2
#define RF_T RF_TARGET_AVX512
namespace avx512 {
using V = VAvx512;
#include "vmath.h"
#include "mlp.h"
#include "rnn.h"
#include "conv.h"
#include "policy.h"
#include "qnet.h"
}  // namespace avx512
#undef RF_T
#undef RF_ISA_LEVEL

struct KernelTable {
    Isa isa;
    void (*mlp_forward)(const PackedMLP&, const float*, int64_t, int, float*, int64_t);
    void (*gemv_rowmajor)(const float*, const MatView&, const float*, int64_t, float*, int);
    void (*act_inplace)(float*, int, int);
    void (*rnn_forward)(const PackedRNN&, const float*, int64_t, int, const float*, int64_t, const float*,
                        int64_t, float*, int64_t, float*, int64_t);
    int64_t (*policy_step)(const PolicyNet&, const StepIO&);
    int64_t (*sample_gaussian)(const float*, int64_t, int, int, bool, uint64_t, uint64_t, float*, int64_t, float*);
    void (*conv_forward)(const PackedConv*, int, int, int, const void*, bool, int64_t, int, bool, float, float*, int64_t);
};

#define RF_TABLE(ns, tag)                                                                         \
    KernelTable {                                                                                 \
        tag, &ns::mlp_forward, &ns::gemv_rowmajor, &ns::act_inplace, &ns::rnn_forward,            \
            &ns::policy_step, &ns::gaussian_rows, &ns::conv_chain_forward                                                 \
    }

inline const KernelTable& kernel_table(Isa isa) {
    static const KernelTable t0 = RF_TABLE(sse2, Isa::SSE2);
    static const KernelTable t1 = RF_TABLE(avx2, Isa::AVX2);
    static const KernelTable t2 = RF_TABLE(avx512, Isa::AVX512);
    switch (isa) {
        case Isa::AVX512: return t2;
        case Isa::AVX2: return t1;
        default: return t0;
    }
}

}  // namespace rf
