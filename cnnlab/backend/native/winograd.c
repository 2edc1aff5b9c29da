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
 * The data transforms are in winograd_body.h, compiled once per level and vectorised over
 * neighbouring tiles of a tile row; this file has the weight transforms (scalar: they run
 * once per step on 9 C_out C_in numbers) and the Python binding, which calls the level
 * that the _loops module runs (loops.c, set_level). Layouts: images and gradients NCHW;
 * transformed arrays (16, channels, tiles), tiles numbered (image, tile row, tile column)
 * within the chunk of images passed in.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>

#include "buffers.h"

/* ------------------------------------------------------------------------ */
/* Python binding                                                           */
/* ------------------------------------------------------------------------ */

/* The tiling of images (N, C, H, W) whose conv output is out_h x out_w; -1 and an error
 * when the arrays are not float32 or the sizes do not fit. */
static int make_tiling(tiling *t, const Py_buffer *images, const Py_buffer *transformed,
                       Py_ssize_t pad_top, Py_ssize_t pad_left, Py_ssize_t out_h, Py_ssize_t out_w)
{
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

PyDoc_STRVAR(usable_doc, "winograd_usable() -> bool: whether the transforms run here: always, at "
                         "every level (kept for older callers).");

static PyObject *py_usable(PyObject *self, PyObject *unused)
{
    (void)self, (void)unused;
    Py_RETURN_TRUE;
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
    const loops_level *level = current_loops();
    Py_ssize_t out_h = image->shape[2], out_w = image->shape[3];
    Py_BEGIN_ALLOW_THREADS
    if (to_image)
        level->winograd_output(v[0].buf, v[1].buf, v[2].buf, &t, out_h, out_w);
    else
        level->winograd_grad_output(v[0].buf, v[1].buf, v[2].buf, &t, out_h, out_w);
    Py_END_ALLOW_THREADS
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
        const loops_level *level = current_loops();
        Py_BEGIN_ALLOW_THREADS
        if (to_tiles)
            level->winograd_input(v[0].buf, v[1].buf, &t, plane);
        else
            level->winograd_grad_input(v[0].buf, v[1].buf, &t, plane);
        Py_END_ALLOW_THREADS
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
    const loops_level *level = current_loops();
    Py_BEGIN_ALLOW_THREADS
    level->winograd_output_relu_pool(v[0].buf, v[1].buf, v[2].buf, v[3].buf, &t, out_h / 2,
                                     out_w / 2);
    Py_END_ALLOW_THREADS
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
    const loops_level *level = current_loops();
    Py_BEGIN_ALLOW_THREADS
    level->winograd_grad_output_pooled(v[0].buf, v[1].buf, v[2].buf, v[3].buf, &t, out_h / 2,
                                       out_w / 2);
    Py_END_ALLOW_THREADS
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
