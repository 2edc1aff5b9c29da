/*
 * gemm_level.h: one level of the float32 GEMM. gemm_<level>.c defines CNNLAB_LEVEL_<NAME> and
 * includes this file, which compiles the GEMM for that level's target (simd.h) and exports
 * its table, gemm_level_<name> (kernels.h).
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
 * Unlike BLIS, NC is small (the B block sits in L2, not L3): the CNN GEMMs have m <= ~300,
 * so a packed B block is reused by only 1-2 MC blocks and the cost that matters is streaming
 * op(A)/op(B) from memory, which the in-kernel prefetching (see pf_region) overlaps with the
 * FMAs. The packing routines absorb both transposition cases, so the micro-kernel only ever
 * sees unit-stride packed panels.
 *
 * The micro-kernel keeps an MR x NR tile of C in registers (NV vectors per row), loads NV
 * vectors of B and broadcasts one A value per row per k step. The tile is sized to each
 * level's register file: MR x NV accumulators + NV B vectors + 1 broadcast <= registers.
 *   avx512: 12 x 32 (24 + 2 + 1 of 32 zmm)     avx2: 6 x 16 (12 + 2 + 1 of 16 ymm)
 *   neon:    8 x 12 (24 + 3 + 1 of 32 q)       portable: 4 x 8 (8 + 2 + 1 of 16 xmm)
 */
#include "simd.h"

#if SIMD_COMPILED

#if VL == 16
#define MR 12
#define NV 2
#elif VL == 8
#define MR 6
#define NV 2
#elif defined(CNNLAB_LEVEL_NEON)
#define MR 8
#define NV 3
#else
#define MR 4
#define NV 2
#endif
#define NR (NV * VL)

#if defined(__clang__)
#define UNROLL_FULLY _Pragma("unroll")
#define UNROLL_4 _Pragma("unroll 4")
#else
#define UNROLL_FULLY _Pragma("GCC unroll 16")
#define UNROLL_4 _Pragma("GCC unroll 4")
#endif

/* ------------------------------------------------------------------------ */
/* Software prefetch of the next block                                      */
/* ------------------------------------------------------------------------ */

/*
 * The layer-shaped GEMMs stream 4-16 MB operands from DRAM/L3. Left to the hardware
 * prefetchers, the packing loops run at memory latency and do not overlap with the
 * compute-bound micro-kernels (packing was ~30% of the forward GEMM). So while the kernels
 * work on the current packed blocks, they also prefetch the source rows of the *next* A and
 * B blocks, one cache line per k step (in the FMA shadow; bursts of prefetches stall on the
 * miss buffers). The next packing pass then reads from L1/L2. A pf_region walks a
 * rows x row_bytes sub-matrix line by line.
 */
typedef struct {
    const char *base;
    ptrdiff_t rows, row_bytes, ld_bytes; /* region: rows x row_bytes, stride ld_bytes */
    ptrdiff_t r;                         /* cursor: current row ... */
    const char *line, *end;              /* ... and next / past-the-end line of it */
    ptrdiff_t per_call;                  /* lines each kernel call should issue */
} pf_region;

static void pf_init(pf_region *g, const float *base, ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t ld,
                    ptrdiff_t calls)
{
    g->base = (const char *)base;
    g->rows = base ? rows : 0;
    g->row_bytes = cols * (ptrdiff_t)sizeof(float);
    g->ld_bytes = ld * (ptrdiff_t)sizeof(float);
    g->r = -1;
    g->line = g->end = NULL;
    /* Upper bound on lines (rows need not be 64-byte aligned). Ask for twice the even share
     * so the region is done well before the block ends, leaving room for the other region
     * (B is walked before A). */
    ptrdiff_t lines = g->rows * (g->row_bytes / 64 + 2);
    g->per_call = calls > 0 ? 2 * lines / calls + 1 : lines;
}

