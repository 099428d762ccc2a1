/*
 * inspect.c -- the one reader of a segment's counters: _core.inspect(buffer)
 * for `procwire ls`, `procwire stat` and attaching a Value/Array, and the
 * live _statistics() of every kind (pw_counters; a Pipe end's:
 * pw_pipe_end_counters), which procwire.stats turns into its dataclasses.
 *
 * It only loads: it never takes a lock and never bumps a counter, so
 * inspecting an object cannot disturb the processes using it, and the buffer
 * may be (and for the CLI is) a read-only mapping. The one exception is a
 * live object's `reconcile`: counting a wait queue's sleepers then also frees
 * the slots of dead ones (pw_waiters_live), as every statistics() call
 * does; `procwire stat` never writes. Every counter is read with one atomic
 * load; a set of them is not a consistent snapshot, which is fine for
 * advisory figures.
 *
 * The segment is untrusted: it is validated whole (pw_segment_validate: the
 * common header, then what the kind's own header must satisfy) before any
 * counter is read.
 */
#include "core.h"

#include <string.h>

#define U64(p) ((unsigned long long)atomic_load(p))
#define BOOL(x) ((x) ? Py_True : Py_False)

/* Live sleepers of a wait queue (the waits' registry, wait.c). */
static unsigned sleepers(struct pw_waiters *w, int reconcile)
{
    return pw_waiters_live(w, reconcile);
}

static PyObject *lock_counters(struct pw_lock *l, int reconcile)
{
    uint32_t word = pw_mutex_word(&l->mutex), holder = word & PW_MUTEX_TID_MASK;
    int dead = (word & PW_MUTEX_OWNER_DIED) != 0;
    return Py_BuildValue("{s:O,s:I,s:I,s:O,s:K,s:I,s:K,s:O}", "locked", BOOL(holder),
                         "holder_tid", holder,
                         "depth", holder ? (unsigned)atomic_load(&l->depth) : 0u,
                         "owner_died", BOOL(atomic_load(&l->inconsistent) || dead),
                         "owner_deaths", U64(&l->owner_deaths),
                         "waiters", sleepers(&l->sleepers, reconcile),
                         "contended", U64(&l->contended), "holder_dead", BOOL(dead));
}

/* Where a Condition's or Value's lock lives: lock_mode's name, and the named
 * lock's name ("" for the other modes). */
static PyObject *lock_mode_name(uint32_t mode)
{
    static const char *const modes[] = {"none", "embedded", "named", "external"};
    return PyUnicode_FromString(mode < 4 ? modes[mode] : "invalid");
}

static PyObject *lock_name(uint32_t mode, uint32_t len, const char *name)
{
    if (mode != PW_LOCKMODE_NAMED)
        len = 0;
    return PyUnicode_DecodeUTF8(name, len < PW_LOCK_NAME_MAX ? len : PW_LOCK_NAME_MAX, "replace");
}

static PyObject *cond_counters(struct pw_cond *c, int reconcile)
{
    unsigned live = sleepers(&c->sleepers, reconcile);
    uint64_t w = atomic_load(&c->wake); /* slotless waiters (layout.h) */
    unsigned not_notified = (unsigned)(w >> 32), pending = (uint32_t)w;
    for (int i = 0; i < PW_WAIT_SLOTS; i++) {
        if (!atomic_load(&c->sleepers.slot[i]))
            continue; /* free, or reaped: its state no longer counts */
        uint32_t st = atomic_load(&c->state[i]);
        not_notified += st == PW_COND_WAITING;
        pending += st == PW_COND_NOTIFIED;
    }
    return Py_BuildValue("{s:I,s:K,s:K,s:I,s:I,s:N,s:N,s:N}", "waiters", live,
                         "notifies", U64(&c->notifies), "wake_syscalls", U64(&c->sleepers.wakes),
                         "not_notified", not_notified, "notified_pending", pending,
                         "lock_mode", lock_mode_name(c->lock_mode),
                         "lock_name", lock_name(c->lock_mode, c->lock_name_len, c->lock_name),
                         "lock", lock_counters(&c->lock, reconcile));
}

