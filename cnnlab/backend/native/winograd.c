/*
 * winograd.c: the transforms of the Winograd convolution F(2x2, 3x3) (cnnlab/ops/_winograd.py).
 *
 * A 3x3, stride-1 convolution computes each 2x2 block of outputs from a 4x4 tile of the
 * padded input (tiles 2 apart, overlapping by 2). Lavin & Gray (2016):
 *
 *     Y_tile = A^T [ (G g G^T) (.) (B^T d B) ] A         (.) = elementwise, 4x4
 *
 *     B^T = | 1  0 -1  0 |     G = |  1    0    0  |     A^T = | 1  1  1  0 |
 *           | 0  1  1  0 |         | 1/2  1/2  1/2 |           | 0  1 -1 -1 |
 *           | 0 -1  1  0 |         | 1/2 -1/2  1/2 |
 *           | 0  1  0 -1 |         |  0    0    1  |
 *
 * The sum over input channels of the 16 elementwise products is 16 matrix products
 * (one per position xi of the 4x4 tile), with 16 multiplies per tile where the direct
 * sum takes 36: 2.25x fewer. The backward uses the adjoints of the same maps:
 *   dW = sum over tiles of G^T [ (A dY A^T) (.) (B^T d B) ] G      (16 GEMMs over tiles)
 *   dX_tile = B [ U^T-products of (A dY A^T) ] B^T, added into the padded plane.
 *
 * Here are the four data transforms, each vectorised over 16 neighbouring tiles of a tile
 * row (AVX-512; masked loads and stores at the row's end). Layouts: images and gradients
 * NCHW; transformed arrays (16, channels, tiles), tiles numbered (image, tile row, tile
 * column) within the chunk of images passed in.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>

#include "buffers.h"

#if HAVE_AVX512_LOOPS

typedef struct {
    Py_ssize_t batch, channels, height, width;  /* the images (or their gradient) */
    Py_ssize_t pad_top, pad_left;
    Py_ssize_t tile_rows, tile_cols, tiles;     /* per image: th, tw, th * tw */
    Py_ssize_t stride;                          /* of the padded plane's rows: 2 tw + 2 */
} tiling;

static inline __mmask16 first_lanes(Py_ssize_t count)
{
    count = count < 0 ? 0 : count > 16 ? 16 : count;
    return (__mmask16)((1u << count) - 1);
}

/* Columns 2l, 2l + 1, 2l + 2, 2l + 3 of `row` for tiles l < count (<= 16): four vectors. */
AVX512_LOOPS static inline void tile_columns(const float *row, Py_ssize_t count, __m512 *c)
{
    const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odds = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512i evens2 = _mm512_setr_epi32(2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 0);
    const __m512i odds2 = _mm512_setr_epi32(3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 0);
    Py_ssize_t floats = 2 * count + 2;
    __m512 low = _mm512_maskz_loadu_ps(first_lanes(floats), row);
    __m512 high = _mm512_maskz_loadu_ps(first_lanes(floats - 16), row + 16);
    __m512 last = _mm512_maskz_loadu_ps(first_lanes(floats - 32), row + 32);
    c[0] = _mm512_permutex2var_ps(low, evens, high);
    c[1] = _mm512_permutex2var_ps(low, odds, high);
    /* lane 15 of columns 2l + 2 and 2l + 3 comes from the third load */
    c[2] = _mm512_mask_permutexvar_ps(_mm512_permutex2var_ps(low, evens2, high), 0x8000,
                                      _mm512_setzero_si512(), last);
    c[3] = _mm512_mask_permutexvar_ps(_mm512_permutex2var_ps(low, odds2, high), 0x8000,
                                      _mm512_set1_epi32(1), last);
}

/* Interleave a and b (a0 b0 a1 b1 ...): the first 16 floats, then the next 16. */
AVX512_LOOPS static inline void interleave(__m512 a, __m512 b, __m512 *first, __m512 *second)
{
    const __m512i low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    *first = _mm512_permutex2var_ps(a, low, b);
    *second = _mm512_permutex2var_ps(a, high, b);
}

/* The image plane x (height x width) into the zero-bordered plane (its border stays zero). */
static void pad_plane(const float *x, float *plane, const tiling *t)
{
    for (Py_ssize_t i = 0; i < t->height; i++)
        memcpy(plane + (i + t->pad_top) * t->stride + t->pad_left, x + i * t->width,
               (size_t)t->width * sizeof(float));
}

