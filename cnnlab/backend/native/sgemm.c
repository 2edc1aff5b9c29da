/*
 * _sgemm: float32 GEMM with an AVX-512 micro-kernel.
 *
 *   gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, accumulate,
 *        count=1, stride_a=0, stride_b=0, stride_c=0, threads=1)
 *       C[m x n] (+)= op(A)[m x k] @ op(B)[k x n], all row-major float32;
 *       count > 1: a stack of such products; threads > 1: split over threads.
 *   avx512() -> bool
 *
 * Structure (GotoBLAS / BLIS):
 *   for jc in N step NC:              packed B block (KC x NC), in L2
 *     for pc in K step KC:            pack op(B)[pc:pc+kc, jc:jc+nc]
 *       for ic in M step MC:          packed A block (MC x KC), in L2
 *         pack op(A)[ic:ic+mc, pc:pc+kc]
 *         for jr in nc step NR:       one B micro-panel (KC x NR) stays in L1
 *           for ir in mc step MR:     micro-kernel: C[MR x NR] tile, which
 *                                     also prefetches the next blocks' source
 *
 * Unlike BLIS, NC is small (the B block sits in L2, not L3): the CNN GEMMs
 * have m <= ~300, so a packed B block is reused by only 1-2 MC blocks and
 * the cost that matters is streaming op(A)/op(B) from memory, which the
 * in-kernel prefetching (see pf_region) overlaps with the FMAs.
 *
 * The packing routines absorb both transposition cases, so the micro-kernel
 * only ever sees unit-stride packed panels.  The micro-kernel keeps an
 * MR x NR = 12 x 32 tile of C in 24 zmm registers (two per row), loads two
 * B vectors and broadcasts one A value per row per k step.
 *
 * The AVX-512 code is compiled with per-function target attributes so the
 * module builds with plain -O3; availability is checked at run time.
 * No NumPy headers: operands come in through the buffer protocol.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SGEMM_X86 1
#include <immintrin.h>
#include <pthread.h>
#else
#define SGEMM_X86 0
#endif

/* Micro-tile shape.  MR must be <= 16 (A packing uses 16-lane masked
 * stores); NR is fixed at 32 = two zmm vectors per C row. */
#ifndef SGEMM_MR
#define SGEMM_MR 12
#endif
#define MR SGEMM_MR
#define NR 32

/* Default cache blocking (tunable at run time through _set_blocking);
 * measured on Zen5 (48 KiB L1d, 1 MiB L2).
 * KC: k depth of a block; split evenly, so K <= KC is one block (the
 *     CNN's K = 289 must not become 256 + 33).  The B micro-panel
 *     (128*KC bytes) is then 36-40 KiB and lives in L1.
 * MC: the MC x KC packed A block (~180 KiB) lives in L2.
 * NC: small on purpose.  The KC x NC packed B block (~320 KiB) *and* the
 *     prefetched source of the next B block must both fit in L2; with
 *     NC = 512-4096 the forward/dW GEMMs were 10-15% slower. */
#ifndef SGEMM_KC
#define SGEMM_KC 320
#endif
#ifndef SGEMM_MC
#define SGEMM_MC 144
#endif
#ifndef SGEMM_NC
#define SGEMM_NC 256
#endif

static Py_ssize_t g_kc = SGEMM_KC, g_mc = SGEMM_MC, g_nc = SGEMM_NC;

#if SGEMM_X86

#define AVX512_TARGET __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma")))
#define AVX512_INLINE static inline __attribute__((always_inline)) AVX512_TARGET

/* ------------------------------------------------------------------------ */
/* Software prefetch of the next block                                      */
/* ------------------------------------------------------------------------ */

/*
 * The layer-shaped GEMMs stream 4-16 MB operands from DRAM/L3.  Left to
 * the hardware prefetchers, the packing loops run at memory latency and do
 * not overlap with the compute-bound micro-kernels (packing was ~30% of the
 * forward GEMM).  So while the kernels work on the current packed blocks,
 * they also prefetch the source rows of the *next* A and B blocks, one
 * cache line per k step (in the FMA shadow; bursts of prefetches stall on
 * the miss buffers).  The next packing pass then reads from L1/L2.
 * A pf_region walks a rows x row_bytes sub-matrix line by line.
 */
typedef struct {
    const char *base;
    Py_ssize_t rows, row_bytes, ld_bytes; /* region: rows x row_bytes, stride ld_bytes */
    Py_ssize_t r;                         /* cursor: current row ... */
    const char *line, *end;               /* ... and next / past-the-end line of it */
    Py_ssize_t per_call;                  /* lines each kernel call should issue */
} pf_region;

static void pf_init(pf_region *g, const float *base, Py_ssize_t rows, Py_ssize_t cols,
                    Py_ssize_t ld, Py_ssize_t calls)
{
    g->base = (const char *)base;
    g->rows = base ? rows : 0;
    g->row_bytes = cols * (Py_ssize_t)sizeof(float);
    g->ld_bytes = ld * (Py_ssize_t)sizeof(float);
    g->r = -1;
    g->line = g->end = NULL;
    /* Upper bound on lines (rows need not be 64-byte aligned).  Ask for
     * twice the even share so the region is done well before the block
     * ends, leaving room for the other region (B is walked before A). */
    Py_ssize_t lines = g->rows * (g->row_bytes / 64 + 2);
    g->per_call = calls > 0 ? 2 * lines / calls + 1 : lines;
}

