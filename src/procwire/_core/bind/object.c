/*
 * object.c -- PwObject, the native base of every _core type over a mapping
 * (QueueBase, PipeEnd, Lock, Semaphore, Event, Condition).
 *
 * One life cycle for all: map (at __init__), calls bracketed by enter/leave
 * (those that may release the GIL), close (from any thread), release (by
 * whoever is last: close() itself, or the last call in progress when close()
 * came from another thread), dealloc.
 */
#include "core.h"

int pw_object_map(PwObject *o, const pw_object_ops *ops, PyObject *buffer, PyObject *name)
{
    if (o->mapped) {
        PyErr_Format(PyExc_RuntimeError, "%s.__init__ called twice", Py_TYPE(o)->tp_name);
        return -1;
    }
    if (!PyUnicode_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "name must be a str");
        return -1;
    }
    if (PyObject_GetBuffer(buffer, &o->view, PyBUF_WRITABLE) < 0)
        return -1;
    o->ops = ops;
    o->mapped = 1;
    o->guard.closed = 0;
    o->guard.active = 0;
    Py_XSETREF(o->name, Py_NewRef(name));
    return 0;
}

void pw_object_unmap(PwObject *o)
{
    if (o->mapped) {
        o->mapped = 0;
        if (!o->keep_mapping)
            PyBuffer_Release(&o->view);
    }
}

static void release(PwObject *o)
{
    if (o->ops && o->ops->release)
        o->ops->release(o);
    else
        pw_object_unmap(o);
}

PyObject *pw_object_closed(PwObject *o)
{
    if (o->ops && o->ops->closed_msg)
        PyErr_SetString(PyExc_OSError, o->ops->closed_msg);
    else
        PyErr_Format(PyExc_ValueError, "%U is closed", o->name ? o->name : Py_None);
    return NULL;
}

PyObject *pw_object_closed_while_waiting(PwObject *o)
{
    PyErr_Format(PyExc_ValueError, "%U was closed by another thread while this one waited on it",
                 o->name ? o->name : Py_None);
    return NULL;
}

void pw_object_leave(PwObject *o)
{
    if (--o->guard.active == 0 && o->guard.closed)
        release(o);
}

int pw_object_close(PwObject *o)
{
    o->guard.closed = 1;
    if (o->guard.active)
        return 0;
    release(o);
    return 1;
}

void pw_object_dealloc(PwObject *o)
{
    release(o);
    Py_CLEAR(o->name);
}

PyObject *pw_object_get_name(PwObject *o, void *closure)
{
    return Py_NewRef(o->name ? o->name : Py_None);
}

PyObject *pw_object_get_closed(PwObject *o, void *closure)
{
    return PyBool_FromLong(o->guard.closed || !o->mapped);
}
