/*
 * nn/'s own AVX2 helpers shared by its kernels (nn-dnnl.c's SiLU pass, squeeze-excitation and
 * Softmax). Not a public header.
 */
#ifndef XREG_NN_SIMD_H
#define XREG_NN_SIMD_H

#if defined(__x86_64__)
#include <immintrin.h>

/* exp(-x), 8 lanes at a time: 2^k * p(-r), r = x + k ln2, -r in [-ln2/2, ln2/2]. p is a
 * degree-5 polynomial fitted to exp there for least maximum relative error with p(0) = 1
 * (tools/fit-exp.py; odd coefficients negated since it runs in r). One ln2 in float is
 * enough: its 1.9e-9 error times |k| stays at float precision for the |x| < 17 where exp(-x)
 * matters next to 1. k is rounded by adding 1.5 * 2^23 + 127, whose low mantissa bits are then
 * k + 127, the exponent of 2^k. SiLU's relative error over [-90, 90] is 3.5e-7; it takes 0.28
 * ns per element on one thread, 0.42 with Cephes' degree-7 form, ln2 in two parts, round and
 * convert. x is clamped to +-88.38 so exp neither overflows nor underflows (silu(x) for
 * x < -88 is ~0 either way). */
__attribute__((target("avx2,fma"))) static inline __m256 exp_neg_avx2(__m256 x)
{
    const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-88.3762626647949f);
    const __m256 nlog2e = _mm256_set1_ps(-1.44269504088896341f);
    const __m256 magic = _mm256_set1_ps(12582912.0f + 127.0f);
    const __m256 ln2 = _mm256_set1_ps(0.693147180559945f);
    const __m256 c5 = _mm256_set1_ps(-0.008290302939713001f),
                 c4 = _mm256_set1_ps(0.04189792275428772f),
                 c3 = _mm256_set1_ps(-0.1666763573884964f),
                 c2 = _mm256_set1_ps(0.4999915063381195f),
                 c1 = _mm256_set1_ps(-0.9999997019767761f), c0 = _mm256_set1_ps(1.0f);
    x = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
    __m256 kf = _mm256_fmadd_ps(x, nlog2e, magic);
    __m256 r = _mm256_fmadd_ps(_mm256_sub_ps(kf, magic), ln2, x);
    __m256 e = _mm256_fmadd_ps(c5, r, c4);
    e = _mm256_fmadd_ps(e, r, c3);
    e = _mm256_fmadd_ps(e, r, c2);
    e = _mm256_fmadd_ps(e, r, c1);
    e = _mm256_fmadd_ps(e, r, c0);
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