/* Prefetch the region's next line; returns 0 once it is exhausted. */
static inline __attribute__((always_inline)) int pf_one(pf_region *g)
{
    if (g->line >= g->end) {
        if (++g->r >= g->rows)
            return 0;
        const char *start = g->base + g->r * g->ld_bytes;
        g->line = (const char *)((uintptr_t)start & ~(uintptr_t)63);
        g->end = start + g->row_bytes;
    }
    _mm_prefetch(g->line, _MM_HINT_T0);
    g->line += 64;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Micro-kernel                                                             */
/* ------------------------------------------------------------------------ */

/*
 * C[mr x (16*nv)] (+)= Apanel[mr x kc] @ Bpanel[kc x 16*nv]
 *   pa: packed A, MR floats per k step (rows >= mr are padding).
 *   pb: packed B, NR floats per k step, 64-byte aligned.
 *   m0/m1: column masks for the two C vectors (n edge).
 *   pfr/npf: prefetch up to npf lines of pfr during the k loop (may be NULL).
 * mr and nv are compile-time constants in every instantiation, so the
 * accumulator arrays are fully unrolled into registers.
 */
AVX512_INLINE void ukernel(const int mr, const int nv, Py_ssize_t kc,
                           const float *restrict pa, const float *restrict pb,
                           float *restrict c, Py_ssize_t ldc,
                           __mmask16 m0, __mmask16 m1, int acc,
                           pf_region *pfr, Py_ssize_t npf)
{
    __m512 c0[MR], c1[MR];

#pragma GCC unroll 16
    for (int i = 0; i < mr; i++) {
        c0[i] = _mm512_setzero_ps();
        if (nv == 2)
            c1[i] = _mm512_setzero_ps();
    }

    /* Pull the C tile towards L1 while the k loop runs, so the final
     * read-modify-write does not stall on it.  Prefetches never fault. */
#pragma GCC unroll 16
    for (int i = 0; i < mr; i++) {
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + i * ldc + 16 * nv - 1), _MM_HINT_T0);
    }

    /* k-step body, used by both loops below. */
#define KSTEP()                                                              \
    do {                                                                     \
        __m512 b0 = _mm512_load_ps(pb);                                      \
        __m512 b1 = nv == 2 ? _mm512_load_ps(pb + 16) : b0;                  \
        _Pragma("GCC unroll 16") for (int i = 0; i < mr; i++)                \
        {                                                                    \
            __m512 a = _mm512_set1_ps(pa[i]);                                \
            c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);                           \
            if (nv == 2)                                                     \
                c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);                       \
        }                                                                    \
        pa += MR;                                                            \
        pb += NR;                                                            \
    } while (0)

    Py_ssize_t p = 0;
    if (pfr) {
        /* Local copy: keeps the cursor in registers (C stores may alias). */
        pf_region g = *pfr;
        Py_ssize_t np = npf < kc ? npf : kc;
        for (; p < np && pf_one(&g); p++)
            KSTEP();
        *pfr = g;
    }
#pragma GCC unroll 4
    for (; p < kc; p++)
        KSTEP();
#undef KSTEP

#pragma GCC unroll 16
    for (int i = 0; i < mr; i++) {
        float *cr = c + i * ldc;
        if (acc)
            c0[i] = _mm512_add_ps(c0[i], _mm512_maskz_loadu_ps(m0, cr));
        _mm512_mask_storeu_ps(cr, m0, c0[i]);
        if (nv == 2) {
            if (acc)
                c1[i] = _mm512_add_ps(c1[i], _mm512_maskz_loadu_ps(m1, cr + 16));
            _mm512_mask_storeu_ps(cr + 16, m1, c1[i]);
        }
    }
}

typedef void (*ukr_fn)(Py_ssize_t, const float *, const float *, float *,
                       Py_ssize_t, __mmask16, __mmask16, int, pf_region *, Py_ssize_t);

/* One out-of-line instantiation per (rows, vectors) so edge tiles run a
 * kernel that does only the work they need. */
#define DEF_UKR(R, V)                                                        \
    static AVX512_TARGET void ukr_##R##_##V(                                 \
        Py_ssize_t kc, const float *pa, const float *pb, float *c,           \
        Py_ssize_t ldc, __mmask16 m0, __mmask16 m1, int acc, pf_region *pfr, \
        Py_ssize_t npf)                                                      \
    {                                                                        \
        ukernel(R, V, kc, pa, pb, c, ldc, m0, m1, acc, pfr, npf);            \
    }
#define DEF_UKR2(R) DEF_UKR(R, 1) DEF_UKR(R, 2)
DEF_UKR2(1) DEF_UKR2(2) DEF_UKR2(3) DEF_UKR2(4) DEF_UKR2(5) DEF_UKR2(6)
DEF_UKR2(7) DEF_UKR2(8)
#if MR >= 9
DEF_UKR2(9)
#endif
#if MR >= 10
DEF_UKR2(10)
#endif
#if MR >= 11
DEF_UKR2(11)
#endif
#if MR >= 12
DEF_UKR2(12)
#endif
#if MR >= 13
DEF_UKR2(13)
#endif
#if MR >= 14
DEF_UKR2(14)
#endif
#if MR > 14
#error "MR > 14 does not fit the register file with NR = 32"
#endif

