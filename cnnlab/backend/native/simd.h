/*
 * simd.h: the portable SIMD layer under every kernel body.
 *
 * A kernel body (loops_body.h, winograd_body.h, gemm_body.h) is written once against the
 * GCC/Clang vector extensions below and compiled once per level by a small translation unit
 * (loops_avx2.c, gemm_neon.c, ...) that defines CNNLAB_LEVEL_<NAME> and includes this file,
 * then the body, then simd_end.h. This file sets the level's target for every function that
 * follows (#pragma GCC target, or Clang's #pragma clang attribute), so the whole module is
 * built with the baseline flags and each level's code runs only where cpu.h says it can.
 *
 *   level      lanes (float32)  target                              where
 *   portable   4                the compiler's baseline (SSE2, NEON) any CPU
 *   avx2       8                avx2, fma                           x86-64 since Haswell/Zen
 *   avx512     16               avx512f/dq/bw/vl, fma               x86-64 Skylake-X, Zen 4/5
 *   neon       4                aarch64 baseline, with fused FMA    ARM64
 *
 * SIMD_COMPILED is 0 when the level does not exist on this architecture (avx2 on ARM); the
 * level's unit then compiles to nothing. Beyond the vector types, a level supplies only what
 * the extensions cannot say portably: a fused multiply-add (an intrinsic where the level has
 * one) and loads/stores of the first n lanes (masked on AVX2/AVX-512, a copy elsewhere).
 */
#ifndef CNNLAB_SIMD_H
#define CNNLAB_SIMD_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

#if defined(CNNLAB_LEVEL_AVX512) && CNNLAB_X86
#define SIMD_COMPILED 1
#define VL 16
#define LEVEL_SYMBOL(name) name##_avx512
#define LEVEL_NAME "avx512"
#if defined(CNNLAB_EMULATE_AVX512)
/* A test build only (.ci/native): the avx512 level on a CPU without AVX-512. SIMDe
 * (Debian's libsimde-dev) supplies the level's FMA from AVX2, the masked loads and stores
 * take the copy path and the compiler splits the 16-lane vectors, so the level's own code
 * (its tiles, remainders, masks) runs and is checked on any AVX2 machine; cpu.h then lets
 * AVX2 stand in for AVX-512. The vectors never cross a call (SIMD_INLINE), so GCC's note
 * that their ABI needs AVX-512 does not apply. */
#include <simde/x86/avx512.h>
#define FMA_512(a, b, c) simde_mm512_fmadd_ps((simde__m512)(a), (simde__m512)(b), (simde__m512)(c))
#pragma GCC diagnostic ignored "-Wpsabi"
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#else
#include <immintrin.h>
#define FMA_512(a, b, c) _mm512_fmadd_ps((__m512)(a), (__m512)(b), (__m512)(c))
#define MASKED_512 1  /* load_first/store_first with AVX-512's masked moves */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
#endif
#endif

#elif defined(CNNLAB_LEVEL_AVX2) && CNNLAB_X86
#include <immintrin.h>
#define SIMD_COMPILED 1
#define VL 8
#define LEVEL_SYMBOL(name) name##_avx2
#define LEVEL_NAME "avx2"
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#elif defined(CNNLAB_LEVEL_NEON) && CNNLAB_ARM64
#include <arm_neon.h>
#define SIMD_COMPILED 1
#define VL 4
#define LEVEL_SYMBOL(name) name##_neon
#define LEVEL_NAME "neon"

#elif defined(CNNLAB_LEVEL_PORTABLE)
#define SIMD_COMPILED 1
#define VL 4
#define LEVEL_SYMBOL(name) name##_portable
#define LEVEL_NAME "portable"

#else
#define SIMD_COMPILED 0
#endif

#if SIMD_COMPILED

typedef float vf __attribute__((vector_size(4 * VL)));
typedef int32_t vi __attribute__((vector_size(4 * VL)));     /* comparisons give -1 / 0 */
typedef unsigned char vb __attribute__((vector_size(VL)));  /* one byte per lane */

#define SIMD_INLINE static inline __attribute__((always_inline))

/* All lanes = x, as a vector literal (which both compilers turn into one broadcast). */
#if VL == 4
#define ALL_LANES(x) {x, x, x, x}
#elif VL == 8
#define ALL_LANES(x) {x, x, x, x, x, x, x, x}
#else
#define ALL_LANES(x) {x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}
#endif

