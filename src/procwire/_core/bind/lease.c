/*
 * lease.c -- what the Queue (queue.c) and the Pipe (pipe.c) bindings share
 * over a ring: checking a record before anything of it is trusted, the
 * "too large" advice, and zero-copy loans and views (procwire/_loans.py).
 *
 * A loan holds the producers' lock of its ring (pw_ring_reserve) from
 * _loan_begin to _loan_commit/_end_lease(False), a view the consumers' lock
 * (pw_ring_peek) from _view_begin to _end_lease(True), both in the calling
 * thread. Each keeps one `active` count of its object (an enter without a
 * leave), so that the mapping outlives a close() until it ends. The crash
 * guarantees are the ring's (ring.c): a writer killed inside a loan
 * published nothing; a reader killed holding a view has its message dropped
 * by the next reader.
 * What differs stays with the types: the Pipe also holds its end's send or
 * receive lock, wakes its peer, and streams what does not fit the ring.
 */
#include "core.h"

#include <string.h>

int pw_check_record(const pw_ringref *rr, uint32_t p, uint32_t type, uint64_t len,
                    uint64_t *nparts, uint64_t lens[PW_OOB_MAX_PARTS])
{
    if (type == 0 || type >= PW_REC_MAX_)
        return pw_ring_bad_record(rr, "unknown record type", type, len);
    if (type != PW_REC_PICKLE_OOB)
        return PW_OK;
    if (len < 8)
        return pw_ring_bad_record(rr, "out-of-band record too short", len, 8);
    pw_ring_copy_out(rr, p, nparts, 8);
    *nparts &= 0xffffffffu;
    if (*nparts == 0 || *nparts > PW_OOB_MAX_PARTS || 8 + 8 * *nparts > len)
        return pw_ring_bad_record(rr, "out-of-band record has a bad part count", *nparts, len);
    uint64_t sum = 8 + 8 * *nparts;
    pw_ring_copy_out(rr, p + 8, lens, 8 * *nparts);
    for (uint64_t i = 0; i < *nparts; i++) {
        if (lens[i] > len)
            return pw_ring_bad_record(rr, "out-of-band part longer than its record", lens[i], len);
        sum += lens[i];
    }
    if (sum != len)
        return pw_ring_bad_record(rr, "out-of-band parts do not add up", sum, len);
    return PW_OK;
}

int pw_check_capacity(unsigned long long capacity)
{
    if (pw_ring_capacity_ok(capacity))
        return 0;
    PyErr_Format(PyExc_ValueError,
                 "capacity must be a power of two between %u and %u bytes, not %llu",
                 PW_RING_MIN_CAPACITY, PW_RING_MAX_CAPACITY, capacity);
    return -1;
}

int pw_too_large(PyObject *name, const pw_ringref *rr, uint64_t len, uint64_t limit)
{
    /* The advice is procwire.errors' (policy text): MessageTooLarge._advising. */
    PyObject *exc = PyObject_CallMethod(pw_get_state()->MessageTooLarge, "_advising", "KKOKII",
                                        (unsigned long long)len, (unsigned long long)limit,
                                        name, (unsigned long long)rr->capacity,
                                        (unsigned)PW_REC_HEADER, (unsigned)PW_RING_MAX_CAPACITY);
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return PW_ERAISED;
}

/* The offset in the segment buffer of ring position pos's byte; -1 if the n
 * bytes from there wrap around the end of the ring (not contiguous). */
static Py_ssize_t buffer_offset(PwObject *o, const pw_ringref *rr, uint32_t pos, uint64_t n)
{
    uint64_t off = pos & (rr->capacity - 1);
    if (off + n > rr->capacity)
        return -1;
    return (Py_ssize_t)(rr->data - (uint8_t *)o->view.buf) + (Py_ssize_t)off;
}

const char *pw_ring_object_map(PwObject *o, const pw_object_ops *ops, PyObject *buffer,
                               PyObject *name)
{
    if (pw_object_map(o, ops, buffer, name) < 0)
        return NULL;
    const char *what = PyUnicode_AsUTF8(name);
    if (!what)
        pw_object_unmap(o);
    return what;
}

int pw_add_type(PyObject *module, PyTypeObject *type, const char *name)
{
    if (PyType_Ready(type) < 0)
        return -1;
    return PyModule_AddObjectRef(module, name, (PyObject *)type);
}

/* ------------------------------------------------ watchers (procwire._aio) */

static int side_arg(PyObject *arg, int *side)
{
    long v = PyLong_AsLong(arg);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v != 0 && v != 1) {
        PyErr_SetString(PyExc_ValueError, "side must be 0 (tail) or 1 (head)");
        return -1;
    }
    *side = (int)v;
    return 0;
}

static uint64_t side_word(const pw_ringref *rr, int side)
{
    return atomic_load(side ? &rr->ring->head : &rr->ring->tail);
}

PyObject *pw_watch_word(PwObject *o, pw_ringref *rr, PyObject *arg)
{
    int side;
    if (side_arg(arg, &side) < 0 || pw_object_enter(o) < 0)
        return NULL;
    uint64_t w = side_word(rr, side);
    pw_object_leave(o);
    return PyLong_FromUnsignedLongLong(w);
}

static const char *const wait_change_names[] = {"side", "token", "timeout"};

