/*
 * segment.c -- the SIGBUS guard's entry points and the module's layout
 * constants (the kinds come from layout.h's table).
 */
#include "core.h"
#include "../lib/guard.h"

/* _core.guard_mapping(buffer, fd) -> token: protect a named segment's mapping. */
static PyObject *guard_mapping(PyObject *self, PyObject *args)
{
    PyObject *buffer;
    int fd;
    if (!PyArg_ParseTuple(args, "Oi:guard_mapping", &buffer, &fd))
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyBuffer_Release(&view); /* the caller keeps the mapping while registered */
    void *token = pw_guard_add(view.buf, (size_t)view.len, fd);
    return token ? PyLong_FromVoidPtr(token) : pw_raise(PW_ESYS);
}

static void *guard_slot_of(PyObject *token)
{
    void *g = PyLong_AsVoidPtr(token);
    if (!g && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "not a guard token");
    return g;
}

/* _core.unguard_mapping(token) -> bool: stop protecting; whether it was lost. */
static PyObject *unguard_mapping(PyObject *self, PyObject *token)
{
    void *g = guard_slot_of(token);
    return g ? PyBool_FromLong(pw_guard_remove(g)) : NULL;
}

/* _core.mapping_lost(token) -> bool: a truncation was repaired in it. */
static PyObject *mapping_lost(PyObject *self, PyObject *token)
{
    void *g = guard_slot_of(token);
    return g ? PyBool_FromLong(pw_guard_lost(g)) : NULL;
}

static PyMethodDef segment_methods[] = {
    {"guard_mapping", guard_mapping, METH_VARARGS,
     "guard_mapping(buffer, fd) -> token\n\nRepair SIGBUS faults in this mapping of a named "
     "segment whose file `fd` gets truncated, instead of dying. The buffer must stay mapped "
     "and fd open until unguard_mapping(token)."},
    {"unguard_mapping", unguard_mapping, METH_O,
     "unguard_mapping(token) -> bool\n\nStop guarding; True if a truncation was repaired."},
    {"mapping_lost", mapping_lost, METH_O,
     "mapping_lost(token) -> bool\n\nTrue once a truncation of the segment was repaired."},
    {NULL, NULL, 0, NULL},
};

int pw_segment_register(PyObject *module)
{
    if (PyModule_AddFunctions(module, segment_methods) < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "HEADER_SIZE", sizeof(struct pw_header)) < 0 ||
        PyModule_AddIntConstant(module, "LAYOUT_VERSION", PW_LAYOUT_VERSION) < 0 ||
        PyModule_AddIntConstant(module, "RING_MIN_CAPACITY", PW_RING_MIN_CAPACITY) < 0 ||
        PyModule_AddIntConstant(module, "RING_MAX_CAPACITY", PW_RING_MAX_CAPACITY) < 0)
        return -1;
#define PW_KIND_CONST_(id, num, name, type)                                    \
    if (PyModule_AddIntConstant(module, "KIND_" #id, num) < 0)                 \
        return -1;
    PW_KINDS(PW_KIND_CONST_)
#undef PW_KIND_CONST_
    return 0;
}
