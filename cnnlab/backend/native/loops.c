/*
 * _loops: the memory-bound steps of a training step as single C loops.
 *
 *   max_pool_2x2_forward(x, y, index)        2x2 / stride-2 max pool
 *   max_pool_2x2_backward(dy, index, dx)     its gradient
 *   relu_forward(x, y, mask)                 y = max(x, 0), mask = x > 0
 *   relu_backward(dy, mask, dx)              dx = dy * mask
 *   adam_step(w, g, m, v, ...)               one Adam / AdamW update, in place
 *   wide_im2col / wide_col2im                the stride-1 conv's im2col and its adjoint
 *   wide_to_nchw / nchw_to_wide              its GEMM layout to NCHW and back
 *
 * NumPy runs each of these as several passes over memory (and over a strided
 * view, one short row at a time); a loop here reads every input once and
 * writes every output once.  Each computes exactly what the NumPy code beside
 * its caller computes, bit for bit, in the same order of float operations
 * (built with -ffp-contract=off, so no multiply-add is fused):
 * tests/test_kernels.py checks every one against that code.
 *
 * float32 and float64 ('f' and 'd' buffers), C-contiguous (the callers copy
 * the rare strided input first), so GCC vectorises the loops.  The GIL is released while a loop runs: data-parallel shards call
 * these from several threads at once.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <string.h>

#include "buffers.h"

/* Several elementwise loops vectorise best with the widest instructions the CPU
 * has; GCC builds one clone per target and picks at load time (ifunc). */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__) && !defined(__clang__)
#define WIDEST __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define WIDEST
#endif

/* ------------------------------------------------------------------------ */
/* Kernels, one copy per float type                                         */
/* ------------------------------------------------------------------------ */

/* Windows per pass of the pool loops: four tap arrays of this many stay in L1. */
#define CHUNK 256

#define DEFINE_KERNELS(T, S, SQRT)                                                        \
                                                                                          \
/* np.maximum(a, b): NaN wins, else the larger, else b (so -0.0 vs 0.0 gives b, as */    \
/* x86's maxps). Two selects: GCC vectorises this form, not one with `||`.          */    \
static inline T maximum_##S(T a, T b)                                                    \
{                                                                                         \
    T larger = a > b ? a : b;                                                             \
    return a != a ? a : larger;                                                           \
}                                                                                         \
                                                                                          \
/* Y[b,c,i,j] = max of the 2x2 window; index = its first maximum's tap, row-major:    */  \
/* tap 1 if x1 > x0, then tap t if x_t > the running max (NumPy path's rule). Windows */  \
/* go CHUNK at a time (across rows and planes): first split into four tap arrays, as  */  \
/* the NumPy path's tap planes, then reduced on those contiguous arrays, which GCC     */  \
/* vectorises (rows of 14 or 7 windows alone are too short for it).                   */  \
WIDEST static void pool_forward_##S(const T *restrict x, T *restrict y,                   \
                                    unsigned char *restrict index, Py_ssize_t windows,    \
                                    Py_ssize_t in_w, Py_ssize_t in_h, Py_ssize_t out_h,   \
                                    Py_ssize_t out_w)                                     \
{                                                                                         \
    T x0[CHUNK], x1[CHUNK], x2[CHUNK], x3[CHUNK];                                         \
    const T *plane = x, *top = x;   /* the window's plane (b, c), top row */              \
    Py_ssize_t i = 0, j = 0;                                                              \
    for (Py_ssize_t start = 0; start < windows; start += CHUNK) {                         \
        Py_ssize_t n = windows - start < CHUNK ? windows - start : CHUNK;                 \
        for (Py_ssize_t k = 0; k < n; k++) {                                              \
            x0[k] = top[2 * j];                                                           \
            x1[k] = top[2 * j + 1];                                                       \
            x2[k] = top[in_w + 2 * j];                                                    \
            x3[k] = top[in_w + 2 * j + 1];                                                \
            if (++j == out_w) {                                                           \
                j = 0;                                                                    \
                if (++i == out_h) {                                                       \
                    i = 0;                                                                \
                    plane += in_h * in_w;                                                 \
                }                                                                         \
                top = plane + 2 * i * in_w;                                               \
            }                                                                             \
        }                                                                                 \
        T *y_part = y + start;                                                            \
        unsigned char *index_part = index + start;                                        \
        for (Py_ssize_t k = 0; k < n; k++) {                                              \
            T best01 = maximum_##S(x0[k], x1[k]), best012 = maximum_##S(best01, x2[k]);   \
            int over1 = x1[k] > x0[k], over2 = x2[k] > best01, over3 = x3[k] > best012;   \
            y_part[k] = maximum_##S(best012, x3[k]);                                      \
            index_part[k] = (unsigned char)(over3 ? 3 : over2 ? 2 : over1);               \
        }                                                                                 \
    }                                                                                     \
}                                                                                         \
                                                                                          \
/* dX = dY at each window's recorded tap, 0 at its other three pixels, written as     */  \
/* NumPy's dy * (index == tap) (so NaN * 0 stays NaN). Rows/columns past the last     */  \
/* whole window are the caller's. CHUNK windows at a time: taps, then into dx.        */  \
WIDEST static void pool_backward_##S(const T *restrict dy, const unsigned char *restrict index, \
                                     T *restrict dx, Py_ssize_t windows, Py_ssize_t in_w, \
                                     Py_ssize_t in_h, Py_ssize_t out_h, Py_ssize_t out_w) \
{                                                                                         \
    T d0[CHUNK], d1[CHUNK], d2[CHUNK], d3[CHUNK];                                         \
    T *plane = dx, *top = dx;   /* the window's plane (b, c), top row */                  \
    Py_ssize_t i = 0, j = 0;                                                              \
    for (Py_ssize_t start = 0; start < windows; start += CHUNK) {                         \
        Py_ssize_t n = windows - start < CHUNK ? windows - start : CHUNK;                 \
        const T *dy_part = dy + start;                                                    \
        const unsigned char *index_part = index + start;                                  \
        for (Py_ssize_t k = 0; k < n; k++) {                                              \
            T gradient = dy_part[k];                                                      \
            int tap = index_part[k];                                                      \
            d0[k] = gradient * (T)(tap == 0);   /* as NumPy: dy * (index == tap) */       \
            d1[k] = gradient * (T)(tap == 1);                                             \
            d2[k] = gradient * (T)(tap == 2);                                             \
            d3[k] = gradient * (T)(tap == 3);                                             \
        }                                                                                 \
        for (Py_ssize_t k = 0; k < n; k++) {                                              \
            top[2 * j] = d0[k];                                                           \
            top[2 * j + 1] = d1[k];                                                       \
            top[in_w + 2 * j] = d2[k];                                                    \
            top[in_w + 2 * j + 1] = d3[k];                                                \
            if (++j == out_w) {                                                           \
                j = 0;                                                                    \
                if (++i == out_h) {                                                       \
                    i = 0;                                                                \
                    plane += in_h * in_w;                                                 \
                }                                                                         \
                top = plane + 2 * i * in_w;                                               \
            }                                                                             \
        }                                                                                 \
    }                                                                                     \
}                                                                                         \
                                                                                          \
/* y = np.maximum(x, 0), mask = x > 0 */                                                  \
WIDEST static void relu_forward_##S(const T *x, T *y, unsigned char *mask, Py_ssize_t n) \
{                                                                                         \
    for (Py_ssize_t k = 0; k < n; k++) {                                                  \
        T value = x[k];                                                                   \
        y[k] = maximum_##S(value, (T)0);                                                  \
        mask[k] = value > 0;                                                              \
    }                                                                                     \
}                                                                                         \
                                                                                          \