/* V[xi][c][tile] = (B^T d B)[xi] for every tile d of every plane x[b, c]. */
AVX512_LOOPS static void input_transform(const float *x, float *v, const tiling *t, float *plane)
{
    Py_ssize_t all_tiles = t->batch * t->tiles;
    for (Py_ssize_t b = 0; b < t->batch; b++)
        for (Py_ssize_t c = 0; c < t->channels; c++) {
            pad_plane(x + (b * t->channels + c) * t->height * t->width, plane, t);
            for (Py_ssize_t ti = 0; ti < t->tile_rows; ti++)
                for (Py_ssize_t j = 0; j < t->tile_cols; j += 16) {
                    Py_ssize_t count = t->tile_cols - j < 16 ? t->tile_cols - j : 16;
                    __m512 d[4][4], u[4][4];
                    for (int r = 0; r < 4; r++)
                        tile_columns(plane + (2 * ti + r) * t->stride + 2 * j, count, d[r]);
                    for (int s = 0; s < 4; s++) {  /* B^T d */
                        u[0][s] = _mm512_sub_ps(d[0][s], d[2][s]);
                        u[1][s] = _mm512_add_ps(d[1][s], d[2][s]);
                        u[2][s] = _mm512_sub_ps(d[2][s], d[1][s]);
                        u[3][s] = _mm512_sub_ps(d[1][s], d[3][s]);
                    }
                    float *out = v + c * all_tiles + b * t->tiles + ti * t->tile_cols + j;
                    Py_ssize_t plane_step = t->channels * all_tiles;  /* from xi to xi + 1 */
                    __mmask16 lanes = first_lanes(count);
                    for (int a = 0; a < 4; a++) {  /* (B^T d) B */
                        __m512 row[4] = {_mm512_sub_ps(u[a][0], u[a][2]), _mm512_add_ps(u[a][1], u[a][2]),
                                         _mm512_sub_ps(u[a][2], u[a][1]), _mm512_sub_ps(u[a][1], u[a][3])};
                        for (int s = 0; s < 4; s++)
                            _mm512_mask_storeu_ps(out + (4 * a + s) * plane_step, lanes, row[s]);
                    }
                }
        }
}

/* y[b, o] (out_h x out_w) = A^T M A + bias[o], tile by tile. */
AVX512_LOOPS static void output_transform(const float *m, const float *bias, float *y,
                                             const tiling *t, Py_ssize_t out_h, Py_ssize_t out_w)
{
    Py_ssize_t all_tiles = t->batch * t->tiles, plane_step = t->channels * all_tiles;
    for (Py_ssize_t b = 0; b < t->batch; b++)
        for (Py_ssize_t o = 0; o < t->channels; o++) {
            __m512 shift = _mm512_set1_ps(bias[o]);
            float *target = y + (b * t->channels + o) * out_h * out_w;
            for (Py_ssize_t ti = 0; ti < t->tile_rows; ti++)
                for (Py_ssize_t j = 0; j < t->tile_cols; j += 16) {
                    Py_ssize_t count = t->tile_cols - j < 16 ? t->tile_cols - j : 16;
                    const float *in = m + o * all_tiles + b * t->tiles + ti * t->tile_cols + j;
                    __mmask16 lanes = first_lanes(count);
                    __m512 q[4][4], s0[4], s1[4];
                    for (int a = 0; a < 4; a++)
                        for (int s = 0; s < 4; s++)
                            q[a][s] = _mm512_maskz_loadu_ps(lanes, in + (4 * a + s) * plane_step);
                    for (int s = 0; s < 4; s++) {  /* A^T M */
                        s0[s] = _mm512_add_ps(_mm512_add_ps(q[0][s], q[1][s]), q[2][s]);
                        s1[s] = _mm512_sub_ps(_mm512_sub_ps(q[1][s], q[2][s]), q[3][s]);
                    }
                    __m512 *rows[2] = {s0, s1};
                    for (int r = 0; r < 2 && 2 * ti + r < out_h; r++) {  /* (A^T M) A */
                        __m512 *p = rows[r];
                        __m512 left = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(p[0], p[1]), p[2]), shift);
                        __m512 right = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(p[1], p[2]), p[3]), shift);
                        __m512 first, second;
                        interleave(left, right, &first, &second);
                        Py_ssize_t columns = out_w - 2 * j < 2 * count ? out_w - 2 * j : 2 * count;
                        float *row = target + (2 * ti + r) * out_w + 2 * j;
                        _mm512_mask_storeu_ps(row, first_lanes(columns), first);
                        _mm512_mask_storeu_ps(row + 16, first_lanes(columns - 16), second);
                    }
                }
        }
}

/* Yhat[xi][o][tile] = (A g A^T)[xi] for the 2x2 blocks g of dy[b, o] (zero past its edge);
 * dbias[o] += the sum of dy[b, o]. */
