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
 *   conv_relu_pool_forward / _backward       the fused first conv block
 *   winograd_*                               the Winograd transforms (winograd.c)
 *   levels(), cpu_levels(), set_level(name), get_level()   (dispatch.h)
 *
 * NumPy runs each of the loops as several passes over memory (and over a strided view, one
 * short row at a time); a loop here reads every input once and writes every output once,
 * computing exactly what the NumPy code beside its caller computes, bit for bit, at every
 * level (loops_body.h; tests/test_kernels.py checks them against that code).
 *
 * This file is the Python binding: it checks the buffers and calls the current level's
 * table (loops_<level>.c). float32 and float64 ('f' and 'd' buffers), C-contiguous (the
 * callers copy the rare strided input first). The GIL is released while a loop runs:
 * data-parallel shards call these from several threads at once.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <string.h>

#include "buffers.h"
#include "dispatch.h"

/* The level every function of this module runs (set_level); the best runnable at import. */
int loops_current_level = LEVEL_PORTABLE;

DEFINE_LEVEL_FUNCTIONS(loops, loops_current_level)

/* Between NCHW (N, C, H, W) and the wide GEMM layout (C, N, H, W'), W <= W': row (c, b, i)
 * of the wide array holds image row (b, c, i) in its first W entries. Copies only: the same
 * at every level. */
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
    Py_ssize_t planes = v[1].shape[0] * v[1].shape[1];
    const loops_level *level = current_loops();
    Py_BEGIN_ALLOW_THREADS
    if (v[0].itemsize == 4)
        level->pool_forward_f32(v[0].buf, v[1].buf, v[2].buf, planes, in_h, in_w, out_h, out_w);
    else
        level->pool_forward_f64(v[0].buf, v[1].buf, v[2].buf, planes, in_h, in_w, out_h, out_w);
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
    Py_ssize_t planes = v[0].shape[0] * v[0].shape[1];
    const loops_level *level = current_loops();
    Py_BEGIN_ALLOW_THREADS
    if (v[0].itemsize == 4)
        level->pool_backward_f32(v[0].buf, v[1].buf, v[2].buf, planes, in_h, in_w, out_h, out_w);
    else
        level->pool_backward_f64(v[0].buf, v[1].buf, v[2].buf, planes, in_h, in_w, out_h, out_w);
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
    const loops_level *level = current_loops();
    Py_BEGIN_ALLOW_THREADS
    if (v[0].itemsize == 4)
        level->relu_forward_f32(v[0].buf, v[1].buf, v[2].buf, n);
    else
        level->relu_forward_f64(v[0].buf, v[1].buf, v[2].buf, n);
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
    const loops_level *level = current_loops();
    Py_BEGIN_ALLOW_THREADS
    if (v[0].itemsize == 4)
        level->relu_backward_f32(v[0].buf, v[1].buf, v[2].buf, n);
    else
        level->relu_backward_f64(v[0].buf, v[1].buf, v[2].buf, n);
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
    /* the scalars as the NumPy code has them; each level rounds them to w's dtype */
    adam_scalars scalars = {coupled, decoupled, decay, shrink, beta1, 1 - beta1, beta2,
                            1 - beta2, bias2_sqrt, eps, step_size};
    const loops_level *level = current_loops();
    Py_BEGIN_ALLOW_THREADS
    if (v[0].itemsize == 4)
        level->adam_f32(v[0].buf, v[1].buf, v[2].buf, v[3].buf, n, &scalars);
    else
        level->adam_f64(v[0].buf, v[1].buf, v[2].buf, v[3].buf, n, &scalars);
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
    const loops_level *level = current_loops();
    Py_BEGIN_ALLOW_THREADS
    if (v[0].itemsize == 4)
        level->wide_im2col_f32(v[0].buf, v[1].buf, &g, scratch);
    else
        level->wide_im2col_f64(v[0].buf, v[1].buf, &g, scratch);
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
    const loops_level *level = current_loops();
    Py_BEGIN_ALLOW_THREADS
    if (v[0].itemsize == 4)
        level->wide_col2im_f32(v[0].buf, v[1].buf, &g, scratch);
    else
        level->wide_col2im_f64(v[0].buf, v[1].buf, &g, scratch);
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
"Whether conv_relu_pool_forward/backward run here: always, at every level (kept for older\n"
"callers).");

static PyObject *py_conv_relu_pool_usable(PyObject *self, PyObject *unused)
{
    (void)self, (void)unused;
    Py_RETURN_TRUE;
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
"kW), bias (C_out,), y and code (N, C_out, H_out // 2, W_out // 2).");

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
    const loops_level *level = current_loops();
    Py_BEGIN_ALLOW_THREADS
    level->conv_relu_pool_forward(v[0].buf, v[1].buf, v[2].buf, v[3].buf, v[4].buf, v[1].shape[0],
                                  v[3].shape[2], v[3].shape[3], &g, padded, planes);
    Py_END_ALLOW_THREADS
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
    const loops_level *level = current_loops();
    Py_BEGIN_ALLOW_THREADS
    level->conv_relu_pool_backward(v[0].buf, v[1].buf, v[2].buf, v[3].buf, v[4].buf, v[3].shape[0],
                                   v[1].shape[2], v[1].shape[3], &g, padded, gradient);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(padded);
    release(v, 5);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    LEVEL_METHODS(loops),
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
    PyModuleDef_HEAD_INIT, "cnnlab.backend._loops",
    "Single-pass C loops for max pooling, ReLU, Adam and the wide im2col layout, the fused\n"
    "first conv block and the Winograd transforms, at the portable, AVX2, AVX-512 or NEON level.",
    -1,
    methods,
};

PyMODINIT_FUNC PyInit__loops(void)
{
    loops_current_level = best_level();
    PyObject *module = PyModule_Create(&moduledef);
    if (module && PyModule_AddFunctions(module, winograd_methods) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
