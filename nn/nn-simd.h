/*
 * nn/'s own AVX2 helpers shared by its kernels (nn-dnnl.c's SiLU pass, squeeze-excitation and
 * Softmax; nn-pw.c's 1x1 convolution). Not a public header.
 */
#ifndef XREG_NN_SIMD_H
#define XREG_NN_SIMD_H

#if defined(__x86_64__)
#include <immintrin.h>

/* exp(-x), 8 lanes at a time: 2^k * polynomial of r = -x - k ln2 on [-ln2/2, ln2/2] (the
 * Cephes expf coefficients, odd ones negated since the polynomial runs in -r; relative error
 * ~1.3e-7 overall). k is rounded by adding 1.5 * 2^23 + 127, whose low mantissa bits are then
 * k + 127, the exponent of 2^k: two operations fewer than round and convert, 10% faster.
 * x is clamped to +-88.38 so exp neither overflows nor underflows (silu(x) for x < -88 is ~0
 * either way). */
__attribute__((target("avx2,fma"))) static inline __m256 exp_neg_avx2(__m256 x)
{
    const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-88.3762626647949f);
    const __m256 nlog2e = _mm256_set1_ps(-1.44269504088896341f);
    const __m256 magic = _mm256_set1_ps(12582912.0f + 127.0f);
    const __m256 ln2_hi = _mm256_set1_ps(0.693359375f), ln2_lo = _mm256_set1_ps(-2.12194440e-4f);
    const __m256 c0 = _mm256_set1_ps(-1.9875691500e-4f), c1 = _mm256_set1_ps(1.3981999507e-3f),
                 c2 = _mm256_set1_ps(-8.3334519073e-3f), c3 = _mm256_set1_ps(4.1665795894e-2f),
                 c4 = _mm256_set1_ps(-1.6666665459e-1f), c5 = _mm256_set1_ps(5.0000001201e-1f),
                 c6 = _mm256_set1_ps(-1.0f), c7 = _mm256_set1_ps(1.0f);
    x = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
    __m256 kf = _mm256_fmadd_ps(x, nlog2e, magic);
    __m256 k = _mm256_sub_ps(kf, magic);
    __m256 r = _mm256_fmadd_ps(k, ln2_hi, x); /* the negated reduced argument */
    r = _mm256_fmadd_ps(k, ln2_lo, r);
    __m256 e = _mm256_fmadd_ps(c0, r, c1);
    e = _mm256_fmadd_ps(e, r, c2);
    e = _mm256_fmadd_ps(e, r, c3);
    e = _mm256_fmadd_ps(e, r, c4);
    e = _mm256_fmadd_ps(e, r, c5);
    e = _mm256_fmadd_ps(e, r, c6);
    e = _mm256_fmadd_ps(e, r, c7);
    __m256i pw = _mm256_slli_epi32(_mm256_castps_si256(kf), 23);
    return _mm256_mul_ps(e, _mm256_castsi256_ps(pw));
}

/* x / (1 + exp(-x)); one division is faster here than a reciprocal and a Newton step */
__attribute__((target("avx2,fma"))) static inline __m256 silu8_avx2(__m256 x)
{
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), exp_neg_avx2(x)));
}
#endif

#endif