AVX512_LOOPS static void grad_output_transform(const float *dy, float *yhat, double *dbias,
                                                  const tiling *t, Py_ssize_t out_h, Py_ssize_t out_w)
{
    const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odds = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    Py_ssize_t all_tiles = t->batch * t->tiles, plane_step = t->channels * all_tiles;
    for (Py_ssize_t b = 0; b < t->batch; b++)
        for (Py_ssize_t o = 0; o < t->channels; o++) {
            const float *source = dy + (b * t->channels + o) * out_h * out_w;
            __m512 total = _mm512_setzero_ps();
            for (Py_ssize_t ti = 0; ti < t->tile_rows; ti++)
                for (Py_ssize_t j = 0; j < t->tile_cols; j += 16) {
                    Py_ssize_t count = t->tile_cols - j < 16 ? t->tile_cols - j : 16;
                    Py_ssize_t columns = out_w - 2 * j < 2 * count ? out_w - 2 * j : 2 * count;
                    __m512 g[2][2];
                    for (int r = 0; r < 2; r++) {
                        __m512 low = _mm512_setzero_ps(), high = _mm512_setzero_ps();
                        if (2 * ti + r < out_h) {
                            const float *row = source + (2 * ti + r) * out_w + 2 * j;
                            low = _mm512_maskz_loadu_ps(first_lanes(columns), row);
                            high = _mm512_maskz_loadu_ps(first_lanes(columns - 16), row + 16);
                        }
                        total = _mm512_add_ps(total, _mm512_add_ps(low, high));
                        g[r][0] = _mm512_permutex2var_ps(low, evens, high);
                        g[r][1] = _mm512_permutex2var_ps(low, odds, high);
                    }
                    __m512 h[4][2];
                    for (int s = 0; s < 2; s++) {  /* A g, A = [[1, 0], [1, 1], [1, -1], [0, -1]] */
                        h[0][s] = g[0][s];
                        h[1][s] = _mm512_add_ps(g[0][s], g[1][s]);
                        h[2][s] = _mm512_sub_ps(g[0][s], g[1][s]);
                        h[3][s] = _mm512_sub_ps(_mm512_setzero_ps(), g[1][s]);
                    }
                    float *out = yhat + o * all_tiles + b * t->tiles + ti * t->tile_cols + j;
                    __mmask16 lanes = first_lanes(count);
                    for (int a = 0; a < 4; a++) {  /* (A g) A^T */
                        __m512 row[4] = {h[a][0], _mm512_add_ps(h[a][0], h[a][1]),
                                         _mm512_sub_ps(h[a][0], h[a][1]),
                                         _mm512_sub_ps(_mm512_setzero_ps(), h[a][1])};
                        for (int s = 0; s < 4; s++)
                            _mm512_mask_storeu_ps(out + (4 * a + s) * plane_step, lanes, row[s]);
                    }
                }
            dbias[o] += _mm512_reduce_add_ps(total);
        }
}

/* row[0 : count] += first, second (16 floats each) */
AVX512_LOOPS static inline void add_to_row(float *row, __m512 first, __m512 second, Py_ssize_t count)
{
    __mmask16 low = first_lanes(count), high = first_lanes(count - 16);
    _mm512_mask_storeu_ps(row, low, _mm512_add_ps(_mm512_maskz_loadu_ps(low, row), first));
    _mm512_mask_storeu_ps(row + 16, high, _mm512_add_ps(_mm512_maskz_loadu_ps(high, row + 16), second));
}

/* dx[b, c] = the interior of the padded plane to which every tile adds B dV B^T. */
AVX512_LOOPS static void grad_input_transform(const float *dv, float *dx, const tiling *t,
                                                 float *plane)
{
    Py_ssize_t all_tiles = t->batch * t->tiles, plane_step = t->channels * all_tiles;
    Py_ssize_t plane_floats = (2 * t->tile_rows + 2) * t->stride;
    for (Py_ssize_t b = 0; b < t->batch; b++)
        for (Py_ssize_t c = 0; c < t->channels; c++) {
            memset(plane, 0, (size_t)plane_floats * sizeof(float));
            for (Py_ssize_t ti = 0; ti < t->tile_rows; ti++)
                for (Py_ssize_t j = 0; j < t->tile_cols; j += 16) {
                    Py_ssize_t count = t->tile_cols - j < 16 ? t->tile_cols - j : 16;
                    const float *in = dv + c * all_tiles + b * t->tiles + ti * t->tile_cols + j;
                    __mmask16 lanes = first_lanes(count);
                    __m512 q[4][4], e[4][4];
                    for (int a = 0; a < 4; a++)
                        for (int s = 0; s < 4; s++)
                            q[a][s] = _mm512_maskz_loadu_ps(lanes, in + (4 * a + s) * plane_step);
                    for (int s = 0; s < 4; s++) {  /* B q, B = (B^T)^T */
                        e[0][s] = q[0][s];
                        e[1][s] = _mm512_add_ps(_mm512_sub_ps(q[1][s], q[2][s]), q[3][s]);
                        e[2][s] = _mm512_add_ps(_mm512_sub_ps(q[1][s], q[0][s]), q[2][s]);
                        e[3][s] = _mm512_sub_ps(_mm512_setzero_ps(), q[3][s]);
                    }
                    for (int r = 0; r < 4; r++) {  /* (B q) B^T, added at columns 2l .. 2l + 3 */
                        __m512 f0 = e[r][0];
                        __m512 f1 = _mm512_add_ps(_mm512_sub_ps(e[r][1], e[r][2]), e[r][3]);
                        __m512 f2 = _mm512_add_ps(_mm512_sub_ps(e[r][1], e[r][0]), e[r][2]);
                        __m512 f3 = _mm512_sub_ps(_mm512_setzero_ps(), e[r][3]);
                        float *row = plane + (2 * ti + r) * t->stride + 2 * j;
                        __m512 first, second;
                        interleave(f0, f1, &first, &second);
                        add_to_row(row, first, second, 2 * count);
                        interleave(f2, f3, &first, &second);
                        add_to_row(row + 2, first, second, 2 * count);
                    }
                }
            float *target = dx + (b * t->channels + c) * t->height * t->width;
            for (Py_ssize_t i = 0; i < t->height; i++)
                memcpy(target + i * t->width, plane + (i + t->pad_top) * t->stride + t->pad_left,
                       (size_t)t->width * sizeof(float));
        }
}
/* The output transform fused with ReLU and a 2x2 max pool: each tile's 2x2 outputs are
 * exactly one pool window, so y[b, o, ti, tj] = max(relu(A^T M A + bias)) of the tile and
 * code = the window's first-maximum tap (0..3, row-major) or 255 where that max is <= 0
 * (as the fused ReLU -> MaxPool2d of cnnlab/nn/module.py). pool_h x pool_w windows. */