#define UKR_ROW(R) {ukr_##R##_1, ukr_##R##_2}
static const ukr_fn ukr_table[MR + 1][2] = {
    {NULL, NULL}, UKR_ROW(1), UKR_ROW(2), UKR_ROW(3), UKR_ROW(4), UKR_ROW(5),
    UKR_ROW(6), UKR_ROW(7), UKR_ROW(8),
#if MR >= 9
    UKR_ROW(9),
#endif
#if MR >= 10
    UKR_ROW(10),
#endif
#if MR >= 11
    UKR_ROW(11),
#endif
#if MR >= 12
    UKR_ROW(12),
#endif
#if MR >= 13
    UKR_ROW(13),
#endif
#if MR >= 14
    UKR_ROW(14),
#endif
};

/* ------------------------------------------------------------------------ */
/* Packing                                                                  */
/* ------------------------------------------------------------------------ */

static inline __mmask16 lane_mask(Py_ssize_t n)
{
    return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u);
}

/* In-register 16x16 transpose: r[i] holds row i on entry, column i on exit. */
AVX512_INLINE void transpose16(__m512 r[16])
{
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    }
    /* r[4g + j] now holds, in 128-bit lane L, rows 4g..4g+3 of column 4L+j. */
    for (int j = 0; j < 4; j++) {
        t[j] = _mm512_shuffle_f32x4(r[j], r[j + 4], 0x88);
        t[j + 4] = _mm512_shuffle_f32x4(r[j], r[j + 4], 0xdd);
        t[j + 8] = _mm512_shuffle_f32x4(r[j + 8], r[j + 12], 0x88);
        t[j + 12] = _mm512_shuffle_f32x4(r[j + 8], r[j + 12], 0xdd);
    }
    for (int j = 0; j < 4; j++) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
        r[j + 4] = _mm512_shuffle_f32x4(t[j + 4], t[j + 12], 0x88);
        r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
        r[j + 12] = _mm512_shuffle_f32x4(t[j + 4], t[j + 12], 0xdd);
    }
}

/*
 * Load `rows` (<= 16) rows of `kw` (<= 16) contiguous floats starting at
 * src (row stride ld), transpose, and store column q (q < kw) as 16 lanes
 * under `smask` at dst + q * dstride.  Missing rows/columns read as zero,
 * which is what pads the packed panels.
 */
AVX512_INLINE void transpose_block(const float *src, Py_ssize_t ld, int rows,
                                   int kw, float *dst, Py_ssize_t dstride,
                                   __mmask16 smask)
{
    __m512 r[16];
    __mmask16 km = lane_mask(kw);
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++)
        r[i] = i < rows ? _mm512_maskz_loadu_ps(km, src + i * ld) : _mm512_setzero_ps();
    transpose16(r);
    if (kw == 16) {
#pragma GCC unroll 16
        for (int q = 0; q < 16; q++)
            _mm512_mask_storeu_ps(dst + q * dstride, smask, r[q]);
    } else {
        for (int q = 0; q < kw; q++)
            _mm512_mask_storeu_ps(dst + q * dstride, smask, r[q]);
    }
}

/*
 * Pack op(A)[0:mc, 0:kc] (a points at its top-left element) into MR-row
 * micro-panels: panel t holds rows t*MR.., laid out dst[p*MR + i].
 */
static AVX512_TARGET void pack_a(int trans, Py_ssize_t mc, Py_ssize_t kc,
                                 const float *a, Py_ssize_t lda, float *dst)
{
    const __mmask16 full = lane_mask(MR);
    for (Py_ssize_t i0 = 0; i0 < mc; i0 += MR) {
        int mr = (int)(mc - i0 < MR ? mc - i0 : MR);
        if (trans) {
            /* A stored k x m: each k step is a contiguous run of mr values. */
            const float *src = a + i0;
            __mmask16 lm = lane_mask(mr);
            for (Py_ssize_t p = 0; p < kc; p++)
                _mm512_mask_storeu_ps(dst + p * MR, full,
                                      _mm512_maskz_loadu_ps(lm, src + p * lda));
        } else {
            /* A stored m x k: rows are contiguous in k, so transpose. */
            const float *src = a + i0 * lda;
            for (Py_ssize_t p0 = 0; p0 < kc; p0 += 16) {
                int kw = (int)(kc - p0 < 16 ? kc - p0 : 16);
                transpose_block(src + p0, lda, mr, kw, dst + p0 * MR, MR, full);
            }
        }
        dst += MR * kc;
    }
}

/*
 * Pack op(B)[0:kc, 0:nc] (b points at its top-left element) into NR-column
 * micro-panels laid out dst[p*NR + j], zero-padded to NR columns.
 */