/* Prefetch the region's next line; returns 0 once it is exhausted. */
SIMD_INLINE int pf_one(pf_region *g)
{
    if (g->line >= g->end) {
        if (++g->r >= g->rows)
            return 0;
        const char *start = g->base + g->r * g->ld_bytes;
        g->line = (const char *)((uintptr_t)start & ~(uintptr_t)63);
        g->end = start + g->row_bytes;
    }
    __builtin_prefetch(g->line, 0, 3);
    g->line += 64;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Micro-kernel                                                             */
/* ------------------------------------------------------------------------ */

/*
 * C[mr x nr] (+)= Apanel[mr x kc] @ Bpanel[kc x nr]
 *   pa: packed A, MR floats per k step (rows >= mr are padding).
 *   pb: packed B, NR floats per k step (columns >= nr are zero).
 *   pfr/npf: prefetch up to npf lines of pfr during the k loop (may be NULL).
 * mr and nv (the vectors of B per k step, nr <= nv VL) are compile-time constants in every
 * instantiation, so the accumulator array is fully unrolled into registers; a ragged nr
 * computes the nv VL columns that cover it and stores its first nr.
 */
SIMD_INLINE void ukernel(const int mr, const int nv, ptrdiff_t kc, const float *restrict pa,
                         const float *restrict pb, float *restrict c, ptrdiff_t ldc, ptrdiff_t nr,
                         int acc, pf_region *pfr, ptrdiff_t npf)
{
    vf sum[MR][NV];
    UNROLL_FULLY for (int i = 0; i < mr; i++)
        UNROLL_FULLY for (int v = 0; v < nv; v++)
            sum[i][v] = splat(0.0f);

    /* Pull the C tile towards L1 while the k loop runs, so the final read-modify-write does
     * not stall on it. Prefetches never fault. */
    UNROLL_FULLY for (int i = 0; i < mr; i++) {
        __builtin_prefetch(c + i * ldc, 1, 3);
        __builtin_prefetch(c + i * ldc + nr - 1, 1, 3);
    }

#define KSTEP()                                                                  \
    do {                                                                         \
        vf b[NV];                                                                \
        UNROLL_FULLY for (int v = 0; v < nv; v++) b[v] = load(pb + v * VL);      \
        UNROLL_FULLY for (int i = 0; i < mr; i++)                                \
        {                                                                        \
            vf a = splat(pa[i]);                                                 \
            UNROLL_FULLY for (int v = 0; v < nv; v++)                            \
                sum[i][v] = fma_v(a, b[v], sum[i][v]);                           \
        }                                                                        \
        pa += MR;                                                                \
        pb += NR;                                                                \
    } while (0)

    ptrdiff_t p = 0;
    if (pfr) {
        /* Local copy: keeps the cursor in registers (C stores may alias). */
        pf_region g = *pfr;
        ptrdiff_t np = npf < kc ? npf : kc;
        for (; p < np && pf_one(&g); p++)
            KSTEP();
        *pfr = g;
    }
    UNROLL_4 for (; p < kc; p++)
        KSTEP();
#undef KSTEP

    UNROLL_FULLY for (int i = 0; i < mr; i++) {
        float *row = c + i * ldc;
        if (nr == nv * VL) {
            UNROLL_FULLY for (int v = 0; v < nv; v++)
                store(row + v * VL, acc ? sum[i][v] + load(row + v * VL) : sum[i][v]);
        } else {
            for (int v = 0; v < nv; v++) {
                ptrdiff_t lanes = clamp_lanes(nr - v * VL);
                store_first(row + v * VL, lanes,
                            acc ? sum[i][v] + load_first(row + v * VL, lanes) : sum[i][v]);
            }
        }
    }
}

typedef void (*ukr_fn)(ptrdiff_t, const float *, const float *, float *, ptrdiff_t, ptrdiff_t,
                       int, pf_region *, ptrdiff_t);

/* One out-of-line instantiation per row count and vector count, so edge tiles (the last
 * rows of C, or a last panel of nr <= (NV - 1) VL columns, such as the n = 10 of a
 * classifier) do only the work they need. */
#define DEF_UKR(R, V)                                                                      \
    static void ukr_##R##_##V(ptrdiff_t kc, const float *pa, const float *pb, float *c,    \
                              ptrdiff_t ldc, ptrdiff_t nr, int acc, pf_region *pfr,        \
                              ptrdiff_t npf)                                               \
    {                                                                                      \
        ukernel(R, V, kc, pa, pb, c, ldc, nr, acc, pfr, npf);                              \
    }
