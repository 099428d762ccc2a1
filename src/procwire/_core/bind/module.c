/*
 * module.c -- procwire._core: its state (exceptions, interned strings) and
 * its set-up.
 *
 * The module is private. procwire/errors.py re-exports the exceptions, and
 * the Python modules build the public API on the types registered here. All
 * module-level Python objects live in one pw_state (msgspec's MsgspecState
 * is the model), reached with pw_get_state(); there are no C globals holding
 * Python objects.
 */
#include "core.h"

#include <string.h>

static struct PyModuleDef core_module;

pw_state *pw_get_state(void)
{
    PyObject *m = PyState_FindModule(&core_module);
    return m ? (pw_state *)PyModule_GetState(m) : NULL;
}

/* pw_state holds Python objects only (core.h): one loop visits or clears them. */
#define PW_STATE_SIZE (sizeof(pw_state) / sizeof(PyObject *))
_Static_assert(sizeof(pw_state) % sizeof(PyObject *) == 0, "pw_state: PyObject pointers only");

static int core_traverse(PyObject *m, visitproc visit, void *arg)
{
    PyObject **objects = PyModule_GetState(m);
    for (size_t i = 0; i < PW_STATE_SIZE; i++)
        Py_VISIT(objects[i]);
    return 0;
}

static int core_clear(PyObject *m)
{
    PyObject **objects = PyModule_GetState(m);
    for (size_t i = 0; i < PW_STATE_SIZE; i++)
        Py_CLEAR(objects[i]);
    return 0;
}

static void core_free(void *m)
{
    core_clear((PyObject *)m);
}

/* A new exception class, also added to the module as `name`'s last part. */
static PyObject *new_exception(PyObject *m, const char *name, const char *doc, PyObject *bases)
{
    PyObject *exc = PyErr_NewExceptionWithDoc(name, doc, bases, NULL);
    if (exc && PyModule_AddObjectRef(m, strrchr(name, '.') + 1, exc) < 0)
        Py_CLEAR(exc);
    return exc;
}

static int init_state(PyObject *m, pw_state *st)
{
    PyObject *queue = PyImport_ImportModule("queue");
    if (!queue)
        return -1;
    st->Empty = PyObject_GetAttrString(queue, "Empty");
    st->Full = PyObject_GetAttrString(queue, "Full");
    Py_DECREF(queue);
    if (!st->Empty || !st->Full)
        return -1;
    st->str_buffers = PyUnicode_InternFromString("buffers");
    if (!st->str_buffers)
        return -1;

    st->ProcwireError = new_exception(m, "procwire.ProcwireError",
                                      "Base class of procwire's own exceptions.", NULL);
    if (!st->ProcwireError)
        return -1;
    st->SegmentError = new_exception(
        m, "procwire.SegmentError",
        "A shared segment is not a whole, initialised procwire object of the expected kind: "
        "foreign, truncated, corrupt, or made by another procwire version.",
        st->ProcwireError);
    PyObject *bases = PyTuple_Pack(2, st->ProcwireError, PyExc_ValueError);
    if (!st->SegmentError || !bases) {
        Py_XDECREF(bases);
        return -1;
    }
    st->MessageTooLarge = new_exception(
        m, "procwire.MessageTooLarge",
        "A message can never fit the object's ring; the message names the setting to raise.",
        bases);
    Py_DECREF(bases);
    st->OwnerDiedWarning = new_exception(
        m, "procwire.OwnerDiedWarning",
        "An acquire() found that the lock's previous holder died holding it. The lock is "
        "now held by the caller; the state it protects may be half-updated.",
        PyExc_RuntimeWarning);
    return st->MessageTooLarge && st->OwnerDiedWarning ? 0 : -1;
}

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "procwire._core",
    .m_doc = "procwire's private native core: the CPython types (bind/) over the plain-C "
             "mechanics (lib/): shared segments, waits, robust mutexes and the message "
             "ring. Use the public procwire API instead.",
    .m_size = sizeof(pw_state),
    .m_traverse = core_traverse,
    .m_clear = core_clear,
    .m_free = core_free,
};

PyMODINIT_FUNC PyInit__core(void)
{
    pw_install_hooks();
    PyObject *m = PyModule_Create(&core_module);
    if (!m)
        return NULL;
    /* Registered before the types: their set-up may use the state. */
    if (PyState_AddModule(m, &core_module) < 0 || init_state(m, PyModule_GetState(m)) < 0 ||
        pw_segment_register(m) < 0 || pw_queue_register(m) < 0 || pw_sync_register(m) < 0 ||
        pw_shared_register(m) < 0 || pw_inspect_register(m) < 0 || pw_pipe_register(m) < 0 ||
        pw_testing_register(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