/* dx = dy * mask (np.multiply with a bool array: NaN * 0 stays NaN) */                   \
WIDEST static void relu_backward_##S(const T *dy, const unsigned char *mask, T *dx,       \
                                     Py_ssize_t n)                                        \
{                                                                                         \
    for (Py_ssize_t k = 0; k < n; k++) {  /* a select, not a branch on the mask */        \
        T kept = dy[k], dropped = dy[k] * (T)0;                                           \
        dx[k] = mask[k] ? kept : dropped;                                                 \
    }                                                                                     \
}                                                                                         \
                                                                                          \
/* One Adam step, each line one NumPy pass of cnnlab.optim.Adam.step, same rounding. */   \
WIDEST static void adam_##S(T *w, const T *grad, T *m, T *v, Py_ssize_t n, int coupled,   \
                            T decay, int decoupled, T shrink, T beta1, T one_minus_beta1, \
                            T beta2, T one_minus_beta2, T bias2_sqrt, T eps, T step_size) \
{                                                                                         \
    for (Py_ssize_t k = 0; k < n; k++) {                                                  \
        T weight = w[k], g = grad[k];                                                     \
        if (decoupled)                                                                    \
            weight = weight * shrink;           /* w <- w (1 - eta lambda)   (AdamW) */   \
        else if (coupled)                                                                 \
            g = weight * decay + g;             /* g_t = lambda w + dL/dw    (Adam)  */   \
        T mean = m[k] * beta1 + g * one_minus_beta1;         /* m_t */                    \
        T square = g * g;                                                                 \
        square = square * one_minus_beta2;                                                \
        T second = v[k] * beta2 + square;                    /* v_t */                    \
        T denominator = SQRT(second) / bias2_sqrt + eps;                                  \
        T ratio = mean / denominator;                                                     \
        w[k] = weight - ratio * step_size;                                                \
        m[k] = mean;                                                                      \
        v[k] = second;                                                                    \
    }                                                                                     \
}

DEFINE_KERNELS(float, f32, sqrtf)
DEFINE_KERNELS(double, f64, sqrt)

/* ------------------------------------------------------------------------ */
/* The 2x2 max pool in AVX-512, float32                                      */
/* ------------------------------------------------------------------------ */

/* The chunked loops above gather windows with scalar loads and stores, one float at a time.
 * Here each output row of up to 16 windows is two masked vector loads per input row, split
 * into even and odd columns by one permute each (and the backward interleaves them back),
 * which is 3-4x faster on the lecture CNN's 28x28 and 14x14 maps. Same float operations
 * as pool_forward_f32 / pool_backward_f32, lane by lane, so the same bits: vmaxps(a, b) is
 * a > b ? a : b, exactly the `larger` of maximum_f32, and the NaN test is a blend. */
#if HAVE_AVX512_LOOPS

/* Masks for n <= 16 windows: the windows themselves, and their 2n input floats in two halves. */
AVX512_LOOPS static inline void row_masks(Py_ssize_t n, __mmask16 *windows, __mmask16 *low,
                                         __mmask16 *high)
{
    *windows = (__mmask16)((1u << n) - 1);
    *low = n >= 8 ? (__mmask16)0xFFFF : (__mmask16)((1u << (2 * n)) - 1);
    *high = n > 8 ? (__mmask16)((1u << (2 * n - 16)) - 1) : (__mmask16)0;
}

AVX512_LOOPS static inline __m512 maximum_avx512(__m512 a, __m512 b)
{
    __m512 larger = _mm512_max_ps(a, b);  /* a > b ? a : b */
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), larger, a);
}

/* One plane: y, index (out_h, out_w) from the rows of `plane` (row_stride floats apart).
 * relu: y = max(pooled, 0) too, and index = 255 where pooled > 0 does not hold (the
 * fused conv's ReLU mask; max(relu(v)) = relu(max(v)), so pooling first is exact). */
AVX512_LOOPS static void pool_plane_avx512(const float *plane, Py_ssize_t row_stride,
                                          Py_ssize_t out_h, Py_ssize_t out_w, float *y,
                                          unsigned char *index, int relu)
{
    const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odds = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512i one = _mm512_set1_epi32(1), two = _mm512_set1_epi32(2), three = _mm512_set1_epi32(3);
    const __m512i inactive = _mm512_set1_epi32(255);
    const __m512 zero = _mm512_setzero_ps();
    for (Py_ssize_t i = 0; i < out_h; i++) {
        const float *top = plane + 2 * i * row_stride, *bottom = top + row_stride;
        for (Py_ssize_t j = 0; j < out_w; j += 16) {
            __mmask16 valid, low, high;
            row_masks(out_w - j < 16 ? out_w - j : 16, &valid, &low, &high);
            __m512 top_low = _mm512_maskz_loadu_ps(low, top + 2 * j);
            __m512 top_high = _mm512_maskz_loadu_ps(high, top + 2 * j + 16);
            __m512 bottom_low = _mm512_maskz_loadu_ps(low, bottom + 2 * j);
            __m512 bottom_high = _mm512_maskz_loadu_ps(high, bottom + 2 * j + 16);
            __m512 x0 = _mm512_permutex2var_ps(top_low, evens, top_high);
            __m512 x1 = _mm512_permutex2var_ps(top_low, odds, top_high);
            __m512 x2 = _mm512_permutex2var_ps(bottom_low, evens, bottom_high);
            __m512 x3 = _mm512_permutex2var_ps(bottom_low, odds, bottom_high);
            __m512 best01 = maximum_avx512(x0, x1), best012 = maximum_avx512(best01, x2);
            __mmask16 over1 = _mm512_cmp_ps_mask(x1, x0, _CMP_GT_OQ);
            __mmask16 over2 = _mm512_cmp_ps_mask(x2, best01, _CMP_GT_OQ);
            __mmask16 over3 = _mm512_cmp_ps_mask(x3, best012, _CMP_GT_OQ);
            __m512i tap = _mm512_maskz_mov_epi32(over1, one);  /* over3 ? 3 : over2 ? 2 : over1 */
            tap = _mm512_mask_mov_epi32(tap, over2, two);
            tap = _mm512_mask_mov_epi32(tap, over3, three);
            __m512 value = maximum_avx512(best012, x3);
            if (relu) {
                tap = _mm512_mask_mov_epi32(inactive, _mm512_cmp_ps_mask(value, zero, _CMP_GT_OQ), tap);
                value = maximum_avx512(value, zero);
            }
            _mm512_mask_storeu_ps(y + i * out_w + j, valid, value);
            _mm_mask_storeu_epi8(index + i * out_w + j, valid, _mm512_cvtepi32_epi8(tap));
        }
    }
}

/* The adjoint for one plane: each window's four pixels get dy * (index == tap); an index
 * of 255 (the fused ReLU's inactive windows) gives all four dy * 0. */
