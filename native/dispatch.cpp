// Runtime CPU dispatch: one binary built for the baseline ISA picks the best
// kernel set at import time.  Compiled without any -m flags.
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "kernels.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif
#if defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

namespace ll {

namespace {

struct Features {
    bool avx2 = false, fma = false, f16c = false;
    bool avx512f = false, avx512bw = false, avx512vl = false, avx512vnni = false;
    bool neon = false, dotprod = false;
};

Features detect() {
    Features f;
#if defined(__x86_64__) || defined(_M_X64)
    // __builtin_cpu_supports also checks that the OS saves the wide registers.
    __builtin_cpu_init();
    f.avx2 = __builtin_cpu_supports("avx2");
    f.fma = __builtin_cpu_supports("fma");
    f.f16c = __builtin_cpu_supports("f16c");
    f.avx512f = __builtin_cpu_supports("avx512f");
    f.avx512bw = __builtin_cpu_supports("avx512bw");
    f.avx512vl = __builtin_cpu_supports("avx512vl");
    f.avx512vnni = __builtin_cpu_supports("avx512vnni");
#endif
#if defined(__aarch64__)
    f.neon = true;  // baseline on AArch64
#if defined(__linux__)
    f.dotprod = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__APPLE__)
    int v = 0;
    size_t len = sizeof(v);
    if (sysctlbyname("hw.optional.arm.FEAT_DotProd", &v, &len, nullptr, 0) == 0) f.dotprod = v != 0;
#endif
#endif
    return f;
}

const Features& features() {
    static const Features f = detect();
    return f;
}

typedef void (*register_fn)(KernelSet*);

struct IsaEntry {
    const char* name;
    bool (*supported)(const Features&);
    int lanes;  // KernelSet::lanes before registration (the x86 ones set their own)
    register_fn families[6];  // the ISA's families (kernels.h) in registration order, null after the last
};

const IsaEntry ISAS[] = {
#if defined(__x86_64__) || defined(_M_X64)
#if defined(LL_VNNI_EMULATED)  // test builds: avx512 objects built with SIMDe's VNNI, no AVX-512 instructions
    {"avx512", [](const Features& f) { return f.avx2 && f.fma && f.f16c; }, 16,
#else
    {"avx512", [](const Features& f) { return f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni && f.avx2 && f.fma && f.f16c; }, 16,
#endif
     {register_legacy_avx512, register_kquants_avx512, register_repack_avx512, register_tiles_avx512, register_lanes16_avx512, register_attn_avx512}},
    {"avx2", [](const Features& f) { return f.avx2 && f.fma && f.f16c; }, 16,
     {register_legacy_avx2, register_kquants_avx2, register_repack_avx2, register_tiles_avx2, register_lanes16_avx2, register_attn_avx2}},
#endif
#if defined(__aarch64__)
    {"dotprod", [](const Features& f) { return f.dotprod; }, 8, {register_legacy_dotprod, register_kquants_dotprod, register_attn_dotprod}},
    {"neon", [](const Features& f) { return f.neon; }, 8, {register_legacy_neon, register_kquants_neon, register_attn_neon}},
#endif
    {"scalar", [](const Features&) { return true; }, 16, {register_legacy_scalar, register_kquants_scalar, register_attn_scalar}},
};
constexpr int N_ISAS = sizeof(ISAS) / sizeof(ISAS[0]);

KernelSet g_sets[N_ISAS];
KernelSet g_scalar8, g_scalar16;  // the scalar reference at both lane widths
bool g_built[N_ISAS];
std::once_flag g_once;
const KernelSet* g_active = nullptr;

KernelSet scalar_set(int lanes) {
    KernelSet ks{};
    ks.lanes = lanes;
    register_legacy_scalar(&ks);
    register_kquants_scalar(&ks);
    register_attn_scalar(&ks);
    ks.name = "scalar";
    return ks;
}

void build_all() {
    g_scalar8 = scalar_set(8);
    g_scalar16 = scalar_set(16);
    for (int i = 0; i < N_ISAS; i++) {
        if (!ISAS[i].supported(features())) continue;
        KernelSet ks{};
        ks.lanes = ISAS[i].lanes;
        for (register_fn reg : ISAS[i].families)
            if (reg) reg(&ks);
        // Anything an ISA does not implement is served by the scalar reference
        // of the same lane width.
        const KernelSet& scalar = ks.lanes == 16 ? g_scalar16 : g_scalar8;
        for (int t = 0; t < TYPE_COUNT; t++) {
            if (!ks.dequant[t]) ks.dequant[t] = scalar.dequant[t];
            if (!ks.dot[t]) ks.dot[t] = scalar.dot[t];
            if (!ks.quant_act[t]) ks.quant_act[t] = scalar.quant_act[t];
            if (!ks.attn[t]) ks.attn[t] = scalar.attn[t];
        }
        if (!ks.sum_words) ks.sum_words = scalar.sum_words;
        if (!ks.swiglu) ks.swiglu = scalar.swiglu;
        ks.name = ISAS[i].name;
        g_sets[i] = ks;
        g_built[i] = true;
    }
    const char* forced = std::getenv("LLAMALOCAL_ISA");
    if (forced && *forced) {
        for (int i = 0; i < N_ISAS; i++)
            if (g_built[i] && std::strcmp(ISAS[i].name, forced) == 0) g_active = &g_sets[i];
        // An unknown or unsupported name is reported by the Python layer, which
        // checks it against available_isas(); here it simply leaves the best path.
    }
    if (!g_active) {
        for (int i = 0; i < N_ISAS && !g_active; i++)
            if (g_built[i]) g_active = &g_sets[i];
    }
}

void ensure_built() { std::call_once(g_once, build_all); }

}  // namespace

const KernelSet& scalar_kernels(int lanes) {
    ensure_built();
    return lanes == 16 ? g_scalar16 : g_scalar8;
}

int available_isas(const char** names, int max_names) {
    ensure_built();
    int n = 0;
    for (int i = 0; i < N_ISAS && n < max_names; i++)
        if (g_built[i]) names[n++] = ISAS[i].name;
    return n;
}

const KernelSet* kernels_for_isa(const char* name) {
    ensure_built();
    for (int i = 0; i < N_ISAS; i++)
        if (g_built[i] && std::strcmp(ISAS[i].name, name) == 0) return &g_sets[i];
    return nullptr;
}

const KernelSet& active_kernels() {
    ensure_built();
    return *__atomic_load_n(&g_active, __ATOMIC_ACQUIRE);
}

bool set_active_isa(const char* name) {
    const KernelSet* ks = kernels_for_isa(name);
    if (!ks) return false;
    __atomic_store_n(&g_active, ks, __ATOMIC_RELEASE);
    return true;
}

int cpu_features(const char** names, bool* flags, int max) {
    const Features& f = features();
    const struct { const char* n; bool v; } all[] = {
        {"avx2", f.avx2}, {"fma", f.fma}, {"f16c", f.f16c}, {"avx512f", f.avx512f}, {"avx512bw", f.avx512bw},
        {"avx512vl", f.avx512vl}, {"avx512vnni", f.avx512vnni}, {"neon", f.neon}, {"dotprod", f.dotprod},
    };
    int n = 0;
    for (const auto& e : all) {
        if (n >= max) break;
        names[n] = e.n;
        flags[n] = e.v;
        n++;
    }
    return n;
}

}  // namespace ll
