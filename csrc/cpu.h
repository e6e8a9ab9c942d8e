// Run-time choice of the instruction set. One build runs on any x86-64: the baseline (SSE2)
// kernels are always there; AVX2+FMA and AVX-512 variants are compiled with
// __attribute__((target(...))) and picked here by __builtin_cpu_supports. Torch-free.
#pragma once
#include <cstdlib>
#include <cstring>
#include <string>

namespace rf {

enum class Isa : int { SSE2 = 0, AVX2 = 1, AVX512 = 2 };

inline const char* isa_name(Isa i) {
    switch (i) {
        case Isa::AVX512: return "avx512";
        case Isa::AVX2: return "avx2";
        default: return "sse2";
    }
}

// Best ISA this CPU supports (AVX2 needs FMA too; AVX-512 needs F and DQ).
inline Isa detect_isa() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return Isa::AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::AVX2;
#endif
    return Isa::SSE2;
}

inline bool isa_supported(Isa i) { return static_cast<int>(i) <= static_cast<int>(detect_isa()); }

// Parses "sse2" | "avx2" | "avx512"; returns false for anything else.
inline bool parse_isa(const std::string& s, Isa* out) {
    if (s == "sse2") { *out = Isa::SSE2; return true; }
    if (s == "avx2") { *out = Isa::AVX2; return true; }
    if (s == "avx512") { *out = Isa::AVX512; return true; }
    return false;
}

}  // namespace rf