AVX512_LOOPS static void unpool_plane_avx512(const float *dy, const unsigned char *index,
                                            float *plane, Py_ssize_t row_stride,
                                            Py_ssize_t out_h, Py_ssize_t out_w)
{
    const __m512i first_half = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i second_half = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    const __m512 ones = _mm512_set1_ps(1.0f);
    for (Py_ssize_t i = 0; i < out_h; i++) {
        float *top = plane + 2 * i * row_stride, *bottom = top + row_stride;
        for (Py_ssize_t j = 0; j < out_w; j += 16) {
            __mmask16 valid, low, high;
            row_masks(out_w - j < 16 ? out_w - j : 16, &valid, &low, &high);
            __m512 gradient = _mm512_maskz_loadu_ps(valid, dy + i * out_w + j);
            __m512i tap = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(valid, index + i * out_w + j));
            __m512 d[4];
            for (int t = 0; t < 4; t++)  /* dy * (index == t), as pool_backward_f32 */
                d[t] = _mm512_mul_ps(gradient, _mm512_maskz_mov_ps(
                                                   _mm512_cmpeq_epi32_mask(tap, _mm512_set1_epi32(t)), ones));
            _mm512_mask_storeu_ps(top + 2 * j, low, _mm512_permutex2var_ps(d[0], first_half, d[1]));
            _mm512_mask_storeu_ps(top + 2 * j + 16, high, _mm512_permutex2var_ps(d[0], second_half, d[1]));
            _mm512_mask_storeu_ps(bottom + 2 * j, low, _mm512_permutex2var_ps(d[2], first_half, d[3]));
            _mm512_mask_storeu_ps(bottom + 2 * j + 16, high,
                                  _mm512_permutex2var_ps(d[2], second_half, d[3]));
        }
    }
}

AVX512_LOOPS static void pool_forward_avx512(const float *x, float *y, unsigned char *index,
                                            Py_ssize_t planes, Py_ssize_t in_w, Py_ssize_t in_h,
                                            Py_ssize_t out_h, Py_ssize_t out_w)
{
    for (Py_ssize_t p = 0; p < planes; p++)
        pool_plane_avx512(x + p * in_h * in_w, in_w, out_h, out_w, y + p * out_h * out_w,
                          index + p * out_h * out_w, 0);
}

AVX512_LOOPS static void pool_backward_avx512(const float *dy, const unsigned char *index, float *dx,
                                             Py_ssize_t planes, Py_ssize_t in_w, Py_ssize_t in_h,
                                             Py_ssize_t out_h, Py_ssize_t out_w)
{
    for (Py_ssize_t p = 0; p < planes; p++)
        unpool_plane_avx512(dy + p * out_h * out_w, index + p * out_h * out_w,
                            dx + p * in_h * in_w, in_w, out_h, out_w);
}
#endif

/* ------------------------------------------------------------------------ */
/* The "wide" im2col layout of stride-1 convolutions (cnnlab/ops/_conv_wide.py) */
/* ------------------------------------------------------------------------ */

/* Geometry of one stride-1 convolution in the wide layout: every image plane is padded to
 * H' x W' (flattened); tap t = (m, n) of the kernel reads the run of `run` pixels starting
 * at starts[t] = d_h m W' + d_w n; image b's columns in cols start at b * wide. */
typedef struct {
    Py_ssize_t batch, channels, in_h, in_w;   /* the input, (N, C, H, W) */
    Py_ssize_t pad_top, pad_left, padded_h, padded_w;
    Py_ssize_t taps, wide, run;
    Py_ssize_t starts[64];                    /* kernels up to 64 taps (8x8) */
} wide_geometry;

/* im2col, numpy path: padded = 0, padded[interior] = x, then for every tap
 * cols[c, tap, b, :run] = padded[b, c, start:start + run]. Plain copies, so the
 * same bits; here one plane at a time through a small padded scratch (L1). */
#define DEFINE_WIDE(T, S)                                                                 \
static void wide_im2col_##S(const T *x, T *cols, const wide_geometry *g, T *scratch)      \
{                                                                                         \
    Py_ssize_t image = g->padded_h * g->padded_w, plane = g->in_h * g->in_w;              \
    Py_ssize_t row_stride = g->batch * g->wide;  /* one row of cols: (c, tap) */          \
    memset(scratch, 0, (size_t)image * sizeof(T));                                        \
    for (Py_ssize_t b = 0; b < g->batch; b++)                                             \
        for (Py_ssize_t c = 0; c < g->channels; c++) {                                    \
            const T *source = x + (b * g->channels + c) * plane;                          \
            for (Py_ssize_t i = 0; i < g->in_h; i++)  /* the border stays zero */         \
                memcpy(scratch + (i + g->pad_top) * g->padded_w + g->pad_left,            \
                       source + i * g->in_w, (size_t)g->in_w * sizeof(T));                \
            T *target = cols + c * g->taps * row_stride + b * g->wide;                    \
            for (Py_ssize_t t = 0; t < g->taps; t++)                                      \
                memcpy(target + t * row_stride, scratch + g->starts[t],                   \
                       (size_t)g->run * sizeof(T));                                       \
        }                                                                                 \
}                                                                                         \
                                                                                          \
/* col2im, numpy path: dx_padded = 0; for tap in order: dx_padded[b, c, start:start +   */ \
/* run] += dcols[c, tap, b, :run]; dx = the interior. Same additions in the same order  */ \
/* per pixel, so the same bits; one plane at a time, accumulated in the scratch (L1).   */ \
WIDEST static void wide_col2im_##S(const T *dcols, T *dx, const wide_geometry *g,         \
                                   T *scratch)                                            \
{                                                                                         \
    Py_ssize_t image = g->padded_h * g->padded_w, plane = g->in_h * g->in_w;              \
    Py_ssize_t row_stride = g->batch * g->wide;                                           \
    for (Py_ssize_t b = 0; b < g->batch; b++)                                             \
        for (Py_ssize_t c = 0; c < g->channels; c++) {                                    \
            const T *source = dcols + c * g->taps * row_stride + b * g->wide;             \
            for (Py_ssize_t k = 0; k < image; k++)                                        \
                scratch[k] = 0;                                                           \
            for (Py_ssize_t t = 0; t < g->taps; t++) {                                    \
                T *restrict sum = scratch + g->starts[t];                                 \
                const T *restrict part = source + t * row_stride;                         \
                for (Py_ssize_t k = 0; k < g->run; k++)                                   \
                    sum[k] = sum[k] + part[k];                                            \
            }                                                                             \
            T *target = dx + (b * g->channels + c) * plane;                               \
            for (Py_ssize_t i = 0; i < g->in_h; i++)                                      \
                memcpy(target + i * g->in_w,                                              \
                       scratch + (i + g->pad_top) * g->padded_w + g->pad_left,            \
                       (size_t)g->in_w * sizeof(T));                                      \
        }                                                                                 \
}

DEFINE_WIDE(float, f32)
DEFINE_WIDE(double, f64)

/* Between NCHW (N, C, H, W) and the wide GEMM layout (C, N, H, W'), W <= W': row (c, b, i)
 * of the wide array holds image row (b, c, i) in its first W entries. */
static void wide_rows_copy(const char *src, char *dst, Py_ssize_t batch, Py_ssize_t channels,
                           Py_ssize_t height, Py_ssize_t width, Py_ssize_t wide_w,
                           Py_ssize_t itemsize, int to_wide)
{
    size_t bytes = (size_t)(width * itemsize);
    for (Py_ssize_t c = 0; c < channels; c++)
        for (Py_ssize_t b = 0; b < batch; b++)
            for (Py_ssize_t i = 0; i < height; i++) {
                Py_ssize_t nchw = ((b * channels + c) * height + i) * width * itemsize;
                Py_ssize_t wide = ((c * batch + b) * height + i) * wide_w * itemsize;
                if (to_wide)
                    memcpy(dst + wide, src + nchw, bytes);
                else
                    memcpy(dst + nchw, src + wide, bytes);
            }
}