#if NV == 2
#define DEF_UKR_ROWS(R) DEF_UKR(R, 1) DEF_UKR(R, 2)
#define UKR_ROW(R) {NULL, ukr_##R##_1, ukr_##R##_2}
#elif NV == 3
#define DEF_UKR_ROWS(R) DEF_UKR(R, 1) DEF_UKR(R, 2) DEF_UKR(R, 3)
#define UKR_ROW(R) {NULL, ukr_##R##_1, ukr_##R##_2, ukr_##R##_3}
#else
#error "gemm_level.h: DEF_UKR_ROWS needs a case for this NV"
#endif
DEF_UKR_ROWS(1) DEF_UKR_ROWS(2) DEF_UKR_ROWS(3) DEF_UKR_ROWS(4)
#if MR >= 6
DEF_UKR_ROWS(5) DEF_UKR_ROWS(6)
#endif
#if MR >= 8
DEF_UKR_ROWS(7) DEF_UKR_ROWS(8)
#endif
#if MR >= 12
DEF_UKR_ROWS(9) DEF_UKR_ROWS(10) DEF_UKR_ROWS(11) DEF_UKR_ROWS(12)
#endif

/* ukr_table[rows][vectors] */
static const ukr_fn ukr_table[MR + 1][NV + 1] = {
    {NULL}, UKR_ROW(1), UKR_ROW(2), UKR_ROW(3), UKR_ROW(4),
#if MR >= 6
    UKR_ROW(5), UKR_ROW(6),
#endif
#if MR >= 8
    UKR_ROW(7), UKR_ROW(8),
#endif
#if MR >= 12
    UKR_ROW(9), UKR_ROW(10), UKR_ROW(11), UKR_ROW(12),
#endif
};

/* ------------------------------------------------------------------------ */
/* Packing                                                                  */
/* ------------------------------------------------------------------------ */

/* Pack op(A)[0:mc, 0:kc] (a points at its top-left element) into MR-row micro-panels: panel
 * t holds rows t MR.., laid out dst[p MR + i], rows past mc zero. Whole-vector stores: one
 * k step's store may run up to VL - 1 floats into the next, which is written after it, and
 * past the end of the block (gemm() allocates PACK_A_SLACK floats more). */
#define A_VECTORS ((MR + VL - 1) / VL) /* vectors per k step */
#define PACK_A_SLACK (A_VECTORS * VL - MR)
#if MR > VL && MR % VL
#error "pack_a: a panel of several vectors must be whole vectors (its stores may not overlap)"
#endif
static void pack_a(int trans, ptrdiff_t mc, ptrdiff_t kc, const float *a, ptrdiff_t lda,
                   float *dst)
{
    for (ptrdiff_t i0 = 0; i0 < mc; i0 += MR) {
        ptrdiff_t mr = mc - i0 < MR ? mc - i0 : MR;
        if (trans) {
            /* A stored k x m: each k step is a contiguous run of mr values. */
            for (ptrdiff_t p = 0; p < kc; p++) {
                const float *src = a + p * lda + i0;
                float *d = dst + p * MR;
                UNROLL_FULLY for (int v = 0; v < A_VECTORS; v++)
                    store(d + v * VL, load_first(src + v * VL, clamp_lanes(mr - v * VL)));
            }
        } else {
            /* A stored m x k: each VL x VL block (VL rows, VL k steps) is loaded as rows,
             * transposed in registers and stored as VL k steps; rows past mr and k steps
             * past kc read as zero. */
            UNROLL_FULLY for (int h = 0; h < A_VECTORS; h++) {
                const int live = MR - h * VL < VL ? MR - h * VL : VL; /* rows of the panel */
                ptrdiff_t rows = clamp_lanes(mr - h * VL);
                const float *src = a + (i0 + h * VL) * lda;
                float *d = dst + h * VL;
                /* whole blocks of a whole panel (the common case) in a loop of their own,
                 * fully unrolled; then the ragged ones */
                ptrdiff_t whole = rows == live ? kc / VL * VL : 0, p0 = 0;
                for (; p0 < whole; p0 += VL) {
                    vf r[VL];
                    const float *block = src + p0;
                    UNROLL_FULLY for (int j = 0; j < VL; j++)
                        r[j] = j < live ? load(block + j * lda) : splat(0.0f);
                    transpose(r);
                    UNROLL_FULLY for (int q = 0; q < VL; q++)
                        store(d + (p0 + q) * MR, r[q]);
                }
                for (; p0 < kc; p0 += VL) {
                    ptrdiff_t steps = kc - p0 < VL ? kc - p0 : VL;
                    vf r[VL];
                    for (int j = 0; j < VL; j++)
                        r[j] = j < rows ? load_first(src + j * lda + p0, steps) : splat(0.0f);
                    transpose(r);
                    for (ptrdiff_t q = 0; q < steps; q++)
                        store(d + (p0 + q) * MR, r[q]);
                }
            }
        }
        dst += MR * kc;
    }
}

