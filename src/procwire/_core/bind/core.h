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

/* The module's state (module.c): every Python object the C code keeps, and
 * nothing else (module.c visits and clears it as an array of objects). */
typedef struct {
    PyObject *ProcwireError;      /* base of procwire's own errors              */
    PyObject *SegmentError;       /* corrupt, foreign or truncated segment       */
    PyObject *MessageTooLarge;    /* a message that can never fit               */
    PyObject *OwnerDiedWarning;   /* an acquire found the holder dead           */
    PyObject *Empty, *Full;       /* queue.Empty, queue.Full                    */
    PyObject *str_buffers;        /* interned "buffers": loads(..., buffers=)   */
} pw_state;

pw_state *pw_get_state(void);

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

/* An optional integer argument: absent (NULL, or None if none_ok) leaves *v
 * as it is; below min raises ValueError(below), a format that gets the value
 * (%zd). 0, or -1 with an exception. Inline: absent is the common case. */
static inline int pw_index_arg(PyObject *arg, int none_ok, Py_ssize_t min, const char *below,
                               Py_ssize_t *v)
{
    if (!arg || (none_ok && arg == Py_None))
        return 0;
    Py_ssize_t x = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (x < min) {
        PyErr_Format(PyExc_ValueError, below, x);
        return -1;
    }
    *v = x;
    return 0;
}

/* pw_deadline_from() for optional (NULL = default) block and timeout objects. */
int pw_parse_block_timeout(PyObject *block, PyObject *timeout, int64_t *deadline);

/* The arguments of func(block=True, timeout=None), or with `with_block` 0 of
 * func(timeout=None), as a deadline: parsed (and a bad timeout rejected)
 * before anything is taken. 0, or -1 with TypeError or ValueError set. */
int pw_parse_deadline_args(const char *func, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames, int with_block, int64_t *deadline);
static inline int pw_parse_deadline(const char *func, PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames, int with_block, int64_t *deadline)
{
    *deadline = PW_FOREVER;
    /* The common call (none: block forever) costs no call at all. */
    return nargs || kwnames ? pw_parse_deadline_args(func, args, nargs, kwnames, with_block,
                                                     deadline) : 0;
}

/*
 * Method-table rows that state each method once, its text signature (for
 * inspect.signature) built from its name and calling convention: no
 * arguments; one positional argument `arg`; positional-only `params`; or
 * `params` by position or keyword.
 */
#define PW_NOARGS(name, fn, doc)                                               \
    {name, (PyCFunction)(fn), METH_NOARGS, name "($self, /)\n--\n\n" doc}
#define PW_ONEARG(name, fn, arg, doc)                                          \
    {name, (PyCFunction)(fn), METH_O, name "($self, " arg ", /)\n--\n\n" doc}
#define PW_POSARGS(name, fn, params, doc)                                      \
    {name, (PyCFunction)(void (*)(void))(fn), METH_FASTCALL,                   \
     name "($self, " params ", /)\n--\n\n" doc}
#define PW_KWARGS(name, fn, params, doc)                                       \
    {name, (PyCFunction)(void (*)(void))(fn), METH_FASTCALL | METH_KEYWORDS,   \
     name "($self, /, " params ")\n--\n\n" doc}
#define PW_END_METHODS {NULL, NULL, 0, NULL}


/* ------------------------------------------------- the native object base */

/*
 * Every _core type over a mapping starts with a PwObject (object.c). Calls
 * that may release the GIL bracket themselves with pw_object_enter() and
 * pw_object_leave(): close() from another thread then only marks the object
 * closed, waits notice the flag (pw_wait's cancel = &guard.closed) and leave
 * with an error, and the mapping is released by whoever leaves last -- never
 * under a thread inside a native call. The fields are protected by the GIL.
 */
typedef struct {
    int closed; /* close() was called */
    int active; /* calls in progress in this process */
} pw_guard;

typedef struct PwObject PwObject;

/* What differs between the types. */
typedef struct {
    void (*release)(PwObject *o); /* drop the mapping and what comes with it; NULL:
                                     pw_object_unmap */
    const char *closed_msg;       /* a closed object raises OSError(closed_msg);
                                     NULL: ValueError("<name> is closed")        */
} pw_object_ops;

struct PwObject {
    PyObject_HEAD
    const pw_object_ops *ops;
    Py_buffer view;    /* the mapping, held while mapped */
    int mapped;
    int keep_mapping;  /* never release the view: a robust list may point into it */
    pw_guard guard;
    PyObject *name;    /* str, for messages */
};

/* At __init__: takes a writable view of buffer and the name. 0, or -1 with
 * an exception. */
int pw_object_map(PwObject *o, const pw_object_ops *ops, PyObject *buffer, PyObject *name);
/* Releases the view (unless keep_mapping); idempotent. */
void pw_object_unmap(PwObject *o);
/* Raises the type's "closed" error. NULL. */
PyObject *pw_object_closed(PwObject *o);
/* For a wait that saw the object closed by another thread. NULL. */
PyObject *pw_object_closed_while_waiting(PwObject *o);

