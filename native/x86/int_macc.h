// Integer multiply-accumulates of the x86 kernels, into 8 int32 lanes:
//   MAC_U8S8(acc, u, s):   acc + the sum of the 4 products u8(u) * s8(s) of each lane's bytes
//   MADD16_ACC(acc, a, b): acc + the sum of the 2 products s16(a) * s16(b) of each lane's halves
// The avx512 build has them in one instruction each (VPDPBUSD, VPDPWSSD); the
// avx2 build composes them, exactly as long as VPMADDUBSW's int16 pair sums
// cannot saturate, which holds for u <= 127.  Both builds run the same
// 256-bit code otherwise (ggml_vec_dot.h), so these are the only AVX-512
// instructions in it.
#pragma once

#include <immintrin.h>

#if defined(LL_VNNI_EMULATED)
// Test builds only (tests/native/build.sh --emulate-avx512): SIMDe's portable
// VPDPBUSD / VPDPWSSD, so the avx512 build's code runs, and is checked against
// the scalar reference, on CPUs without AVX-512.
#include <simde/x86/avx512/dpbusd.h>
#include <simde/x86/avx512/dpwssd.h>
#define MAC_U8S8(acc, u, s) simde_mm256_dpbusd_epi32((acc), (u), (s))
#define MADD16_ACC(acc, a, b) simde_mm256_dpwssd_epi32((acc), (a), (b))
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define MAC_U8S8(acc, u, s) _mm256_dpbusd_epi32((acc), (u), (s))
#define MADD16_ACC(acc, a, b) _mm256_dpwssd_epi32((acc), (a), (b))
#else
#define MAC_U8S8(acc, u, s) _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)), _mm256_set1_epi16(1)))
#define MADD16_ACC(acc, a, b) _mm256_add_epi32((acc), _mm256_madd_epi16((a), (b)))
#endif
