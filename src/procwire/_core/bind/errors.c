/*
 * errors.c -- where lib's statuses become Python exceptions, and lib's hooks
 * become the GIL and the signal check.
 */
#include "core.h"

#include <errno.h>
#include <stdarg.h>

PyObject *pw_raise(int status)
{
    switch (status) {
    case PW_ERAISED:
        if (!PyErr_Occurred()) /* a hook reported without raising: never expected */
            PyErr_SetString(PyExc_SystemError, "procwire: error without an exception");
        break;
    case PW_ECORRUPT:
        PyErr_SetString(pw_get_state()->SegmentError, pw_last_error());
        break;
    case PW_ESYS:
        errno = pw_last_errno();
        PyErr_SetFromErrno(PyExc_OSError);
        break;
    case PW_EDEADLK:
        PyErr_SetString(PyExc_RuntimeError, pw_last_error());
        break;
    case PW_EINVAL:
        PyErr_SetString(PyExc_ValueError, pw_last_error());
        break;
    default:
        PyErr_Format(PyExc_SystemError, "procwire: unexpected status %d", status);
        break;
    }
    return NULL;
}

int pw_raise_int(int status)
{
    pw_raise(status);
    return -1;
}

int pw_segment_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    if (msg) {
        PyErr_SetObject(pw_get_state()->SegmentError, msg);
        Py_DECREF(msg);
    }
    return -1;
}

/* ----------------------------------------------------------------- hooks */

static void *release_gil(void)
{
    return PyEval_SaveThread();
}

static void take_gil(void *token)
{
    PyEval_RestoreThread((PyThreadState *)token);
}

/* Between the slices of a wait: a signal handler that raised (Ctrl-C) ends it. */
static int signals_raised(void)
{
    return PyErr_CheckSignals() < 0;
}

void pw_install_hooks(void)
{
    pw_hooks.unblock = release_gil;
    pw_hooks.reblock = take_gil;
    pw_hooks.interrupted = signals_raised;
}
