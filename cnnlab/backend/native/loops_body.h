/*
 * loops_body.h: the memory-bound loops and the fused first conv block, compiled once per
 * level (loops_<level>.c includes simd.h, then this file and winograd_body.h).
 *
 * Each loop computes exactly what the NumPy code beside its caller computes, bit for bit, in
 * the same order of float operations (the module is built with -ffp-contract=off, so no
 * multiply-add is fused): tests/test_kernels.py and tests/native/test_kernels.c check them.
 * The plain loops are written for the compiler to vectorise at the level's width; the 2x2
 * pool on float32 and the fused conv are written with the vectors of simd.h.
 */

/* Windows per pass of the chunked pool loops: four tap arrays of this many stay in L1. */
#define CHUNK 256

/* The chunked pool loops' cursor: window (i, j) of the current plane, whose top row is
 * `top`, moves to the next window in row-major order, across rows and planes. */
#define NEXT_WINDOW()                                                                     \
    do {                                                                                  \
        if (++j == out_w) {                                                               \
            j = 0;                                                                        \
            if (++i == out_h) {                                                           \
                i = 0;                                                                    \
                plane += in_h * in_w;                                                     \
            }                                                                             \
            top = plane + 2 * i * in_w;                                                   \
        }                                                                                 \
    } while (0)

#define DEFINE_KERNELS(T, S, SQRT)                                                        \
                                                                                          \
/* np.maximum(a, b): NaN wins, else the larger, else b (so -0.0 vs 0.0 gives b, as */    \
/* x86's maxps). Two selects: compilers vectorise this form, not one with `||`.     */    \
static inline T maximum_##S(T a, T b)                                                    \
{                                                                                         \
    T larger = a > b ? a : b;                                                             \
    return a != a ? a : larger;                                                           \
}                                                                                         \
                                                                                          \