SIMD_INLINE vf splat(float value) { return (vf)ALL_LANES(value); }
SIMD_INLINE vi splat_i(int32_t value) { return (vi)ALL_LANES(value); }

/* Unaligned loads and stores (memcpy: no aliasing or alignment assumptions; one move). */
SIMD_INLINE vf load(const float *p)
{
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

SIMD_INLINE void store(float *p, vf v) { memcpy(p, &v, sizeof v); }

/* mask ? a : b, lane by lane (mask lanes all ones or all zeros). */
SIMD_INLINE vf blend(vi mask, vf a, vf b) { return (vf)((mask & (vi)a) | (~mask & (vi)b)); }
SIMD_INLINE vi blend_i(vi mask, vi a, vi b) { return (mask & a) | (~mask & b); }

/* np.maximum's rule: a > b ? a : b, except that a NaN a wins (as maximum_f32 in loops_body.h). */
SIMD_INLINE vf maximum(vf a, vf b) { return blend(a != a, a, blend(a > b, a, b)); }

/* The lanes' sum as a tree (lane l + lane l + VL/2, ...): log2(VL) dependent adds, not VL - 1
 * (one call per conv-weight tap and plane of the fused conv's backward). */
SIMD_INLINE float sum_lanes(vf v)
{
    float lanes[VL];
    memcpy(lanes, &v, sizeof lanes);
    for (int width = VL / 2; width >= 1; width /= 2)
        for (int l = 0; l < width; l++)
            lanes[l] += lanes[l + width];
    return lanes[0];
}

/* a * b + c with one rounding where the level has FMA (AVX2, AVX-512, NEON); two otherwise. */
SIMD_INLINE vf fma_v(vf a, vf b, vf c)
{
#if VL == 16
    return (vf)FMA_512(a, b, c);
#elif VL == 8
    return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#elif defined(CNNLAB_LEVEL_NEON)
    return (vf)vfmaq_f32((float32x4_t)c, (float32x4_t)a, (float32x4_t)b);
#else
    return a * b + c;
#endif
}

/* n < size bytes (size: the smaller object's, a constant; at most 64) from src to dst in at
 * most six fixed-size copies: a memcpy of a variable size is a library call, once per row of a
 * pooled plane. The copies wider than the object are compiled out. */
SIMD_INLINE void copy_short(void *dst, const void *src, ptrdiff_t n, const size_t size)
{
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
#pragma GCC unroll 6
    for (size_t width = 32; width >= 1; width /= 2)
        if (size > width && (n & (ptrdiff_t)width)) {
            memcpy(d, s, width);
            d += width;
            s += width;
        }
}

/* Lanes l < n of p (n may be <= 0 or >= VL); the others are 0. Masked lanes are never read. */
SIMD_INLINE vf load_first(const float *p, ptrdiff_t n)
{
    if (n >= VL)
        return load(p);
    if (n <= 0)
        return splat(0.0f);
#if VL == 16 && defined(MASKED_512)
    return (vf)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1u), p);
#elif VL == 8
    vi lanes = {0, 1, 2, 3, 4, 5, 6, 7};
    return (vf)_mm256_maskload_ps(p, (__m256i)(lanes < splat_i((int32_t)n)));
#else
    vf v = splat(0.0f);
    copy_short(&v, p, n * (ptrdiff_t)sizeof(float), sizeof v);
    return v;
#endif
}

/* p[l] = v[l] for l < n only. */
SIMD_INLINE void store_first(float *p, ptrdiff_t n, vf v)
{
    if (n >= VL) {
        store(p, v);
        return;
    }
    if (n <= 0)
        return;
#if VL == 16 && defined(MASKED_512)
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1u), (__m512)v);
#elif VL == 8
    /* Not vmaskmovps: AMD cores (Zen 1-5) run its store form as microcode, tens of cycles
     * (it made the AVX2 Winograd transforms, whose tile rows end in partial vectors, ~2x
     * slower than needed). At most three plain stores: 4, 2, 1 lanes. */
    __m128 part = _mm256_castps256_ps128((__m256)v);
    if (n & 4) {
        _mm_storeu_ps(p, part);
        part = _mm256_extractf128_ps((__m256)v, 1);
        p += 4;
    }
    if (n & 2) {
        _mm_storel_pi((__m64 *)p, part);
        part = _mm_movehl_ps(part, part);
        p += 2;
    }
    if (n & 1)
        _mm_store_ss(p, part);
