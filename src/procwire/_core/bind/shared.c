/*
 * shared.c -- the segments behind procwire.shared's Value and Array, and
 * _core.BufferView, which lets a synchronized Array export its elements
 * through the buffer protocol (numpy.asarray(arr) is a zero-copy view).
 *
 * The elements themselves are read and written by ctypes, over the mapping
 * (from_buffer at data_offset): that gives multiprocessing's exact types and
 * conversions. This file only lays out and validates the header.
 */
#include "core.h"

#include <errno.h>
#include <string.h>

/* _core.shared_size(nbytes) -> bytes of a Value/Array segment holding nbytes. */
static PyObject *shared_size(PyObject *mod, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0 || (size_t)n > ((size_t)1 << 46)) {
        PyErr_Format(PyExc_ValueError, "cannot share %zd bytes", n);
        return NULL;
    }
    /* at least one byte, so that a zero-length Array still maps */
    return PyLong_FromSize_t(PW_SHARED_DATA_OFFSET + (n ? (size_t)n : 1));
}

/*
 * _core.shared_init(buffer, kind, typecode, elem_size, length, lock_mode,
 *                   lock_name=b"")
 * Lays out a fresh Value/Array segment (elements zeroed, as ctypes would)
 * and publishes it. Keeps no reference to the buffer.
 */
static PyObject *shared_init(PyObject *mod, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "kind", "typecode", "elem_size", "length",
                             "lock_mode", "lock_name", NULL};
    Py_buffer view, lname = {0};
    unsigned int kind, lock_mode;
    const char *typecode;
    Py_ssize_t typecode_len;
    unsigned long long elem_size, length;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "w*Is#KKI|y*:shared_init", kwlist, &view,
                                     &kind, &typecode, &typecode_len, &elem_size, &length,
                                     &lock_mode, &lname))
        return NULL;
    PyObject *result = NULL;
    if (kind != PW_KIND_VALUE && kind != PW_KIND_ARRAY) {
        PyErr_Format(PyExc_ValueError, "kind %u is not a value or array", kind);
        goto out;
    }
    if (typecode_len >= PW_TYPECODE_MAX || lock_mode > PW_LOCKMODE_EXTERNAL ||
        (lname.buf && lname.len > PW_LOCK_NAME_MAX) || elem_size == 0 ||
        (kind == PW_KIND_VALUE && length != 1)) {
        PyErr_SetString(PyExc_ValueError, "invalid shared value parameters");
        goto out;
    }
    if (length > (((uint64_t)1 << 46) / elem_size) ||
        (uint64_t)view.len != PW_SHARED_DATA_OFFSET + (elem_size * length != 0 ? elem_size * length : 1)) {
        PyErr_Format(PyExc_ValueError, "buffer of %zd bytes does not fit %llu elements of %llu",
                     view.len, length, elem_size);
        goto out;
    }
    struct pw_header *h = view.buf;
    memset(view.buf, 0, view.len);
    pw_header_init(h, kind, (uint64_t)view.len, sizeof(struct pw_shared), PW_SHARED_DATA_OFFSET);
    struct pw_shared *s = (struct pw_shared *)(h + 1);
    int rc = pw_lock_init(&s->lock, 1);
    if (rc) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        goto out;
    }
    memcpy(s->typecode, typecode, typecode_len);
    s->elem_size = elem_size;
    s->length = length;
    s->lock_mode = lock_mode;
    if (lname.buf) {
        memcpy(s->lock_name, lname.buf, lname.len);
        s->lock_name_len = (uint32_t)lname.len;
    }
    pw_header_publish(h);
    result = Py_NewRef(Py_None);
out:
    PyBuffer_Release(&view);
    if (lname.buf)
        PyBuffer_Release(&lname);
    return result;
}

/* ---------------------------------------------------------- BufferView */

/*
 * A base class whose instances export the buffer of another object, set in
 * `_buffer_target` (a ctypes array over the mapping). Python classes cannot
 * export buffers on 3.11; this one-slot type can.
 */
typedef struct {
    PyObject_HEAD
    PyObject *target;
} BufferViewObject;

static int BufferView_getbuffer(BufferViewObject *self, Py_buffer *view, int flags)
{
    if (!self->target) {
        PyErr_SetString(PyExc_BufferError, "this object has no shared memory to export");
        return -1;
    }
    return PyObject_GetBuffer(self->target, view, flags);
}

static PyBufferProcs BufferView_as_buffer = {
    .bf_getbuffer = (getbufferproc)BufferView_getbuffer,
};

static int BufferView_traverse(BufferViewObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->target);
    return 0;
}

static int BufferView_clear(BufferViewObject *self)
{
    Py_CLEAR(self->target);
    return 0;
}

static void BufferView_dealloc(BufferViewObject *self)
{
    PyObject_GC_UnTrack(self);
    BufferView_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *BufferView_get_target(BufferViewObject *self, void *closure)
{
    return Py_NewRef(self->target ? self->target : Py_None);
}

static int BufferView_set_target(BufferViewObject *self, PyObject *value, void *closure)
{
    Py_XSETREF(self->target, value == Py_None ? NULL : Py_XNewRef(value));
    return 0;
}

static PyGetSetDef BufferView_getset[] = {
    {"_buffer_target", (getter)BufferView_get_target, (setter)BufferView_set_target, NULL,
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BufferViewType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "procwire._core.BufferView",
    .tp_basicsize = sizeof(BufferViewObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Exports the buffer of the object in _buffer_target.",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)BufferView_dealloc,
    .tp_traverse = (traverseproc)BufferView_traverse,
    .tp_clear = (inquiry)BufferView_clear,
    .tp_as_buffer = &BufferView_as_buffer,
    .tp_getset = BufferView_getset,
};

static PyMethodDef shared_functions[] = {
    {"shared_size", shared_size, METH_O, "shared_size(nbytes) -> segment bytes"},
    {"shared_init", (PyCFunction)(void (*)(void))shared_init, METH_VARARGS | METH_KEYWORDS,
     "shared_init(buffer, kind, typecode, elem_size, length, lock_mode, lock_name=b'')"},
    {NULL, NULL, 0, NULL},
};

int pw_shared_register(PyObject *module)
{
    if (PyType_Ready(&BufferViewType) < 0 ||
        PyModule_AddObjectRef(module, "BufferView", (PyObject *)&BufferViewType) < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "SHARED_DATA_OFFSET", PW_SHARED_DATA_OFFSET) < 0 ||
        PyModule_AddIntConstant(module, "LOCKMODE_NONE", PW_LOCKMODE_NONE) < 0 ||
        PyModule_AddIntConstant(module, "LOCKMODE_EMBEDDED", PW_LOCKMODE_EMBEDDED) < 0 ||
        PyModule_AddIntConstant(module, "LOCKMODE_NAMED", PW_LOCKMODE_NAMED) < 0 ||
        PyModule_AddIntConstant(module, "LOCKMODE_EXTERNAL", PW_LOCKMODE_EXTERNAL) < 0)
        return -1;
    return PyModule_AddFunctions(module, shared_functions);
}
