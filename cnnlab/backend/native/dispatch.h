/*
 * dispatch.h: the level functions both Python modules export (levels, cpu_levels, set_level,
 * get_level), over cpu.h. Each module keeps its own current level, chosen at import as the
 * best one this CPU runs.
 */
#ifndef CNNLAB_DISPATCH_H
#define CNNLAB_DISPATCH_H

#include <Python.h>

#include "cpu.h"

/* A tuple of the names of the compiled levels, all of them or only those this CPU runs. */
static PyObject *level_tuple(int runnable_only)
{
    int ids[LEVEL_COUNT], count = compiled_levels(ids);
    PyObject *names = PyTuple_New(0);
    for (int i = 0; names && i < count; i++) {
        if (runnable_only && !cpu_runs_level(ids[i]))
            continue;
        PyObject *name = PyUnicode_FromString(level_names[ids[i]]);
        if (!name || _PyTuple_Resize(&names, PyTuple_GET_SIZE(names) + 1) < 0) {
            Py_XDECREF(name);
            Py_XDECREF(names);
            return NULL;
        }
        PyTuple_SET_ITEM(names, PyTuple_GET_SIZE(names) - 1, name);
    }
    return names;
}

/* The level id for `name` if it is compiled in and this CPU runs it; else -1 and a one-line
 * ValueError naming the levels that do run here. */
static int parse_level(PyObject *name_object)
{
    const char *name = PyUnicode_Check(name_object) ? PyUnicode_AsUTF8(name_object) : NULL;
    if (!name) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "set_level takes a level name (a str)");
        return -1;
    }
    int ids[LEVEL_COUNT], count = compiled_levels(ids);
    for (int i = 0; i < count; i++)
        if (strcmp(name, level_names[ids[i]]) == 0 && cpu_runs_level(ids[i]))
            return ids[i];
    char runnable[64] = "";
    for (int i = 0; i < count; i++)
        if (cpu_runs_level(ids[i])) {
            if (runnable[0])
                strcat(runnable, ", ");
            strcat(runnable, level_names[ids[i]]);
        }
    int known = 0;
    for (int level = 0; level < LEVEL_COUNT; level++)
        known |= strcmp(name, level_names[level]) == 0;
    PyErr_Format(PyExc_ValueError, "kernel level '%s' %s; levels this CPU runs: %s", name,
                 known ? "cannot run on this CPU or is not built in"
                       : "does not exist (portable, avx2, avx512 or neon)",
                 runnable);
    return -1;
}

#define LEVEL_METHODS(prefix)                                                                   \
    {"levels", prefix##_levels, METH_NOARGS,                                                    \
     "levels() -> tuple of the kernel levels compiled into this build."},                       \
    {"cpu_levels", prefix##_cpu_levels, METH_NOARGS,                                            \
     "cpu_levels() -> the compiled levels this CPU can run (portable first, best last)."},     \
    {"set_level", prefix##_set_level, METH_O,                                                   \
     "set_level(name): run every function of this module at that level (ValueError if the "    \
     "CPU cannot run it)."},                                                                    \
    {"get_level", prefix##_get_level, METH_NOARGS, "get_level() -> the level in use."}

#define DEFINE_LEVEL_FUNCTIONS(prefix, current)                                                 \
    static PyObject *prefix##_levels(PyObject *self, PyObject *unused)                         \
    {                                                                                          \
        (void)self, (void)unused;                                                              \
        return level_tuple(0);                                                                 \
    }                                                                                          \
    static PyObject *prefix##_cpu_levels(PyObject *self, PyObject *unused)                     \
    {                                                                                          \
        (void)self, (void)unused;                                                              \
        return level_tuple(1);                                                                 \
    }                                                                                          \
    static PyObject *prefix##_set_level(PyObject *self, PyObject *name)                        \
    {                                                                                          \
        (void)self;                                                                            \
        int level = parse_level(name);                                                         \
        if (level < 0)                                                                         \
            return NULL;                                                                       \
        __atomic_store_n(&(current), level, __ATOMIC_RELEASE);                                 \
        Py_RETURN_NONE;                                                                        \
    }                                                                                          \
    static PyObject *prefix##_get_level(PyObject *self, PyObject *unused)                      \
    {                                                                                          \
        (void)self, (void)unused;                                                              \
        return PyUnicode_FromString(level_names[__atomic_load_n(&(current), __ATOMIC_ACQUIRE)]); \
    }

#endif
