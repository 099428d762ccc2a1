/*
 * core.h -- the binding layer: what the CPython types of procwire._core share.
 *
 * The mechanics live in ../lib (plain C, status codes); this layer parses
 * arguments, owns Python objects and turns lib's statuses into exceptions in
 * one place (pw_raise, errors.c). Rules every blocking call follows
 * (CPython's semaphore.c idiom, with monotonic deadlines):
 *   1. try once without releasing the GIL;
 *   2. otherwise wait with the GIL released, never longer than the deadline;
 *   3. an interrupted wait re-takes the GIL and runs PyErr_CheckSignals(), so
 *      Ctrl-C raises KeyboardInterrupt promptly;
 *   4. never block on a shared mutex while holding the GIL (a thread of this
 *      process that holds the mutex may be waiting for the GIL).
 */
#ifndef PROCWIRE_CORE_H
#define PROCWIRE_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "../lib/pw.h"
#include "../lib/ring.h"

/* ---------------------------------------------------------------- errors */

/* Exception classes, created in module.c and re-exported by procwire.errors. */
extern PyObject *PwExc_ProcwireError;   /* base of procwire's own errors        */
extern PyObject *PwExc_SegmentError;    /* corrupt, foreign or truncated segment */
extern PyObject *PwExc_MessageTooLarge; /* a message that can never fit         */
extern PyObject *PwExc_Empty;           /* queue.Empty                          */
extern PyObject *PwExc_Full;            /* queue.Full                           */

/*
 * Raises the exception for a lib status (pw.h, enum pw_status) and returns
 * NULL: SegmentError for PW_ECORRUPT, OSError for PW_ESYS, RuntimeError for
 * PW_EDEADLK, ValueError for PW_EINVAL; PW_ERAISED means the exception is
 * set already. The only place where lib's errors become exceptions.
 */
PyObject *pw_raise(int status);
/* The same, returning -1 (for int-returning functions). */
int pw_raise_int(int status);
/* Raises SegmentError with a formatted message (PyUnicode_FromFormat). -1. */
int pw_segment_error(const char *fmt, ...);
/* Points lib's hooks at the GIL and the signal check (module import). */
void pw_install_hooks(void);

/* ------------------------------------------------------------- deadlines */

/*
 * Turns multiprocessing's (block, timeout) pair into an absolute deadline:
 * block=False -> now (try once); timeout=None -> PW_FOREVER; a negative
 * timeout counts as 0, as in multiprocessing. Returns -1 with TypeError or
 * ValueError set for a timeout that is not a real number.
 */
int pw_deadline_from(int block, PyObject *timeout, int64_t *deadline);

/*
 * Parses fast-call arguments against `names` (positional order); the first
 * `nrequired` are mandatory. Absent arguments are NULL in out[]. Returns -1
 * with TypeError set on a bad call.
 */
int pw_parse_args(const char *func, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                  const char *const *names, int nnames, int nrequired, PyObject **out);

/* pw_deadline_from() for optional (NULL = default) block and timeout objects. */
int pw_parse_block_timeout(PyObject *block, PyObject *timeout, int64_t *deadline);


/* ------------------------------------------ guard against a concurrent close */

/*
 * A native object whose calls release the GIL brackets each such call with
 * pw_guard_enter()/pw_guard_leave(): close() from another thread then only
 * marks it closed (pw_guard_close()), waiting calls notice the flag and leave
 * with an error, and the mapping is released by whoever leaves last -- never
 * under a thread inside a native call. The fields are protected by the GIL.
 * (queue.c and pipe.c have the same idiom written inline.)
 */
typedef struct {
    int closed; /* close() was called */
    int active; /* calls in progress in this process */
} pw_guard;

/* 0, or -1 (no exception set) if the object is closed. */
static inline int pw_guard_enter(pw_guard *g)
{
    if (g->closed)
        return -1;
    g->active++;
    return 0;
}

/* 1 if the caller left last after a close: it must release the mapping now. */
static inline int pw_guard_leave(pw_guard *g)
{
    return --g->active == 0 && g->closed;
}

/* Marks closed. 1 if no call is in progress: release the mapping now. */
static inline int pw_guard_close(pw_guard *g)
{
    g->closed = 1;
    return g->active == 0;
}

/* -------------------------------------------------------- module plumbing */

int pw_ring_register(PyObject *module);
int pw_sync_register(PyObject *module);   /* sync.c: Lock, Semaphore, Event, ... */
int pw_shared_register(PyObject *module); /* shared.c: Value and Array segments  */

int pw_segment_register(PyObject *module);
int pw_inspect_register(PyObject *module); /* inspect.c: read-only _core.inspect() */
int pw_pipe_register(PyObject *module);

#endif /* PROCWIRE_CORE_H */
