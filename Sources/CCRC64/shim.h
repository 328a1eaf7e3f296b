#ifndef CAID_CCRC64_SHIM_H
#define CAID_CCRC64_SHIM_H

// CRC-64/XZ folded with carry-less multiplication (PCLMULQDQ), the method of Intel's white paper "Fast CRC
// Computation for Generic Polynomials Using PCLMULQDQ Instruction" (Gopal et al., 2009), in its bit-reflected form.
// The fold keeps the CRC's residue: 16 bytes of state that, followed by the bytes not folded, have the same CRC as
// the whole input. The table code in CRC64.swift takes those 16 bytes and the 0 to 15 bytes after the last whole block,
// so there is no Barrett reduction here.
//
// Constants, for the reflected ECMA-182 polynomial P: moving a 64-bit lane D bits further down the message
// multiplies its low half by reflect64(x^(D+63) mod P) and its high half by reflect64(x^(D-1) mod P). They were
// derived, and the fold checked against the bit-at-a-time CRC, by a model in Python; CRC64Tests checks this code
// against the table code for every length up to 1 KiB and every alignment.

#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>

/// 1 when this CPU has PCLMULQDQ (and SSE2), so that caid_crc64_fold may be called.
static inline int caid_crc64_fold_supported(void) {
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 0;
    return (ecx & bit_PCLMUL) != 0 && (edx & bit_SSE2) != 0;
}

__attribute__((target("pclmul,sse2")))
static inline __m128i caid_crc64_fold_lane(__m128i x, __m128i k, __m128i next) {
    return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11)), next);
}

/// Folds `blocks` 16-byte blocks at `data` (at least 4), the CRC register `crc` (not inverted: the table code's
/// state) taken as XORed into their first 8 bytes, into the 16 bytes `out`, whose CRC from a register of 0 is the
/// register after `data`. Only on a CPU for which caid_crc64_fold_supported() is 1.
__attribute__((target("pclmul,sse2")))
static inline void caid_crc64_fold(uint64_t crc, const uint8_t *data, size_t blocks, uint8_t *out) {
    const __m128i by64 = _mm_set_epi64x((long long)0x081f6054a7842df4ULL, (long long)0x6ae3efbb9dd441f3ULL);
    const __m128i by16 = _mm_set_epi64x((long long)0xdabe95afc7875f40ULL, (long long)0xe05dd497ca393ae4ULL);
    const __m128i *in = (const __m128i *)(const void *)data;
    __m128i a0 = _mm_xor_si128(_mm_loadu_si128(in), _mm_cvtsi64_si128((long long)crc));
    __m128i a1 = _mm_loadu_si128(in + 1), a2 = _mm_loadu_si128(in + 2), a3 = _mm_loadu_si128(in + 3);
    size_t i = 4;
    // Four lanes 64 bytes apart: four independent multiplications in flight.
    for (; i + 4 <= blocks; i += 4) {
        a0 = caid_crc64_fold_lane(a0, by64, _mm_loadu_si128(in + i));
        a1 = caid_crc64_fold_lane(a1, by64, _mm_loadu_si128(in + i + 1));
        a2 = caid_crc64_fold_lane(a2, by64, _mm_loadu_si128(in + i + 2));
        a3 = caid_crc64_fold_lane(a3, by64, _mm_loadu_si128(in + i + 3));
    }
    __m128i x = caid_crc64_fold_lane(a0, by16, a1);
    x = caid_crc64_fold_lane(x, by16, a2);
    x = caid_crc64_fold_lane(x, by16, a3);
    for (; i < blocks; i++) x = caid_crc64_fold_lane(x, by16, _mm_loadu_si128(in + i));
    _mm_storeu_si128((__m128i *)(void *)out, x);
}

#else
// Elsewhere the table code alone (caid's hosts are x86-64: Intel TDX).
static inline int caid_crc64_fold_supported(void) { return 0; }
static inline void caid_crc64_fold(uint64_t crc, const uint8_t *data, size_t blocks, uint8_t *out) {
    (void)crc; (void)data; (void)blocks; (void)out;
}
#endif

#endif
