/*
 * module.c -- procwire._core: its state (exceptions, interned strings) and
 * its set-up.
 *
 * The module is private. procwire/errors.py defines the exceptions, and
 * the Python modules build the public API on the types registered here. All
 * module-level Python objects live in one pw_state (msgspec's MsgspecState
 * is the model), reached with pw_get_state(); there are no C globals holding
 * Python objects.
 */
#include "core.h"

#include <stddef.h>
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

/*
 * The exceptions the C code raises, from the modules that define them:
 * procwire's own are plain classes in procwire/errors.py (as multiprocessing
 * keeps its exceptions in Python), also added to this module; Empty and Full
 * are the queue module's, as multiprocessing raises them.
 */
static int init_state(PyObject *m, pw_state *st)
{
    static const struct {
        const char *module, *name;
        size_t slot;
    } imported[] = {
        {"procwire.errors", "ProcwireError", offsetof(pw_state, ProcwireError)},
        {"procwire.errors", "SegmentError", offsetof(pw_state, SegmentError)},
        {"procwire.errors", "MessageTooLarge", offsetof(pw_state, MessageTooLarge)},
        {"procwire.errors", "OwnerDiedWarning", offsetof(pw_state, OwnerDiedWarning)},
        {"queue", "Empty", offsetof(pw_state, Empty)},
        {"queue", "Full", offsetof(pw_state, Full)},
    };
    for (size_t i = 0; i < sizeof imported / sizeof *imported; i++) {
        PyObject *module = PyImport_ImportModule(imported[i].module);
        PyObject *obj = module ? PyObject_GetAttrString(module, imported[i].name) : NULL;
        Py_XDECREF(module);
        *(PyObject **)((char *)st + imported[i].slot) = obj;
        if (!obj || (strcmp(imported[i].module, "queue") != 0 &&
                     PyModule_AddObjectRef(m, imported[i].name, obj) < 0))
            return -1;
    }
    st->str_buffers = PyUnicode_InternFromString("buffers");
    return st->str_buffers ? 0 : -1;
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
