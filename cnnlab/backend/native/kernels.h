/*
 * kernels.h: the compiled kernels as plain C (no Python), one table of functions per level.
 *
 * Each level's unit (loops_<level>.c, gemm_<level>.c) fills one loops_level or gemm_level
 * table; the Python modules (loops.c, sgemm.c) and the C test (tests/native/test_kernels.c)
 * pick a table at run time (cpu.h says which levels this CPU can run). Every function of a
 * table computes the same thing at every level: the loops bit for bit (built with
 * -ffp-contract=off), the GEMM, Winograd and fused conv up to float32 rounding.
 */
#ifndef CNNLAB_KERNELS_H
#define CNNLAB_KERNELS_H

#include <stddef.h>

#if defined(__x86_64__) || defined(_M_X64)
#define CNNLAB_X86 1
#else
#define CNNLAB_X86 0
#endif
#if defined(__aarch64__) || defined(_M_ARM64)
#define CNNLAB_ARM64 1
#else
#define CNNLAB_ARM64 0
#endif

/* Levels by id, best last within an architecture. */
enum { LEVEL_PORTABLE, LEVEL_AVX2, LEVEL_AVX512, LEVEL_NEON, LEVEL_COUNT };

/* A stride-1 convolution in the "wide" im2col layout (cnnlab/ops/_conv_wide.py): every image
 * plane is padded to H' x W' (flattened); tap t = (m, n) of the kernel reads the run of `run`
 * pixels starting at starts[t] = d_h m W' + d_w n; image b's columns in cols start at b wide. */
typedef struct {
    ptrdiff_t batch, channels, in_h, in_w;   /* the input, (N, C, H, W) */
    ptrdiff_t pad_top, pad_left, padded_h, padded_w;
    ptrdiff_t taps, wide, run;
    ptrdiff_t starts[64];                    /* kernels up to 64 taps (8x8) */
} wide_geometry;

/* Scratch floats past the end of the fused conv's padded planes and plane buffers: its vector
 * loops run k up to `run` rounded up to two vectors, reading and writing past `run` there. */
#define FUSED_SLACK 64

/* Winograd F(2x2, 3x3) tiles of images (N, C, H, W) (winograd_body.h). */
typedef struct {
    ptrdiff_t batch, channels, height, width;  /* the images (or their gradient) */
    ptrdiff_t pad_top, pad_left;
    ptrdiff_t tile_rows, tile_cols, tiles;     /* per image: th, tw, th * tw */
    ptrdiff_t stride;                          /* of the padded plane's rows: 2 tw + 2 */
} tiling;

/* Adam's scalars, in the parameters' dtype (loops_body.h: adam_f32 / adam_f64). */
typedef struct {
    int coupled, decoupled;
    double decay, shrink, beta1, one_minus_beta1, beta2, one_minus_beta2, bias2_sqrt, eps,
        step_size;
} adam_scalars;