static PyObject *shared_counters(struct pw_shared *s, int reconcile)
{
    PyObject *lock = s->lock_mode == PW_LOCKMODE_EMBEDDED ? lock_counters(&s->lock, reconcile)
                                                          : Py_NewRef(Py_None);
    return Py_BuildValue("{s:N,s:K,s:K,s:N,s:N,s:N}", "typecode",
                         PyUnicode_DecodeASCII(s->typecode, strnlen(s->typecode, PW_TYPECODE_MAX),
                                               "replace"),
                         "elem_size", (unsigned long long)s->elem_size,
                         "length", (unsigned long long)s->length,
                         "lock_mode", lock_mode_name(s->lock_mode),
                         "lock_name", lock_name(s->lock_mode, s->lock_name_len, s->lock_name),
                         "lock", lock);
}

static PyObject *ring_counters(struct pw_ring *r, int reconcile)
{
    uint64_t head = atomic_load(&r->head), tail = atomic_load(&r->tail);
    uint32_t in = (uint32_t)(tail >> 32), out = (uint32_t)(head >> 32);
    uint64_t ov_head = atomic_load(&r->ov_head), ov_tail = atomic_load(&r->ov_tail);
    struct pw_waiters *q[] = {&r->consumers, &r->producers, &r->joiners};
    unsigned long long wakes = 0, reaped = 0;
    for (int i = 0; i < 3; i++) {
        wakes += atomic_load(&q[i]->wakes);
        reaped += atomic_load(&q[i]->reaped);
    }
    return Py_BuildValue(
        "{s:K,s:I,s:I,s:I,s:K,s:K,s:K,s:K,s:K,s:I,s:I,s:I,s:I,s:K,s:K,s:K}",
        "capacity", (unsigned long long)r->capacity, "maxsize", r->maxsize,
        "messages", in - out, "bytes_used", (uint32_t)tail - (uint32_t)head,
        "total_in", (unsigned long long)pw_widen_count(atomic_load(&r->total_in), in),
        "total_out", (unsigned long long)pw_widen_count(atomic_load(&r->total_out), out),
        "bytes_in", U64(&r->bytes_in), "bytes_out", U64(&r->bytes_out),
        "owner_died", U64(&r->tail_owner_died) + U64(&r->head_owner_died),
        "consumers_waiting", sleepers(&r->consumers, reconcile),
        "producers_waiting", sleepers(&r->producers, reconcile),
        "joiners_waiting", sleepers(&r->joiners, reconcile),
        "unfinished_tasks", in - (uint32_t)atomic_load(&r->tasks_done),
        "wake_syscalls", wakes, "dead_waiters_reaped", reaped,
        /* advisory: bytes of spilled records not yet taken (ov_tail is stored
         * just after the publish) */
        "spill_bytes", (unsigned long long)(ov_tail > ov_head ? ov_tail - ov_head : 0));
}

/* One Pipe end's view of its two rings: it receives from ring[end] and sends
 * into ring[1 - end] (pipe.c). Raw totals, as the end has always reported
 * them; messages_waiting as pw_ring_count counts it. */
PyObject *pw_pipe_end_counters(struct pw_pipe *p, int end, int reconcile)
{
    struct pw_ring *in = &p->ring[end], *out = &p->ring[1 - end];
    struct pw_pipe_end *me = &p->end[end];
    uint32_t waiting = (uint32_t)(atomic_load(&in->tail) >> 32) -
                       (uint32_t)(atomic_load(&in->head) >> 32);
    return Py_BuildValue(
        "{s:i,s:O,s:K,s:K,s:I,s:K,s:K,s:K,s:K,s:I,s:K,s:K,s:K,s:K,s:O,s:I,s:K}",
        "end", end, "duplex", BOOL(p->pipe_flags & PW_PIPE_DUPLEX),
        "capacity_in", (unsigned long long)in->capacity,
        "capacity_out", (unsigned long long)out->capacity,
        "messages_waiting", waiting > INT32_MAX ? 0u : waiting,
        "messages_received", U64(&in->total_out), "bytes_received", U64(&in->bytes_out),
        "messages_sent", U64(&out->total_in), "bytes_sent", U64(&out->bytes_in),
        "handles", (unsigned)atomic_load(&me->handles),
        "streamed_received", U64(&me->streamed), "partial_dropped", U64(&me->partial_dropped),
        "send_owner_died", U64(&me->send_owner_died),
        "recv_owner_died", U64(&me->recv_owner_died),
        "peer_closed", BOOL(atomic_load(&in->closed_flags) & PW_RING_WRITER_CLOSED),
        "receivers_waiting", sleepers(&me->receivers, reconcile),
        "wake_syscalls", U64(&me->receivers.wakes));
}

