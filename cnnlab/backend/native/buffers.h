/*
 * buffers.h: taking NumPy arrays (any buffer) as C arrays, shared by loops.c and winograd.c.
 *
 * An arg_spec says what one argument must be: kind 'F' (float32 or float64) or 'B' (one
 * byte), C-contiguous, writable or not, with a number of axes; get_all acquires a list of
 * them, all or none, and reject releases them and raises ValueError.
 */
#ifndef CNNLAB_BUFFERS_H
#define CNNLAB_BUFFERS_H

#include <Python.h>
#include <string.h>

#include "cpu.h"

/* 'f' -> 4, 'd' -> 8, anything else -> 0 */
static inline int float_size(const Py_buffer *view)
{
    const char *f = view->format ? view->format : "B";
    if (*f == '@' || *f == '=' || *f == '<')
        f++;
    if (strcmp(f, "f") == 0 && view->itemsize == 4)
        return 4;
    if (strcmp(f, "d") == 0 && view->itemsize == 8)
        return 8;
    return 0;
}

static inline int byte_size(const Py_buffer *view)
{
    const char *f = view->format ? view->format : "B";
    return view->itemsize == 1 && (strcmp(f, "B") == 0 || strcmp(f, "?") == 0);
}

/* What one argument must be: kind 'F' (float32 or float64) or 'B' (one byte), C-contiguous. */
typedef struct {
    const char *name;
    char kind;
    int writable;
    int ndim; /* 0: any number of axes */
} arg_spec;

static inline int get(PyObject *obj, Py_buffer *view, const arg_spec *spec)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (spec->writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    if (spec->kind == 'F' ? !float_size(view) : !byte_size(view)) {
        PyErr_Format(PyExc_ValueError, "%s must be a %s buffer (got format '%s')", spec->name,
                     spec->kind == 'F' ? "float32 or float64" : "uint8 or bool",
                     view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    if (spec->ndim && view->ndim != spec->ndim) {
        PyErr_Format(PyExc_ValueError, "%s must have %d axes, got %d", spec->name, spec->ndim,
                     view->ndim);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static inline void release(Py_buffer *views, int count)
{
    for (int k = 0; k < count; k++)
        PyBuffer_Release(&views[k]);
}

/* Acquire every objects[k] as specs[k] says: all of them, or none (error set). */
static inline int get_all(PyObject *const *objects, const arg_spec *specs, Py_buffer *views, int count)
{
    for (int k = 0; k < count; k++)
        if (get(objects[k], &views[k], &specs[k]) < 0) {
            release(views, k);
            return -1;
        }
    return 0;
}

/* Release the buffers and raise ValueError(message); returns NULL for the caller to return. */
static inline PyObject *reject(Py_buffer *views, int count, const char *message)
{
    PyErr_SetString(PyExc_ValueError, message);
    release(views, count);
    return NULL;
}

static inline int same_shape(const Py_buffer *a, const Py_buffer *b)
{
    if (a->ndim != b->ndim)
        return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d])
            return 0;
    return 1;
}


/* The level the _loops module runs (loops.c; set_level), and its table of kernels. */
extern int loops_current_level;

static inline const loops_level *current_loops(void)
{
    return loops_table(__atomic_load_n(&loops_current_level, __ATOMIC_ACQUIRE));
}

/* The winograd_* functions (winograd.c), added to the _loops module. */
extern PyMethodDef winograd_methods[];

#endif