typedef struct {
    const char *name;
    /* 2x2 / stride-2 max pool over planes of in_h x in_w (loops_body.h) */
    void (*pool_forward_f32)(const float *x, float *y, unsigned char *index, ptrdiff_t planes,
                             ptrdiff_t in_h, ptrdiff_t in_w, ptrdiff_t out_h, ptrdiff_t out_w);
    void (*pool_forward_f64)(const double *x, double *y, unsigned char *index, ptrdiff_t planes,
                             ptrdiff_t in_h, ptrdiff_t in_w, ptrdiff_t out_h, ptrdiff_t out_w);
    void (*pool_backward_f32)(const float *dy, const unsigned char *index, float *dx,
                              ptrdiff_t planes, ptrdiff_t in_h, ptrdiff_t in_w, ptrdiff_t out_h,
                              ptrdiff_t out_w);
    void (*pool_backward_f64)(const double *dy, const unsigned char *index, double *dx,
                              ptrdiff_t planes, ptrdiff_t in_h, ptrdiff_t in_w, ptrdiff_t out_h,
                              ptrdiff_t out_w);
    void (*relu_forward_f32)(const float *x, float *y, unsigned char *mask, ptrdiff_t n);
    void (*relu_forward_f64)(const double *x, double *y, unsigned char *mask, ptrdiff_t n);
    void (*relu_backward_f32)(const float *dy, const unsigned char *mask, float *dx, ptrdiff_t n);
    void (*relu_backward_f64)(const double *dy, const unsigned char *mask, double *dx, ptrdiff_t n);
    void (*adam_f32)(float *w, const float *grad, float *m, float *v, ptrdiff_t n,
                     const adam_scalars *s);
    void (*adam_f64)(double *w, const double *grad, double *m, double *v, ptrdiff_t n,
                     const adam_scalars *s);
    /* the wide layout; scratch: padded_h x padded_w of the dtype */
    void (*wide_im2col_f32)(const float *x, float *cols, const wide_geometry *g, float *scratch);
    void (*wide_im2col_f64)(const double *x, double *cols, const wide_geometry *g, double *scratch);
    void (*wide_col2im_f32)(const float *dcols, float *dx, const wide_geometry *g, float *scratch);
    void (*wide_col2im_f64)(const double *dcols, double *dx, const wide_geometry *g,
                            double *scratch);
    /* the fused first block conv -> ReLU -> 2x2 max pool, float32 (scratch: fused_scratch_floats) */
    void (*conv_relu_pool_forward)(const float *x, const float *weight, const float *bias,
                                   float *y, unsigned char *code, ptrdiff_t out_channels,
                                   ptrdiff_t pool_h, ptrdiff_t pool_w, const wide_geometry *g,
                                   float *padded, float *planes);
    void (*conv_relu_pool_backward)(const float *x, const float *dy, const unsigned char *code,
                                    double *dweight, double *dbias, ptrdiff_t out_channels,
                                    ptrdiff_t pool_h, ptrdiff_t pool_w, const wide_geometry *g,
                                    float *padded, float *gradient);
    /* Winograd F(2x2, 3x3) data transforms (winograd_body.h), float32 */
    void (*winograd_input)(const float *x, float *v, const tiling *t, float *plane);
    void (*winograd_output)(const float *m, const float *bias, float *y, const tiling *t,
                            ptrdiff_t out_h, ptrdiff_t out_w);
    void (*winograd_grad_output)(const float *dy, float *yhat, double *dbias, const tiling *t,
                                 ptrdiff_t out_h, ptrdiff_t out_w);
    void (*winograd_grad_input)(const float *dv, float *dx, const tiling *t, float *plane);
    void (*winograd_output_relu_pool)(const float *m, const float *bias, float *y,
                                      unsigned char *code, const tiling *t, ptrdiff_t pool_h,
                                      ptrdiff_t pool_w);
    void (*winograd_grad_output_pooled)(const float *dp, const unsigned char *code, float *yhat,
                                        double *dbias, const tiling *t, ptrdiff_t pool_h,
                                        ptrdiff_t pool_w);
} loops_level;

/* Output channels the fused conv computes per pass over the input (its plane buffer holds
 * this many conv-output planes). */
#define CONV_CHANNELS 4

/* Products C = A B^T (B stored n x k) with at most this many columns of C run as row-by-row
 * dot products, unpacked (gemm_level.h, gemm_dot_bt): a classifier layer's x W^T. */
#define GEMM_DOT_N 16

/* Cache blocking of the GEMM (gemm_body.h). */
typedef struct {
    ptrdiff_t kc, mc, nc;
} gemm_blocking;

typedef struct {
    const char *name;
    int mr, nr;  /* the micro-tile */
    /* C[m x n] (+)= op(A) op(B) on this thread; 0, or -1 when scratch could not be allocated */
    int (*gemm)(int trans_a, int trans_b, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *a,
                ptrdiff_t lda, const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc,
                int accumulate, const gemm_blocking *blocking);
    /* C[m x n] (+)= A B^T, A stored m x k and B n x k, k > 0, as dot products of rows (for
     * n <= GEMM_DOT_N; gemm_run chooses it for a whole product) */
    void (*dot_bt)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *a, ptrdiff_t lda,
                   const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc, int accumulate);
} gemm_level;

/* Each level's tables, defined by its unit where the architecture has it. */
extern const loops_level loops_level_portable;
extern const gemm_level gemm_level_portable;
#if CNNLAB_X86
extern const loops_level loops_level_avx2, loops_level_avx512;
extern const gemm_level gemm_level_avx2, gemm_level_avx512;
#endif
#if CNNLAB_ARM64
extern const loops_level loops_level_neon;
extern const gemm_level gemm_level_neon;
#endif

/* gemm_threads.c: per-thread packing buffers for the level's GEMM (64-byte aligned, kept
 * between calls); 0, or -1 when out of memory. */
int gemm_scratch(size_t a_floats, size_t b_floats, float **a, float **b);

/* One product, or a stack of `count` of them (operand i strides in, in floats), run on up to
 * `threads` threads (never more than the cores this process may use): one product split by
 * rows or columns of C, a stack shared out whole. Same bits as one thread. 0 or -1 (memory). */
typedef struct {
    int trans_a, trans_b, accumulate;
    ptrdiff_t m, n, k, lda, ldb, ldc;
    const float *a, *b;
    float *c;
} gemm_shape;

int gemm_run(const gemm_level *level, const gemm_blocking *blocking, int threads,
             const gemm_shape *shape, ptrdiff_t count, ptrdiff_t stride_a, ptrdiff_t stride_b,
             ptrdiff_t stride_c);

/* The cores this process may run on (sched_getaffinity where there is one), at least 1. */
int usable_cores(void);

#endif