/* 0, or -1 with the closed error raised. */
static inline int pw_object_check_open(PwObject *o)
{
    if (o->mapped && !o->guard.closed)
        return 0;
    pw_object_closed(o);
    return -1;
}

static inline int pw_object_enter(PwObject *o)
{
    if (pw_object_check_open(o) < 0)
        return -1;
    o->guard.active++;
    return 0;
}

void pw_object_leave(PwObject *o);
/* Marks closed (idempotent); releases now if no call is in progress (1). */
int pw_object_close(PwObject *o);
/* The base's part of tp_dealloc: release, drop the name. */
void pw_object_dealloc(PwObject *o);
PyObject *pw_object_get_name(PwObject *o, void *closure);   /* _display */
PyObject *pw_object_get_closed(PwObject *o, void *closure); /* closed, _released */

/* ------------------------------- what Queue and Pipe share (lease.c) */

/* Checks a record's type, and a PICKLE_OOB record's part table (payload at
 * p, len bytes): PW_OK with *nparts and lens[] set for PICKLE_OOB, or
 * PW_ECORRUPT. Nothing read from the ring is trusted before this. */
#define PW_OOB_MAX_PARTS 64
int pw_check_record(const pw_ringref *rr, uint32_t p, uint32_t type, uint64_t len,
                    uint64_t *nparts, uint64_t lens[PW_OOB_MAX_PARTS]);
/* 0 if a ring may have this capacity, else -1 with ValueError. */
int pw_check_capacity(unsigned long long capacity);
/* Raises MessageTooLarge for a message of len bytes, where at most `limit`
 * fit (the ring's largest record, or more: a Queue's spill): the advice
 * says what would take it. Returns PW_ERAISED. */
int pw_too_large(PyObject *name, const pw_ringref *rr, uint64_t len, uint64_t limit);

/* For procwire._aio's watcher threads, over one ring: _word(side) -> the
 * tail (0) or head (1) position word, a token for _wait_change(side, token,
 * timeout) -> bool, which sleeps once (GIL released) while the word equals
 * the token (True if it moved); _kick() wakes every thread asleep on the
 * ring, in every process (they re-check and sleep again): stops a watcher. */