/* Y[b,c,i,j] = max of the 2x2 window; index = its first maximum's tap, row-major:    */  \
/* tap 1 if x1 > x0, then tap t if x_t > the running max (NumPy path's rule). Windows */  \
/* go CHUNK at a time (across rows and planes): first split into four tap arrays, as  */  \
/* the NumPy path's tap planes, then reduced on those contiguous arrays, which the    */  \
/* compiler vectorises (rows of 14 or 7 windows alone are too short for it).          */  \
__attribute__((unused)) static void pool_chunked_forward_##S(const T *restrict x, T *restrict y,                  \
                                     unsigned char *restrict index, ptrdiff_t planes,     \
                                     ptrdiff_t in_h, ptrdiff_t in_w, ptrdiff_t out_h,     \
                                     ptrdiff_t out_w)                                     \
{                                                                                         \
    T x0[CHUNK], x1[CHUNK], x2[CHUNK], x3[CHUNK];                                         \
    const T *plane = x, *top = x;   /* the window's plane (b, c), top row */              \
    ptrdiff_t i = 0, j = 0, windows = planes * out_h * out_w;                             \
    for (ptrdiff_t start = 0; start < windows; start += CHUNK) {                          \
        ptrdiff_t n = windows - start < CHUNK ? windows - start : CHUNK;                  \
        for (ptrdiff_t k = 0; k < n; k++) {                                               \
            x0[k] = top[2 * j];                                                           \
            x1[k] = top[2 * j + 1];                                                       \
            x2[k] = top[in_w + 2 * j];                                                    \
            x3[k] = top[in_w + 2 * j + 1];                                                \
            NEXT_WINDOW();                                                                \
        }                                                                                 \
        T *y_part = y + start;                                                            \
        unsigned char *index_part = index + start;                                        \
        for (ptrdiff_t k = 0; k < n; k++) {                                               \
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
__attribute__((unused)) static void pool_chunked_backward_##S(const T *restrict dy,                               \
                                      const unsigned char *restrict index, T *restrict dx, \
                                      ptrdiff_t planes, ptrdiff_t in_h, ptrdiff_t in_w,   \
                                      ptrdiff_t out_h, ptrdiff_t out_w)                   \
{                                                                                         \
    T d0[CHUNK], d1[CHUNK], d2[CHUNK], d3[CHUNK];                                         \
    T *plane = dx, *top = dx;   /* the window's plane (b, c), top row */                  \
    ptrdiff_t i = 0, j = 0, windows = planes * out_h * out_w;                             \
    for (ptrdiff_t start = 0; start < windows; start += CHUNK) {                          \
        ptrdiff_t n = windows - start < CHUNK ? windows - start : CHUNK;                  \
        const T *dy_part = dy + start;                                                    \
        const unsigned char *index_part = index + start;                                  \
        for (ptrdiff_t k = 0; k < n; k++) {                                               \
            T gradient = dy_part[k];                                                      \
            int tap = index_part[k];                                                      \
            d0[k] = gradient * (T)(tap == 0);   /* as NumPy: dy * (index == tap) */       \
            d1[k] = gradient * (T)(tap == 1);                                             \
            d2[k] = gradient * (T)(tap == 2);                                             \
            d3[k] = gradient * (T)(tap == 3);                                             \
        }                                                                                 \
        for (ptrdiff_t k = 0; k < n; k++) {                                               \
            top[2 * j] = d0[k];                                                           \
            top[2 * j + 1] = d1[k];                                                       \
            top[in_w + 2 * j] = d2[k];                                                    \
            top[in_w + 2 * j + 1] = d3[k];                                                \
            NEXT_WINDOW();                                                                \
        }                                                                                 \
    }                                                                                     \
}                                                                                         \
                                                                                          \
/* y = np.maximum(x, 0), mask = x > 0 */                                                  \
static void relu_forward_##S(const T *x, T *y, unsigned char *mask, ptrdiff_t n)         \
{                                                                                         \
    for (ptrdiff_t k = 0; k < n; k++) {                                                   \
        T value = x[k];                                                                   \
        y[k] = maximum_##S(value, (T)0);                                                  \
        mask[k] = value > 0;                                                              \
    }                                                                                     \
}                                                                                         \
                                                                                          \
/* dx = dy * mask (np.multiply with a bool array: NaN * 0 stays NaN) */                   \
static void relu_backward_##S(const T *dy, const unsigned char *mask, T *dx, ptrdiff_t n) \
{                                                                                         \
    for (ptrdiff_t k = 0; k < n; k++) {  /* a select, not a branch on the mask */         \
        T kept = dy[k], dropped = dy[k] * (T)0;                                           \
        dx[k] = mask[k] ? kept : dropped;                                                 \
    }                                                                                     \
}                                                                                         \
                                                                                          \
/* One Adam step, each line one NumPy pass of cnnlab.optim.Adam.step, same rounding. */   \
static void adam_##S(T *w, const T *grad, T *m, T *v, ptrdiff_t n, const adam_scalars *s) \
{                                                                                         \
    const int coupled = s->coupled, decoupled = s->decoupled;                             \
    const T decay = (T)s->decay, shrink = (T)s->shrink, beta1 = (T)s->beta1;              \
    const T one_minus_beta1 = (T)s->one_minus_beta1, beta2 = (T)s->beta2;                 \
    const T one_minus_beta2 = (T)s->one_minus_beta2, bias2_sqrt = (T)s->bias2_sqrt;       \
    const T eps = (T)s->eps, step_size = (T)s->step_size;                                 \
    for (ptrdiff_t k = 0; k < n; k++) {                                                   \
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
}                                                                                         \
                                                                                          \
/* im2col, numpy path: padded = 0, padded[interior] = x, then for every tap             */ \
/* cols[c, tap, b, :run] = padded[b, c, start:start + run]. Plain copies, so the same    */ \
/* bits; here one plane at a time through a small padded scratch (L1).                   */ \
static void wide_im2col_##S(const T *x, T *cols, const wide_geometry *g, T *scratch)      \
{                                                                                         \
    ptrdiff_t image = g->padded_h * g->padded_w, plane = g->in_h * g->in_w;               \
    ptrdiff_t row_stride = g->batch * g->wide;  /* one row of cols: (c, tap) */           \
    memset(scratch, 0, (size_t)image * sizeof(T));                                        \
    for (ptrdiff_t b = 0; b < g->batch; b++)                                              \
        for (ptrdiff_t c = 0; c < g->channels; c++) {                                     \
            const T *source = x + (b * g->channels + c) * plane;                          \
            for (ptrdiff_t i = 0; i < g->in_h; i++)  /* the border stays zero */          \
                memcpy(scratch + (i + g->pad_top) * g->padded_w + g->pad_left,            \
                       source + i * g->in_w, (size_t)g->in_w * sizeof(T));                \
            T *target = cols + c * g->taps * row_stride + b * g->wide;                    \
            for (ptrdiff_t t = 0; t < g->taps; t++)                                       \
                memcpy(target + t * row_stride, scratch + g->starts[t],                   \
                       (size_t)g->run * sizeof(T));                                       \
        }                                                                                 \
}                                                                                         \
                                                                                          \
/* col2im, numpy path: dx_padded = 0; for tap in order: dx_padded[b, c, start:start +   */ \
/* run] += dcols[c, tap, b, :run]; dx = the interior. Same additions in the same order  */ \
/* per pixel, so the same bits; one plane at a time, accumulated in the scratch (L1).   */ \
static void wide_col2im_##S(const T *dcols, T *dx, const wide_geometry *g, T *scratch)    \
{                                                                                         \
    ptrdiff_t image = g->padded_h * g->padded_w, plane = g->in_h * g->in_w;               \
    ptrdiff_t row_stride = g->batch * g->wide;                                            \
    for (ptrdiff_t b = 0; b < g->batch; b++)                                              \
        for (ptrdiff_t c = 0; c < g->channels; c++) {                                     \
            const T *source = dcols + c * g->taps * row_stride + b * g->wide;             \
            for (ptrdiff_t k = 0; k < image; k++)                                         \
                scratch[k] = 0;                                                           \
            for (ptrdiff_t t = 0; t < g->taps; t++) {                                     \
                T *restrict sum = scratch + g->starts[t];                                 \
                const T *restrict part = source + t * row_stride;                         \
                for (ptrdiff_t k = 0; k < g->run; k++)                                    \
                    sum[k] = sum[k] + part[k];                                            \
            }                                                                             \
            T *target = dx + (b * g->channels + c) * plane;                               \
            for (ptrdiff_t i = 0; i < g->in_h; i++)                                       \
                memcpy(target + i * g->in_w,                                              \
                       scratch + (i + g->pad_top) * g->padded_w + g->pad_left,            \
                       (size_t)g->in_w * sizeof(T));                                      \
        }                                                                                 \
}

DEFINE_KERNELS(float, f32, sqrtf)
DEFINE_KERNELS(double, f64, sqrt)

/* ------------------------------------------------------------------------ */
/* The 2x2 max pool on float32 vectors                                      */
/* ------------------------------------------------------------------------ */

/* The chunked loops gather windows one float at a time. Here each output row of up to VL
 * windows is two vector loads per input row, split into even and odd columns by one shuffle
 * each (and the backward interleaves them back): 3-4x faster on the lecture CNN's 28x28 and
 * 14x14 maps. The same float operations as pool_chunked_forward_f32, lane by lane, so the
 * same bits. One plane: y, index (out_h, out_w) from the rows of `plane`, row_stride floats
 * apart. relu: y = max(pooled, 0) too, and index = 255 where pooled > 0 does not hold (the
 * fused conv's ReLU mask; max(relu(v)) = relu(max(v)), so pooling first is exact). */
static void pool_plane(const float *plane, ptrdiff_t row_stride, ptrdiff_t out_h,
                       ptrdiff_t out_w, float *y, unsigned char *index, int relu)
{
    const vi one = splat_i(1), two = splat_i(2), three = splat_i(3), inactive = splat_i(255);
    const vf zero = splat(0.0f);
    for (ptrdiff_t i = 0; i < out_h; i++) {
        const float *top = plane + 2 * i * row_stride, *bottom = top + row_stride;
        for (ptrdiff_t j = 0; j < out_w; j += VL) {
            ptrdiff_t windows = out_w - j < VL ? out_w - j : VL;
            ptrdiff_t low = clamp_lanes(2 * windows), high = clamp_lanes(2 * windows - VL);
            vf x0, x1, x2, x3;
            deinterleave(load_first(top + 2 * j, low), load_first(top + 2 * j + VL, high), &x0, &x1);
            deinterleave(load_first(bottom + 2 * j, low), load_first(bottom + 2 * j + VL, high),
                         &x2, &x3);
            vf best01 = maximum(x0, x1), best012 = maximum(best01, x2);
            vi over1 = x1 > x0, over2 = x2 > best01, over3 = x3 > best012;
            vi tap = blend_i(over3, three, blend_i(over2, two, over1 & one));
            vf value = maximum(best012, x3);
            if (relu) {
                tap = blend_i(value > zero, tap, inactive);
                value = maximum(value, zero);
            }
            store_first(y + i * out_w + j, windows, value);
            store_bytes(index + i * out_w + j, windows, tap);
        }
    }
}

/* The adjoint for one plane: each window's four pixels get dy * (index == tap); an index of
 * 255 (the fused ReLU's inactive windows) gives all four dy * 0. */
static void unpool_plane(const float *dy, const unsigned char *index, float *plane,
                         ptrdiff_t row_stride, ptrdiff_t out_h, ptrdiff_t out_w)
{
    const vf ones = splat(1.0f), zeros = splat(0.0f);
    for (ptrdiff_t i = 0; i < out_h; i++) {
        float *top = plane + 2 * i * row_stride, *bottom = top + row_stride;
        for (ptrdiff_t j = 0; j < out_w; j += VL) {
            ptrdiff_t windows = out_w - j < VL ? out_w - j : VL;
            ptrdiff_t low = clamp_lanes(2 * windows), high = clamp_lanes(2 * windows - VL);
            vf gradient = load_first(dy + i * out_w + j, windows);
            vi tap = load_bytes(index + i * out_w + j, windows, 0);
            vf d[4], first, second;
            for (int t = 0; t < 4; t++)  /* dy * (index == t), as pool_chunked_backward_f32 */
                d[t] = gradient * blend(tap == splat_i(t), ones, zeros);
            interleave(d[0], d[1], &first, &second);
            store_first(top + 2 * j, low, first);
            store_first(top + 2 * j + VL, high, second);
            interleave(d[2], d[3], &first, &second);
            store_first(bottom + 2 * j, low, first);
            store_first(bottom + 2 * j + VL, high, second);
        }
    }
}

static void pool_forward_f32(const float *x, float *y, unsigned char *index, ptrdiff_t planes,
                             ptrdiff_t in_h, ptrdiff_t in_w, ptrdiff_t out_h, ptrdiff_t out_w)
{
    for (ptrdiff_t p = 0; p < planes; p++)
        pool_plane(x + p * in_h * in_w, in_w, out_h, out_w, y + p * out_h * out_w,
                   index + p * out_h * out_w, 0);
}

static void pool_backward_f32(const float *dy, const unsigned char *index, float *dx,
                              ptrdiff_t planes, ptrdiff_t in_h, ptrdiff_t in_w, ptrdiff_t out_h,
                              ptrdiff_t out_w)
{
    for (ptrdiff_t p = 0; p < planes; p++)
        unpool_plane(dy + p * out_h * out_w, index + p * out_h * out_w, dx + p * in_h * in_w,
                     in_w, out_h, out_w);
}

/* ------------------------------------------------------------------------ */
/* A first conv layer fused with its ReLU and 2x2 max pool (float32)        */
/* ------------------------------------------------------------------------ */

/* For a conv whose input needs no gradient and has few channels (the lecture CNN's
 * Conv(1->32, k3, p1) on the images), the whole block conv -> ReLU -> MaxPool 2 runs one
 * (image, channel) plane at a time: the conv output plane (wide layout) lives in L1 and is
 * pooled there, so the 6 MB activation of a 64-image shard is never written. The backward
 * needs only dW and db (no dX): the gradient plane is rebuilt from dy and the pool's
 * recorded taps, then correlated with the padded input, tap by tap. */

/* The image's C_in planes, zero-padded, into `padded` (its border is zero already). */
static void pad_image(const float *x, float *padded, const wide_geometry *g)
{
    ptrdiff_t image = g->padded_h * g->padded_w;
    for (ptrdiff_t c = 0; c < g->channels; c++)
        for (ptrdiff_t i = 0; i < g->in_h; i++)
            memcpy(padded + c * image + (i + g->pad_top) * g->padded_w + g->pad_left,
                   x + (c * g->in_h + i) * g->in_w, (size_t)g->in_w * sizeof(float));
}

/* acc[q][k] = bias[q] + sum over (c_in, tap) of w[q][c_in, tap] padded[c_in][start_tap + k]
 * for CONV_CHANNELS output channels q at once (each input load feeds all of them), k < run
 * (and junk up to the next multiple of 2 VL), two vectors per channel at a time in
 * registers: 8 accumulators, which fit AVX2's 16 registers as well as AVX-512's 32. */
static void conv_planes(const float *padded, const float *const *w, const float *bias,
                        float *acc, ptrdiff_t acc_stride, const wide_geometry *g)
{
    ptrdiff_t image = g->padded_h * g->padded_w;
    for (ptrdiff_t k = 0; k < g->run; k += 2 * VL) {
        vf sum[CONV_CHANNELS][2];
        for (int q = 0; q < CONV_CHANNELS; q++)
            sum[q][0] = sum[q][1] = splat(bias[q]);
        for (ptrdiff_t c = 0; c < g->channels; c++)
            for (ptrdiff_t t = 0; t < g->taps; t++) {
                const float *source = padded + c * image + g->starts[t] + k;
                vf low = load(source), high = load(source + VL);
                for (int q = 0; q < CONV_CHANNELS; q++) {
                    vf weight = splat(w[q][c * g->taps + t]);
                    sum[q][0] = fma_v(weight, low, sum[q][0]);
                    sum[q][1] = fma_v(weight, high, sum[q][1]);
                }
            }
        for (int q = 0; q < CONV_CHANNELS; q++) {
            store(acc + q * acc_stride + k, sum[q][0]);
            store(acc + q * acc_stride + k + VL, sum[q][1]);
        }
    }
}

/* out[q] += sum_k dY[k] source[q][k] for q < count (a constant once inlined, so the count
 * sums stay in registers: 12 + 2 fit AVX2's 16), k < end; one pass over dY for all. */
SIMD_INLINE void correlate_group(const float *gradient, const float *const *source, double *out,
                                 ptrdiff_t end, const int count)
{
    vf sum[12];
    for (int q = 0; q < count; q++)
        sum[q] = splat(0.0f);
    for (ptrdiff_t k = 0; k < end; k += VL) {
        vf dy = load(gradient + k);
        for (int q = 0; q < count; q++)
            sum[q] = fma_v(dy, load(source[q] + k), sum[q]);
    }
    for (int q = 0; q < count; q++)
        out[q] += sum_lanes(sum[q]);
}

/* dweight[(c_in, tap)] += sum_k dY[k] padded[c_in][start_tap + k] and dbias += sum_k dY[k],
 * k < run (dY is zero past run), up to twelve (c_in, tap) pairs per pass over dY. */
static void correlate_plane(const float *gradient, const float *padded, double *dweight,
                            double *dbias, const wide_geometry *g)
{
    ptrdiff_t image = g->padded_h * g->padded_w, pairs = g->channels * g->taps;
    ptrdiff_t end = (g->run + VL - 1) / VL * VL;
    vf bias_sum = splat(0.0f);
    for (ptrdiff_t k = 0; k < end; k += VL)
        bias_sum = bias_sum + load(gradient + k);
    *dbias += sum_lanes(bias_sum);
    ptrdiff_t groups = (pairs + 11) / 12, size = (pairs + groups - 1) / groups;
    for (ptrdiff_t first = 0; first < pairs; first += size) {
        int count = (int)(pairs - first < size ? pairs - first : size);
        const float *source[12];
        for (int q = 0; q < count; q++) {
            ptrdiff_t pair = first + q;
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

static void conv_relu_pool_forward(const float *x, const float *weight, const float *bias,
                                   float *y, unsigned char *code, ptrdiff_t out_channels,
                                   ptrdiff_t pool_h, ptrdiff_t pool_w, const wide_geometry *g,
                                   float *padded, float *acc)
{
    ptrdiff_t weights = g->channels * g->taps, pooled = pool_h * pool_w;
    ptrdiff_t acc_stride = g->wide + FUSED_SLACK;
    for (ptrdiff_t b = 0; b < g->batch; b++) {
        pad_image(x + b * g->channels * g->in_h * g->in_w, padded, g);
        for (ptrdiff_t c = 0; c < out_channels; c += CONV_CHANNELS) {
            /* a last group of fewer channels repeats its last one (computed, not stored) */
            const float *w[CONV_CHANNELS];
            float shifts[CONV_CHANNELS];
            for (int q = 0; q < CONV_CHANNELS; q++) {
                ptrdiff_t channel = c + q < out_channels ? c + q : out_channels - 1;
                w[q] = weight + channel * weights;
                shifts[q] = bias[channel];
            }
            conv_planes(padded, w, shifts, acc, acc_stride, g);
            for (ptrdiff_t q = 0; q < CONV_CHANNELS && c + q < out_channels; q++) {
                ptrdiff_t plane = (b * out_channels + c + q) * pooled;
                pool_plane(acc + q * acc_stride, g->padded_w, pool_h, pool_w, y + plane,
                           code + plane, 1);
            }
        }
    }
}

static void conv_relu_pool_backward(const float *x, const float *dy, const unsigned char *code,
                                    double *dweight, double *dbias, ptrdiff_t out_channels,
                                    ptrdiff_t pool_h, ptrdiff_t pool_w, const wide_geometry *g,
                                    float *padded, float *gradient)
{
    ptrdiff_t weights = g->channels * g->taps, pooled = pool_h * pool_w;
    for (ptrdiff_t b = 0; b < g->batch; b++) {
        pad_image(x + b * g->channels * g->in_h * g->in_w, padded, g);
        for (ptrdiff_t c = 0; c < out_channels; c++) {
            ptrdiff_t plane = (b * out_channels + c) * pooled;
            /* dY of the conv output: the pool's and ReLU's backward (pixels outside every
             * window keep the zeros they started with) */
            unpool_plane(dy + plane, code + plane, gradient, g->padded_w, pool_h, pool_w);
            correlate_plane(gradient, padded, dweight + c * weights, dbias + c, g);
        }
    }
}