/* ------------------------------------------------------------------------ */
/* A first conv layer fused with its ReLU and 2x2 max pool (float32, AVX-512) */
/* ------------------------------------------------------------------------ */

/* For a conv whose input needs no gradient and has few channels (the lecture CNN's
 * Conv(1->32, k3, p1) on the images), the whole block conv -> ReLU -> MaxPool 2 runs one
 * (image, channel) plane at a time: the conv output plane (wide layout, as above) lives in
 * L1 and is pooled there, so the 6 MB activation of a 64-image shard is never written.
 * The backward needs only dW and db (no dX): the gradient plane is rebuilt from dy and the
 * pool's recorded taps, then correlated with the padded input, tap by tap. */

/* The image's C_in planes, zero-padded, into `padded` (its border is zero already). */
static void pad_image_f32(const float *x, float *padded, const wide_geometry *g)
{
    Py_ssize_t image = g->padded_h * g->padded_w;
    for (Py_ssize_t c = 0; c < g->channels; c++)
        for (Py_ssize_t i = 0; i < g->in_h; i++)
            memcpy(padded + c * image + (i + g->pad_top) * g->padded_w + g->pad_left,
                   x + (c * g->in_h + i) * g->in_w, (size_t)g->in_w * sizeof(float));
}

/* Scratch floats past the end of the padded planes and of the plane buffer: the vector
 * loops below run k up to run rounded up to 64, reading and writing past `run` there. */
#define FUSED_SLACK 64

#if HAVE_AVX512_LOOPS
/* acc[q][k] = bias[q] + sum over (c_in, tap) of w[q][c_in, tap] padded[c_in][start_tap + k]
 * for CONV_CHANNELS output channels q at once (each input load feeds all of them), k < run
 * (and junk up to the next multiple of 32), 32 outputs per channel at a time in registers. */
#define CONV_CHANNELS 4

AVX512_LOOPS static void conv_planes_avx512(const float *padded, const float *const *w,
                                            const float *bias, float *acc, Py_ssize_t acc_stride,
                                            const wide_geometry *g)
{
    Py_ssize_t image = g->padded_h * g->padded_w;
    for (Py_ssize_t k = 0; k < g->run; k += 32) {
        __m512 sum[CONV_CHANNELS][2];
        for (int q = 0; q < CONV_CHANNELS; q++)
            sum[q][0] = sum[q][1] = _mm512_set1_ps(bias[q]);
        for (Py_ssize_t c = 0; c < g->channels; c++)
            for (Py_ssize_t t = 0; t < g->taps; t++) {
                const float *source = padded + c * image + g->starts[t] + k;
                __m512 low = _mm512_loadu_ps(source), high = _mm512_loadu_ps(source + 16);
                for (int q = 0; q < CONV_CHANNELS; q++) {
                    __m512 weight = _mm512_set1_ps(w[q][c * g->taps + t]);
                    sum[q][0] = _mm512_fmadd_ps(weight, low, sum[q][0]);
                    sum[q][1] = _mm512_fmadd_ps(weight, high, sum[q][1]);
                }
            }
        for (int q = 0; q < CONV_CHANNELS; q++) {
            _mm512_storeu_ps(acc + q * acc_stride + k, sum[q][0]);
            _mm512_storeu_ps(acc + q * acc_stride + k + 16, sum[q][1]);
        }
    }
}

/* out[q] += sum_k dY[k] source[q][k] for q < count (a constant once inlined, so the
 * count sums stay in registers), k < end; one pass over dY for all of them. */
static inline __attribute__((always_inline)) AVX512_LOOPS void
correlate_group(const float *gradient, const float *const *source, double *out, Py_ssize_t end,
                const int count)
{
    __m512 sum[12];
    for (int q = 0; q < count; q++)
        sum[q] = _mm512_setzero_ps();
    for (Py_ssize_t k = 0; k < end; k += 16) {
        __m512 dy = _mm512_loadu_ps(gradient + k);
        for (int q = 0; q < count; q++)
            sum[q] = _mm512_fmadd_ps(dy, _mm512_loadu_ps(source[q] + k), sum[q]);
    }
    for (int q = 0; q < count; q++)
        out[q] += _mm512_reduce_add_ps(sum[q]);
}

/* dweight[(c_in, tap)] += sum_k dY[k] padded[c_in][start_tap + k] and dbias += sum_k dY[k],
 * k < run (dY is zero past run), up to twelve (c_in, tap) pairs per pass over dY. */
AVX512_LOOPS static void correlate_plane_avx512(const float *gradient, const float *padded,
                                               double *dweight, double *dbias,
                                               const wide_geometry *g)
{
    Py_ssize_t image = g->padded_h * g->padded_w, pairs = g->channels * g->taps;
    Py_ssize_t end = (g->run + 15) / 16 * 16;
    __m512 bias_sum = _mm512_setzero_ps();
    for (Py_ssize_t k = 0; k < end; k += 16)
        bias_sum = _mm512_add_ps(bias_sum, _mm512_loadu_ps(gradient + k));
    *dbias += _mm512_reduce_add_ps(bias_sum);
    Py_ssize_t groups = (pairs + 11) / 12, size = (pairs + groups - 1) / groups;
    for (Py_ssize_t first = 0; first < pairs; first += size) {
        int count = (int)(pairs - first < size ? pairs - first : size);
        const float *source[12];
        for (int q = 0; q < count; q++) {
            Py_ssize_t pair = first + q;
            source[q] = padded + (pair / g->taps) * image + g->starts[pair % g->taps];
        }
        double *out = dweight + first;
        switch (count) {
        case 1: correlate_group(gradient, source, out, end, 1); break;
        case 2: correlate_group(gradient, source, out, end, 2); break;
        case 3: correlate_group(gradient, source, out, end, 3); break;
        case 4: correlate_group(gradient, source, out, end, 4); break;
        case 5: correlate_group(gradient, source, out, end, 5); break;
        case 6: correlate_group(gradient, source, out, end, 6); break;
        case 7: correlate_group(gradient, source, out, end, 7); break;
        case 8: correlate_group(gradient, source, out, end, 8); break;
        case 9: correlate_group(gradient, source, out, end, 9); break;
        case 10: correlate_group(gradient, source, out, end, 10); break;
        case 11: correlate_group(gradient, source, out, end, 11); break;
        default: correlate_group(gradient, source, out, end, 12); break;
        }
    }
}

AVX512_LOOPS static void conv_relu_pool_forward_f32(const float *x, const float *weight,
                                                   const float *bias, float *y, unsigned char *code,
                                                   Py_ssize_t out_channels, Py_ssize_t pool_h,
                                                   Py_ssize_t pool_w, const wide_geometry *g,
                                                   float *padded, float *acc)
{
    Py_ssize_t weights = g->channels * g->taps, pooled = pool_h * pool_w;
    Py_ssize_t acc_stride = g->wide + FUSED_SLACK;
    for (Py_ssize_t b = 0; b < g->batch; b++) {
        pad_image_f32(x + b * g->channels * g->in_h * g->in_w, padded, g);
        for (Py_ssize_t c = 0; c < out_channels; c += CONV_CHANNELS) {
            /* a last group of fewer channels repeats its last one (computed, not stored) */
            const float *w[CONV_CHANNELS];
            float shifts[CONV_CHANNELS];
            for (int q = 0; q < CONV_CHANNELS; q++) {
                Py_ssize_t channel = c + q < out_channels ? c + q : out_channels - 1;
                w[q] = weight + channel * weights;
                shifts[q] = bias[channel];
            }
            conv_planes_avx512(padded, w, shifts, acc, acc_stride, g);
            for (Py_ssize_t q = 0; q < CONV_CHANNELS && c + q < out_channels; q++) {
                Py_ssize_t plane = (b * out_channels + c + q) * pooled;
                pool_plane_avx512(acc + q * acc_stride, g->padded_w, pool_h, pool_w, y + plane,
                                  code + plane, 1);
            }
        }
    }
}

