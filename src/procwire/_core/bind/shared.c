/*
 * shared.c -- _core.BufferView, which lets procwire.shared's synchronized
 * Array export its elements through the buffer protocol (numpy.asarray(arr)
 * is a zero-copy view).
 *
 * The elements themselves are read and written by ctypes, over the mapping
 * (from_buffer at data_offset): that gives multiprocessing's exact types and
 * conversions. segment.c lays out a Value's or Array's header, header.c
 * validates it, inspect.c reads it.
 */
#include "core.h"

#include <structmember.h>

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
    if (!self->target || self->target == Py_None) {
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

static PyMemberDef BufferView_members[] = {
    {"_buffer_target", T_OBJECT, offsetof(BufferViewObject, target), 0,
     "The object whose buffer this one exports (None: none)."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject BufferViewType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "procwire._core.BufferView",
    .tp_basicsize = sizeof(BufferViewObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "BufferView()\n--\n\nExports the buffer of the object in _buffer_target.",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)BufferView_dealloc,
    .tp_traverse = (traverseproc)BufferView_traverse,
    .tp_clear = (inquiry)BufferView_clear,
    .tp_as_buffer = &BufferView_as_buffer,
    .tp_members = BufferView_members,
};

int pw_shared_register(PyObject *module)
{
    return pw_add_type(module, &BufferViewType, "BufferView");
}