AVX512_LOOPS static void output_relu_pool_transform(const float *m, const float *bias, float *y,
                                                       unsigned char *code, const tiling *t,
                                                       Py_ssize_t pool_h, Py_ssize_t pool_w)
{
    Py_ssize_t all_tiles = t->batch * t->tiles, plane_step = t->channels * all_tiles;
    const __m512 zero = _mm512_setzero_ps();
    const __m512i inactive = _mm512_set1_epi32(255);
    for (Py_ssize_t b = 0; b < t->batch; b++)
        for (Py_ssize_t o = 0; o < t->channels; o++) {
            __m512 shift = _mm512_set1_ps(bias[o]);
            Py_ssize_t plane = (b * t->channels + o) * pool_h * pool_w;
            for (Py_ssize_t ti = 0; ti < pool_h; ti++)
                for (Py_ssize_t j = 0; j < pool_w; j += 16) {
                    Py_ssize_t count = pool_w - j < 16 ? pool_w - j : 16;
                    const float *in = m + o * all_tiles + b * t->tiles + ti * t->tile_cols + j;
                    __mmask16 lanes = first_lanes(count);
                    __m512 q[4][4], s0[4], s1[4];
                    for (int a = 0; a < 4; a++)
                        for (int s = 0; s < 4; s++)
                            q[a][s] = _mm512_maskz_loadu_ps(lanes, in + (4 * a + s) * plane_step);
                    for (int s = 0; s < 4; s++) {  /* A^T M */
                        s0[s] = _mm512_add_ps(_mm512_add_ps(q[0][s], q[1][s]), q[2][s]);
                        s1[s] = _mm512_sub_ps(_mm512_sub_ps(q[1][s], q[2][s]), q[3][s]);
                    }
                    /* the window, taps in row-major order */
                    __m512 x0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s0[0], s0[1]), s0[2]), shift);
                    __m512 x1 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s0[1], s0[2]), s0[3]), shift);
                    __m512 x2 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s1[0], s1[1]), s1[2]), shift);
                    __m512 x3 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s1[1], s1[2]), s1[3]), shift);
                    /* first maximum (strictly larger replaces), NaN wins, as the 2x2 pool */
                    __m512 best = x0;
                    __m512i tap = _mm512_setzero_si512();
                    __m512 candidates[3] = {x1, x2, x3};
                    for (int k = 0; k < 3; k++) {
                        __mmask16 over = _mm512_cmp_ps_mask(candidates[k], best, _CMP_GT_OQ);
                        __mmask16 nan = _mm512_cmp_ps_mask(best, best, _CMP_UNORD_Q);
                        tap = _mm512_mask_mov_epi32(tap, over, _mm512_set1_epi32(k + 1));
                        best = _mm512_mask_blend_ps(nan, _mm512_max_ps(best, candidates[k]), best);
                    }
                    __mmask16 active = _mm512_cmp_ps_mask(best, zero, _CMP_GT_OQ);
                    tap = _mm512_mask_mov_epi32(inactive, active, tap);
                    __m512 value = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(best, best, _CMP_UNORD_Q),
                                                        _mm512_max_ps(best, zero), best);
                    _mm512_mask_storeu_ps(y + plane + ti * pool_w + j, lanes, value);
                    _mm_mask_storeu_epi8(code + plane + ti * pool_w + j, lanes, _mm512_cvtepi32_epi8(tap));
                }
        }
}

/* grad_output_transform for the fused block: the 2x2 block g of the conv output's gradient
 * is the pooled gradient at the recorded tap (0 elsewhere, and 0 for code 255 and for tiles
 * past the last whole window). */
