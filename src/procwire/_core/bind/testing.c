/*
 * testing.c -- procwire._core._testing: hooks for the crash tests, kept out
 * of the public classes. Each takes an internal lock and returns holding it,
 * so that a test process can SIGKILL or SIGSTOP itself at exactly the worst
 * moment. Never used by the library.
 */
#include "core.h"

PyObject *pw_testing_queue_hold(PyObject *module, PyObject *args, PyObject *kwds); /* queue.c */

static PyMethodDef testing_methods[] = {
    {"hold_queue_lock", (PyCFunction)(void (*)(void))pw_testing_queue_hold,
     METH_VARARGS | METH_KEYWORDS,
     "hold_queue_lock(queue, side, partial=None, publish=False)\n--\n\nTake the queue's "
     "'head' (consumer) or 'tail' (producer) lock and keep it. `partial` writes half a record "
     "beyond the tail; `publish` moves the side's position by one message without updating "
     "the statistics, as a process killed right after its publishing store."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef testing_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "procwire._core._testing",
    .m_doc = "Test hooks of procwire's native core (crash tests only).",
    .m_size = 0,
    .m_methods = testing_methods,
};

int pw_testing_register(PyObject *module)
{
    PyObject *sub = PyModule_Create(&testing_module);
    if (!sub)
        return -1;
    /* `import procwire._core._testing` finds it in sys.modules. */
    PyObject *modules = PyImport_GetModuleDict();
    int rc = PyDict_SetItemString(modules, "procwire._core._testing", sub);
    if (rc == 0)
        rc = PyModule_AddObjectRef(module, "_testing", sub);
    Py_DECREF(sub);
    return rc;
}