/* Pack op(B)[0:kc, 0:nc] (b points at its top-left element) into NR-column micro-panels laid
 * out dst[p NR + j], zero-padded to NR columns. */
static void pack_b(int trans, ptrdiff_t kc, ptrdiff_t nc, const float *b, ptrdiff_t ldb,
                   float *dst)
{
    if (!trans) {
        /* B stored k x n: walk each source row left to right across all panels, so memory
         * is read sequentially (hardware prefetchers follow it; panel-by-panel order would
         * be kc strided streams). */
        ptrdiff_t full = nc / NR * NR, rest = nc - full;
        for (ptrdiff_t p = 0; p < kc; p++) {
            const float *src = b + p * ldb;
            float *d = dst + p * NR;
            ptrdiff_t j0 = 0;
            for (; j0 < full; j0 += NR, d += NR * kc)
                for (int v = 0; v < NV; v++)
                    store(d + v * VL, load(src + j0 + v * VL));
            if (rest)
                for (int v = 0; v < NV; v++)
                    store(d + v * VL, load_first(src + j0 + v * VL, clamp_lanes(rest - v * VL)));
        }
        return;
    }
    /* B stored n x k: rows contiguous in k. Each VL x VL block of the panel (VL rows, VL k
     * steps) is loaded as rows, transposed in registers and stored as VL k steps; rows past
     * nr and k steps past kc read as zero. */
    for (ptrdiff_t j0 = 0; j0 < nc; j0 += NR) {
        ptrdiff_t nr = nc - j0 < NR ? nc - j0 : NR;
        for (int v = 0; v < NV; v++) {
            ptrdiff_t rows = clamp_lanes(nr - v * VL);
            const float *src = b + (j0 + v * VL) * ldb;
            float *d = dst + v * VL;
            for (ptrdiff_t p0 = 0; p0 < kc; p0 += VL) {
                ptrdiff_t steps = kc - p0 < VL ? kc - p0 : VL;
                vf r[VL];
                if (rows == VL && steps == VL) {
                    UNROLL_FULLY for (int j = 0; j < VL; j++)
                        r[j] = load(src + j * ldb + p0);
                } else {
                    for (int j = 0; j < VL; j++)
                        r[j] = j < rows ? load_first(src + j * ldb + p0, steps) : splat(0.0f);
                }
                transpose(r);
                for (ptrdiff_t q = 0; q < steps; q++)
                    store(d + (p0 + q) * NR, r[q]);
            }
        }
        dst += NR * kc;
    }
}

/* ------------------------------------------------------------------------ */
/* Driver                                                                   */
/* ------------------------------------------------------------------------ */

/* Split `total` into ceil(total/max) near-equal blocks, each rounded up to a multiple of
 * `unit`, so no block is a sliver (e.g. K = 289 stays one block of 289, not 256 + 33). */
static ptrdiff_t balanced_block(ptrdiff_t total, ptrdiff_t max, ptrdiff_t unit)
{
    if (total <= max)
        return total;
    ptrdiff_t blocks = (total + max - 1) / max;
    ptrdiff_t size = (total + blocks - 1) / blocks;
    return (size + unit - 1) / unit * unit;
}