AVX512_LOOPS static void grad_output_pooled_transform(const float *dp, const unsigned char *code,
                                                         float *yhat, double *dbias, const tiling *t,
                                                         Py_ssize_t pool_h, Py_ssize_t pool_w)
{
    Py_ssize_t all_tiles = t->batch * t->tiles, plane_step = t->channels * all_tiles;
    const __m512 zero = _mm512_setzero_ps();
    for (Py_ssize_t b = 0; b < t->batch; b++)
        for (Py_ssize_t o = 0; o < t->channels; o++) {
            Py_ssize_t plane = (b * t->channels + o) * pool_h * pool_w;
            __m512 total = zero;
            for (Py_ssize_t ti = 0; ti < t->tile_rows; ti++)
                for (Py_ssize_t j = 0; j < t->tile_cols; j += 16) {
                    Py_ssize_t count = t->tile_cols - j < 16 ? t->tile_cols - j : 16;
                    __m512 gradient = zero;
                    __m512i tap = _mm512_set1_epi32(255);
                    if (ti < pool_h && j < pool_w) {
                        __mmask16 windows = first_lanes(pool_w - j < count ? pool_w - j : count);
                        gradient = _mm512_maskz_loadu_ps(windows, dp + plane + ti * pool_w + j);
                        tap = _mm512_mask_cvtepu8_epi32(tap, windows,
                                                        _mm_maskz_loadu_epi8(windows, code + plane + ti * pool_w + j));
                    }
                    __m512 g[2][2];
                    for (int r = 0; r < 2; r++)
                        for (int s = 0; s < 2; s++)
                            g[r][s] = _mm512_maskz_mov_ps(
                                _mm512_cmpeq_epi32_mask(tap, _mm512_set1_epi32(2 * r + s)), gradient);
                    total = _mm512_add_ps(total, _mm512_add_ps(_mm512_add_ps(g[0][0], g[0][1]),
                                                               _mm512_add_ps(g[1][0], g[1][1])));
                    __m512 h[4][2];
                    for (int s = 0; s < 2; s++) {  /* A g */
                        h[0][s] = g[0][s];
                        h[1][s] = _mm512_add_ps(g[0][s], g[1][s]);
                        h[2][s] = _mm512_sub_ps(g[0][s], g[1][s]);
                        h[3][s] = _mm512_sub_ps(zero, g[1][s]);
                    }
                    float *out = yhat + o * all_tiles + b * t->tiles + ti * t->tile_cols + j;
                    __mmask16 lanes = first_lanes(count);
                    for (int a = 0; a < 4; a++) {  /* (A g) A^T */
                        __m512 row[4] = {h[a][0], _mm512_add_ps(h[a][0], h[a][1]),
                                         _mm512_sub_ps(h[a][0], h[a][1]), _mm512_sub_ps(zero, h[a][1])};
                        for (int s = 0; s < 4; s++)
                            _mm512_mask_storeu_ps(out + (4 * a + s) * plane_step, lanes, row[s]);
                    }
                }
            dbias[o] += _mm512_reduce_add_ps(total);
        }
}
#endif

/* ------------------------------------------------------------------------ */
/* Python binding                                                           */
/* ------------------------------------------------------------------------ */

/* The tiling of images (N, C, H, W) whose conv output is out_h x out_w; -1 and an error
 * when the arrays are not float32 or the sizes do not fit. */
static int make_tiling(tiling *t, const Py_buffer *images, const Py_buffer *transformed,
                       Py_ssize_t pad_top, Py_ssize_t pad_left, Py_ssize_t out_h, Py_ssize_t out_w)
{
    if (!HAVE_AVX512_LOOPS || !avx512_usable()) {
        PyErr_SetString(PyExc_RuntimeError, "the Winograd transforms need AVX-512 "
                                            "(see winograd_usable)");
        return -1;
    }
    t->batch = images->shape[0];
    t->channels = images->shape[1];
    t->height = images->shape[2];
    t->width = images->shape[3];
    t->pad_top = pad_top;
    t->pad_left = pad_left;
    t->tile_rows = (out_h + 1) / 2;
    t->tile_cols = (out_w + 1) / 2;
    t->tiles = t->tile_rows * t->tile_cols;
    t->stride = 2 * t->tile_cols + 2;
    if (images->itemsize != 4 || transformed->itemsize != 4) {
        PyErr_SetString(PyExc_ValueError, "the Winograd transforms take float32 arrays");
        return -1;
    }
    if (out_h < 1 || out_w < 1 || pad_top < 0 || pad_left < 0 ||
        pad_top + t->height > 2 * t->tile_rows + 2 || pad_left + t->width > t->stride ||
        transformed->shape[0] != 16 || transformed->shape[1] != t->channels ||
        transformed->shape[2] != t->batch * t->tiles) {
        PyErr_SetString(PyExc_ValueError, "Winograd: the transformed array must be (16, C, N th tw), "
                                          "th, tw = ceil(out / 2), with the padding inside the tiles");
        return -1;
    }
    return 0;
}

static float *plane_scratch(const tiling *t)
{
    float *plane = PyMem_RawCalloc((size_t)((2 * t->tile_rows + 2) * t->stride), sizeof(float));
    if (!plane)
        PyErr_NoMemory();
    return plane;
}

PyDoc_STRVAR(usable_doc, "winograd_usable() -> bool: whether the transforms run here (AVX-512).");

static PyObject *py_usable(PyObject *self, PyObject *unused)
{
    return PyBool_FromLong(HAVE_AVX512_LOOPS && avx512_usable());
}

PyDoc_STRVAR(output_doc,
"winograd_output(m, bias, y) -> None\n\n"
"y[b, o] = A^T m A + bias[o], tile by tile. m: (16, C_out, N th tw); bias: (C_out,);\n"
"y: (N, C_out, H_out, W_out); float32.");

PyDoc_STRVAR(grad_output_doc,
"winograd_grad_output(dy, yhat, dbias) -> None\n\n"
"yhat[xi, o, tile] = (A g A^T)[xi] for each 2x2 block g of dy[b, o]; dbias[o] += the\n"
"sum of dy[b, o]. dy: (N, C_out, H_out, W_out) float32; yhat: (16, C_out, N th tw)\n"
"float32; dbias: (C_out,) float64.");