static AVX512_TARGET void pack_b(int trans, Py_ssize_t kc, Py_ssize_t nc,
                                 const float *b, Py_ssize_t ldb, float *dst)
{
    if (!trans) {
        /* B stored k x n: walk each source row left to right across all
         * panels, so memory is read sequentially (hardware prefetchers
         * follow it; panel-by-panel order would be kc strided streams). */
        Py_ssize_t nfull = nc / NR * NR, rem = nc - nfull;
        __mmask16 m0 = lane_mask(rem), m1 = lane_mask(rem > 16 ? rem - 16 : 0);
        for (Py_ssize_t p = 0; p < kc; p++) {
            const float *src = b + p * ldb;
            float *d = dst + p * NR;
            Py_ssize_t j0 = 0;
            for (; j0 < nfull; j0 += NR, d += NR * kc) {
                _mm512_store_ps(d, _mm512_loadu_ps(src + j0));
                _mm512_store_ps(d + 16, _mm512_loadu_ps(src + j0 + 16));
            }
            if (rem) {
                _mm512_store_ps(d, _mm512_maskz_loadu_ps(m0, src + j0));
                _mm512_store_ps(d + 16, _mm512_maskz_loadu_ps(m1, src + j0 + 16));
            }
        }
        return;
    }
    /* B stored n x k: rows are contiguous in k, so transpose each panel in
     * two 16-row halves (16 sequential streams at a time). */
    for (Py_ssize_t j0 = 0; j0 < nc; j0 += NR) {
        Py_ssize_t nr = nc - j0 < NR ? nc - j0 : NR;
        for (int h = 0; h < 2; h++) {
            Py_ssize_t rows = nr - 16 * h;
            rows = rows < 0 ? 0 : rows > 16 ? 16 : rows;
            const float *src = b + (j0 + 16 * h) * ldb;
            float *d = dst + 16 * h;
            if (rows == 0) {
                for (Py_ssize_t p = 0; p < kc; p++)
                    _mm512_store_ps(d + p * NR, _mm512_setzero_ps());
                continue;
            }
            for (Py_ssize_t p0 = 0; p0 < kc; p0 += 16) {
                int kw = (int)(kc - p0 < 16 ? kc - p0 : 16);
                if (rows == 16) /* constant row count: loads fully unrolled */
                    transpose_block(src + p0, ldb, 16, kw, d + p0 * NR, NR, 0xFFFF);
                else
                    transpose_block(src + p0, ldb, (int)rows, kw, d + p0 * NR, NR, 0xFFFF);
            }
        }
        dst += NR * kc;
    }
}

/* ------------------------------------------------------------------------ */
/* Scratch buffers                                                          */
/* ------------------------------------------------------------------------ */

/* Per-thread packing buffers, kept between calls: allocating (and page
 * faulting) megabytes on every call would cost a noticeable fraction of a
 * layer-sized GEMM.  Thread-local so concurrent calls from several Python
 * threads (the GIL is released) never share them; freed at thread exit. */
typedef struct {
    float *a, *b;
    size_t acap, bcap; /* in floats */
} scratch_t;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static int scratch_key_ok = 0;

static void scratch_free(void *p)
{
    scratch_t *s = (scratch_t *)p;
    free(s->a);
    free(s->b);
    free(s);
}

static void scratch_init(void)
{
    scratch_key_ok = pthread_key_create(&scratch_key, scratch_free) == 0;
}

static int ensure_buf(float **buf, size_t *cap, size_t need)
{
    if (*cap >= need)
        return 0;
    /* aligned_alloc wants a size that is a multiple of the alignment. */
    size_t bytes = (need * sizeof(float) + 63) & ~(size_t)63;
    float *p = (float *)aligned_alloc(64, bytes);
    if (!p)
        return -1;
    free(*buf);
    *buf = p;
    *cap = need;
    return 0;
}

static scratch_t *get_scratch(size_t aneed, size_t bneed)
{
    pthread_once(&scratch_once, scratch_init);
    if (!scratch_key_ok)
        return NULL;
    scratch_t *s = (scratch_t *)pthread_getspecific(scratch_key);
    if (!s) {
        s = (scratch_t *)calloc(1, sizeof(*s));
        if (!s || pthread_setspecific(scratch_key, s) != 0) {
            free(s);
            return NULL;
        }
    }
    if (ensure_buf(&s->a, &s->acap, aneed) || ensure_buf(&s->b, &s->bcap, bneed))
        return NULL;
    return s;
}

/* ------------------------------------------------------------------------ */
/* Driver                                                                   */
/* ------------------------------------------------------------------------ */

/* Split `total` into ceil(total/max) near-equal blocks, each rounded up to
 * a multiple of `unit`, so no block is a sliver (e.g. K = 289 stays one
 * block of 289 instead of 256 + 33). */
static Py_ssize_t balanced_block(Py_ssize_t total, Py_ssize_t max, Py_ssize_t unit)
{
    if (total <= max)
        return total;
    Py_ssize_t nblk = (total + max - 1) / max;
    Py_ssize_t b = (total + nblk - 1) / nblk;
    b = (b + unit - 1) / unit * unit;
    return b;
}

