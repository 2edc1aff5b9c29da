/*
 * test_kernels.c: every compiled kernel at every level against a scalar reference, in plain C
 * (no Python), so that levels this machine cannot import can still be checked: .ci/native
 * runs it natively (each level the CPU runs), cross-compiled for aarch64 under qemu (neon and
 * portable), and under AddressSanitizer and UBSan.
 *
 *   test_kernels [level ...]     default: every compiled level this CPU runs
 *
 * The loops must match their reference bit for bit (built with -ffp-contract=off, as the
 * module); the GEMM, the fused conv and the Winograd transforms within float32 rounding of a
 * double-precision reference. Exit status 0 when everything passed.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"
#include "kernels.h"

static int failures = 0;
static const char *level_in_test = "";

#define CHECK(condition, ...)                                                  \
    do {                                                                       \
        if (!(condition)) {                                                    \
            failures++;                                                        \
            fprintf(stderr, "FAIL [%s] %s:%d: ", level_in_test, __func__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
        }                                                                      \
    } while (0)

/* ------------------------------------------------------------------------ */
/* Data                                                                     */
/* ------------------------------------------------------------------------ */

static uint64_t random_state = 0x9e3779b97f4a7c15ull;

static double uniform(void) /* [-1, 1) */
{
    random_state ^= random_state << 13;
    random_state ^= random_state >> 7;
    random_state ^= random_state << 17;
    return (double)(random_state >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

static void *checked_calloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* Small integers (many ties) with NaN, infinities and signed zeros sprinkled in; `finite`
 * only signed zeros, for sums (C leaves open which NaN a sum of two NaNs returns). */
#define DEFINE_AWKWARD(T, S)                                                   \
    static T *awkward_values_##S(size_t n, int finite)                         \
    {                                                                          \
        T *x = checked_calloc(n, sizeof(T));                                   \
        const T specials[5] = {(T)NAN, (T)INFINITY, (T)-INFINITY, (T)-0.0, (T)0.0}; \
        for (size_t i = 0; i < n; i++)                                         \
            x[i] = (T)(int)(3.0 * uniform());                                  \
        for (size_t i = 0; i < n / 20 + 1; i++)                                \
            x[(size_t)((uniform() + 1.0) / 2.0 * (double)n) % n] = specials[finite ? 3 + i % 2 : i % 5]; \
        return x;                                                              \
    }                                                                          \
    static T *awkward_##S(size_t n) { return awkward_values_##S(n, 0); }
DEFINE_AWKWARD(float, f32)
DEFINE_AWKWARD(double, f64)

static float *random_floats(size_t n)
{
    float *x = checked_calloc(n, sizeof(float));
    for (size_t i = 0; i < n; i++)
        x[i] = (float)uniform();
    return x;
}

static int same_bits(const void *a, const void *b, size_t bytes) { return memcmp(a, b, bytes) == 0; }

static double max_abs_f(const float *x, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

/* max |got - expected| <= tolerance * max(1, max |expected|) */
static int close_to(const float *got, const double *expected, size_t n, double tolerance)
{
    double scale = 1.0, worst = 0.0;
    for (size_t i = 0; i < n; i++)
        scale = fabs(expected[i]) > scale ? fabs(expected[i]) : scale;
    for (size_t i = 0; i < n; i++) {
        double error = fabs((double)got[i] - expected[i]);
        if (!(error <= worst))
            worst = error;  /* NaN too */
    }
    return worst <= tolerance * scale;
}

/* ------------------------------------------------------------------------ */
/* The loops, bit for bit                                                   */
/* ------------------------------------------------------------------------ */

#define DEFINE_LOOP_REFERENCES(T, S, SQRT)                                      \
    static T ref_maximum_##S(T a, T b)                                          \
    {                                                                           \
        T larger = a > b ? a : b;                                               \
        return a != a ? a : larger;                                             \
    }                                                                           \
    static void ref_pool_##S(const T *x, T *y, unsigned char *index, ptrdiff_t planes, \
                             ptrdiff_t h, ptrdiff_t w)                          \
    {                                                                           \
        ptrdiff_t oh = h / 2, ow = w / 2;                                       \
        for (ptrdiff_t p = 0; p < planes; p++)                                  \
            for (ptrdiff_t i = 0; i < oh; i++)                                  \
                for (ptrdiff_t j = 0; j < ow; j++) {                            \
                    const T *top = x + p * h * w + 2 * i * w + 2 * j;           \
                    T t[4] = {top[0], top[1], top[w], top[w + 1]};              \
                    T best = ref_maximum_##S(t[0], t[1]);                       \
                    int tap = t[1] > t[0];                                      \
                    for (int k = 2; k < 4; k++) {                               \
                        if (t[k] > best)                                        \
                            tap = k;                                            \
                        best = ref_maximum_##S(best, t[k]);                     \
                    }                                                           \
                    y[(p * oh + i) * ow + j] = best;                            \
                    index[(p * oh + i) * ow + j] = (unsigned char)tap;          \
                }                                                               \
    }                                                                           \
    static void ref_unpool_##S(const T *dy, const unsigned char *index, T *dx,  \
                               ptrdiff_t planes, ptrdiff_t h, ptrdiff_t w)      \
    {                                                                           \
        ptrdiff_t oh = h / 2, ow = w / 2;                                       \
        for (ptrdiff_t p = 0; p < planes; p++)                                  \
            for (ptrdiff_t i = 0; i < oh; i++)                                  \
                for (ptrdiff_t j = 0; j < ow; j++)                              \
                    for (int k = 0; k < 4; k++) {                               \
                        ptrdiff_t o = (p * oh + i) * ow + j;                    \
                        dx[p * h * w + (2 * i + k / 2) * w + 2 * j + k % 2] =   \
                            dy[o] * (T)(index[o] == k);                         \
                    }                                                           \
    }                                                                           \
    static void test_loops_##S(const loops_level *level)                        \
    {                                                                           \
        static const ptrdiff_t shapes[][3] = {{12, 28, 28}, {10, 7, 9}, {1, 2, 2}, \
                                              {6, 14, 15}, {6, 5, 70}, {2, 4, 33}}; \
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {         \
            ptrdiff_t planes = shapes[s][0], h = shapes[s][1], w = shapes[s][2]; \
            size_t n = (size_t)(planes * h * w), pooled = (size_t)(planes * (h / 2) * (w / 2)); \
            T *x = awkward_##S(n), *dy = awkward_##S(pooled);                   \
            T *y = checked_calloc(pooled, sizeof(T)), *y_ref = checked_calloc(pooled, sizeof(T)); \
            unsigned char *index = checked_calloc(pooled, 1), *index_ref = checked_calloc(pooled, 1); \
            T *dx = checked_calloc(n, sizeof(T)), *dx_ref = checked_calloc(n, sizeof(T)); \
            level->pool_forward_##S(x, y, index, planes, h, w, h / 2, w / 2);    \
            ref_pool_##S(x, y_ref, index_ref, planes, h, w);                    \
            CHECK(same_bits(y, y_ref, pooled * sizeof(T)) && same_bits(index, index_ref, pooled), \
                  "pool forward %s, %td x %td x %td", #S, planes, h, w);        \
            level->pool_backward_##S(dy, index_ref, dx, planes, h, w, h / 2, w / 2); \
            ref_unpool_##S(dy, index_ref, dx_ref, planes, h, w);                \
            CHECK(same_bits(dx, dx_ref, n * sizeof(T)), "pool backward %s, %td x %td x %td", \
                  #S, planes, h, w);                                            \
            free(x), free(dy), free(y), free(y_ref), free(index), free(index_ref); \
            free(dx), free(dx_ref);                                             \
        }                                                                       \
        size_t n = 1001;                                                        \
        T *x = awkward_##S(n), *dy = awkward_##S(n), *y = checked_calloc(n, sizeof(T)); \
        T *dx = checked_calloc(n, sizeof(T));                                   \
        unsigned char *mask = checked_calloc(n, 1);                             \
        level->relu_forward_##S(x, y, mask, (ptrdiff_t)n);                      \
        level->relu_backward_##S(dy, mask, dx, (ptrdiff_t)n);                   \
        for (size_t i = 0; i < n; i++) {                                        \
            T y_ref = ref_maximum_##S(x[i], (T)0), dx_ref = mask[i] ? dy[i] : dy[i] * (T)0; \
            CHECK(same_bits(&y[i], &y_ref, sizeof(T)) && mask[i] == (x[i] > 0) && \
                  same_bits(&dx[i], &dx_ref, sizeof(T)), "relu %s at %zu", #S, i); \
        }                                                                       \
        free(x), free(dy), free(y), free(dx), free(mask);                       \
        for (int mode = 0; mode < 3; mode++) { /* Adam, Adam + L2, AdamW */      \
            adam_scalars s = {mode == 1, mode == 2, mode == 1 ? 0.1 : 0.0,      \
                              mode == 2 ? 0.997 : 1.0, 0.9, 1 - 0.9, 0.999, 1 - 0.999, \
                              0.3, 1e-8, 3e-3};                                 \
            T *w = checked_calloc(n, sizeof(T)), *g = checked_calloc(n, sizeof(T)); \
            T *m = checked_calloc(n, sizeof(T)), *v = checked_calloc(n, sizeof(T)); \
            T *w_ref = checked_calloc(n, sizeof(T)), *m_ref = checked_calloc(n, sizeof(T)); \
            T *v_ref = checked_calloc(n, sizeof(T));                            \
            for (size_t i = 0; i < n; i++) {                                    \
                w[i] = w_ref[i] = (T)uniform();                                 \
                g[i] = (T)uniform();                                            \
                m[i] = m_ref[i] = (T)(0.1 * uniform());                         \
                v[i] = v_ref[i] = (T)(0.01 * (uniform() + 1.0));                \
            }                                                                   \
            level->adam_##S(w, g, m, v, (ptrdiff_t)n, &s);                      \
            for (size_t i = 0; i < n; i++) {                                    \
                T weight = w_ref[i], grad = g[i];                               \
                if (s.decoupled)                                                \
                    weight = weight * (T)s.shrink;                              \
                else if (s.coupled)                                             \
                    grad = weight * (T)s.decay + grad;                          \
                T mean = m_ref[i] * (T)s.beta1 + grad * (T)s.one_minus_beta1;   \
                T square = grad * grad;                                         \
                square = square * (T)s.one_minus_beta2;                         \
                T second = v_ref[i] * (T)s.beta2 + square;                      \
                T ratio = mean / (SQRT(second) / (T)s.bias2_sqrt + (T)s.eps);   \
                w_ref[i] = weight - ratio * (T)s.step_size;                     \
                m_ref[i] = mean;                                                \
                v_ref[i] = second;                                              \
            }                                                                   \
            CHECK(same_bits(w, w_ref, n * sizeof(T)) && same_bits(m, m_ref, n * sizeof(T)) && \
                  same_bits(v, v_ref, n * sizeof(T)), "adam %s mode %d", #S, mode); \
            free(w), free(g), free(m), free(v), free(w_ref), free(m_ref), free(v_ref); \
        }                                                                       \
    }
DEFINE_LOOP_REFERENCES(float, f32, sqrtf)
DEFINE_LOOP_REFERENCES(double, f64, sqrt)

/* The wide layout of a stride-1 conv (as wide_setup in loops.c). */
static wide_geometry make_geometry(ptrdiff_t batch, ptrdiff_t channels, ptrdiff_t h, ptrdiff_t w,
                                   ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t pad, ptrdiff_t dilation)
{
    wide_geometry g;
    memset(&g, 0, sizeof g);
    g.batch = batch, g.channels = channels, g.in_h = h, g.in_w = w;
    g.pad_top = g.pad_left = pad;
    g.padded_h = h + 2 * pad, g.padded_w = w + 2 * pad;
    ptrdiff_t out_h = g.padded_h - dilation * (kh - 1), out_w = g.padded_w - dilation * (kw - 1);
    g.taps = kh * kw;
    g.wide = out_h * g.padded_w;
    g.run = (out_h - 1) * g.padded_w + out_w;
    for (ptrdiff_t m = 0; m < kh; m++)
        for (ptrdiff_t n = 0; n < kw; n++)
            g.starts[m * kw + n] = dilation * m * g.padded_w + dilation * n;
    return g;
}

/* padded[b][c] (padded_h x padded_w) of x, zero border */
static double padded_value(const float *x, const wide_geometry *g, ptrdiff_t b, ptrdiff_t c,
                           ptrdiff_t flat)
{
    ptrdiff_t i = flat / g->padded_w - g->pad_top, j = flat % g->padded_w - g->pad_left;
    if (i < 0 || j < 0 || i >= g->in_h || j >= g->in_w)
        return 0.0;
    return x[((b * g->channels + c) * g->in_h + i) * g->in_w + j];
}

#define DEFINE_WIDE_TEST(T, S)                                                  \
    static void test_wide_##S(const loops_level *level)                         \
    {                                                                           \
        static const ptrdiff_t cases[][7] = {{3, 8, 6, 6, 3, 1, 1}, {2, 9, 5, 7, 2, 1, 1}, \
                                             {2, 12, 7, 7, 3, 2, 2}, {2, 4, 4, 4, 1, 0, 1}}; \
        for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {           \
            const ptrdiff_t *c = cases[k];                                      \
            wide_geometry g = make_geometry(c[0], c[1], c[2], c[3], c[4], c[4], c[5], c[6]); \
            size_t image = (size_t)(g.batch * g.channels * g.in_h * g.in_w);    \
            size_t rows = (size_t)(g.channels * g.taps), cols = (size_t)(g.batch * g.wide); \
            T *x = awkward_##S(image), *scratch = checked_calloc((size_t)(g.padded_h * g.padded_w), sizeof(T)); \
            T *out = checked_calloc(rows * cols, sizeof(T)), *ref = checked_calloc(rows * cols, sizeof(T)); \
            level->wide_im2col_##S(x, out, &g, scratch);                        \
            for (ptrdiff_t b = 0; b < g.batch; b++)                             \
                for (ptrdiff_t ch = 0; ch < g.channels; ch++)                   \
                    for (ptrdiff_t t = 0; t < g.taps; t++)                      \
                        for (ptrdiff_t q = 0; q < g.run; q++) {                 \
                            ptrdiff_t flat = g.starts[t] + q;                   \
                            ptrdiff_t i = flat / g.padded_w - g.pad_top, j = flat % g.padded_w - g.pad_left; \
                            ref[(ch * g.taps + t) * cols + b * g.wide + q] =    \
                                (i < 0 || j < 0 || i >= g.in_h || j >= g.in_w) ? (T)0 \
                                : x[((b * g.channels + ch) * g.in_h + i) * g.in_w + j]; \
                        }                                                       \
            CHECK(same_bits(out, ref, rows * cols * sizeof(T)), "wide_im2col %s case %zu", #S, k); \
            /* the adjoint: dx = sum over taps, in order, of the runs placed at their start */ \
            T *dcols = awkward_values_##S(rows * cols, 1), *dx = checked_calloc(image, sizeof(T)); \
            T *dx_ref = checked_calloc(image, sizeof(T));                       \
            T *plane = checked_calloc((size_t)(g.padded_h * g.padded_w), sizeof(T)); \
            level->wide_col2im_##S(dcols, dx, &g, scratch);                     \
            for (ptrdiff_t b = 0; b < g.batch; b++)                             \
                for (ptrdiff_t ch = 0; ch < g.channels; ch++) {                 \
                    memset(plane, 0, (size_t)(g.padded_h * g.padded_w) * sizeof(T)); \
                    for (ptrdiff_t t = 0; t < g.taps; t++)                      \
                        for (ptrdiff_t q = 0; q < g.run; q++)                   \
                            plane[g.starts[t] + q] = plane[g.starts[t] + q] +   \
                                dcols[(ch * g.taps + t) * cols + b * g.wide + q]; \
                    for (ptrdiff_t i = 0; i < g.in_h; i++)                      \
                        for (ptrdiff_t j = 0; j < g.in_w; j++)                  \
                            dx_ref[((b * g.channels + ch) * g.in_h + i) * g.in_w + j] = \
                                plane[(i + g.pad_top) * g.padded_w + j + g.pad_left]; \
                }                                                               \
            CHECK(same_bits(dx, dx_ref, image * sizeof(T)), "wide_col2im %s case %zu", #S, k); \
            free(x), free(scratch), free(out), free(ref), free(dcols), free(dx), free(dx_ref), free(plane); \
        }                                                                       \
    }
DEFINE_WIDE_TEST(float, f32)
DEFINE_WIDE_TEST(double, f64)

/* ------------------------------------------------------------------------ */
/* Within rounding: the fused conv, Winograd, GEMM                          */
/* ------------------------------------------------------------------------ */

/* A pooled window (ReLU then first maximum) from four exact values: the kernel's value and
 * code must be one of the maxima within tolerance (rounding may reorder near-ties). */
static int window_agrees(const double *taps, float value, unsigned char code, double tolerance)
{
    double best = taps[0];
    for (int k = 1; k < 4; k++)
        best = taps[k] > best ? taps[k] : best;
    if (code == 255)
        return best <= tolerance && value == 0.0f;
    if (code > 3)
        return 0;
    return fabs(taps[code] - value) <= tolerance && taps[code] >= best - 2 * tolerance &&
           value > 0.0f;
}

/* Every window of the exact conv output planes (out_h x out_w) agrees with the pooled y and code. */
static int pool_agrees(const double *conv, ptrdiff_t planes, ptrdiff_t out_h, ptrdiff_t out_w,
                       const float *y, const unsigned char *code, double tolerance)
{
    ptrdiff_t ph = out_h / 2, pw = out_w / 2;
    int agree = 1;
    for (ptrdiff_t p = 0; p < planes; p++)
        for (ptrdiff_t i = 0; i < ph; i++)
            for (ptrdiff_t j = 0; j < pw; j++) {
                const double *top = conv + (p * out_h + 2 * i) * out_w + 2 * j;
                double taps[4] = {top[0], top[1], top[out_w], top[out_w + 1]};
                ptrdiff_t o = (p * ph + i) * pw + j;
                agree &= window_agrees(taps, y[o], code[o], tolerance);
            }
    return agree;
}

static void test_fused_conv(const loops_level *level)
{
    static const ptrdiff_t cases[][5] = {{3, 1, 28, 28, 5}, {2, 2, 9, 11, 3}, {1, 3, 6, 7, 9}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        ptrdiff_t batch = cases[k][0], cin = cases[k][1], h = cases[k][2], w = cases[k][3];
        ptrdiff_t cout = cases[k][4];
        wide_geometry g = make_geometry(batch, cin, h, w, 3, 3, 1, 1);
        ptrdiff_t out_h = g.padded_h - 2, out_w = g.padded_w - 2, ph = out_h / 2, pw = out_w / 2;
        size_t pooled = (size_t)(batch * cout * ph * pw), filters = (size_t)(cout * cin * 9);
        float *x = random_floats((size_t)(batch * cin * h * w)), *weight = random_floats(filters);
        float *bias = random_floats((size_t)cout), *y = checked_calloc(pooled, sizeof(float));
        unsigned char *code = checked_calloc(pooled, 1);
        size_t inputs = (size_t)(g.padded_h * g.padded_w * cin) + FUSED_SLACK;
        float *padded = checked_calloc(inputs + (size_t)CONV_CHANNELS * (size_t)(g.wide + FUSED_SLACK),
                                       sizeof(float));
        level->conv_relu_pool_forward(x, weight, bias, y, code, cout, ph, pw, &g, padded,
                                      padded + inputs);
        /* the conv output in double, then every window */
        double *conv = checked_calloc((size_t)(batch * cout * out_h * out_w), sizeof(double));
        for (ptrdiff_t b = 0; b < batch; b++)
            for (ptrdiff_t o = 0; o < cout; o++)
                for (ptrdiff_t i = 0; i < out_h; i++)
                    for (ptrdiff_t j = 0; j < out_w; j++) {
                        double sum = bias[o];
                        for (ptrdiff_t c = 0; c < cin; c++)
                            for (ptrdiff_t t = 0; t < 9; t++)
                                sum += weight[(o * cin + c) * 9 + t] *
                                       padded_value(x, &g, b, c, (i + t / 3) * g.padded_w + j + t % 3);
                        conv[((b * cout + o) * out_h + i) * out_w + j] = sum;
                    }
        CHECK(pool_agrees(conv, batch * cout, out_h, out_w, y, code, 1e-5),
              "conv_relu_pool_forward case %zu", k);
        /* backward: dW, db from dy at the recorded taps (the forward's code) */
        float *dy = random_floats(pooled);
        double *dweight = checked_calloc(filters, sizeof(double)), *dbias = checked_calloc((size_t)cout, sizeof(double));
        double *dweight_ref = checked_calloc(filters, sizeof(double)), *dbias_ref = checked_calloc((size_t)cout, sizeof(double));
        memset(padded, 0, (inputs + (size_t)(g.wide + FUSED_SLACK)) * sizeof(float));
        level->conv_relu_pool_backward(x, dy, code, dweight, dbias, cout, ph, pw, &g, padded,
                                       padded + inputs);
        for (ptrdiff_t b = 0; b < batch; b++)
            for (ptrdiff_t o = 0; o < cout; o++)
                for (ptrdiff_t i = 0; i < ph; i++)
                    for (ptrdiff_t j = 0; j < pw; j++) {
                        ptrdiff_t at = ((b * cout + o) * ph + i) * pw + j;
                        if (code[at] > 3)
                            continue;
                        ptrdiff_t r = 2 * i + code[at] / 2, s = 2 * j + code[at] % 2;
                        dbias_ref[o] += dy[at];
                        for (ptrdiff_t c = 0; c < cin; c++)
                            for (ptrdiff_t t = 0; t < 9; t++)
                                dweight_ref[(o * cin + c) * 9 + t] +=
                                    dy[at] * padded_value(x, &g, b, c, (r + t / 3) * g.padded_w + s + t % 3);
                    }
        float *got = checked_calloc(filters + (size_t)cout, sizeof(float));
        double *want = checked_calloc(filters + (size_t)cout, sizeof(double));
        for (size_t i = 0; i < filters; i++)
            got[i] = (float)dweight[i], want[i] = dweight_ref[i];
        for (ptrdiff_t o = 0; o < cout; o++)
            got[filters + (size_t)o] = (float)dbias[o], want[filters + (size_t)o] = dbias_ref[o];
        CHECK(close_to(got, want, filters + (size_t)cout, 1e-5), "conv_relu_pool_backward case %zu", k);
        free(x), free(weight), free(bias), free(y), free(code), free(padded), free(conv), free(dy);
        free(dweight), free(dbias), free(dweight_ref), free(dbias_ref), free(got), free(want);
    }
}

static const double BT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
static const double AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};

static tiling make_tiling(ptrdiff_t batch, ptrdiff_t channels, ptrdiff_t h, ptrdiff_t w,
                          ptrdiff_t pad, ptrdiff_t out_h, ptrdiff_t out_w)
{
    tiling t = {batch, channels, h, w, pad, pad, (out_h + 1) / 2, (out_w + 1) / 2, 0, 0};
    t.tiles = t.tile_rows * t.tile_cols;
    t.stride = 2 * t.tile_cols + 2;
    return t;
}

static void test_winograd(const loops_level *level)
{
    /* (batch, channels, h, w, pad): the lecture CNN's conv2 (14x14), odd sizes, wide rows */
    static const ptrdiff_t cases[][5] = {{2, 3, 14, 14, 1}, {1, 2, 9, 11, 1}, {2, 2, 7, 40, 0},
                                         {1, 1, 5, 5, 2}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        ptrdiff_t batch = cases[k][0], ch = cases[k][1], h = cases[k][2], w = cases[k][3];
        ptrdiff_t pad = cases[k][4], out_h = h + 2 * pad - 2, out_w = w + 2 * pad - 2;
        tiling t = make_tiling(batch, ch, h, w, pad, out_h, out_w);
        size_t transformed = (size_t)(16 * ch * batch * t.tiles), image = (size_t)(batch * ch * h * w);
        size_t plane_floats = (size_t)((2 * t.tile_rows + 2) * t.stride);
        float *x = random_floats(image), *plane = checked_calloc(plane_floats, sizeof(float));
        float *v = checked_calloc(transformed, sizeof(float));
        double *v_ref = checked_calloc(transformed, sizeof(double));
        level->winograd_input(x, v, &t, plane);
        ptrdiff_t all = batch * t.tiles, step = ch * all;
        for (ptrdiff_t b = 0; b < batch; b++)
            for (ptrdiff_t c = 0; c < ch; c++)
                for (ptrdiff_t ti = 0; ti < t.tile_rows; ti++)
                    for (ptrdiff_t tj = 0; tj < t.tile_cols; tj++) {
                        double d[4][4];
                        for (int r = 0; r < 4; r++)
                            for (int s = 0; s < 4; s++) {
                                ptrdiff_t i = 2 * ti + r - pad, j = 2 * tj + s - pad;
                                d[r][s] = (i < 0 || j < 0 || i >= h || j >= w) ? 0.0
                                          : x[((b * ch + c) * h + i) * w + j];
                            }
                        for (int a = 0; a < 4; a++)
                            for (int e = 0; e < 4; e++) {
                                double sum = 0;  /* (B^T d B)[a][e] */
                                for (int r = 0; r < 4; r++)
                                    for (int s = 0; s < 4; s++)
                                        sum += BT[a][r] * d[r][s] * BT[e][s];
                                v_ref[(4 * a + e) * step + c * all + b * t.tiles + ti * t.tile_cols + tj] = sum;
                            }
                    }
        CHECK(close_to(v, v_ref, transformed, 1e-6), "winograd_input case %zu", k);

        /* output: y = A^T M A + bias, with M the input transform's tiles as data */
        tiling to = make_tiling(batch, ch, out_h, out_w, 0, out_h, out_w);
        float *bias = random_floats((size_t)ch), *y = checked_calloc((size_t)(batch * ch * out_h * out_w), sizeof(float));
        double *y_ref = checked_calloc((size_t)(batch * ch * out_h * out_w), sizeof(double));
        float *m = random_floats(transformed);
        level->winograd_output(m, bias, y, &to, out_h, out_w);
        for (ptrdiff_t b = 0; b < batch; b++)
            for (ptrdiff_t o = 0; o < ch; o++)
                for (ptrdiff_t i = 0; i < out_h; i++)
                    for (ptrdiff_t j = 0; j < out_w; j++) {
                        ptrdiff_t tile = b * to.tiles + (i / 2) * to.tile_cols + j / 2;
                        double sum = bias[o];
                        for (int a = 0; a < 4; a++)
                            for (int e = 0; e < 4; e++)
                                sum += AT[i % 2][a] * m[(4 * a + e) * step + o * all + tile] * AT[j % 2][e];
                        y_ref[((b * ch + o) * out_h + i) * out_w + j] = sum;
                    }
        CHECK(close_to(y, y_ref, (size_t)(batch * ch * out_h * out_w), 1e-6), "winograd_output case %zu", k);

        /* grad output: yhat = A g A^T for the 2x2 blocks g of dy; dbias = sums */
        float *yhat = checked_calloc(transformed, sizeof(float));
        double *yhat_ref = checked_calloc(transformed, sizeof(double));
        double *dbias = checked_calloc((size_t)ch, sizeof(double)), *dbias_ref = checked_calloc((size_t)ch, sizeof(double));
        float *dy = random_floats((size_t)(batch * ch * out_h * out_w));
        level->winograd_grad_output(dy, yhat, dbias, &to, out_h, out_w);
        for (ptrdiff_t b = 0; b < batch; b++)
            for (ptrdiff_t o = 0; o < ch; o++)
                for (ptrdiff_t ti = 0; ti < to.tile_rows; ti++)
                    for (ptrdiff_t tj = 0; tj < to.tile_cols; tj++) {
                        double g[2][2];
                        for (int r = 0; r < 2; r++)
                            for (int s = 0; s < 2; s++) {
                                ptrdiff_t i = 2 * ti + r, j = 2 * tj + s;
                                g[r][s] = (i < out_h && j < out_w) ? dy[((b * ch + o) * out_h + i) * out_w + j] : 0.0;
                                dbias_ref[o] += g[r][s];
                            }
                        for (int a = 0; a < 4; a++)
                            for (int e = 0; e < 4; e++) {
                                double sum = 0;  /* (A g A^T)[a][e] */
                                for (int r = 0; r < 2; r++)
                                    for (int s = 0; s < 2; s++)
                                        sum += AT[r][a] * g[r][s] * AT[s][e];
                                yhat_ref[(4 * a + e) * step + o * all + b * to.tiles + ti * to.tile_cols + tj] = sum;
                            }
                    }
        float dbias_got[16];
        for (ptrdiff_t o = 0; o < ch; o++)
            dbias_got[o] = (float)dbias[o];
        CHECK(close_to(yhat, yhat_ref, transformed, 1e-6) && close_to(dbias_got, dbias_ref, (size_t)ch, 1e-5),
              "winograd_grad_output case %zu", k);

        /* grad input: dx = interior of the sum over tiles of B dv B^T */
        float *dx = checked_calloc(image, sizeof(float));
        double *dx_ref = checked_calloc(image, sizeof(double));
        level->winograd_grad_input(m, dx, &t, plane);
        for (ptrdiff_t b = 0; b < batch; b++)
            for (ptrdiff_t c = 0; c < ch; c++)
                for (ptrdiff_t ti = 0; ti < t.tile_rows; ti++)
                    for (ptrdiff_t tj = 0; tj < t.tile_cols; tj++)
                        for (int r = 0; r < 4; r++)
                            for (int s = 0; s < 4; s++) {
                                ptrdiff_t i = 2 * ti + r - pad, j = 2 * tj + s - pad;
                                if (i < 0 || j < 0 || i >= h || j >= w)
                                    continue;
                                double sum = 0;  /* (B dv B^T)[r][s] */
                                for (int a = 0; a < 4; a++)
                                    for (int e = 0; e < 4; e++)
                                        sum += BT[a][r] * m[(4 * a + e) * step + c * all + b * t.tiles + ti * t.tile_cols + tj] * BT[e][s];
                                dx_ref[((b * ch + c) * h + i) * w + j] += sum;
                            }
        CHECK(close_to(dx, dx_ref, image, 1e-6), "winograd_grad_input case %zu", k);

        /* the output fused with ReLU and the pool, and its gradient */
        ptrdiff_t ph = out_h / 2, pw = out_w / 2;
        size_t pooled = (size_t)(batch * ch * ph * pw);
        float *pooled_y = checked_calloc(pooled, sizeof(float)), *dp = random_floats(pooled);
        unsigned char *code = checked_calloc(pooled, 1);
        level->winograd_output_relu_pool(m, bias, pooled_y, code, &to, ph, pw);
        CHECK(pool_agrees(y_ref, batch * ch, out_h, out_w, pooled_y, code,
                          1e-5 * (1 + max_abs_f(m, transformed))),
              "winograd_output_relu_pool case %zu", k);
        memset(dbias, 0, (size_t)ch * sizeof(double));
        memset(dbias_ref, 0, (size_t)ch * sizeof(double));
        level->winograd_grad_output_pooled(dp, code, yhat, dbias, &to, ph, pw);
        for (ptrdiff_t b = 0; b < batch; b++)
            for (ptrdiff_t o = 0; o < ch; o++)
                for (ptrdiff_t ti = 0; ti < to.tile_rows; ti++)
                    for (ptrdiff_t tj = 0; tj < to.tile_cols; tj++) {
                        double g[2][2] = {{0, 0}, {0, 0}};
                        if (ti < ph && tj < pw) {
                            ptrdiff_t at = ((b * ch + o) * ph + ti) * pw + tj;
                            if (code[at] < 4)
                                g[code[at] / 2][code[at] % 2] = dp[at];
                            dbias_ref[o] += code[at] < 4 ? dp[at] : 0.0;
                        }
                        for (int a = 0; a < 4; a++)
                            for (int e = 0; e < 4; e++) {
                                double sum = 0;
                                for (int r = 0; r < 2; r++)
                                    for (int s = 0; s < 2; s++)
                                        sum += AT[r][a] * g[r][s] * AT[s][e];
                                yhat_ref[(4 * a + e) * step + o * all + b * to.tiles + ti * to.tile_cols + tj] = sum;
                            }
                    }
        for (ptrdiff_t o = 0; o < ch; o++)
            dbias_got[o] = (float)dbias[o];
        CHECK(close_to(yhat, yhat_ref, transformed, 1e-6) && close_to(dbias_got, dbias_ref, (size_t)ch, 1e-5),
              "winograd_grad_output_pooled case %zu", k);
        free(x), free(plane), free(v), free(v_ref), free(bias), free(y), free(y_ref), free(m);
        free(yhat), free(yhat_ref), free(dbias), free(dbias_ref), free(dy), free(dx), free(dx_ref);
        free(pooled_y), free(dp), free(code);
    }
}

static void test_gemm(const gemm_level *level)
{
    /* around every level's micro-tiles and the blocking, the CNN's shapes (scaled), and the
     * narrow B-transposed products of the dot-product path (n <= GEMM_DOT_N, then 17) */
    static const ptrdiff_t shapes[][3] = {{1, 1, 1}, {1, 33, 1}, {13, 1, 5}, {11, 31, 17},
                                          {12, 32, 16}, {13, 33, 17}, {25, 65, 100}, {7, 50, 3},
                                          {64, 289, 350}, {145, 257, 321}, {5, 48, 20}, {0, 3, 3},
                                          {4, 5, 0}, {9, 10, 37}, {6, 16, 64}, {3, 7, 16},
                                          {5, 17, 33}};
    const gemm_blocking blocking = {320, 144, 256};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int flags = 0; flags < 8; flags++) {
            int ta = flags & 1, tb = (flags >> 1) & 1, acc = (flags >> 2) & 1;
            ptrdiff_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2], pad = 3;
            ptrdiff_t lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad, ldc = n + pad;
            float *a = random_floats((size_t)((ta ? k : m) * lda) + 1);
            float *b = random_floats((size_t)((tb ? n : k) * ldb) + 1);
            float *c = random_floats((size_t)(m * ldc) + 1);
            float *c2 = checked_calloc((size_t)(m * ldc) + 1, sizeof(float));
            memcpy(c2, c, ((size_t)(m * ldc) + 1) * sizeof(float));
            double *ref = checked_calloc((size_t)(m * n) + 1, sizeof(double));
            float *got = checked_calloc((size_t)(m * n) + 1, sizeof(float));
            for (ptrdiff_t i = 0; i < m; i++)
                for (ptrdiff_t j = 0; j < n; j++) {
                    double sum = acc ? c[i * ldc + j] : 0.0;
                    for (ptrdiff_t p = 0; p < k; p++)
                        sum += (double)(ta ? a[p * lda + i] : a[i * lda + p]) *
                               (tb ? b[j * ldb + p] : b[p * ldb + j]);
                    ref[i * n + j] = sum;
                }
            float padding = m ? c[ldc - 1] : 0.0f;
            gemm_shape shape = {ta, tb, acc, m, n, k, lda, ldb, ldc, a, b, c};
            int rc = gemm_run(level, &blocking, 1, &shape, 1, 0, 0, 0);
            shape.c = c2;
            int rc2 = gemm_run(level, &blocking, 3, &shape, 1, 0, 0, 0);
            for (ptrdiff_t i = 0; i < m; i++)
                for (ptrdiff_t j = 0; j < n; j++)
                    got[i * n + j] = c[i * ldc + j];
            CHECK(rc == 0 && rc2 == 0 && close_to(got, ref, (size_t)(m * n), 4e-6 * sqrt((double)k + 1)),
                  "gemm %td x %td x %td ta %d tb %d acc %d", m, n, k, ta, tb, acc);
            CHECK(same_bits(c, c2, (size_t)(m * ldc) * sizeof(float)),
                  "gemm on 3 threads differs from 1: %td x %td x %td", m, n, k);
            CHECK(!m || c[ldc - 1] == padding, "gemm wrote past n: %td x %td x %td", m, n, k);
            free(a), free(b), free(c), free(c2), free(ref), free(got);
        }
    /* a stack of products shared out over threads */
    ptrdiff_t count = 5, m = 9, n = 40, k = 30;
    float *a = random_floats((size_t)(count * m * k)), *b = random_floats((size_t)(count * k * n));
    float *c1 = checked_calloc((size_t)(count * m * n), sizeof(float));
    float *c2 = checked_calloc((size_t)(count * m * n), sizeof(float));
    gemm_shape shape = {0, 0, 0, m, n, k, k, n, n, a, b, c1};
    int rc = gemm_run(level, &blocking, 1, &shape, count, m * k, k * n, m * n);
    shape.c = c2;
    rc |= gemm_run(level, &blocking, 2, &shape, count, m * k, k * n, m * n);
    CHECK(rc == 0 && same_bits(c1, c2, (size_t)(count * m * n) * sizeof(float)), "stacked gemm");
    double err = 0;
    for (ptrdiff_t i = 0; i < count; i++)
        for (ptrdiff_t r = 0; r < m; r++)
            for (ptrdiff_t j = 0; j < n; j++) {
                double sum = 0;
                for (ptrdiff_t p = 0; p < k; p++)
                    sum += (double)a[i * m * k + r * k + p] * b[i * k * n + p * n + j];
                err = fmax(err, fabs(sum - c1[i * m * n + r * n + j]));
            }
    CHECK(err < 1e-4, "stacked gemm error %g", err);
    free(a), free(b), free(c1), free(c2);
}

int main(int argc, char **argv)
{
    int ids[LEVEL_COUNT], count = compiled_levels(ids), tested = 0;
    for (int i = 0; i < count; i++) {
        const char *name = level_names[ids[i]];
        int wanted = argc < 2;
        for (int a = 1; a < argc; a++)
            wanted |= strcmp(argv[a], name) == 0;
        if (!wanted)
            continue;
        if (!cpu_runs_level(ids[i])) {
            printf("%-8s compiled, not run: this CPU lacks it\n", name);
            continue;
        }
        int before = failures;
        level_in_test = name;
        const loops_level *loops = loops_table(ids[i]);
        test_loops_f32(loops);
        test_loops_f64(loops);
        test_wide_f32(loops);
        test_wide_f64(loops);
        test_fused_conv(loops);
        test_winograd(loops);
        test_gemm(gemm_table(ids[i]));
        printf("%-8s %s\n", name, failures == before ? "ok" : "FAILED");
        tested++;
    }
    for (int a = 1; a < argc; a++) {
        int known = 0;
        for (int i = 0; i < count; i++)
            known |= strcmp(argv[a], level_names[ids[i]]) == 0;
        if (!known) {
            fprintf(stderr, "level '%s' is not compiled into this build\n", argv[a]);
            return 2;
        }
    }
    if (!tested) {
        fprintf(stderr, "no level was tested\n");
        return 2;
    }
    return failures ? 1 : 0;
}
