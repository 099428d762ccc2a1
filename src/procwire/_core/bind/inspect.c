/*
 * inspect.c -- _core.inspect(buffer): read a segment's live state for
 * `procwire ls` and `procwire stat`, without touching it.
 *
 * The buffer may be (and for the CLI is) a read-only mapping: this file only
 * loads. It never takes a lock, never bumps a counter and never repairs
 * anything, so inspecting an object cannot disturb the processes using it.
 * Every counter is read with one atomic load; a set of them is not a
 * consistent snapshot, which is fine for advisory figures.
 *
 * The segment is untrusted: the common header is validated first, then the
 * kind-specific header's size, before any field of it is read.
 */
#include "core.h"

static int set_item(PyObject *d, const char *key, PyObject *value)
{
    if (!value)
        return -1;
    int rc = PyDict_SetItemString(d, key, value);
    Py_DECREF(value);
    return rc;
}

#define U64(p) PyLong_FromUnsignedLongLong((unsigned long long)atomic_load(p))
#define U32(p) PyLong_FromUnsignedLong((unsigned long)atomic_load(p))

static int add_lock(PyObject *d, const struct pw_lock *l)
{
    uint32_t word = pw_mutex_word(&l->mutex);
    uint32_t holder = word & PW_MUTEX_TID_MASK;
    return set_item(d, "locked", PyBool_FromLong(holder != 0)) ||
           set_item(d, "holder_tid", PyLong_FromUnsignedLong(holder)) ||
           set_item(d, "depth", PyLong_FromUnsignedLong(holder ? atomic_load(&l->depth) : 0)) ||
           set_item(d, "owner_died", PyBool_FromLong(atomic_load(&l->inconsistent) ||
                                                     (word & PW_MUTEX_OWNER_DIED))) ||
           set_item(d, "owner_deaths", U64(&l->owner_deaths)) ||
           set_item(d, "waiters", PyLong_FromUnsignedLong(pw_waiters_count_live(&l->sleepers))) ||
           set_item(d, "contended", U64(&l->contended));
}

static int add_lock_name(PyObject *d, uint32_t mode, uint32_t len, const char *name)
{
    static const char *const modes[] = {"none", "embedded", "named", "external"};
    if (set_item(d, "lock_mode", PyUnicode_FromString(mode < 4 ? modes[mode] : "invalid")))
        return -1;
    if (mode == PW_LOCKMODE_NAMED) {
        if (len > PW_LOCK_NAME_MAX)
            len = PW_LOCK_NAME_MAX;
        return set_item(d, "lock_name", PyUnicode_DecodeUTF8(name, len, "replace"));
    }
    return 0;
}

static int add_ring(PyObject *d, const struct pw_ring *r, const struct pw_header *h)
{
    /* The same snapshot Queue.statistics() gives, read without the object. */
    uint64_t head = atomic_load(&r->head), tail = atomic_load(&r->tail);
    uint64_t cap = r->capacity;
    if (cap < PW_RING_MIN_CAPACITY || cap > PW_RING_MAX_CAPACITY || (cap & (cap - 1)) ||
        h->data_offset + cap > h->total_size)
        return pw_segment_error("the segment is corrupt: ring capacity %llu does not fit "
                                "its %llu bytes", (unsigned long long)cap,
                                (unsigned long long)h->total_size);
    return set_item(d, "capacity", PyLong_FromUnsignedLongLong(cap)) ||
           set_item(d, "maxsize", PyLong_FromUnsignedLong(r->maxsize)) ||
           set_item(d, "messages", PyLong_FromUnsignedLong((uint32_t)((tail >> 32) - (head >> 32)))) ||
           set_item(d, "bytes_used", PyLong_FromUnsignedLong((uint32_t)tail - (uint32_t)head)) ||
           set_item(d, "total_in", PyLong_FromUnsignedLongLong(pw_widen_count(
                                       atomic_load(&r->total_in), (uint32_t)(tail >> 32)))) ||
           set_item(d, "total_out", PyLong_FromUnsignedLongLong(pw_widen_count(
                                        atomic_load(&r->total_out), (uint32_t)(head >> 32)))) ||
           set_item(d, "bytes_in", U64(&r->bytes_in)) ||
           set_item(d, "bytes_out", U64(&r->bytes_out)) ||
           set_item(d, "owner_died", PyLong_FromUnsignedLongLong(
                                         atomic_load(&r->tail_owner_died) +
                                         atomic_load(&r->head_owner_died))) ||
           set_item(d, "consumers_waiting", PyLong_FromUnsignedLong(pw_waiters_count_live(&r->consumers))) ||
           set_item(d, "producers_waiting", PyLong_FromUnsignedLong(pw_waiters_count_live(&r->producers))) ||
           set_item(d, "joiners_waiting", PyLong_FromUnsignedLong(pw_waiters_count_live(&r->joiners))) ||
           set_item(d, "unfinished_tasks", PyLong_FromUnsignedLong(
                                               (uint32_t)(tail >> 32) - atomic_load(&r->tasks_done)));
}