/* Returns 0 on success, -1 if scratch memory could not be allocated. */
static AVX512_TARGET int sgemm_avx512(int ta, int tb, Py_ssize_t m, Py_ssize_t n,
                                      Py_ssize_t k, const float *A, Py_ssize_t lda,
                                      const float *B, Py_ssize_t ldb, float *C,
                                      Py_ssize_t ldc, int accumulate,
                                      Py_ssize_t KC, Py_ssize_t MC, Py_ssize_t NC)
{
    if (m == 0 || n == 0)
        return 0;
    if (k == 0) {
        if (!accumulate)
            for (Py_ssize_t i = 0; i < m; i++)
                memset(C + i * ldc, 0, (size_t)n * sizeof(float));
        return 0;
    }

    Py_ssize_t kcb = balanced_block(k, KC, 16);
    Py_ssize_t mcb = balanced_block(m, MC, MR);
    Py_ssize_t ncb = balanced_block(n, NC, NR);
    size_t aneed = (size_t)((mcb + MR - 1) / MR * MR) * (size_t)kcb;
    size_t bneed = (size_t)((ncb + NR - 1) / NR * NR) * (size_t)kcb;
    scratch_t *s = get_scratch(aneed, bneed);
    if (!s)
        return -1;
    float *pa = s->a, *pb = s->b;
    const Py_ssize_t tiles_m0 = ((m < mcb ? m : mcb) + MR - 1) / MR;

    for (Py_ssize_t jc = 0; jc < n; jc += ncb) {
        Py_ssize_t nc = n - jc < ncb ? n - jc : ncb;
        Py_ssize_t panels = (nc + NR - 1) / NR;
        for (Py_ssize_t pc = 0; pc < k; pc += kcb) {
            Py_ssize_t kc = k - pc < kcb ? k - pc : kcb;
            /* Later K blocks add onto the partial sums of earlier ones. */
            int acc = accumulate || pc > 0;
            pack_b(tb, kc, nc, tb ? B + jc * ldb + pc : B + pc * ldb + jc, ldb, pb);

            /* Next B block (pc + kcb, else jc + ncb), prefetched during the
             * first MC block's kernels. */
            pf_region pfb;
            {
                Py_ssize_t jn = jc, pn = pc + kcb;
                if (pn >= k) {
                    pn = 0;
                    jn = jc + ncb;
                }
                Py_ssize_t kn = k - pn < kcb ? k - pn : kcb, nn = n - jn < ncb ? n - jn : ncb;
                const float *src = jn >= n ? NULL : tb ? B + jn * ldb + pn : B + pn * ldb + jn;
                pf_init(&pfb, src, tb ? nn : kn, tb ? kn : nn, ldb, panels * tiles_m0);
            }

            for (Py_ssize_t ic = 0; ic < m; ic += mcb) {
                Py_ssize_t mc = m - ic < mcb ? m - ic : mcb;
                pack_a(ta, mc, kc, ta ? A + pc * lda + ic : A + ic * lda + pc, lda, pa);

                /* Next A block (ic + mcb, else pc + kcb, else jc + ncb),
                 * prefetched during this MC block's kernels. */
                pf_region pfa;
                {
                    Py_ssize_t in = ic + mcb, pn = pc, jn = jc;
                    if (in >= m) {
                        in = 0;
                        pn = pc + kcb;
                        if (pn >= k) {
                            pn = 0;
                            jn = jc + ncb;
                        }
                    }
                    Py_ssize_t kn = k - pn < kcb ? k - pn : kcb, mn = m - in < mcb ? m - in : mcb;
                    const float *src = jn >= n ? NULL : ta ? A + pn * lda + in : A + in * lda + pn;
                    pf_init(&pfa, src, ta ? kn : mn, ta ? mn : kn, lda,
                            panels * ((mc + MR - 1) / MR));
                }

                for (Py_ssize_t jr = 0; jr < nc; jr += NR) {
                    Py_ssize_t nr = nc - jr < NR ? nc - jr : NR;
                    int nv = nr > 16 ? 2 : 1; /* a ragged panel of <= 16 needs one vector */
                    __mmask16 m0 = lane_mask(nr);
                    __mmask16 m1 = lane_mask(nr > 16 ? nr - 16 : 0);
                    float *cp = C + ic * ldc + jc + jr;
                    for (Py_ssize_t ir = 0; ir < mc; ir += MR) {
                        int mr = (int)(mc - ir < MR ? mc - ir : MR);
                        pf_region *pfr = pfb.r < pfb.rows ? &pfb : pfa.r < pfa.rows ? &pfa : NULL;
                        ukr_table[mr][nv - 1](kc, pa + ir * kc, pb + jr * kc, cp + ir * ldc,
                                              ldc, m0, m1, acc, pfr, pfr ? pfr->per_call : 0);
                    }
                }
            }
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* A small pool of worker threads for split GEMMs                           */
/* ------------------------------------------------------------------------ */

/* Creating a thread per call costs ~45 us, as much as a whole mid-sized product; these
 * workers start once, spin briefly after each round, then sleep on a condition variable. One split GEMM uses
 * the pool at a time: a caller that finds it busy (another Python thread's product) runs
 * its product on its own thread instead. After fork() the child starts a new pool. */
typedef void *(*task_fn)(void *);

static pthread_mutex_t pool_busy = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_wake = PTHREAD_COND_INITIALIZER;
static pthread_cond_t pool_done = PTHREAD_COND_INITIALIZER;
static int pool_started = 0;             /* workers running: ids 1 .. pool_started */
static unsigned long pool_generation = 0; /* one more per round (atomic) */
static task_fn pool_task = NULL;
static char *pool_args = NULL;
static size_t pool_arg_size = 0;
static int pool_tasks = 0;               /* this round: tasks 1 .. pool_tasks - 1 are the workers' */
static int pool_remaining = 0;           /* workers' tasks not yet finished (atomic) */
static pthread_once_t pool_fork_once = PTHREAD_ONCE_INIT;

static void pool_after_fork_in_child(void)
{
    pthread_mutex_init(&pool_busy, NULL);
    pthread_mutex_init(&pool_lock, NULL);
    pthread_cond_init(&pool_wake, NULL);
    pthread_cond_init(&pool_done, NULL);
    pool_started = 0;
}

static void pool_register_fork(void) { pthread_atfork(NULL, NULL, pool_after_fork_in_child); }

/* Pause-loop iterations a worker (or the caller) spins before sleeping (~50 us): a forward
 * or backward pass asks for products a few tens of microseconds apart, and a sleeping
 * thread takes ~40 us to wake. */
#define POOL_SPIN 2000

static void *pool_worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    /* Started inside a round (under pool_lock, before its generation is published), so the
     * first generation it sees is that round's, whenever this thread gets to run. */
    unsigned long seen = 0;
    for (;;) {
        for (int spin = 0; spin < POOL_SPIN &&
                           __atomic_load_n(&pool_generation, __ATOMIC_ACQUIRE) == seen; spin++)
            _mm_pause();
        pthread_mutex_lock(&pool_lock);
        while (__atomic_load_n(&pool_generation, __ATOMIC_ACQUIRE) == seen)
            pthread_cond_wait(&pool_wake, &pool_lock);
        seen = pool_generation;
        int mine = id < pool_tasks;
        task_fn task = pool_task;
        void *task_arg = pool_args + (size_t)id * pool_arg_size;
        pthread_mutex_unlock(&pool_lock);
        if (!mine)
            continue;
        task(task_arg);
        if (__atomic_sub_fetch(&pool_remaining, 1, __ATOMIC_ACQ_REL) == 0) {
            pthread_mutex_lock(&pool_lock);
            pthread_cond_signal(&pool_done);
            pthread_mutex_unlock(&pool_lock);
        }
    }
    return NULL;
}

/* Runs task(args[t]) for t < tasks: task 0 here, the others on the pool's workers (or
 * here too, one after another, when the pool is busy or a worker cannot be started). */
static void run_tasks(task_fn task, void *args, size_t arg_size, int tasks)
{
    char *base = (char *)args;
    if (tasks > 1 && pthread_mutex_trylock(&pool_busy) == 0) {
        pthread_once(&pool_fork_once, pool_register_fork);
        pthread_mutex_lock(&pool_lock);
        while (pool_started < tasks - 1) {
            pthread_t id;
            if (pthread_create(&id, NULL, pool_worker, (void *)(intptr_t)(pool_started + 1)) != 0)
                break;
            pthread_detach(id);
            pool_started++;
        }
        int pooled = pool_started + 1 < tasks ? pool_started + 1 : tasks;
        pool_task = task;
        pool_args = base;
        pool_arg_size = arg_size;
        pool_tasks = pooled;
        __atomic_store_n(&pool_remaining, pooled - 1, __ATOMIC_RELEASE);
        __atomic_store_n(&pool_generation, pool_generation + 1, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&pool_wake);
        pthread_mutex_unlock(&pool_lock);
        task(base);
        for (int t = pooled; t < tasks; t++)  /* workers that could not be started */
            task(base + (size_t)t * arg_size);
        for (int spin = 0; spin < POOL_SPIN && __atomic_load_n(&pool_remaining, __ATOMIC_ACQUIRE) > 0;
             spin++)
            _mm_pause();
        pthread_mutex_lock(&pool_lock);
        while (__atomic_load_n(&pool_remaining, __ATOMIC_ACQUIRE) > 0)
            pthread_cond_wait(&pool_done, &pool_lock);
        pthread_mutex_unlock(&pool_lock);
        pthread_mutex_unlock(&pool_busy);
        return;
    }
    for (int t = 0; t < tasks; t++)
        task(base + (size_t)t * arg_size);
}

/* One part of a GEMM split over threads (sgemm_split). */
typedef struct {
    int ta, tb, accumulate, rc;
    Py_ssize_t m, n, k, lda, ldb, ldc, KC, MC, NC;
    const float *A, *B;
    float *C;
} gemm_part;

static void *gemm_part_run(void *arg)
{
    gemm_part *p = (gemm_part *)arg;
    p->rc = sgemm_avx512(p->ta, p->tb, p->m, p->n, p->k, p->A, p->lda, p->B, p->ldb, p->C,
                         p->ldc, p->accumulate, p->KC, p->MC, p->NC);
    return NULL;
}

#define MAX_GEMM_THREADS 64

/* The GEMM split over `threads` threads (this one and threads - 1 new ones): by rows of C
 * when it has at least as many rows as columns, else by columns, in whole micro-tiles.
 * Each part is an independent GEMM on its own scratch (thread-local), so the result is
 * the same bits as one thread's: every C entry sums the same k terms in the same order. */
static int sgemm_split(int threads, int ta, int tb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                       const float *A, Py_ssize_t lda, const float *B, Py_ssize_t ldb, float *C,
                       Py_ssize_t ldc, int accumulate, Py_ssize_t KC, Py_ssize_t MC, Py_ssize_t NC)
{
    int by_rows = m >= n;
    Py_ssize_t extent = by_rows ? m : n, unit = by_rows ? MR : NR;
    Py_ssize_t units = (extent + unit - 1) / unit;
    if (threads > units)
        threads = (int)units;
    if (threads > MAX_GEMM_THREADS)
        threads = MAX_GEMM_THREADS;
    if (threads <= 1)
        return sgemm_avx512(ta, tb, m, n, k, A, lda, B, ldb, C, ldc, accumulate, KC, MC, NC);
    gemm_part parts[MAX_GEMM_THREADS];
    for (int t = 0; t < threads; t++) {
        Py_ssize_t first = units * t / threads * unit, last = units * (t + 1) / threads * unit;
        if (last > extent)
            last = extent;
        gemm_part *p = &parts[t];
        *p = (gemm_part){ta, tb, accumulate, 0, m, n, k, lda, ldb, ldc, KC, MC, NC, A, B, C};
        if (by_rows) {
            p->m = last - first;
            p->A = ta ? A + first : A + first * lda;
            p->C = C + first * ldc;
        } else {
            p->n = last - first;
            p->B = tb ? B + first * ldb : B + first;
            p->C = C + first;
        }
    }
    run_tasks(gemm_part_run, parts, sizeof(gemm_part), threads);
    for (int t = 0; t < threads; t++)
        if (parts[t].rc < 0)
            return -1;
    return 0;
}

/* A stack of `count` GEMMs, matrix i of each operand i strides in: one product split over
 * the threads (sgemm_split), or whole products shared out among them. */
typedef struct {
    gemm_part shape;  /* the first product; the others are strides away */
    Py_ssize_t first, last, stride_a, stride_b, stride_c;
    int rc;
} gemm_batch;

static void *gemm_batch_run(void *arg)
{
    gemm_batch *job = (gemm_batch *)arg;
    const gemm_part *p = &job->shape;
    job->rc = 0;
    for (Py_ssize_t i = job->first; i < job->last && job->rc >= 0; i++)
        job->rc = sgemm_avx512(p->ta, p->tb, p->m, p->n, p->k, p->A + i * job->stride_a, p->lda,
                               p->B + i * job->stride_b, p->ldb, p->C + i * job->stride_c, p->ldc,
                               p->accumulate, p->KC, p->MC, p->NC);
    return NULL;
}

static int sgemm_stack(int threads, const gemm_part *shape, Py_ssize_t count, Py_ssize_t stride_a,
                       Py_ssize_t stride_b, Py_ssize_t stride_c)
{
    if (count == 1)
        return sgemm_split(threads, shape->ta, shape->tb, shape->m, shape->n, shape->k, shape->A,
                           shape->lda, shape->B, shape->ldb, shape->C, shape->ldc,
                           shape->accumulate, shape->KC, shape->MC, shape->NC);
    if (threads > count)
        threads = (int)count;
    if (threads > MAX_GEMM_THREADS)
        threads = MAX_GEMM_THREADS;
    gemm_batch jobs[MAX_GEMM_THREADS];
    for (int t = 0; t < threads; t++)
        jobs[t] = (gemm_batch){*shape, count * t / threads, count * (t + 1) / threads,
                               stride_a, stride_b, stride_c, 0};
    run_tasks(gemm_batch_run, jobs, sizeof(gemm_batch), threads);
    for (int t = 0; t < threads; t++)
        if (jobs[t].rc < 0)
            return -1;
    return 0;
}

static int have_avx512(void)
{
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                 __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                 __builtin_cpu_supports("fma");
    }
    return cached;
}

#else /* !SGEMM_X86 */

static int have_avx512(void) { return 0; }

#endif

/* ------------------------------------------------------------------------ */
/* Python binding                                                           */
/* ------------------------------------------------------------------------ */

/* Acquire a C-contiguous float32 buffer ('f' in struct notation). */
static int get_f32_buffer(PyObject *obj, Py_buffer *view, int writable, const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    const char *f = view->format ? view->format : "B";
    if (*f == '@' || *f == '=' || *f == '<')
        f++;
    if (strcmp(f, "f") != 0 || view->itemsize != 4) {
        PyErr_Format(PyExc_ValueError, "%s must be a float32 buffer (got format '%s')",
                     name, view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Check that a rows x cols row-major matrix with leading dimension ld fits
 * in a buffer of `len` floats. */
static int check_matrix(const char *name, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t ld,
                        Py_ssize_t len)
{
    if (ld < (cols > 1 ? cols : 1)) {
        PyErr_Format(PyExc_ValueError, "%s: leading dimension %zd < %zd columns", name, ld, cols);
        return -1;
    }
    if (rows == 0 || cols == 0)
        return 0;
    /* need = (rows - 1) * ld + cols, computed without overflow */
    if (rows - 1 > (PY_SSIZE_T_MAX - cols) / ld) {
        PyErr_Format(PyExc_ValueError, "%s: dimensions overflow", name);
        return -1;
    }
    Py_ssize_t need = (rows - 1) * ld + cols;
    if (need > len) {
        PyErr_Format(PyExc_ValueError,
                     "%s: buffer holds %zd floats, %zd x %zd with ld=%zd needs %zd",
                     name, len, rows, cols, ld, need);
        return -1;
    }
    return 0;
}

static int overlaps(const Py_buffer *x, const Py_buffer *y)
{
    uintptr_t x0 = (uintptr_t)x->buf, y0 = (uintptr_t)y->buf;
    return x->len > 0 && y->len > 0 && x0 < y0 + (uintptr_t)y->len &&
           y0 < x0 + (uintptr_t)x->len;
}

PyDoc_STRVAR(gemm_doc,
"gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, accumulate,\n"
"     count=1, stride_a=0, stride_b=0, stride_c=0, threads=1) -> None\n\n"
"C[m x n] = op(A) @ op(B) (+ C if accumulate), float32, row-major.\n"
"With count > 1, that many products, matrix i of each operand starting i strides\n"
"(in floats) into its buffer (a batched GEMM; the c matrices must not overlap).\n"
"threads > 1 runs it on that many threads (the same bits as one): one product split\n"
"by rows or columns of C, or a stack shared out whole.\n"
"op(A) is A (m x k, stride lda) or, if trans_a, A^T with A stored k x m.\n"
"op(B) is B (k x n, stride ldb) or, if trans_b, B^T with B stored n x k.\n"
"a, b, c: C-contiguous float32 buffers (c writable, not overlapping a or b).\n"
"Releases the GIL while computing.");

static PyObject *py_gemm(PyObject *self, PyObject *args)
{
    int ta, tb, accumulate;
    Py_ssize_t m, n, k, lda, ldb, ldc;
    PyObject *ao, *bo, *co;
    Py_buffer av, bv, cv;
    (void)self;

    Py_ssize_t count = 1, stride_a = 0, stride_b = 0, stride_c = 0;
    int threads = 1;
    if (!PyArg_ParseTuple(args, "ppnnnOnOnOnp|nnnni:gemm", &ta, &tb, &m, &n, &k, &ao, &lda,
                          &bo, &ldb, &co, &ldc, &accumulate, &count, &stride_a, &stride_b,
                          &stride_c, &threads))
        return NULL;
    if (m < 0 || n < 0 || k < 0 || count < 1 || stride_a < 0 || stride_b < 0 || stride_c < 0) {
        PyErr_SetString(PyExc_ValueError, "gemm: m, n, k and the strides must be non-negative, "
                                          "count positive");
        return NULL;
    }
    if (!have_avx512()) {
        PyErr_SetString(PyExc_RuntimeError, "gemm: AVX-512 is not available on this CPU");
        return NULL;
    }
    if (get_f32_buffer(ao, &av, 0, "a") < 0)
        return NULL;
    if (get_f32_buffer(bo, &bv, 0, "b") < 0) {
        PyBuffer_Release(&av);
        return NULL;
    }
    if (get_f32_buffer(co, &cv, 1, "c") < 0) {
        PyBuffer_Release(&av);
        PyBuffer_Release(&bv);
        return NULL;
    }

    PyObject *ret = NULL;
    /* the last of the count matrices must fit: it starts (count - 1) strides in */
    if ((count > 1 && (stride_a > av.len / 4 || stride_b > bv.len / 4 || stride_c > cv.len / 4 ||
                       stride_c < ((m - 1) * ldc + n))) ||
        check_matrix("a", ta ? k : m, ta ? m : k, lda, av.len / 4 - (count - 1) * stride_a) < 0 ||
        check_matrix("b", tb ? n : k, tb ? k : n, ldb, bv.len / 4 - (count - 1) * stride_b) < 0 ||
        check_matrix("c", m, n, ldc, cv.len / 4 - (count - 1) * stride_c) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "gemm: the strides do not fit the buffers "
                                              "(or the c matrices overlap each other)");
        goto done;
    }
    if (m > 0 && n > 0 && (overlaps(&cv, &av) || overlaps(&cv, &bv))) {
        PyErr_SetString(PyExc_ValueError, "gemm: c must not overlap a or b");
        goto done;
    }

#if SGEMM_X86
    {
        int rc;
        Py_ssize_t KC = g_kc, MC = g_mc, NC = g_nc;
        Py_BEGIN_ALLOW_THREADS
        gemm_part shape = {ta, tb, accumulate, 0, m, n, k, lda, ldb, ldc, KC, MC, NC,
                           (const float *)av.buf, (const float *)bv.buf, (float *)cv.buf};
        rc = sgemm_stack(threads, &shape, count, stride_a, stride_b, stride_c);
        Py_END_ALLOW_THREADS
        if (rc < 0) {
            PyErr_NoMemory();
            goto done;
        }
    }
#endif
    Py_INCREF(Py_None);
    ret = Py_None;
done:
    PyBuffer_Release(&av);
    PyBuffer_Release(&bv);
    PyBuffer_Release(&cv);
    return ret;
}

static PyObject *py_avx512(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyBool_FromLong(have_avx512());
}

/* Tuning hook: change the cache blocking of subsequent calls. */
static PyObject *py_set_blocking(PyObject *self, PyObject *args)
{
    Py_ssize_t kc, mc, nc;
    (void)self;
    if (!PyArg_ParseTuple(args, "nnn:_set_blocking", &kc, &mc, &nc))
        return NULL;
    if (kc < 16 || mc < MR || nc < NR || kc > (1 << 16) || mc > (1 << 16) || nc > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "_set_blocking: out of range");
        return NULL;
    }
    g_kc = kc;
    g_mc = mc;
    g_nc = nc;
    Py_RETURN_NONE;
}

static PyObject *py_get_blocking(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return Py_BuildValue("{s:i,s:i,s:n,s:n,s:n}", "MR", MR, "NR", NR, "KC", g_kc, "MC",
                         g_mc, "NC", g_nc);
}

static PyMethodDef methods[] = {
    {"gemm", py_gemm, METH_VARARGS, gemm_doc},
    {"avx512", py_avx512, METH_NOARGS, "Whether the AVX-512 GEMM can run on this CPU."},
    {"_set_blocking", py_set_blocking, METH_VARARGS, "_set_blocking(kc, mc, nc): tuning hook."},
    {"_get_blocking", py_get_blocking, METH_NOARGS, "Current micro-tile and cache blocking."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "cnnlab._sgemm", "AVX-512 float32 GEMM (one thread, or split over a few).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__sgemm(void) { return PyModule_Create(&moduledef); }