#else
    copy_short(p, &v, n * (ptrdiff_t)sizeof(float), sizeof v);
#endif
}

/* Bytes p[0 : n] as int32 lanes; lanes l >= n are `fill`. The widening and narrowing are
 * spelled with the x86 instructions (vpmovzxbd, vpmovdb, packus): GCC lowers
 * __builtin_convertvector between bytes and int32 to one lane extract/insert per lane. */
SIMD_INLINE vi load_bytes(const unsigned char *p, ptrdiff_t n, unsigned char fill)
{
#if VL == 16 && defined(MASKED_512)
    __mmask16 mask = n >= VL ? (__mmask16)0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1u);
    return (vi)_mm512_cvtepu8_epi32(_mm_mask_loadu_epi8(_mm_set1_epi8((char)fill), mask, p));
#else
    unsigned char bytes[16];
    if (n >= VL) {
        memcpy(bytes, p, VL);
    } else {
        memset(bytes, fill, VL);
        if (n > 0)
            copy_short(bytes, p, n, VL);
    }
#if VL == 8
    __m128i packed;
    memcpy(&packed, bytes, 8);
    return (vi)_mm256_cvtepu8_epi32(packed);
#else
    vb packed;
    memcpy(&packed, bytes, sizeof packed);
    return __builtin_convertvector(packed, vi);
#endif
#endif
}

/* p[l] = (unsigned char)v[l] for l < n (lanes hold 0..255). */
SIMD_INLINE void store_bytes(unsigned char *p, ptrdiff_t n, vi v)
{
#if VL == 16 && defined(MASKED_512)
    __mmask16 mask = n >= VL ? (__mmask16)0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1u);
    _mm512_mask_cvtepi32_storeu_epi8(p, mask, (__m512i)v);
#else
#if VL == 8
    __m128i words = _mm_packus_epi32(_mm256_castsi256_si128((__m256i)v),
                                      _mm256_extracti128_si256((__m256i)v, 1));
    __m128i packed = _mm_packus_epi16(words, words); /* bytes 0..7 */
#else
    vb packed = __builtin_convertvector(v, vb);
#endif
    if (n >= VL)
        memcpy(p, &packed, VL);
    else if (n > 0)
        copy_short(p, &packed, n, VL);
#endif
}

/* Lane shuffles: even/odd lanes of the 2 VL floats (lo, hi), and their inverse. */
#if VL == 4
#define EVEN_LANES 0, 2, 4, 6
#define ODD_LANES 1, 3, 5, 7
#define FIRST_PAIRS 0, 4, 1, 5
#define SECOND_PAIRS 2, 6, 3, 7
#elif VL == 8
#define EVEN_LANES 0, 2, 4, 6, 8, 10, 12, 14
#define ODD_LANES 1, 3, 5, 7, 9, 11, 13, 15
#define FIRST_PAIRS 0, 8, 1, 9, 2, 10, 3, 11
#define SECOND_PAIRS 4, 12, 5, 13, 6, 14, 7, 15
#else
#define EVEN_LANES 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30
#define ODD_LANES 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31
#define FIRST_PAIRS 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23
#define SECOND_PAIRS 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31
#endif

/* __builtin_shufflevector is Clang's and GCC's since 12; older GCC spells it __builtin_shuffle. */
#if defined(__clang__) || !defined(__GNUC__) || __GNUC__ >= 12
#define SHUFFLE2(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE2(a, b, ...) __builtin_shuffle(a, b, (vi){__VA_ARGS__})
#endif

/* (lo, hi) = x0 x1 x2 ... x_{2VL-1}  ->  even = x0 x2 ..., odd = x1 x3 ... */
SIMD_INLINE void deinterleave(vf lo, vf hi, vf *even, vf *odd)
{
    *even = SHUFFLE2(lo, hi, EVEN_LANES);
    *odd = SHUFFLE2(lo, hi, ODD_LANES);
}

/* a, b  ->  first = a0 b0 a1 b1 ... (VL floats), second = the next VL */
SIMD_INLINE void interleave(vf a, vf b, vf *first, vf *second)
{
    *first = SHUFFLE2(a, b, FIRST_PAIRS);
    *second = SHUFFLE2(a, b, SECOND_PAIRS);
}