static int add_kind(PyObject *d, const char *base, const struct pw_header *h)
{
    const void *p = base + sizeof *h;
    const struct pw_kind_info *k = pw_kind_info(h->kind);
    if (!k || h->kind == PW_KIND_PIPE)
        return 0; /* a kind this file does not describe: the header only */
    size_t need = k->header_size;
    if (h->header_size < need)
        return pw_segment_error("the segment is corrupt: a %s needs a %zu-byte header, "
                                "this one has %u", pw_kind_name(h->kind), need, h->header_size);
    switch (h->kind) {
    case PW_KIND_QUEUE:
        return add_ring(d, p, h);
    case PW_KIND_LOCK:
    case PW_KIND_RLOCK:
        return add_lock(d, p);
    case PW_KIND_SEMAPHORE: {
        const struct pw_sem *s = p;
        return set_item(d, "value", U32(&s->value)) ||
               set_item(d, "maxvalue", PyLong_FromUnsignedLong(s->maxvalue)) ||
               set_item(d, "bounded", PyBool_FromLong(s->bounded)) ||
               set_item(d, "waiters", PyLong_FromUnsignedLong(pw_waiters_count_live(&s->sleepers))) ||
               set_item(d, "acquires", U64(&s->acquires)) ||
               set_item(d, "releases", U64(&s->releases));
    }
    case PW_KIND_EVENT: {
        const struct pw_event *e = p;
        return set_item(d, "is_set", PyBool_FromLong(atomic_load(&e->state) & 1)) ||
               set_item(d, "waiters", PyLong_FromUnsignedLong(pw_waiters_count_live(&e->sleepers))) ||
               set_item(d, "sets", U64(&e->sets));
    }
    case PW_KIND_CONDITION: {
        const struct pw_cond *c = p;
        PyObject *lock = PyDict_New();
        if (!lock || add_lock(lock, &c->lock) < 0) {
            Py_XDECREF(lock);
            return -1;
        }
        return set_item(d, "waiters", PyLong_FromUnsignedLong(pw_waiters_count_live(&c->sleepers))) ||
               set_item(d, "notifies", U64(&c->notifies)) ||
               add_lock_name(d, c->lock_mode, c->lock_name_len, c->lock_name) ||
               set_item(d, "lock", lock);
    }
    case PW_KIND_VALUE:
    case PW_KIND_ARRAY: {
        const struct pw_shared *s = p;
        size_t tlen = strnlen(s->typecode, PW_TYPECODE_MAX);
        if (s->elem_size && s->length > (h->total_size - h->data_offset) / s->elem_size)
            return pw_segment_error("the segment is corrupt: %llu elements of %llu bytes do "
                                    "not fit it", (unsigned long long)s->length,
                                    (unsigned long long)s->elem_size);
        if (set_item(d, "typecode", PyUnicode_DecodeASCII(s->typecode, tlen, "replace")) ||
            set_item(d, "elem_size", PyLong_FromUnsignedLongLong(s->elem_size)) ||
            set_item(d, "length", PyLong_FromUnsignedLongLong(s->length)) ||
            add_lock_name(d, s->lock_mode, s->lock_name_len, s->lock_name))
            return -1;
        if (s->lock_mode == PW_LOCKMODE_EMBEDDED) {
            PyObject *lock = PyDict_New();
            if (!lock || add_lock(lock, &s->lock) < 0) {
                Py_XDECREF(lock);
                return -1;
            }
            return set_item(d, "lock", lock);
        }
        return 0;
    }
    }
    return 0;
}

/* The validated common header of a segment, and its kind's counters too if
 * `counters`. */
static PyObject *describe(PyObject *arg, int counters)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *d = NULL;
    int rc = pw_header_validate(view.buf, (uint64_t)view.len, 0, "the segment");
    if (rc) {
        pw_raise(rc);
        goto done;
    }
    const struct pw_header *h = view.buf;
    d = Py_BuildValue("{s:s,s:I,s:I,s:K,s:I,s:K,s:K,s:I}", "kind", pw_kind_name(h->kind),
                      "kind_id", h->kind, "version", h->version, "total_size",
                      (unsigned long long)h->total_size, "creator_pid", h->creator_pid,
                      "created_ns", (unsigned long long)h->created_ns, "data_offset",
                      (unsigned long long)h->data_offset, "header_size", h->header_size);
    if (d && counters && add_kind(d, view.buf, h) < 0)
        Py_CLEAR(d);
done:
    PyBuffer_Release(&view);
    return d;
}

/* _core.inspect(buffer) -> dict: the common header and the kind's counters. */
static PyObject *inspect(PyObject *self, PyObject *arg)
{
    return describe(arg, 1);
}

/* _core.header_info(buffer) -> dict: the validated common header. */
static PyObject *header_info(PyObject *self, PyObject *arg)
{
    return describe(arg, 0);
}

static PyMethodDef inspect_methods[] = {
    {"header_info", header_info, METH_O,
     "header_info(buffer) -> dict\n\nValidate a segment's common header and describe it. "
     "Raises SegmentError for anything that is not a whole, initialised procwire segment."},
    {"inspect", inspect, METH_O,
     "inspect(buffer) -> dict\n\nThe common header and the live counters of a segment, read "
     "without locking or writing (a read-only mapping will do). Raises SegmentError for "
     "anything that is not a whole, initialised procwire segment."},
    {NULL, NULL, 0, NULL},
};

int pw_inspect_register(PyObject *module)
{
    return PyModule_AddFunctions(module, inspect_methods);
}