PyObject *pw_watch_wait(PwObject *o, pw_ringref *rr, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames)
{
    PyObject *a[3];
    int side;
    int64_t deadline;
    if (pw_parse_args("_wait_change", args, nargs, kwnames, wait_change_names, 3, 2, a) < 0 ||
        side_arg(a[0], &side) < 0 || pw_parse_block_timeout(NULL, a[2], &deadline) < 0)
        return NULL;
    unsigned long long token = PyLong_AsUnsignedLongLong(a[1]);
    if (token == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (pw_object_enter(o) < 0)
        return NULL;
    int rc = pw_ring_wait_word(rr, side, token, deadline);
    uint64_t now = side_word(rr, side);
    pw_object_leave(o);
    if (rc < 0)
        return pw_raise(rc);
    return PyBool_FromLong(now != token);
}

PyObject *pw_watch_kick(PwObject *o, pw_ringref *rr)
{
    if (pw_object_enter(o) < 0)
        return NULL;
    pw_ring_kick(rr);
    pw_object_leave(o);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ loans */

static const char *const loan_names[] = {"nbytes", "block", "timeout"};

int pw_loan_args(PwObject *o, pw_lease *l, PyObject *const *args, Py_ssize_t nargs,
                 PyObject *kwnames, uint64_t *nbytes, int64_t *deadline)
{
    PyObject *a[3];
    if (pw_parse_args("loan", args, nargs, kwnames, loan_names, 3, 1, a) < 0 ||
        pw_parse_block_timeout(a[1], a[2], deadline) < 0)
        return -1;
    unsigned long long n = PyLong_AsUnsignedLongLong(a[0]); /* procwire._loans checks it */
    if (n == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    if (l->loan_rr) {
        PyErr_Format(PyExc_RuntimeError, "%U: this handle has an open loan already", o->name);
        return -1;
    }
    *nbytes = (uint64_t)n;
    return 0;
}

PyObject *pw_loan_opened(PwObject *o, pw_lease *l, pw_ringref *rr, uint32_t pos, uint64_t n)
{
    /* The answer first: a loan recorded but never handed to Python would keep
     * the producers' lock of a ring other processes share. */
    PyObject *offset = PyLong_FromSsize_t(buffer_offset(o, rr, pos + PW_REC_HEADER, n));
    if (!offset) {
        pw_ring_unreserve(rr);
        return NULL;
    }
    l->loan_rr = rr;
    l->loan_pos = pos;
    l->loan_len = n;
    return offset;
}

int pw_loan_commit(PwObject *o, pw_lease *l, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_loan_commit(nbytes, written)");
        return -1;
    }
    pw_ringref *rr = l->loan_rr;
    if (!rr) {
        PyErr_Format(PyExc_RuntimeError, "%U: no open loan", o->name);
        return -1;
    }
    long long n = PyLong_AsLongLong(args[0]);
    if (n == -1 && PyErr_Occurred())
        return -1;
    if (n < 0 || (uint64_t)n > l->loan_len) {
        PyErr_Format(PyExc_ValueError, "cannot publish %lld bytes of a %llu-byte loan", n,
                     (unsigned long long)l->loan_len);
        return -1;
    }
    if (args[1] != Py_None) {
        Py_buffer b;
        if (PyObject_GetBuffer(args[1], &b, PyBUF_SIMPLE) < 0)
            return -1;
        if (b.len < n) {
            PyBuffer_Release(&b);
            PyErr_SetString(PyExc_ValueError, "the written buffer is shorter than the message");
            return -1;
        }
        uint32_t at = l->loan_pos + PW_REC_HEADER;
        if (n >= PW_LARGE_COPY)
            PW_UNBLOCKED(pw_ring_copy_in(rr, at, b.buf, (uint64_t)n));
        else
            pw_ring_copy_in(rr, at, b.buf, (uint64_t)n);
        PyBuffer_Release(&b);
    }
    l->loan_rr = NULL; /* before the unlock: another thread may take the next loan */
    pw_ring_publish_reserved(rr, l->loan_pos, PW_REC_BYTES, (uint64_t)n);
    return 0;
}

int pw_lease_end(pw_lease *l, int view)
{
    pw_ringref *rr = view ? l->view_rr : l->loan_rr;
    if (!rr)
        return 0;
    if (view) {
        l->view_rr = NULL;
        pw_ring_consume_peeked(rr, l->view_len);
    } else {
        l->loan_rr = NULL;
        pw_ring_unreserve(rr);
    }
    return 1;
}

/* ------------------------------------------------------------------ views */

int pw_view_free(PwObject *o, const pw_lease *l)
{
    if (!l->view_rr)
        return 0;
    PyErr_Format(PyExc_RuntimeError, "%U: this handle holds a view already", o->name);
    return -1;
}

PyObject *pw_view_opened(PwObject *o, pw_lease *l, pw_ringref *rr, uint32_t pos, uint32_t type,
                         uint64_t len, int *held)
{
    *held = 0;
    uint32_t p = pos + PW_REC_HEADER;
    uint64_t nparts, lens[PW_OOB_MAX_PARTS];
    int rc = pw_check_record(rr, p, type, len, &nparts, lens);
    if (rc) {
        pw_ring_unpeek(rr);
        return pw_raise(rc);
    }
    Py_ssize_t off = buffer_offset(o, rr, p, len);
    if (off >= 0) {
        /* The answer first, as for a loan: a view never handed to Python
         * would keep the consumers' lock. */
        PyObject *r = Py_BuildValue("(InKO)", type, off, (unsigned long long)len, Py_None);
        if (!r) {
            pw_ring_unpeek(rr);
            return NULL;
        }
        l->view_rr = rr;
        l->view_len = len;
        *held = 1;
        return r;
    }
    /* It wraps around the ring's end: no view of it; copied out and consumed. */
    PyObject *copied = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
    if (!copied) {
        pw_ring_unpeek(rr);
        return NULL;
    }
    pw_ring_copy_out_large(rr, p, PyBytes_AS_STRING(copied), len);
    pw_ring_consume_peeked(rr, len);
    return Py_BuildValue("(InKN)", type, (Py_ssize_t)-1, (unsigned long long)len, copied);
}