PyObject *pw_watch_word(PwObject *o, pw_ringref *rr, PyObject *arg);
PyObject *pw_watch_wait(PwObject *o, pw_ringref *rr, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames);
PyObject *pw_watch_kick(PwObject *o, pw_ringref *rr);
/* Their method table entries: T##_wait_change, T##_kick. */
#define PW_WATCH_METHODS(T)                                                                   \
    {"_wait_change", (PyCFunction)(void (*)(void))T##_wait_change,                            \
     METH_FASTCALL | METH_KEYWORDS, NULL},                                                    \
    {"_kick", (PyCFunction)T##_kick, METH_NOARGS, NULL}

/* A receive's copy= argument (NULL: absent): copy=False sets *handled and
 * returns self.<method>(first, timeout or None), the View that
 * procwire._loans builds (NULL with an exception); otherwise NULL with
 * *handled = 0: receive a copy. */
static inline PyObject *pw_view_instead(PyObject *self, PyObject *copy, const char *method,
                                        PyObject *first, PyObject *timeout, int *handled)
{
    int c = copy ? PyObject_IsTrue(copy) : 1;
    *handled = c <= 0;
    if (c != 0)
        return NULL; /* copy (or an error: c < 0) */
    return PyObject_CallMethod(self, method, "OO", first, timeout ? timeout : Py_None);
}

/* A handle's open loan (producers' lock of loan_rr held) and view (the
 * consumers' lock of view_rr held); NULL: none. */
typedef struct {
    pw_ringref *loan_rr, *view_rr;
    uint32_t loan_pos;
    uint64_t loan_len, view_len;
} pw_lease;

/* _loan_begin(nbytes, block, timeout)'s arguments: 0, or -1 with an
 * exception (also if a loan is open already). */
int pw_loan_args(PwObject *o, pw_lease *l, PyObject *const *args, Py_ssize_t nargs,
                 PyObject *kwnames, uint64_t *nbytes, int64_t *deadline);
/* After pw_ring_reserve: records the loan; returns the payload's offset in
 * the segment buffer, or -1 if it wraps (the caller writes elsewhere and
 * passes that to _loan_commit). NULL with an exception: no loan, the room
 * given back (the caller still releases its own locks). */
PyObject *pw_loan_opened(PwObject *o, pw_lease *l, pw_ringref *rr, uint32_t pos, uint64_t n);
/* _loan_commit(nbytes, written): publishes the first nbytes of the open loan,
 * copied in from `written` if not None. 0 (the ring's lock released), or -1
 * with an exception (the loan stays open). */
int pw_loan_commit(PwObject *o, pw_lease *l, PyObject *const *args, Py_ssize_t nargs);
/* Before a view: 0, or -1 with RuntimeError if this handle holds one. */
int pw_view_free(PwObject *o, const pw_lease *l);
/* After pw_ring_peek: checks the record and returns (type, offset, length,
 * None) with the view open (*held = 1), or, if it wraps around the ring's
 * end, (type, -1, length, bytes) copied out and consumed. NULL with an
 * exception (the record left in place, the lock released). */
PyObject *pw_view_opened(PwObject *o, pw_lease *l, pw_ringref *rr, uint32_t pos, uint32_t type,
                         uint64_t len, int *held);
/* _end_lease(view): ends the open view (its message consumed, its room
 * freed) or, view false, the open loan (its room given back, nothing
 * published): 1 if one was open (the caller releases its own locks and
 * leaves the object). */
int pw_lease_end(pw_lease *l, int view);

/* The method table entries of a type's loans and views (procwire._loans):
 * T##_loan_begin, T##_loan_commit, T##_view_begin, T##_end_lease. */
#define PW_LEASE_METHODS(T)                                                                   \
    {"_loan_begin", (PyCFunction)(void (*)(void))T##_loan_begin,                              \
     METH_FASTCALL | METH_KEYWORDS, NULL},                                                    \
    {"_loan_commit", (PyCFunction)(void (*)(void))T##_loan_commit, METH_FASTCALL, NULL},      \
    {"_view_begin", (PyCFunction)(void (*)(void))T##_view_begin,                              \
     METH_FASTCALL | METH_KEYWORDS, NULL},                                                    \
    {"_end_lease", (PyCFunction)T##_end_lease, METH_O, NULL}

/* P##_traverse and P##_clear of a ring type, over the Python objects that
 * OBJECTS(X) lists (X(field) each): the serializer may refer back to the
 * object, so the type takes part in GC; a cleared object is closed, as no
 * call may use the callables any more. */
#define PW_VISIT_FIELD(f) Py_VISIT(self->f);
#define PW_CLEAR_FIELD(f) Py_CLEAR(self->f);
#define PW_RING_GC(P, Struct, OBJECTS)                                                        \
    static int P##_traverse(Struct *self, visitproc visit, void *arg)                       \
    {                                                                                       \
        OBJECTS(PW_VISIT_FIELD)                                                             \
        return 0;                                                                           \
    }                                                                                       \
    static int P##_clear(Struct *self)                                                      \
    {                                                                                       \
        self->base.guard.closed = 1;                                                        \
        OBJECTS(PW_CLEAR_FIELD)                                                             \
        return 0;                                                                           \
    }

/* A GC-tracked, subclassable _core type over a ring (QueueBase, PipeEnd),
 * P##Type, from P##_traverse, _clear, _init, _dealloc, _methods and _getset. */
#define PW_RING_TYPE(P, Struct, name, new, doc)                                             \
    static PyTypeObject P##Type = {                                                       \
        PyVarObject_HEAD_INIT(NULL, 0)                                                    \
        .tp_name = "procwire._core." name,                                                \
        .tp_basicsize = sizeof(Struct),                                                   \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,        \
        .tp_traverse = (traverseproc)P##_traverse,                                        \
        .tp_clear = (inquiry)P##_clear,                                                   \
        .tp_doc = doc,                                                                    \
        .tp_new = new,                                                                    \
        .tp_init = (initproc)P##_init,                                                    \
        .tp_dealloc = (destructor)P##_dealloc,                                            \
        .tp_methods = P##_methods,                                                        \
        .tp_getset = P##_getset,                                                          \
    }
/* At a ring type's __init__: pw_object_map, and the name's UTF-8 for lib's
 * messages (kept alive by the name). NULL with an exception, unmapped. */
const char *pw_ring_object_map(PwObject *o, const pw_object_ops *ops, PyObject *buffer,
                               PyObject *name);
/* Readies a type and adds it to the module as `name`: 0 or -1. */
int pw_add_type(PyObject *module, PyTypeObject *type, const char *name);

/* -------------------------------------------------------- module plumbing */

/* inspect.c: the counters of kind's struct `p` (validated) as a new dict, or
 * NULL; `reconcile` (a live object) frees dead sleepers' slots as it counts. */
PyObject *pw_counters(uint32_t kind, void *p, int reconcile);
PyObject *pw_pipe_end_counters(struct pw_pipe *p, int end, int reconcile);

/* Each file's types and functions, added to the module at import (module.c). */
int pw_segment_register(PyObject *module); /* segment.c: layout, guard, constants */
int pw_queue_register(PyObject *module);   /* queue.c: QueueBase */
int pw_pipe_register(PyObject *module);    /* pipe.c: PipeEnd */
int pw_sync_register(PyObject *module);    /* sync.c: Lock, Semaphore, Event, Condition */
int pw_shared_register(PyObject *module);  /* shared.c: BufferView */
int pw_inspect_register(PyObject *module); /* inspect.c: inspect(), header_info() */
int pw_testing_register(PyObject *module); /* testing.c: _core._testing */

#endif /* PROCWIRE_CORE_H */