AVX512_LOOPS static void conv_relu_pool_backward_f32(const float *x, const float *dy,
                                                    const unsigned char *code, double *dweight,
                                                    double *dbias, Py_ssize_t out_channels,
                                                    Py_ssize_t pool_h, Py_ssize_t pool_w,
                                                    const wide_geometry *g, float *padded,
                                                    float *gradient)
{
    Py_ssize_t weights = g->channels * g->taps, pooled = pool_h * pool_w;
    for (Py_ssize_t b = 0; b < g->batch; b++) {
        pad_image_f32(x + b * g->channels * g->in_h * g->in_w, padded, g);
        for (Py_ssize_t c = 0; c < out_channels; c++) {
            Py_ssize_t plane = (b * out_channels + c) * pooled;
            /* dY of the conv output: the pool's and ReLU's backward (pixels outside every
             * window keep the zeros they started with) */
            unpool_plane_avx512(dy + plane, code + plane, gradient, g->padded_w, pool_h, pool_w);
            correlate_plane_avx512(gradient, padded, dweight + c * weights, dbias + c, g);
        }
    }
}
#endif

/* ------------------------------------------------------------------------ */
/* Python binding                                                           */
/* ------------------------------------------------------------------------ */

/* The pooled output (N, C, H_out, W_out) must be half the input, rounded down. */
static int pool_shapes_fit(const Py_buffer *input, const Py_buffer *output)
{
    return input->shape[0] == output->shape[0] && input->shape[1] == output->shape[1] &&
           input->shape[2] / 2 == output->shape[2] && input->shape[3] / 2 == output->shape[3];
}

PyDoc_STRVAR(pool_forward_doc,
"max_pool_2x2_forward(x, y, index) -> None\n\n"
"y[b,c,i,j] = max of x[b,c,2i:2i+2,2j:2j+2]; index[b,c,i,j] = its first maximum's\n"
"tap (0..3, row-major). x: (N, C, H, W) float32/float64; y: (N, C, H//2, W//2), x's\n"
"dtype; index: y's shape, uint8. All C-contiguous.");

