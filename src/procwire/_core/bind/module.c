/*
 * module.c -- procwire._core: module set-up and its exception classes.
 *
 * The module is private. procwire/errors.py re-exports the exceptions, and
 * the Python modules build the public API on the types registered here.
 */
#include "core.h"

PyObject *PwExc_ProcwireError;
PyObject *PwExc_SegmentError;
PyObject *PwExc_MessageTooLarge;
PyObject *PwExc_Empty;
PyObject *PwExc_Full;

static int add_exceptions(PyObject *m)
{
    PyObject *queue = PyImport_ImportModule("queue");
    if (!queue)
        return -1;
    PwExc_Empty = PyObject_GetAttrString(queue, "Empty");
    PwExc_Full = PyObject_GetAttrString(queue, "Full");
    Py_DECREF(queue);
    if (!PwExc_Empty || !PwExc_Full)
        return -1;

    PwExc_ProcwireError = PyErr_NewExceptionWithDoc(
        "procwire.ProcwireError", "Base class of procwire's own exceptions.", NULL, NULL);
    if (!PwExc_ProcwireError)
        return -1;
    PwExc_SegmentError = PyErr_NewExceptionWithDoc(
        "procwire.SegmentError",
        "A shared segment is not a whole, initialised procwire object of the expected kind: "
        "foreign, truncated, corrupt, or made by another procwire version.",
        PwExc_ProcwireError, NULL);
    if (!PwExc_SegmentError)
        return -1;
    PyObject *bases = PyTuple_Pack(2, PwExc_ProcwireError, PyExc_ValueError);
    if (!bases)
        return -1;
    PwExc_MessageTooLarge = PyErr_NewExceptionWithDoc(
        "procwire.MessageTooLarge",
        "A message can never fit the object's ring; the message names the setting to raise.",
        bases, NULL);
    Py_DECREF(bases);
    if (!PwExc_MessageTooLarge)
        return -1;
    if (PyModule_AddObjectRef(m, "ProcwireError", PwExc_ProcwireError) < 0 ||
        PyModule_AddObjectRef(m, "SegmentError", PwExc_SegmentError) < 0 ||
        PyModule_AddObjectRef(m, "MessageTooLarge", PwExc_MessageTooLarge) < 0)
        return -1;
    return 0;
}

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "procwire._core",
    .m_doc = "procwire's private native core: shared segments, futex waits, robust "
             "mutexes and the message ring. Use the public procwire API instead.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__core(void)
{
    pw_install_hooks();
    PyObject *m = PyModule_Create(&core_module);
    if (!m)
        return NULL;
    if (add_exceptions(m) < 0 || pw_segment_register(m) < 0 || pw_ring_register(m) < 0 ||
        pw_sync_register(m) < 0 || pw_shared_register(m) < 0 ||
        pw_inspect_register(m) < 0 || pw_pipe_register(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