/* Both maps between a conv output (N, C_out, H_out, W_out) and its tiles (16, C_out, N th tw)
 * that take a per-channel vector: output_transform (tiles, bias float32 -> image) or
 * grad_output_transform (image -> tiles, dbias float64 accumulated). */
static PyObject *output_map(PyObject *args, const char *format, int to_image)
{
    static const arg_spec output_specs[3] = {{"m", 'F', 0, 3}, {"bias", 'F', 0, 1}, {"y", 'F', 1, 4}};
    static const arg_spec grad_specs[3] = {{"dy", 'F', 0, 4}, {"yhat", 'F', 1, 3}, {"dbias", 'F', 1, 1}};
    PyObject *objects[3];
    Py_buffer v[3];
    tiling t;
    if (!PyArg_ParseTuple(args, format, &objects[0], &objects[1], &objects[2]) ||
        get_all(objects, to_image ? output_specs : grad_specs, v, 3) < 0)
        return NULL;
    const Py_buffer *image = &v[to_image ? 2 : 0], *tiles = &v[to_image ? 0 : 1];
    const Py_buffer *vector = &v[to_image ? 1 : 2];
    /* the output's own tiling: no padding, its size is the conv's output size */
    if (make_tiling(&t, image, tiles, 0, 0, image->shape[2], image->shape[3]) < 0) {
        release(v, 3);
        return NULL;
    }
    if (vector->itemsize != (to_image ? 4 : 8) || vector->shape[0] != t.channels)
        return reject(v, 3, to_image ? "bias must be float32 of shape (C_out,)"
                                     : "dbias must be float64 of shape (C_out,)");
#if HAVE_AVX512_LOOPS
    Py_BEGIN_ALLOW_THREADS
    if (to_image)
        output_transform(v[0].buf, v[1].buf, v[2].buf, &t, image->shape[2], image->shape[3]);
    else
        grad_output_transform(v[0].buf, v[1].buf, v[2].buf, &t, image->shape[2], image->shape[3]);
    Py_END_ALLOW_THREADS
#endif
    release(v, 3);
    Py_RETURN_NONE;
}

static PyObject *py_output(PyObject *self, PyObject *args)
{
    return output_map(args, "OOO:winograd_output", 1);
}

static PyObject *py_grad_output(PyObject *self, PyObject *args)
{
    return output_map(args, "OOO:winograd_grad_output", 0);
}

PyDoc_STRVAR(input_doc,
"winograd_input(x, v, pad_top, pad_left, out_h, out_w) -> None\n\n"
"v[xi, c, tile] = (B^T d B)[xi] for each 4x4 tile d of the zero-padded x[b, c].\n"
"x: (N, C, H, W); v: (16, C, N th tw), th = ceil(out_h / 2), tw likewise; float32.");

PyDoc_STRVAR(grad_input_doc,
"winograd_grad_input(dv, dx, pad_top, pad_left, out_h, out_w) -> None\n\n"
"dx[b, c] = the interior of the padded plane to which each tile adds B dv B^T.\n"
"dv: (16, C, N th tw); dx: (N, C, H, W), written whole; float32.");

/* Both transforms between the images (N, C, H, W) and their tiles (16, C, N th tw), which
 * go through a zero-padded plane: input_transform (to the tiles) or its adjoint. */
