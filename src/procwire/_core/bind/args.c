/*
 * args.c -- argument parsing: fast-call arguments and timeouts.
 *
 * put() and get() are called millions of times a second; the generic
 * PyArg_ParseTupleAndKeywords builds a tuple and a dict per call, this does
 * not.
 */
#include "core.h"

#include <math.h>
#include <string.h>

int pw_deadline_from(int block, PyObject *timeout, int64_t *deadline)
{
    if (!block) {
        *deadline = 0; /* already passed: try once */
        return 0;
    }
    if (timeout == NULL || timeout == Py_None) {
        *deadline = PW_FOREVER;
        return 0;
    }
    double seconds = PyFloat_AsDouble(timeout);
    if (seconds == -1.0 && PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError,
                     "timeout must be a number of seconds or None, not %.100s",
                     Py_TYPE(timeout)->tp_name);
        return -1;
    }
    if (isnan(seconds)) {
        PyErr_SetString(PyExc_ValueError, "timeout must be a number of seconds, not NaN");
        return -1;
    }
    if (seconds <= 0) {
        *deadline = 0;
        return 0;
    }
    int64_t now = pw_now_ns();
    double ns = seconds * 1e9;
    *deadline = ns >= (double)(PW_FOREVER - now) ? PW_FOREVER : now + (int64_t)ns;
    return 0;
}

int pw_parse_args(const char *func, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                  const char *const *names, int nnames, int nrequired, PyObject **out)
{
    if (nargs > nnames) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d arguments (%zd given)", func,
                     nnames, nargs);
        return -1;
    }
    for (int i = 0; i < nnames; i++)
        out[i] = i < nargs ? args[i] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        const char *key = PyUnicode_AsUTF8(PyTuple_GET_ITEM(kwnames, k));
        if (!key)
            return -1;
        int i = 0;
        while (i < nnames && strcmp(key, names[i]) != 0)
            i++;
        if (i == nnames) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%s'", func,
                         key);
            return -1;
        }
        if (out[i]) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", func,
                         key);
            return -1;
        }
        out[i] = args[nargs + k];
    }
    for (int i = 0; i < nrequired; i++) {
        if (!out[i]) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", func,
                         names[i]);
            return -1;
        }
    }
    return 0;
}

int pw_parse_block_timeout(PyObject *block, PyObject *timeout, int64_t *deadline)
{
    int b = 1;
    if (block) {
        b = PyObject_IsTrue(block);
        if (b < 0)
            return -1;
    }
    return pw_deadline_from(b, timeout, deadline);
}

int pw_parse_deadline_args(const char *func, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames, int with_block, int64_t *deadline)
{
    static const char *const names[] = {"block", "timeout"};
    PyObject *a[2] = {NULL, NULL};
    int skip = !with_block;
    if (pw_parse_args(func, args, nargs, kwnames, names + skip, 2 - skip, 0, a + skip) < 0)
        return -1;
    return pw_parse_block_timeout(a[0], a[1], deadline);
}
