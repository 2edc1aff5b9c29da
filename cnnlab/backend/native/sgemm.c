/*
 * _sgemm: the float32 GEMM of cnnlab (gemm_level.h, one build per level; gemm_threads.c).
 *
 *   gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, accumulate,
 *        count=1, stride_a=0, stride_b=0, stride_c=0, threads=1)
 *       C[m x n] (+)= op(A)[m x k] @ op(B)[k x n], all row-major float32;
 *       count > 1: a stack of such products; threads > 1: split over threads.
 *   levels(), cpu_levels(), set_level(name), get_level()   (dispatch.h)
 *   avx512() -> bool: whether the level in use is avx512 (for older callers)
 *
 * No NumPy headers: operands come in through the buffer protocol.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#include "dispatch.h"
#include "kernels.h"

/* The level every call of this module runs (set_level); the best runnable one at import. */
static int current_level = LEVEL_PORTABLE;

/* Default cache blocking (tunable at run time through _set_blocking); measured on Zen 5
 * (48 KiB L1d, 1 MiB L2), and fitting Zen 3 (32 KiB L1d, 512 KiB L2) too.
 * KC: k depth of a block; split evenly, so K <= KC is one block (the CNN's K = 289 must not
 *     become 256 + 33). The B micro-panel (4 NR KC bytes) then lives in L1.
 * MC: the MC x KC packed A block (~180 KiB) lives in L2.
 * NC: small on purpose. The KC x NC packed B block (~320 KiB) *and* the prefetched source of
 *     the next B block must both fit in L2; with NC = 512-4096 the forward/dW GEMMs were
 *     10-15% slower. */
static gemm_blocking blocking = {320, 144, 256};

DEFINE_LEVEL_FUNCTIONS(sgemm, current_level)

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

    {
        int rc;
        const gemm_level *level = gemm_table(__atomic_load_n(&current_level, __ATOMIC_ACQUIRE));
        gemm_blocking blocks = blocking;
        gemm_shape shape = {ta, tb, accumulate, m, n, k, lda, ldb, ldc,
                            (const float *)av.buf, (const float *)bv.buf, (float *)cv.buf};
        Py_BEGIN_ALLOW_THREADS
        rc = gemm_run(level, &blocks, threads, &shape, count, stride_a, stride_b, stride_c);
        Py_END_ALLOW_THREADS
        if (rc < 0) {
            PyErr_NoMemory();
            goto done;
        }
    }
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
    return PyBool_FromLong(__atomic_load_n(&current_level, __ATOMIC_ACQUIRE) == LEVEL_AVX512);
}

/* Tuning hook: change the cache blocking of subsequent calls. */
static PyObject *py_set_blocking(PyObject *self, PyObject *args)
{
    Py_ssize_t kc, mc, nc;
    (void)self;
    if (!PyArg_ParseTuple(args, "nnn:_set_blocking", &kc, &mc, &nc))
        return NULL;
    if (kc < 16 || mc < 16 || nc < 64 || kc > (1 << 16) || mc > (1 << 16) || nc > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "_set_blocking: out of range");
        return NULL;
    }
    blocking = (gemm_blocking){kc, mc, nc};
    Py_RETURN_NONE;
}

static PyObject *py_get_blocking(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    const gemm_level *level = gemm_table(__atomic_load_n(&current_level, __ATOMIC_ACQUIRE));
    return Py_BuildValue("{s:i,s:i,s:n,s:n,s:n}", "MR", level->mr, "NR", level->nr, "KC",
                         (Py_ssize_t)blocking.kc, "MC", (Py_ssize_t)blocking.mc, "NC",
                         (Py_ssize_t)blocking.nc);
}

static PyMethodDef methods[] = {
    {"gemm", py_gemm, METH_VARARGS, gemm_doc},
    {"avx512", py_avx512, METH_NOARGS, "Whether the level in use is avx512 (see get_level)."},
    LEVEL_METHODS(sgemm),
    {"_set_blocking", py_set_blocking, METH_VARARGS, "_set_blocking(kc, mc, nc): tuning hook."},
    {"_get_blocking", py_get_blocking, METH_NOARGS, "Current micro-tile and cache blocking."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "cnnlab.backend._sgemm",
    "float32 GEMM at the portable, AVX2, AVX-512 or NEON level (one thread, or split over a few).",
    -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__sgemm(void)
{
    current_level = best_level();
    PyObject *module = PyModule_Create(&moduledef);
    if (module && PyModule_AddIntConstant(module, "DOT_N", GEMM_DOT_N) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