/* ------------------------------------------------------------------------ */
/* Narrow products with B transposed                                        */
/* ------------------------------------------------------------------------ */

/* C[m x n] (+)= A[m x k] B^T, A stored m x k and B stored n x k (op(B) = B^T), n <= GEMM_DOT_N:
 * a classifier layer's product, x W^T with W (classes x features). Every entry of C is the dot
 * product of two contiguous rows, so nothing is packed: DOT_ROWS rows of A against DOT_COLS
 * rows of B at a time, one vector of partial sums per pair, reduced by sum_lanes at the end.
 * The packed driver copies all of A to fill 10 of its 16 or 32 columns: the lecture CNN's
 * classifier, 64 x 10 x 3136 per shard, took 98 us on OpenBLAS and 40 us here at avx512, 77 us
 * at avx2 (docs/architecture.md). A ragged block repeats its first row of A or B and drops
 * those sums. */
#if VL == 16 || defined(CNNLAB_LEVEL_NEON)
#define DOT_ROWS 4 /* 20 sums + 5 vectors of 32 registers */
#else
#define DOT_ROWS 2 /* 10 sums + 3 vectors of 16 */
#endif
#define DOT_COLS 5

static void gemm_dot_bt(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A, ptrdiff_t lda,
                        const float *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc, int accumulate)
{
    for (ptrdiff_t i0 = 0; i0 < m; i0 += DOT_ROWS) {
        const float *a[DOT_ROWS];
        UNROLL_FULLY for (int r = 0; r < DOT_ROWS; r++)
            a[r] = A + (i0 + r < m ? i0 + r : i0) * lda;
        for (ptrdiff_t j0 = 0; j0 < n; j0 += DOT_COLS) {
            const float *b[DOT_COLS];
            UNROLL_FULLY for (int q = 0; q < DOT_COLS; q++)
                b[q] = B + (j0 + q < n ? j0 + q : j0) * ldb;
            vf sum[DOT_ROWS][DOT_COLS];
            UNROLL_FULLY for (int r = 0; r < DOT_ROWS; r++)
                UNROLL_FULLY for (int q = 0; q < DOT_COLS; q++)
                    sum[r][q] = splat(0.0f);
#define DOT_STEP(LOAD)                                                           \
    do {                                                                         \
        vf av[DOT_ROWS];                                                         \
        UNROLL_FULLY for (int r = 0; r < DOT_ROWS; r++) av[r] = LOAD(a[r] + p);  \
        UNROLL_FULLY for (int q = 0; q < DOT_COLS; q++) {                        \
            vf bv = LOAD(b[q] + p);                                              \
            UNROLL_FULLY for (int r = 0; r < DOT_ROWS; r++)                      \
                sum[r][q] = fma_v(av[r], bv, sum[r][q]);                         \
        }                                                                        \
    } while (0)
#define TAIL_LOAD(pointer) load_first(pointer, k - p)
            ptrdiff_t p = 0;
            for (; p + VL <= k; p += VL)
                DOT_STEP(load);
            if (p < k)
                DOT_STEP(TAIL_LOAD);
#undef TAIL_LOAD
#undef DOT_STEP
            for (int r = 0; r < DOT_ROWS && i0 + r < m; r++)
                for (int q = 0; q < DOT_COLS && j0 + q < n; q++) {
                    float *c = C + (i0 + r) * ldc + j0 + q;
                    float total = sum_lanes(sum[r][q]);
                    *c = accumulate ? *c + total : total;
                }
        }
    }
}

