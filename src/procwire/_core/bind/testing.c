/*
 * testing.c -- procwire._core._testing: hooks for the crash tests, kept out
 * of the public classes. Each takes an internal lock and returns holding it,
 * so that a test process can SIGKILL or SIGSTOP itself at exactly the worst
 * moment. Never used by the library.
 */
#include "core.h"

#include <stddef.h>

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

/* queue_words: {name: byte offset in a queue segment} of the ring's words
 * that the spill crash tests set by hand to a killed process's state, and
 * spill_intent_valid, the flag of an open intent (layout.h). */
static int add_queue_words(PyObject *sub)
{
#define W(f) #f, (unsigned long)(sizeof(struct pw_header) + offsetof(struct pw_ring, f))
    PyObject *d = Py_BuildValue("{sksksksksksksksk}", W(head), W(tail), W(ov_head), W(ov_tail),
                                W(ov_head_intent), W(ov_tail_intent), W(ov_head_intent_end),
                                W(ov_tail_intent_end));
#undef W
    PyObject *valid = PyLong_FromUnsignedLongLong(PW_INTENT_VALID);
    int rc = d && valid && PyModule_AddObjectRef(sub, "queue_words", d) == 0 &&
                     PyModule_AddObjectRef(sub, "spill_intent_valid", valid) == 0 ? 0 : -1;
    Py_XDECREF(d);
    Py_XDECREF(valid);
    return rc;
}

int pw_testing_register(PyObject *module)
{
    PyObject *sub = PyModule_Create(&testing_module);
    if (!sub || add_queue_words(sub) < 0) {
        Py_XDECREF(sub);
        return -1;
    }
    /* `import procwire._core._testing` finds it in sys.modules. */
    PyObject *modules = PyImport_GetModuleDict();
    int rc = PyDict_SetItemString(modules, "procwire._core._testing", sub);
    if (rc == 0)
        rc = PyModule_AddObjectRef(module, "_testing", sub);
    Py_DECREF(sub);
    return rc;
}