static PyObject *plane_transform(PyObject *args, const char *format, int to_tiles)
{
    static const arg_spec input_specs[2] = {{"x", 'F', 0, 4}, {"v", 'F', 1, 3}};
    static const arg_spec adjoint_specs[2] = {{"dv", 'F', 0, 3}, {"dx", 'F', 1, 4}};
    PyObject *objects[2];
    Py_ssize_t pad_top, pad_left, out_h, out_w;
    Py_buffer v[2];
    tiling t;
    if (!PyArg_ParseTuple(args, format, &objects[0], &objects[1], &pad_top, &pad_left, &out_h,
                          &out_w) ||
        get_all(objects, to_tiles ? input_specs : adjoint_specs, v, 2) < 0)
        return NULL;
    const Py_buffer *images = &v[to_tiles ? 0 : 1], *tiles = &v[to_tiles ? 1 : 0];
    if (make_tiling(&t, images, tiles, pad_top, pad_left, out_h, out_w) < 0) {
        release(v, 2);
        return NULL;
    }
    float *plane = plane_scratch(&t);
    if (plane) {
#if HAVE_AVX512_LOOPS
        Py_BEGIN_ALLOW_THREADS
        if (to_tiles)
            input_transform(v[0].buf, v[1].buf, &t, plane);
        else
            grad_input_transform(v[0].buf, v[1].buf, &t, plane);
        Py_END_ALLOW_THREADS
#endif
        PyMem_RawFree(plane);
    }
    release(v, 2);
    if (!plane)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_input(PyObject *self, PyObject *args)
{
    return plane_transform(args, "OOnnnn:winograd_input", 1);
}

static PyObject *py_grad_input(PyObject *self, PyObject *args)
{
    return plane_transform(args, "OOnnnn:winograd_grad_input", 0);
}

/* u[xi][f] = (G g_f G^T)[xi] for the filters g_f (3x3) of weight, f = (o, c). */
static void weight_transform(const float *weight, float *u, Py_ssize_t filters)
{
    for (Py_ssize_t f = 0; f < filters; f++) {
        const float *g = weight + 9 * f;
        float gg[4][3];  /* G g: rows 0..3 */
        for (int s = 0; s < 3; s++) {
            gg[0][s] = g[s];
            gg[1][s] = 0.5f * (g[s] + g[3 + s] + g[6 + s]);
            gg[2][s] = 0.5f * (g[s] - g[3 + s] + g[6 + s]);
            gg[3][s] = g[6 + s];
        }
        for (int a = 0; a < 4; a++) {  /* (G g) G^T */
            u[(4 * a + 0) * filters + f] = gg[a][0];
            u[(4 * a + 1) * filters + f] = 0.5f * (gg[a][0] + gg[a][1] + gg[a][2]);
            u[(4 * a + 2) * filters + f] = 0.5f * (gg[a][0] - gg[a][1] + gg[a][2]);
            u[(4 * a + 3) * filters + f] = gg[a][2];
        }
    }
}

/* dweight_f = G^T du_f G (3x3 from 4x4), the adjoint of weight_transform. */
static void weight_gradient(const float *du, float *dweight, Py_ssize_t filters)
{
    for (Py_ssize_t f = 0; f < filters; f++) {
        float d[4][4], h[3][4];
        for (int a = 0; a < 4; a++)
            for (int b = 0; b < 4; b++)
                d[a][b] = du[(4 * a + b) * filters + f];
        for (int b = 0; b < 4; b++) {  /* G^T d: G^T = [[1, 1/2, 1/2, 0], [0, 1/2, -1/2, 0], [0, 1/2, 1/2, 1]] */
            h[0][b] = d[0][b] + 0.5f * (d[1][b] + d[2][b]);
            h[1][b] = 0.5f * (d[1][b] - d[2][b]);
            h[2][b] = 0.5f * (d[1][b] + d[2][b]) + d[3][b];
        }
        float *out = dweight + 9 * f;
        for (int r = 0; r < 3; r++) {  /* (G^T d) G */
            out[3 * r + 0] = h[r][0] + 0.5f * (h[r][1] + h[r][2]);
            out[3 * r + 1] = 0.5f * (h[r][1] - h[r][2]);
            out[3 * r + 2] = 0.5f * (h[r][1] + h[r][2]) + h[r][3];
        }
    }
}

PyDoc_STRVAR(weights_doc,
"winograd_weights(weight, u) -> None\n\n"
"u[xi, o, c] = (G weight[o, c] G^T)[xi]. weight: (C_out, C_in, 3, 3); u: (16, C_out, C_in);\n"
"float32.");

PyDoc_STRVAR(weight_grad_doc,
"winograd_weight_grad(du, dweight) -> None\n\n"
"dweight[o, c] = G^T du[:, o, c] G, the adjoint of winograd_weights. du: (16, C_out, C_in);\n"
"dweight: (C_out, C_in, 3, 3); float32.");

/* Both weight maps: (16, C_out, C_in) <-> (C_out, C_in, 3, 3). */
static PyObject *weights_map(PyObject *args, const char *format, int to_tiles)
{
    static const arg_spec forward_specs[2] = {{"weight", 'F', 0, 4}, {"u", 'F', 1, 3}};
    static const arg_spec adjoint_specs[2] = {{"du", 'F', 0, 3}, {"dweight", 'F', 1, 4}};
    PyObject *objects[2];
    Py_buffer v[2];
    if (!PyArg_ParseTuple(args, format, &objects[0], &objects[1]) ||
        get_all(objects, to_tiles ? forward_specs : adjoint_specs, v, 2) < 0)
        return NULL;
    const Py_buffer *filters = &v[to_tiles ? 0 : 1], *tiles = &v[to_tiles ? 1 : 0];
    if (v[0].itemsize != 4 || v[1].itemsize != 4 || filters->shape[2] != 3 ||
        filters->shape[3] != 3 || tiles->shape[0] != 16 || tiles->shape[1] != filters->shape[0] ||
        tiles->shape[2] != filters->shape[1])
        return reject(v, 2, "Winograd weights: (C_out, C_in, 3, 3) and (16, C_out, C_in), float32");
    Py_ssize_t count = filters->shape[0] * filters->shape[1];
    Py_BEGIN_ALLOW_THREADS
    if (to_tiles)
        weight_transform(v[0].buf, v[1].buf, count);
    else
        weight_gradient(v[0].buf, v[1].buf, count);
    Py_END_ALLOW_THREADS
    release(v, 2);
    Py_RETURN_NONE;
}

static PyObject *py_weights(PyObject *self, PyObject *args)
{
    return weights_map(args, "OO:winograd_weights", 1);
}

static PyObject *py_weight_grad(PyObject *self, PyObject *args)
{
    return weights_map(args, "OO:winograd_weight_grad", 0);
}

/* The pooled arrays (N, C_out, H_out // 2, W_out // 2) of the fused block. */
static int pooled_fit(const Py_buffer *pooled, const Py_buffer *code, const tiling *t,
                      Py_ssize_t out_h, Py_ssize_t out_w)
{
    if (pooled->itemsize != 4 || pooled->shape[0] != t->batch || pooled->shape[1] != t->channels ||
        pooled->shape[2] != out_h / 2 || pooled->shape[3] != out_w / 2 || !same_shape(pooled, code)) {
        PyErr_SetString(PyExc_ValueError, "Winograd pooling: y and code must be (N, C_out, H_out // 2, "
                                          "W_out // 2), y float32, code uint8");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(output_pool_doc,
"winograd_output_relu_pool(m, bias, y, code, out_h, out_w) -> None\n\n"
"y = max_pool_2x2(relu(A^T m A + bias)) without storing the conv output; code = each\n"
"window's first-maximum tap (0..3), 255 where the ReLU output is 0. m: (16, C_out, N th tw);\n"
"y, code: (N, C_out, out_h // 2, out_w // 2), float32 and uint8.");

static PyObject *py_output_pool(PyObject *self, PyObject *args)
{
    static const arg_spec specs[4] = {{"m", 'F', 0, 3}, {"bias", 'F', 0, 1}, {"y", 'F', 1, 4},
                                      {"code", 'B', 1, 4}};
    PyObject *objects[4];
    Py_ssize_t out_h, out_w;
    Py_buffer v[4];
    tiling t;
    if (!PyArg_ParseTuple(args, "OOOOnn:winograd_output_relu_pool", &objects[0], &objects[1],
                          &objects[2], &objects[3], &out_h, &out_w) ||
        get_all(objects, specs, v, 4) < 0)
        return NULL;
    Py_buffer output_shape = v[2];  /* the conv output's tiling: channels from y, size given */
    Py_ssize_t shape[4] = {v[2].shape[0], v[2].shape[1], out_h, out_w};
    output_shape.shape = shape;
    if (make_tiling(&t, &output_shape, &v[0], 0, 0, out_h, out_w) < 0 ||
        pooled_fit(&v[2], &v[3], &t, out_h, out_w) < 0) {
        release(v, 4);
        return NULL;
    }
    if (v[1].itemsize != 4 || v[1].shape[0] != t.channels)
        return reject(v, 4, "bias must be float32 of shape (C_out,)");
#if HAVE_AVX512_LOOPS
    Py_BEGIN_ALLOW_THREADS
    output_relu_pool_transform(v[0].buf, v[1].buf, v[2].buf, v[3].buf, &t, out_h / 2, out_w / 2);
    Py_END_ALLOW_THREADS
#endif
    release(v, 4);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(grad_output_pool_doc,
"winograd_grad_output_pooled(dy, code, yhat, dbias, out_h, out_w) -> None\n\n"
"winograd_grad_output for the conv output's gradient that the fused pool and ReLU give:\n"
"dy (the pooled gradient) at each window's recorded tap, 0 elsewhere. dy, code as y and\n"
"code of winograd_output_relu_pool; yhat: (16, C_out, N th tw); dbias: (C_out,) float64.");

static PyObject *py_grad_output_pool(PyObject *self, PyObject *args)
{
    static const arg_spec specs[4] = {{"dy", 'F', 0, 4}, {"code", 'B', 0, 4}, {"yhat", 'F', 1, 3},
                                      {"dbias", 'F', 1, 1}};
    PyObject *objects[4];
    Py_ssize_t out_h, out_w;
    Py_buffer v[4];
    tiling t;
    if (!PyArg_ParseTuple(args, "OOOOnn:winograd_grad_output_pooled", &objects[0], &objects[1],
                          &objects[2], &objects[3], &out_h, &out_w) ||
        get_all(objects, specs, v, 4) < 0)
        return NULL;
    Py_buffer output_shape = v[0];
    Py_ssize_t shape[4] = {v[0].shape[0], v[0].shape[1], out_h, out_w};
    output_shape.shape = shape;
    if (make_tiling(&t, &output_shape, &v[2], 0, 0, out_h, out_w) < 0 ||
        pooled_fit(&v[0], &v[1], &t, out_h, out_w) < 0) {
        release(v, 4);
        return NULL;
    }
    if (v[3].itemsize != 8 || v[3].shape[0] != t.channels)
        return reject(v, 4, "dbias must be float64 of shape (C_out,)");
#if HAVE_AVX512_LOOPS
    Py_BEGIN_ALLOW_THREADS
    grad_output_pooled_transform(v[0].buf, v[1].buf, v[2].buf, v[3].buf, &t, out_h / 2, out_w / 2);
    Py_END_ALLOW_THREADS
#endif
    release(v, 4);
    Py_RETURN_NONE;
}

PyMethodDef winograd_methods[] = {
    {"winograd_output_relu_pool", py_output_pool, METH_VARARGS, output_pool_doc},
    {"winograd_grad_output_pooled", py_grad_output_pool, METH_VARARGS, grad_output_pool_doc},
    {"winograd_weights", py_weights, METH_VARARGS, weights_doc},
    {"winograd_weight_grad", py_weight_grad, METH_VARARGS, weight_grad_doc},
    {"winograd_usable", py_usable, METH_NOARGS, usable_doc},
    {"winograd_input", py_input, METH_VARARGS, input_doc},
    {"winograd_output", py_output, METH_VARARGS, output_doc},
    {"winograd_grad_output", py_grad_output, METH_VARARGS, grad_output_doc},
    {"winograd_grad_input", py_grad_input, METH_VARARGS, grad_input_doc},
    {NULL, NULL, 0, NULL},
};