PyObject *pw_counters(uint32_t kind, void *p, int reconcile)
{
    switch (kind) {
    case PW_KIND_QUEUE:
        return ring_counters(p, reconcile);
    case PW_KIND_LOCK:
    case PW_KIND_RLOCK:
        return lock_counters(p, reconcile);
    case PW_KIND_SEMAPHORE: {
        struct pw_sem *s = p;
        return Py_BuildValue("{s:I,s:I,s:O,s:I,s:K,s:K,s:K}",
                             "value", (unsigned)atomic_load(&s->value), "maxvalue", s->maxvalue,
                             "bounded", BOOL(s->bounded),
                             "waiters", sleepers(&s->sleepers, reconcile),
                             "acquires", U64(&s->acquires), "releases", U64(&s->releases),
                             "wake_syscalls", U64(&s->sleepers.wakes));
    }
    case PW_KIND_EVENT: {
        struct pw_event *e = p;
        return Py_BuildValue("{s:O,s:I,s:K,s:K}", "is_set", BOOL(atomic_load(&e->state) & 1),
                             "waiters", sleepers(&e->sleepers, reconcile),
                             "sets", U64(&e->sets), "wake_syscalls", U64(&e->sleepers.wakes));
    }
    case PW_KIND_CONDITION:
        return cond_counters(p, reconcile);
    case PW_KIND_VALUE:
    case PW_KIND_ARRAY:
        return shared_counters(p, reconcile);
    case PW_KIND_PIPE: /* both ends, as each end's statistics() reports itself */
        return Py_BuildValue("{s:N,s:N}", "end0", pw_pipe_end_counters(p, 0, reconcile),
                             "end1", pw_pipe_end_counters(p, 1, reconcile));
    default:
        return PyDict_New(); /* a kind this file does not describe */
    }
}

/* The common header of a segment, validated; with `counters`, the whole
 * segment validated and its kind's counters added. `kind` 0 accepts any. */
static PyObject *describe(PyObject *arg, uint32_t kind, const char *what, int counters)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *d = NULL, *c = NULL;
    const struct pw_header *h = view.buf;
    int rc = counters ? pw_segment_validate(view.buf, (uint64_t)view.len, kind, what)
                      : pw_header_validate(view.buf, (uint64_t)view.len, kind, what);
    if (rc) {
        pw_raise(rc);
        goto done;
    }
    d = Py_BuildValue("{s:s,s:I,s:I,s:K,s:I,s:K,s:K,s:I}", "kind", pw_kind_name(h->kind),
                      "kind_id", h->kind, "version", h->version, "total_size",
                      (unsigned long long)h->total_size, "creator_pid", h->creator_pid,
                      "created_ns", (unsigned long long)h->created_ns, "data_offset",
                      (unsigned long long)h->data_offset, "header_size", h->header_size);
    /* read-only: the counters of a read-only mapping are never reconciled */
    if (d && counters && (!(c = pw_counters(h->kind, (char *)view.buf + sizeof *h, 0)) ||
                          PyDict_Update(d, c) < 0))
        Py_CLEAR(d);
    Py_XDECREF(c);
done:
    PyBuffer_Release(&view);
    return d;
}

/* _core.inspect(buffer, kind=0, what="the segment") -> dict: the common
 * header and the counters of a segment of `kind` (0: any), errors naming
 * `what`. */
static PyObject *inspect(PyObject *self, PyObject *args)
{
    PyObject *buffer;
    unsigned int kind = 0;
    const char *what = "the segment";
    if (!PyArg_ParseTuple(args, "O|Is:inspect", &buffer, &kind, &what))
        return NULL;
    return describe(buffer, kind, what, 1);
}

/* _core.header_info(buffer) -> dict: the validated common header. */
static PyObject *header_info(PyObject *self, PyObject *arg)
{
    return describe(arg, 0, "the segment", 0);
}

static PyMethodDef inspect_methods[] = {
    {"header_info", header_info, METH_O,
     "header_info($module, buffer, /)\n--\n\nValidate a segment's common header and describe "
     "it. Raises SegmentError for anything that is not a whole, initialised procwire segment."},
    {"inspect", inspect, METH_VARARGS,
     "inspect($module, buffer, kind=0, what='the segment', /)\n--\n\nThe common header and "
     "the live counters of a segment of `kind` (0: any), read without locking or writing (a "
     "read-only mapping will do). Raises SegmentError, naming `what`, for anything that is "
     "not a whole, initialised procwire segment of that kind."},
    {NULL, NULL, 0, NULL},
};

int pw_inspect_register(PyObject *module)
{
    return PyModule_AddFunctions(module, inspect_methods);
}