/* In-register transpose of a VL x VL block: r[i] holds row i on entry, column i on exit.
 * For 4 and 8 lanes, stage h swaps bit h of the row and column indices (the off-diagonal
 * h x h sub-blocks of every 2h x 2h block), so log2(VL) stages of two shuffles per pair of
 * rows; 16 lanes have their own sequence below. */
#define TRANSPOSE_STAGE(h, ...)                                                             \
    for (int i = 0; i < VL; i++)                                                            \
        if (!(i & (h))) {                                                                   \
            vf upper = r[i], lower = r[i + (h)];                                            \
            r[i] = SHUFFLE2(upper, lower, TRANSPOSE_UPPER_##h);                             \
            r[i + (h)] = SHUFFLE2(upper, lower, TRANSPOSE_LOWER_##h);                       \
        }
#if VL == 4
#define TRANSPOSE_UPPER_1 0, 4, 2, 6
#define TRANSPOSE_LOWER_1 1, 5, 3, 7
#define TRANSPOSE_UPPER_2 0, 1, 4, 5
#define TRANSPOSE_LOWER_2 2, 3, 6, 7
#elif VL == 8
#define TRANSPOSE_UPPER_1 0, 8, 2, 10, 4, 12, 6, 14
#define TRANSPOSE_LOWER_1 1, 9, 3, 11, 5, 13, 7, 15
#define TRANSPOSE_UPPER_2 0, 1, 8, 9, 4, 5, 12, 13
#define TRANSPOSE_LOWER_2 2, 3, 10, 11, 6, 7, 14, 15
#define TRANSPOSE_UPPER_4 0, 1, 2, 3, 8, 9, 10, 11
#define TRANSPOSE_LOWER_4 4, 5, 6, 7, 12, 13, 14, 15
#endif

#if VL == 16
/* 16 x 16: in-lane interleaves of floats, then of float pairs, then two rounds of 128-bit
 * block selects (each a single cheap x86 instruction: vunpcklps/vunpckhps,
 * vunpcklpd/vunpckhpd, vshuff32x4), as the AVX-512 intrinsics this code replaced; the
 * bit-swap stages need a two-source permute (vpermt2ps) in their first stage. */
SIMD_INLINE void transpose(vf r[VL])
{
    vf t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = SHUFFLE2(r[i], r[i + 1], 0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29);
        t[i + 1] = SHUFFLE2(r[i], r[i + 1], 2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = SHUFFLE2(t[i], t[i + 2], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
        r[i + 1] = SHUFFLE2(t[i], t[i + 2], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
        r[i + 2] = SHUFFLE2(t[i + 1], t[i + 3], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
        r[i + 3] = SHUFFLE2(t[i + 1], t[i + 3], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
    }
    /* r[4g + j] now holds, in 128-bit block L, rows 4g .. 4g + 3 of column 4L + j */
#define BLOCKS_02(a, b) SHUFFLE2(a, b, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27)
#define BLOCKS_13(a, b) SHUFFLE2(a, b, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31)
    for (int j = 0; j < 4; j++) {
        t[j] = BLOCKS_02(r[j], r[j + 4]);
        t[j + 4] = BLOCKS_13(r[j], r[j + 4]);
        t[j + 8] = BLOCKS_02(r[j + 8], r[j + 12]);
        t[j + 12] = BLOCKS_13(r[j + 8], r[j + 12]);
    }
    for (int j = 0; j < 4; j++) {
        r[j] = BLOCKS_02(t[j], t[j + 8]);
        r[j + 4] = BLOCKS_02(t[j + 4], t[j + 12]);
        r[j + 8] = BLOCKS_13(t[j], t[j + 8]);
        r[j + 12] = BLOCKS_13(t[j + 4], t[j + 12]);
    }
#undef BLOCKS_02
#undef BLOCKS_13
}
#else
SIMD_INLINE void transpose(vf r[VL])
{
    TRANSPOSE_STAGE(1)
    TRANSPOSE_STAGE(2)
#if VL >= 8
    TRANSPOSE_STAGE(4)
#endif
}
#endif

SIMD_INLINE ptrdiff_t clamp_lanes(ptrdiff_t n) { return n < 0 ? 0 : n > VL ? VL : n; }

#endif /* SIMD_COMPILED */
#endif /* CNNLAB_SIMD_H */