/* Returns 0 on success, -1 if scratch memory could not be allocated. */
static int gemm(int ta, int tb, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *A,
                ptrdiff_t lda, const float *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc,
                int accumulate, const gemm_blocking *blocking)
{
    if (m == 0 || n == 0)
        return 0;
    if (k == 0) {
        if (!accumulate)
            for (ptrdiff_t i = 0; i < m; i++)
                memset(C + i * ldc, 0, (size_t)n * sizeof(float));
        return 0;
    }

    ptrdiff_t kcb = balanced_block(k, blocking->kc, 16);
    ptrdiff_t mcb = balanced_block(m, blocking->mc, MR);
    ptrdiff_t ncb = balanced_block(n, blocking->nc, NR);
    size_t a_need = (size_t)((mcb + MR - 1) / MR * MR) * (size_t)kcb + PACK_A_SLACK;
    size_t b_need = (size_t)((ncb + NR - 1) / NR * NR) * (size_t)kcb;
    float *pa, *pb;
    if (gemm_scratch(a_need, b_need, &pa, &pb) < 0)
        return -1;
    const ptrdiff_t tiles_m0 = ((m < mcb ? m : mcb) + MR - 1) / MR;

    for (ptrdiff_t jc = 0; jc < n; jc += ncb) {
        ptrdiff_t nc = n - jc < ncb ? n - jc : ncb;
        ptrdiff_t panels = (nc + NR - 1) / NR;
        for (ptrdiff_t pc = 0; pc < k; pc += kcb) {
            ptrdiff_t kc = k - pc < kcb ? k - pc : kcb;
            /* Later K blocks add onto the partial sums of earlier ones. */
            int acc = accumulate || pc > 0;
            pack_b(tb, kc, nc, tb ? B + jc * ldb + pc : B + pc * ldb + jc, ldb, pb);

            /* Next B block (pc + kcb, else jc + ncb), prefetched during the first MC
             * block's kernels. */
            pf_region pfb;
            {
                ptrdiff_t jn = jc, pn = pc + kcb;
                if (pn >= k) {
                    pn = 0;
                    jn = jc + ncb;
                }
                ptrdiff_t kn = k - pn < kcb ? k - pn : kcb, nn = n - jn < ncb ? n - jn : ncb;
                const float *src = jn >= n ? NULL : tb ? B + jn * ldb + pn : B + pn * ldb + jn;
                pf_init(&pfb, src, tb ? nn : kn, tb ? kn : nn, ldb, panels * tiles_m0);
            }

            for (ptrdiff_t ic = 0; ic < m; ic += mcb) {
                ptrdiff_t mc = m - ic < mcb ? m - ic : mcb;
                pack_a(ta, mc, kc, ta ? A + pc * lda + ic : A + ic * lda + pc, lda, pa);

                /* Next A block (ic + mcb, else pc + kcb, else jc + ncb), prefetched during
                 * this MC block's kernels. */
                pf_region pfa;
                {
                    ptrdiff_t in = ic + mcb, pn = pc, jn = jc;
                    if (in >= m) {
                        in = 0;
                        pn = pc + kcb;
                        if (pn >= k) {
                            pn = 0;
                            jn = jc + ncb;
                        }
                    }
                    ptrdiff_t kn = k - pn < kcb ? k - pn : kcb, mn = m - in < mcb ? m - in : mcb;
                    const float *src = jn >= n ? NULL : ta ? A + pn * lda + in : A + in * lda + pn;
                    pf_init(&pfa, src, ta ? kn : mn, ta ? mn : kn, lda,
                            panels * ((mc + MR - 1) / MR));
                }

                for (ptrdiff_t jr = 0; jr < nc; jr += NR) {
                    ptrdiff_t nr = nc - jr < NR ? nc - jr : NR;
                    int nv = (int)((nr + VL - 1) / VL);
                    float *cp = C + ic * ldc + jc + jr;
                    for (ptrdiff_t ir = 0; ir < mc; ir += MR) {
                        int mr = (int)(mc - ir < MR ? mc - ir : MR);
                        pf_region *pfr = pfb.r < pfb.rows ? &pfb : pfa.r < pfa.rows ? &pfa : NULL;
                        ukr_table[mr][nv](kc, pa + ir * kc, pb + jr * kc, cp + ir * ldc, ldc, nr, acc,
                                      pfr, pfr ? pfr->per_call : 0);
                    }
                }
            }
        }
    }
    return 0;
}

const gemm_level LEVEL_SYMBOL(gemm_level) = {LEVEL_NAME, MR, NR, gemm, gemm_dot_bt};

#endif /* SIMD_COMPILED */

#include "simd_end.h"