static PyObject *py_pool_forward(PyObject *self, PyObject *args)
{
    static const arg_spec specs[3] = {{"x", 'F', 0, 4}, {"y", 'F', 1, 4}, {"index", 'B', 1, 4}};
    PyObject *objects[3];
    Py_buffer v[3];
    if (!PyArg_ParseTuple(args, "OOO:max_pool_2x2_forward", &objects[0], &objects[1], &objects[2]) ||
        get_all(objects, specs, v, 3) < 0)
        return NULL;
    if (v[0].itemsize != v[1].itemsize || !pool_shapes_fit(&v[0], &v[1]) || !same_shape(&v[1], &v[2]))
        return reject(v, 3, "y and index must be (N, C, H//2, W//2) for x of (N, C, H, W), y of x's dtype");
    Py_ssize_t in_h = v[0].shape[2], in_w = v[0].shape[3];
    Py_ssize_t out_h = v[1].shape[2], out_w = v[1].shape[3];
    Py_ssize_t windows = v[1].shape[0] * v[1].shape[1] * out_h * out_w;
    Py_ssize_t planes = v[1].shape[0] * v[1].shape[1];
    Py_BEGIN_ALLOW_THREADS
#if HAVE_AVX512_LOOPS
    if (v[0].itemsize == 4 && avx512_usable())
        pool_forward_avx512(v[0].buf, v[1].buf, v[2].buf, planes, in_w, in_h, out_h, out_w);
    else
#endif
    if (v[0].itemsize == 4)
        pool_forward_f32(v[0].buf, v[1].buf, v[2].buf, windows, in_w, in_h, out_h, out_w);
    else
        pool_forward_f64(v[0].buf, v[1].buf, v[2].buf, windows, in_w, in_h, out_h, out_w);
    Py_END_ALLOW_THREADS
    release(v, 3);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(pool_backward_doc,
"max_pool_2x2_backward(dy, index, dx) -> None\n\n"
"Writes dx's covered part (rows < 2 H_out, columns < 2 W_out): dy at each window's\n"
"recorded tap, 0 elsewhere. dy: (N, C, H_out, W_out) float32/float64; index: dy's\n"
"shape, uint8; dx: (N, C, H, W), dy's dtype. All C-contiguous.");

static PyObject *py_pool_backward(PyObject *self, PyObject *args)
{
    static const arg_spec specs[3] = {{"dy", 'F', 0, 4}, {"index", 'B', 0, 4}, {"dx", 'F', 1, 4}};
    PyObject *objects[3];
    Py_buffer v[3];
    if (!PyArg_ParseTuple(args, "OOO:max_pool_2x2_backward", &objects[0], &objects[1], &objects[2]) ||
        get_all(objects, specs, v, 3) < 0)
        return NULL;
    if (v[0].itemsize != v[2].itemsize || !same_shape(&v[0], &v[1]) || !pool_shapes_fit(&v[2], &v[0]))
        return reject(v, 3, "index must have dy's shape and dx be (N, C, H, W) with H//2, W//2 = dy's, "
                            "dx of dy's dtype");
    Py_ssize_t out_h = v[0].shape[2], out_w = v[0].shape[3];
    Py_ssize_t in_h = v[2].shape[2], in_w = v[2].shape[3];
    Py_ssize_t windows = v[0].shape[0] * v[0].shape[1] * out_h * out_w;
    Py_ssize_t planes = v[0].shape[0] * v[0].shape[1];
    Py_BEGIN_ALLOW_THREADS
#if HAVE_AVX512_LOOPS
    if (v[0].itemsize == 4 && avx512_usable())
        pool_backward_avx512(v[0].buf, v[1].buf, v[2].buf, planes, in_w, in_h, out_h, out_w);
    else
#endif
    if (v[0].itemsize == 4)
        pool_backward_f32(v[0].buf, v[1].buf, v[2].buf, windows, in_w, in_h, out_h, out_w);
    else
        pool_backward_f64(v[0].buf, v[1].buf, v[2].buf, windows, in_w, in_h, out_h, out_w);
    Py_END_ALLOW_THREADS
    release(v, 3);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(relu_forward_doc,
"relu_forward(x, y, mask) -> None\n\n"
"y = np.maximum(x, 0) and mask = x > 0. x, y: C-contiguous float32/float64 of one\n"
"shape and dtype; mask: bool or uint8 of that shape.");

static PyObject *py_relu_forward(PyObject *self, PyObject *args)
{
    static const arg_spec specs[3] = {{"x", 'F', 0, 0}, {"y", 'F', 1, 0}, {"mask", 'B', 1, 0}};
    PyObject *objects[3];
    Py_buffer v[3];
    if (!PyArg_ParseTuple(args, "OOO:relu_forward", &objects[0], &objects[1], &objects[2]) ||
        get_all(objects, specs, v, 3) < 0)
        return NULL;
    if (v[0].itemsize != v[1].itemsize || !same_shape(&v[0], &v[1]) || !same_shape(&v[0], &v[2]))
        return reject(v, 3, "x, y and mask must have one shape, x and y one dtype");
    Py_ssize_t n = v[2].len;
    Py_BEGIN_ALLOW_THREADS
    if (v[0].itemsize == 4)
        relu_forward_f32(v[0].buf, v[1].buf, v[2].buf, n);
    else
        relu_forward_f64(v[0].buf, v[1].buf, v[2].buf, n);
    Py_END_ALLOW_THREADS
    release(v, 3);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(relu_backward_doc,
"relu_backward(dy, mask, dx) -> None\n\n"
"dx = dy * mask. dy, dx: C-contiguous float32/float64 of one shape and dtype (dx may\n"
"be dy itself); mask: bool or uint8 of that shape.");

static PyObject *py_relu_backward(PyObject *self, PyObject *args)
{
    static const arg_spec specs[3] = {{"dy", 'F', 0, 0}, {"mask", 'B', 0, 0}, {"dx", 'F', 1, 0}};
    PyObject *objects[3];
    Py_buffer v[3];
    if (!PyArg_ParseTuple(args, "OOO:relu_backward", &objects[0], &objects[1], &objects[2]) ||
        get_all(objects, specs, v, 3) < 0)
        return NULL;
    if (v[0].itemsize != v[2].itemsize || !same_shape(&v[0], &v[1]) || !same_shape(&v[0], &v[2]))
        return reject(v, 3, "dy, mask and dx must have one shape, dy and dx one dtype");
    Py_ssize_t n = v[1].len;
    Py_BEGIN_ALLOW_THREADS
    if (v[0].itemsize == 4)
        relu_backward_f32(v[0].buf, v[1].buf, v[2].buf, n);
    else
        relu_backward_f64(v[0].buf, v[1].buf, v[2].buf, n);
    Py_END_ALLOW_THREADS
    release(v, 3);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(adam_doc,
"adam_step(w, grad, m, v, decay, shrink, beta1, beta2, bias2_sqrt, eps, step_size) -> None\n\n"
"One Adam update of w, m and v in place (C-contiguous, one shape and float dtype).\n"
"decay != 0: Adam's L2 term, g = decay w + grad. shrink != 1: AdamW's w *= shrink\n"
"first (then decay must be 0). m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2;\n"
"w -= step_size m / (sqrt(v) / bias2_sqrt + eps). Scalars are rounded to w's dtype.");

static PyObject *py_adam(PyObject *self, PyObject *args)
{
    static const arg_spec specs[4] = {{"w", 'F', 1, 0}, {"grad", 'F', 0, 0}, {"m", 'F', 1, 0},
                                      {"v", 'F', 1, 0}};
    PyObject *objects[4];
    double decay, shrink, beta1, beta2, bias2_sqrt, eps, step_size;
    Py_buffer v[4];
    if (!PyArg_ParseTuple(args, "OOOOddddddd:adam_step", &objects[0], &objects[1], &objects[2],
                          &objects[3], &decay, &shrink, &beta1, &beta2, &bias2_sqrt, &eps, &step_size) ||
        get_all(objects, specs, v, 4) < 0)
        return NULL;
    for (int k = 1; k < 4; k++)
        if (v[k].itemsize != v[0].itemsize || !same_shape(&v[0], &v[k]))
            return reject(v, 4, "w, grad, m and v must have one shape and dtype");
    if (decay != 0 && shrink != 1)
        return reject(v, 4, "decay (Adam) and shrink (AdamW) exclude each other");
    Py_ssize_t n = v[0].len / v[0].itemsize;
    int coupled = decay != 0, decoupled = shrink != 1;
    Py_BEGIN_ALLOW_THREADS
    if (v[0].itemsize == 4)
        adam_f32(v[0].buf, v[1].buf, v[2].buf, v[3].buf, n, coupled, (float)decay, decoupled,
                 (float)shrink, (float)beta1, (float)(1 - beta1), (float)beta2,
                 (float)(1 - beta2), (float)bias2_sqrt, (float)eps, (float)step_size);
    else
        adam_f64(v[0].buf, v[1].buf, v[2].buf, v[3].buf, n, coupled, decay, decoupled, shrink,
                 beta1, 1 - beta1, beta2, 1 - beta2, bias2_sqrt, eps, step_size);
    Py_END_ALLOW_THREADS
    release(v, 4);
    Py_RETURN_NONE;
}

/* Fill a wide_geometry from x's or dx's (N, C, H, W) and the convolution's integers;
 * -1 and ValueError when they do not describe a stride-1 convolution. */
static int wide_setup(wide_geometry *g, const Py_buffer *image, const Py_ssize_t *ints)
{
    Py_ssize_t pad_top = ints[0], pad_left = ints[1], padded_h = ints[2], padded_w = ints[3];
    Py_ssize_t kernel_h = ints[4], kernel_w = ints[5], dilation_h = ints[6], dilation_w = ints[7];
    g->batch = image->shape[0];
    g->channels = image->shape[1];
    g->in_h = image->shape[2];
    g->in_w = image->shape[3];
    Py_ssize_t out_h = padded_h - dilation_h * (kernel_h - 1);
    Py_ssize_t out_w = padded_w - dilation_w * (kernel_w - 1);
    if (kernel_h < 1 || kernel_w < 1 || kernel_h * kernel_w > 64 || dilation_h < 1 ||
        dilation_w < 1 || pad_top < 0 || pad_left < 0 || g->in_h + pad_top > padded_h ||
        g->in_w + pad_left > padded_w || out_h < 1 || out_w < 1) {
        PyErr_SetString(PyExc_ValueError, "wide layout: kernel (at most 64 taps), dilation, "
                                          "padding and padded size do not fit the image");
        return -1;
    }
    g->pad_top = pad_top;
    g->pad_left = pad_left;
    g->padded_h = padded_h;
    g->padded_w = padded_w;
    g->taps = kernel_h * kernel_w;
    g->wide = out_h * padded_w;
    g->run = (out_h - 1) * padded_w + out_w;
    for (Py_ssize_t m = 0; m < kernel_h; m++)
        for (Py_ssize_t n = 0; n < kernel_w; n++)
            g->starts[m * kernel_w + n] = dilation_h * m * padded_w + dilation_w * n;
    return 0;
}

#define WIDE_INTS "nnnnnnnn"
#define WIDE_INT_ARGS(a) &a[0], &a[1], &a[2], &a[3], &a[4], &a[5], &a[6], &a[7]

PyDoc_STRVAR(wide_im2col_doc,
"wide_im2col(x, cols, pad_top, pad_left, padded_h, padded_w, kernel_h, kernel_w,\n"
"            dilation_h, dilation_w) -> None\n\n"
"For a stride-1 convolution, writes cols[(c, tap), b * wide : b * wide + run] = the\n"
"zero-padded plane x[b, c] flattened, from the tap's start on (cnnlab/ops/_conv_wide.py).\n"
"x: (N, C, H, W) float32/float64; cols: (>= C kH kW, N wide) of x's dtype, wide =\n"
"H_out W'. Other entries of cols are left as they are. Both C-contiguous.");

static PyObject *py_wide_im2col(PyObject *self, PyObject *args)
{
    static const arg_spec specs[2] = {{"x", 'F', 0, 4}, {"cols", 'F', 1, 2}};
    PyObject *objects[2];
    Py_ssize_t ints[8];
    Py_buffer v[2];
    wide_geometry g;
    if (!PyArg_ParseTuple(args, "OO" WIDE_INTS ":wide_im2col", &objects[0], &objects[1],
                          WIDE_INT_ARGS(ints)) ||
        get_all(objects, specs, v, 2) < 0)
        return NULL;
    if (wide_setup(&g, &v[0], ints) < 0) {
        release(v, 2);
        return NULL;
    }
    if (v[0].itemsize != v[1].itemsize || v[1].shape[0] < g.channels * g.taps ||
        v[1].shape[1] != g.batch * g.wide)
        return reject(v, 2, "cols must be (C kH kW [+ 1], N H_out W') of x's dtype");
    void *scratch = PyMem_RawMalloc((size_t)(g.padded_h * g.padded_w * v[0].itemsize));
    if (!scratch) {
        release(v, 2);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    if (v[0].itemsize == 4)
        wide_im2col_f32(v[0].buf, v[1].buf, &g, scratch);
    else
        wide_im2col_f64(v[0].buf, v[1].buf, &g, scratch);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(scratch);
    release(v, 2);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(wide_col2im_doc,
"wide_col2im(dcols, dx, pad_top, pad_left, padded_h, padded_w, kernel_h, kernel_w,\n"
"            dilation_h, dilation_w) -> None\n\n"
"The adjoint of wide_im2col: dx[b, c] = the interior of the padded plane that is the\n"
"sum, tap by tap in order, of the runs dcols[(c, tap), b * wide : b * wide + run]\n"
"placed at the tap's start. dcols: (C kH kW, N wide); dx: (N, C, H, W), written whole.");

static PyObject *py_wide_col2im(PyObject *self, PyObject *args)
{
    static const arg_spec specs[2] = {{"dcols", 'F', 0, 2}, {"dx", 'F', 1, 4}};
    PyObject *objects[2];
    Py_ssize_t ints[8];
    Py_buffer v[2];
    wide_geometry g;
    if (!PyArg_ParseTuple(args, "OO" WIDE_INTS ":wide_col2im", &objects[0], &objects[1],
                          WIDE_INT_ARGS(ints)) ||
        get_all(objects, specs, v, 2) < 0)
        return NULL;
    if (wide_setup(&g, &v[1], ints) < 0) {
        release(v, 2);
        return NULL;
    }
    if (v[0].itemsize != v[1].itemsize || v[0].shape[0] != g.channels * g.taps ||
        v[0].shape[1] != g.batch * g.wide)
        return reject(v, 2, "dcols must be (C kH kW, N H_out W') of dx's dtype");
    void *scratch = PyMem_RawMalloc((size_t)(g.padded_h * g.padded_w * v[0].itemsize));
    if (!scratch) {
        release(v, 2);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    if (v[0].itemsize == 4)
        wide_col2im_f32(v[0].buf, v[1].buf, &g, scratch);
    else
        wide_col2im_f64(v[0].buf, v[1].buf, &g, scratch);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(scratch);
    release(v, 2);
    Py_RETURN_NONE;
}

/* Shared by the two layout copies: (N, C, H, W) and (C, N H W') with W' >= W. */
static PyObject *wide_copy(PyObject *args, const char *format, int to_wide)
{
    static const arg_spec nchw_to_wide_specs[2] = {{"y", 'F', 0, 4}, {"wide", 'F', 1, 2}};
    static const arg_spec wide_to_nchw_specs[2] = {{"wide", 'F', 0, 2}, {"y", 'F', 1, 4}};
    PyObject *objects[2];
    Py_buffer v[2];
    if (!PyArg_ParseTuple(args, format, &objects[0], &objects[1]) ||
        get_all(objects, to_wide ? nchw_to_wide_specs : wide_to_nchw_specs, v, 2) < 0)
        return NULL;
    const Py_buffer *nchw = &v[to_wide ? 0 : 1], *wide = &v[to_wide ? 1 : 0];
    Py_ssize_t batch = nchw->shape[0], channels = nchw->shape[1];
    Py_ssize_t height = nchw->shape[2], width = nchw->shape[3];
    Py_ssize_t rows = batch * height;
    if (v[0].itemsize != v[1].itemsize || wide->shape[0] != channels || rows == 0 ||
        wide->shape[1] % rows != 0 || wide->shape[1] / rows < width)
        return reject(v, 2, "the wide array must be (C, N H W') with W' >= W for y of "
                            "(N, C, H, W), one dtype");
    Py_ssize_t wide_w = wide->shape[1] / rows;
    Py_BEGIN_ALLOW_THREADS
    wide_rows_copy(v[0].buf, v[1].buf, batch, channels, height, width, wide_w, v[0].itemsize,
                   to_wide);
    Py_END_ALLOW_THREADS
    release(v, 2);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(wide_to_nchw_doc,
"wide_to_nchw(wide, y) -> None\n\n"
"y[b, c, i, :W] = wide[c, (b H + i) W' : (b H + i) W' + W]. wide: (C, N H W');\n"
"y: (N, C, H, W), W <= W', one float dtype, both C-contiguous.");

static PyObject *py_wide_to_nchw(PyObject *self, PyObject *args)
{
    return wide_copy(args, "OO:wide_to_nchw", 0);
}

PyDoc_STRVAR(nchw_to_wide_doc,
"nchw_to_wide(y, wide) -> None\n\n"
"The reverse of wide_to_nchw; entries W..W'-1 of each wide row are left as they are.");

static PyObject *py_nchw_to_wide(PyObject *self, PyObject *args)
{
    return wide_copy(args, "OO:nchw_to_wide", 1);
}

PyDoc_STRVAR(conv_relu_pool_usable_doc,
"conv_relu_pool_usable() -> bool\n\n"
"Whether conv_relu_pool_forward/backward run here (they need AVX-512).");

static PyObject *py_conv_relu_pool_usable(PyObject *self, PyObject *unused)
{
    return PyBool_FromLong(HAVE_AVX512_LOOPS && avx512_usable());
}

/* Checks shared by the fused conv's forward and backward; fills g. */
static int fused_setup(wide_geometry *g, const Py_buffer *x, const Py_buffer *weight,
                       const Py_buffer *pooled, const Py_buffer *code, const Py_ssize_t *pads)
{
    Py_ssize_t ints[8] = {pads[0], pads[1], pads[2], pads[3], weight->shape[2], weight->shape[3], 1, 1};
    if (x->itemsize != 4 || pooled->itemsize != 4) {
        PyErr_SetString(PyExc_ValueError, "the fused conv takes float32 images and outputs");
        return -1;
    }
    if (wide_setup(g, x, ints) < 0)
        return -1;
    Py_ssize_t out_h = g->padded_h - weight->shape[2] + 1, out_w = g->padded_w - weight->shape[3] + 1;
    if (weight->shape[1] != g->channels || pooled->shape[0] != g->batch ||
        pooled->shape[1] != weight->shape[0] || pooled->shape[2] != out_h / 2 ||
        pooled->shape[3] != out_w / 2 || !same_shape(pooled, code)) {
        PyErr_SetString(PyExc_ValueError, "fused conv: weight must be (C_out, C_in, kH, kW) for x of "
                                          "(N, C_in, H, W), y and code (N, C_out, H_out//2, W_out//2)");
        return -1;
    }
    return 0;
}

/* One zeroed allocation: the image's padded input planes, then `planes` conv-output planes
 * (each with the vector loops' slack); free it with PyMem_RawFree(*padded). -1 and
 * MemoryError when there is no memory. */
static int fused_scratch(const wide_geometry *g, Py_ssize_t planes, float **padded, float **rest)
{
    size_t inputs = (size_t)(g->padded_h * g->padded_w) * (size_t)g->channels + FUSED_SLACK;
    *padded = PyMem_RawCalloc(inputs + (size_t)planes * (size_t)(g->wide + FUSED_SLACK),
                              sizeof(float));
    if (!*padded) {
        PyErr_NoMemory();
        return -1;
    }
    *rest = *padded + inputs;
    return 0;
}

PyDoc_STRVAR(conv_relu_pool_forward_doc,
"conv_relu_pool_forward(x, weight, bias, y, code, pad_top, pad_left, padded_h, padded_w)\n\n"
"y = max_pool_2x2(relu(conv2d(x, weight, bias))) for a stride-1, undilated conv with the\n"
"given zero padding; code[b,c,i,j] = the window's first-maximum tap (0..3), or 255 where\n"
"the ReLU output is 0. float32, C-contiguous: x (N, C_in, H, W), weight (C_out, C_in, kH,\n"
"kW), bias (C_out,), y and code (N, C_out, H_out // 2, W_out // 2). Needs AVX-512.");

static PyObject *py_conv_relu_pool_forward(PyObject *self, PyObject *args)
{
    static const arg_spec specs[5] = {{"x", 'F', 0, 4}, {"weight", 'F', 0, 4}, {"bias", 'F', 0, 1},
                                      {"y", 'F', 1, 4}, {"code", 'B', 1, 4}};
    PyObject *objects[5];
    Py_ssize_t pads[4];
    Py_buffer v[5];
    wide_geometry g;
    if (!PyArg_ParseTuple(args, "OOOOOnnnn:conv_relu_pool_forward", &objects[0], &objects[1],
                          &objects[2], &objects[3], &objects[4], &pads[0], &pads[1], &pads[2],
                          &pads[3]) ||
        get_all(objects, specs, v, 5) < 0)
        return NULL;
    if (!(HAVE_AVX512_LOOPS && avx512_usable()))
        return reject(v, 5, "conv_relu_pool_forward needs AVX-512 (see conv_relu_pool_usable)");
    if (fused_setup(&g, &v[0], &v[1], &v[3], &v[4], pads) < 0) {
        release(v, 5);
        return NULL;
    }
    if (v[1].itemsize != 4 || v[2].itemsize != 4 || v[2].shape[0] != v[1].shape[0])
        return reject(v, 5, "weight and bias must be float32, bias of shape (C_out,)");
    float *padded, *planes;
    if (fused_scratch(&g, CONV_CHANNELS, &padded, &planes) < 0) {
        release(v, 5);
        return NULL;
    }
#if HAVE_AVX512_LOOPS
    Py_BEGIN_ALLOW_THREADS
    conv_relu_pool_forward_f32(v[0].buf, v[1].buf, v[2].buf, v[3].buf, v[4].buf, v[1].shape[0],
                               v[3].shape[2], v[3].shape[3], &g, padded, planes);
    Py_END_ALLOW_THREADS
#endif
    PyMem_RawFree(padded);
    release(v, 5);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(conv_relu_pool_backward_doc,
"conv_relu_pool_backward(x, dy, code, dweight, dbias, pad_top, pad_left, padded_h, padded_w)\n\n"
"The weight and bias gradients of conv_relu_pool_forward (the input's is not computed):\n"
"dweight (C_out, C_in, kH, kW) and dbias (C_out,), float64 accumulators, are added to.\n"
"x as given to the forward, dy (y's shape, float32), code from the forward.");

static PyObject *py_conv_relu_pool_backward(PyObject *self, PyObject *args)
{
    static const arg_spec specs[5] = {{"x", 'F', 0, 4}, {"dy", 'F', 0, 4}, {"code", 'B', 0, 4},
                                      {"dweight", 'F', 1, 4}, {"dbias", 'F', 1, 1}};
    PyObject *objects[5];
    Py_ssize_t pads[4];
    Py_buffer v[5];
    wide_geometry g;
    if (!PyArg_ParseTuple(args, "OOOOOnnnn:conv_relu_pool_backward", &objects[0], &objects[1],
                          &objects[2], &objects[3], &objects[4], &pads[0], &pads[1], &pads[2],
                          &pads[3]) ||
        get_all(objects, specs, v, 5) < 0)
        return NULL;
    if (!(HAVE_AVX512_LOOPS && avx512_usable()))
        return reject(v, 5, "conv_relu_pool_backward needs AVX-512 (see conv_relu_pool_usable)");
    if (v[3].itemsize != 8 || v[4].itemsize != 8 || v[4].shape[0] != v[3].shape[0])
        return reject(v, 5, "dweight and dbias must be float64, (C_out, C_in, kH, kW) and (C_out,)");
    if (fused_setup(&g, &v[0], &v[3], &v[1], &v[2], pads) < 0) {
        release(v, 5);
        return NULL;
    }
    float *padded, *gradient;
    if (fused_scratch(&g, 1, &padded, &gradient) < 0) {
        release(v, 5);
        return NULL;
    }
#if HAVE_AVX512_LOOPS
    Py_BEGIN_ALLOW_THREADS
    conv_relu_pool_backward_f32(v[0].buf, v[1].buf, v[2].buf, v[3].buf, v[4].buf, v[3].shape[0],
                                v[1].shape[2], v[1].shape[3], &g, padded, gradient);
    Py_END_ALLOW_THREADS
#endif
    PyMem_RawFree(padded);
    release(v, 5);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"conv_relu_pool_usable", py_conv_relu_pool_usable, METH_NOARGS, conv_relu_pool_usable_doc},
    {"conv_relu_pool_forward", py_conv_relu_pool_forward, METH_VARARGS, conv_relu_pool_forward_doc},
    {"conv_relu_pool_backward", py_conv_relu_pool_backward, METH_VARARGS, conv_relu_pool_backward_doc},
    {"wide_im2col", py_wide_im2col, METH_VARARGS, wide_im2col_doc},
    {"wide_col2im", py_wide_col2im, METH_VARARGS, wide_col2im_doc},
    {"wide_to_nchw", py_wide_to_nchw, METH_VARARGS, wide_to_nchw_doc},
    {"nchw_to_wide", py_nchw_to_wide, METH_VARARGS, nchw_to_wide_doc},
    {"max_pool_2x2_forward", py_pool_forward, METH_VARARGS, pool_forward_doc},
    {"max_pool_2x2_backward", py_pool_backward, METH_VARARGS, pool_backward_doc},
    {"relu_forward", py_relu_forward, METH_VARARGS, relu_forward_doc},
    {"relu_backward", py_relu_backward, METH_VARARGS, relu_backward_doc},
    {"adam_step", py_adam, METH_VARARGS, adam_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "cnnlab._loops",
    "Single-pass C loops for max pooling, ReLU, Adam and the wide im2col layout\n"
    "(see cnnlab/ops/_kernels.py).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__loops(void)
{
    PyObject *module = PyModule_Create(&moduledef);
    if (module && PyModule_AddFunctions(module, winograd_methods) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
