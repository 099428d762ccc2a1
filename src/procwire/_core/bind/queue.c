/*
 * queue.c -- _core.QueueBase, the native base class of procwire's queues.
 *
 * procwire.queue.Queue subclasses this type, so q.put and q.get resolve
 * straight to the C methods below with no Python frame in between. Python
 * decides the policy: it maps the segment, chooses the serializer (passed in
 * as `dumps` and `loads`) and names things. This file moves bytes.
 *
 * put() serialises in the caller, before any lock is taken, so an
 * unpicklable object raises from put() itself and nothing else is affected.
 */
#include "core.h"

#include <string.h>
#include <structmember.h>

typedef struct {
    PwObject base;       /* the mapping, its name, the guard against a concurrent close */
    pw_ringref rr;
    uint32_t maxsize;    /* the ring's, which never changes: readable once closed */
    PyObject *dumps;     /* dumps(obj, protocol) -> bytes */
    PyObject *protocol;  /* int, the pickle protocol */
    PyObject *dumps_buffers; /* for buffer exporters: obj -> bytes or [pickle, buffer, ...] */
    PyObject *loads;     /* loads(data, buffers=None) */
    /* get_many() found a message it could not unpickle: its exception, raised
     * by this handle's next get call (the batch's other messages were
     * returned); its traceback attached (take_raised). */
    PyObject *pending;
    pw_lease lease;      /* this handle's open loan and view (lease.c) */
} QueueObject;

/* Messages are serialised and put in groups of this many by put_many(),
 * which bounds the memory a huge batch needs. */
#define PW_BATCH 256

static PyTypeObject QueueType;

/* ------------------------------------------------------------ lifecycle */

static void release_mapping(PwObject *o)
{
    QueueObject *self = (QueueObject *)o;
    self->rr.ring = NULL;
    self->rr.data = NULL;
    pw_object_unmap(o);
}

static const pw_object_ops queue_ops = {release_mapping, NULL};

#define enter(self) pw_object_enter(&(self)->base)
#define leave(self) pw_object_leave(&(self)->base)

/* Raises what a ring call's status rc means here: `timed_out` (Empty or Full)
 * for PW_TIMEOUT, the closed error for PW_CANCELLED (close() from another
 * thread while this one waited). NULL. */
static PyObject *ring_failed(QueueObject *self, int rc, PyObject *timed_out)
{
    if (rc == PW_TIMEOUT)
        PyErr_SetNone(timed_out);
    else if (rc == PW_CANCELLED)
        pw_object_closed_while_waiting(&self->base);
    else
        pw_raise(rc); /* PW_ERAISED: already set */
    return NULL;
}

/* QueueBase(buffer, *, name, dumps, protocol, dumps_buffers, loads, spill_fd):
 * opens the queue segment_init() laid out in `buffer`, validating it; the
 * spill area beyond the mapping is read and written through spill_fd (the
 * segment's file, the caller's: it stays open while the handle is). */
static int Queue_init(QueueObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "name", "dumps", "protocol", "dumps_buffers", "loads",
                             "spill_fd", NULL};
    PyObject *buffer, *name, *dumps, *protocol, *dumps_buffers, *loads;
    int spill_fd;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O$UOO!OOi:QueueBase", kwlist, &buffer, &name,
                                     &dumps, &PyLong_Type, &protocol, &dumps_buffers, &loads,
                                     &spill_fd))
        return -1;
    const char *what = pw_ring_object_map(&self->base, &queue_ops, buffer, name);
    if (!what)
        return -1;
    Py_XSETREF(self->dumps, Py_NewRef(dumps));
    Py_XSETREF(self->protocol, Py_NewRef(protocol));
    Py_XSETREF(self->dumps_buffers, Py_NewRef(dumps_buffers));
    Py_XSETREF(self->loads, Py_NewRef(loads));
    struct pw_header *h = self->base.view.buf;
    int rc = pw_segment_validate(h, (uint64_t)self->base.view.len, PW_KIND_QUEUE, what);
    if (rc == PW_OK) {
        /* `what`: UTF-8 cached by `name`, which we keep */
        pw_ringref_init(&self->rr, (struct pw_ring *)(h + 1), (uint8_t *)h + h->data_offset, what);
        self->rr.cancel = &self->base.guard.closed; /* a close() from another thread ends waits */
        self->maxsize = self->rr.ring->maxsize;
        rc = pw_ring_set_spill(&self->rr, spill_fd);
    }
    if (rc) {
        pw_raise(rc);
        release_mapping(&self->base);
        return -1;
    }
    return 0;
}

#define QUEUE_OBJECTS(X) X(dumps) X(protocol) X(dumps_buffers) X(loads) \
    X(pending)
PW_RING_GC(Queue, QueueObject, QUEUE_OBJECTS)

static void Queue_dealloc(QueueObject *self)
{
    PyObject_GC_UnTrack(self);
    pw_object_dealloc(&self->base);
    Queue_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* ------------------------------------------------------------ messages */

/* The Python side of a message being put: what keeps its bytes alive. */
typedef struct {
    Py_buffer *views; /* exported buffers to release (in `block`) */
    int nviews;
    void *block;      /* one allocation: the views, an out-of-band prefix, part arrays */
    PyObject *keep;   /* a reference that keeps the bytes alive */
} msg_refs;

static void msg_release(msg_refs *x)
{
    for (int i = 0; i < x->nviews; i++)
        PyBuffer_Release(&x->views[i]);
    PyMem_Free(x->block);
    Py_CLEAR(x->keep);
}

/* Makes the buffers of the n objects m's parts: after a prefix of their
 * count and lengths if `oob` (a PICKLE_OOB record's), else alone. The
 * arrays this needs are one allocation (x->block). 0, or -1 with an
 * exception. */
static int msg_export(pw_msg *m, msg_refs *x, PyObject *const *objs, Py_ssize_t n, int oob)
{
    int nparts = (int)n + oob;
    size_t views = sizeof(Py_buffer) * (size_t)n;
    size_t prefix = oob ? sizeof(uint64_t) * (size_t)nparts : 0;
    size_t arrays = nparts > PW_MSG_INLINE_PARTS ? (sizeof(void *) + sizeof(uint64_t)) * nparts : 0;
    char *block = x->block = PyMem_Calloc(1, views + prefix + arrays);
    if (!block) {
        PyErr_NoMemory();
        return -1;
    }
    x->views = (Py_buffer *)block;
    uint64_t *lens = (uint64_t *)(block + views); /* the prefix: nparts word, part lengths */
    if (arrays) {
        m->part = (const void **)(block + views + prefix);
        m->part_len = (uint64_t *)(m->part + nparts);
    }
    m->nparts = nparts;
    m->len = prefix;
    if (oob) {
        lens[0] = (uint64_t)n;
        m->part[0] = lens;
        m->part_len[0] = prefix;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyObject_GetBuffer(objs[i], &x->views[i], PyBUF_SIMPLE) < 0)
            return -1;
        x->nviews++;
        uint64_t len = (uint64_t)x->views[i].len;
        if (oob)
            lens[i + 1] = len;
        m->part[oob + i] = x->views[i].buf;
        m->part_len[oob + i] = len;
        m->len += len;
    }
    return 0;
}

static int msg_prepare(QueueObject *self, PyObject *obj, pw_msg *m, msg_refs *x)
{
    memset(m, 0, sizeof *m);
    memset(x, 0, sizeof *x);
    m->part = m->part_inline;
    m->part_len = m->part_len_inline;
    m->nparts = 1;
    if (PyBytes_CheckExact(obj)) {
        /* The common case skips pickling altogether. */
        m->type = PW_REC_BYTES;
        x->keep = Py_NewRef(obj);
        m->part[0] = PyBytes_AS_STRING(obj);
        m->len = m->part_len[0] = (uint64_t)PyBytes_GET_SIZE(obj);
    } else if (PyByteArray_CheckExact(obj)) {
        /* An export pins the bytearray's size while we copy it. */
        m->type = PW_REC_BYTEARRAY;
        if (msg_export(m, x, &obj, 1, 0) < 0)
            return -1;
    } else {
        /* Objects that export a buffer (numpy arrays, ...) may travel out
         * of band; everything else takes the direct dumps(obj, protocol). */
        PyObject *data;
        if (PyObject_CheckBuffer(obj)) {
            data = PyObject_CallOneArg(self->dumps_buffers, obj);
        } else {
            PyObject *callargs[2] = {obj, self->protocol};
            data = PyObject_Vectorcall(self->dumps, callargs, 2, NULL);
        }
        if (!data)
            return -1;
        x->keep = data;
        if (PyBytes_CheckExact(data)) {
            m->type = PW_REC_PICKLE;
            m->part[0] = PyBytes_AS_STRING(data);
            m->len = m->part_len[0] = (uint64_t)PyBytes_GET_SIZE(data);
        } else if (PyList_CheckExact(data) || PyTuple_CheckExact(data)) {
            /* A protocol-5 pickle plus its out-of-band buffers: [pickle, buf, ...]. */
            Py_ssize_t n = PySequence_Fast_GET_SIZE(data);
            if (n < 1 || n > PW_OOB_MAX_PARTS) {
                PyErr_Format(PyExc_ValueError, "dumps() returned %zd parts; between 1 and %d "
                             "are supported", n, PW_OOB_MAX_PARTS);
                return -1;
            }
            m->type = PW_REC_PICKLE_OOB;
            if (msg_export(m, x, PySequence_Fast_ITEMS(data), n, 1) < 0)
                return -1;
        } else {
            PyErr_Format(PyExc_TypeError, "dumps() must return bytes or a list of buffers, "
                         "not %.100s", Py_TYPE(data)->tp_name);
            return -1;
        }
    }
    if (m->len > PW_SPILL_MAX_PAYLOAD) /* what the ring cannot take spills */
        return pw_too_large(self->base.name, &self->rr, m->len, PW_SPILL_MAX_PAYLOAD);
    return 0;
}

/* A record copied out of the ring: its payload (bytes; a bytearray for a
 * BYTEARRAY record) and, for PICKLE_OOB, the pickle as payload and the
 * out-of-band buffers as bytearrays, mutable as such buffers are (numpy
 * arrays stay writable). */
typedef struct {
    uint32_t type;
    PyObject *payload;
    PyObject *buffers; /* a list for PICKLE_OOB; else NULL */
} pw_record;

/* Allocates the payload object(s) for a record and copies it out; `raw`: its
 * whole payload as bytes, whatever its type (a spilled message's view). */
static int read_record(const pw_ringref *rr, uint32_t p, uint32_t type, uint64_t len, int raw,
                       pw_record *out)
{
    uint64_t nparts = 1, lens[PW_OOB_MAX_PARTS];
    lens[0] = len;
    /* Checked before use; only an out-of-band record has more than its type to check. */
    if (!raw && (type == PW_REC_PICKLE_OOB || type == 0 || type >= PW_REC_MAX_)) {
        int rc = pw_check_record(rr, p, type, len, &nparts, lens);
        if (rc)
            return rc;
    }
    int oob = !raw && type == PW_REC_PICKLE_OOB;
    out->type = type;
    out->buffers = oob ? PyList_New((Py_ssize_t)nparts - 1) : NULL;
    if (oob && !out->buffers)
        return PW_ERAISED;
    if (oob)
        p += (uint32_t)(8 + 8 * nparts);
    for (uint64_t i = 0; i < nparts; i++) {
        int mutable = i > 0 || (!raw && type == PW_REC_BYTEARRAY);
        PyObject *part = mutable ? PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)lens[i])
                                 : PyBytes_FromStringAndSize(NULL, (Py_ssize_t)lens[i]);
        if (!part) {
            if (i)
                Py_DECREF(out->payload);
            Py_XDECREF(out->buffers);
            return PW_ERAISED;
        }
        pw_ring_copy_out_large(rr, p, mutable ? PyByteArray_AS_STRING(part)
                                              : PyBytes_AS_STRING(part), lens[i]);
        p += (uint32_t)lens[i];
        if (i == 0)
            out->payload = part;
        else
            PyList_SET_ITEM(out->buffers, (Py_ssize_t)i - 1, part);
    }
    return 0;
}

struct take_ctx {
    pw_record *out;
    size_t n;
    int raw;
};

static int take_record(void *ctx, const pw_ringref *rr, uint32_t pos, uint32_t type,
                       uint64_t len)
{
    struct take_ctx *c = ctx;
    int rc = read_record(rr, pos, type, len, c->raw, &c->out[c->n]);
    if (rc == 0)
        c->n++;
    return rc;
}

/*
 * Takes up to `max` records (at least 1), waiting for the first until the
 * deadline (`raw`: see read_record). Returns the number taken (>= 1), 0 on
 * timeout, -1 with an exception set. A bad record after good ones is left
 * for the next call.
 */
static Py_ssize_t take_records(QueueObject *self, pw_record *out, size_t max, int64_t deadline,
                               int raw)
{
    struct take_ctx c = {out, 0, raw};
    size_t taken;
    int rc = pw_ring_take(&self->rr, take_record, &c, max, deadline, &taken);
    if (taken) {
        if (rc == PW_ERAISED)
            PyErr_Clear(); /* delivered what was taken; the error recurs next call */
        return (Py_ssize_t)taken;
    }
    if (rc == PW_TIMEOUT)
        return 0;
    ring_failed(self, rc, NULL);
    return -1;
}

/* Turns a record into the object that was put. Steals the record's objects. */
static PyObject *record_to_object(QueueObject *self, pw_record *rec)
{
    PyObject *result;
    if (rec->type == PW_REC_BYTES || rec->type == PW_REC_BYTEARRAY)
        return rec->payload;
    if (rec->type == PW_REC_PICKLE) {
        result = PyObject_CallOneArg(self->loads, rec->payload);
    } else { /* PICKLE_OOB: loads(pickle, buffers=[...]) */
        PyObject *callargs[2] = {rec->payload, rec->buffers};
        PyObject *kwnames = PyTuple_Pack(1, pw_get_state()->str_buffers);
        result = kwnames ? PyObject_Vectorcall(self->loads, callargs, 1, kwnames) : NULL;
        Py_XDECREF(kwnames);
        Py_DECREF(rec->buffers);
    }
    Py_DECREF(rec->payload);
    return result;
}

/* ------------------------------------------------------------ put / get */

/* The exception being raised, cleared: its value, with its traceback
 * attached (3.12's PyErr_GetRaisedException). */
static PyObject *take_raised(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

/* Raises exc, a take_raised() value (stolen). NULL. */
static PyObject *raise_taken(PyObject *exc)
{
    PyErr_Restore(Py_NewRef(Py_TYPE(exc)), exc, PyException_GetTraceback(exc));
    return NULL;
}

/* Sets count = n on the exception being raised: put_many()'s items put. NULL. */
static PyObject *raise_with_count(Py_ssize_t n)
{
    PyObject *exc = take_raised(), *count = PyLong_FromSsize_t(n);
    if (!count || PyObject_SetAttrString(exc, "count", count) < 0)
        PyErr_Clear(); /* an exception type that takes no attributes */
    Py_XDECREF(count);
    return raise_taken(exc);
}

/*
 * put_many(): puts items in order, serialising a batch at a time. If one
 * cannot be serialised, every item before it is put (waiting for room as
 * usual), it and the rest are not, and its exception is raised carrying
 * `count`, the number of items put, which is always its index (the note that
 * says so is procwire.queue's). On timeout queue.Full carries `count` the
 * same way. A put that fails before reaching an item that would not
 * serialise raises its own error, as putting them one at a time would.
 */
static PyObject *put_objects(QueueObject *self, PyObject *const *items, Py_ssize_t n,
                             int64_t deadline)
{
    pw_msg msgs[PW_BATCH];
    msg_refs refs[PW_BATCH];
    Py_ssize_t put = 0;
    while (put < n) {
        Py_ssize_t batch = n - put < PW_BATCH ? n - put : PW_BATCH, prepared = 0;
        PyObject *bad = NULL; /* an item's error, held while the items before it go in */
        for (; prepared < batch; prepared++) {
            if (msg_prepare(self, items[put + prepared], &msgs[prepared], &refs[prepared]) < 0) {
                msg_release(&refs[prepared]);
                bad = take_raised();
                break;
            }
        }
        size_t done = 0;
        int rc = prepared ? pw_ring_put(&self->rr, msgs, (size_t)prepared, &done, deadline) : PW_OK;
        for (Py_ssize_t i = 0; i < prepared; i++)
            msg_release(&refs[i]);
        put += (Py_ssize_t)done;
        if (rc != PW_OK) {
            Py_XDECREF(bad);
            if (rc != PW_TIMEOUT)
                return ring_failed(self, rc, NULL);
            PyErr_SetString(pw_get_state()->Full, "put_many() timed out: see the exception's "
                            "count attribute for how many items were put");
            return raise_with_count(put);
        }
        if (bad) {
            raise_taken(bad);
            return raise_with_count(put);
        }
    }
    Py_RETURN_NONE;
}

/* put_objects() for one item, without a batch's arrays on the stack. */
static PyObject *put_one(QueueObject *self, PyObject *obj, int64_t deadline)
{
    if (enter(self) < 0)
        return NULL;
    pw_msg m;
    msg_refs x;
    size_t done = 0;
    int rc = msg_prepare(self, obj, &m, &x) < 0 ? PW_ERAISED
             : pw_ring_put(&self->rr, &m, 1, &done, deadline);
    msg_release(&x);
    leave(self);
    return rc ? ring_failed(self, rc, pw_get_state()->Full) : Py_NewRef(Py_None);
}

static const char *const put_names[] = {"obj", "block", "timeout"};

static PyObject *Queue_put(QueueObject *self, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames)
{
    PyObject *a[3] = {nargs ? args[0] : NULL, NULL, NULL};
    int64_t deadline = PW_FOREVER;
    if (nargs != 1 || kwnames) { /* put(obj), the common call, parses nothing */
        if (pw_parse_args("put", args, nargs, kwnames, put_names, 3, 1, a) < 0 ||
            pw_parse_block_timeout(a[1], a[2], &deadline) < 0)
            return NULL;
    }
    return put_one(self, a[0], deadline);
}

static PyObject *Queue_put_nowait(QueueObject *self, PyObject *obj)
{
    return put_one(self, obj, 0);
}

static const char *const put_many_names[] = {"items", "block", "timeout"};

static PyObject *Queue_put_many(QueueObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    PyObject *a[3];
    int64_t deadline;
    if (pw_parse_args("put_many", args, nargs, kwnames, put_many_names, 3, 1, a) < 0 ||
        pw_parse_block_timeout(a[1], a[2], &deadline) < 0)
        return NULL;
    PyObject *seq = PySequence_Fast(a[0], "put_many() needs an iterable of items");
    if (!seq)
        return NULL;
    PyObject *r = NULL;
    if (enter(self) == 0) {
        r = put_objects(self, PySequence_Fast_ITEMS(seq), PySequence_Fast_GET_SIZE(seq),
                        deadline);
        leave(self);
    }
    Py_DECREF(seq);
    return r;
}

/* Raises the error get_many() deferred, if any: 1 if it did. */
static int raise_pending(QueueObject *self)
{
    if (!self->pending)
        return 0;
    raise_taken(self->pending);
    self->pending = NULL;
    return 1;
}

/* get() and get_nowait(): one message. */
static PyObject *get_one(QueueObject *self, int64_t deadline)
{
    if (enter(self) < 0)
        return NULL;
    pw_record rec;
    Py_ssize_t got = raise_pending(self) ? -1 : take_records(self, &rec, 1, deadline, 0);
    if (got == 0)
        PyErr_SetNone(pw_get_state()->Empty);
    PyObject *r = got > 0 ? record_to_object(self, &rec) : NULL;
    leave(self);
    return r;
}

static const char *const get_names[] = {"block", "timeout", "copy"};

static PyObject *Queue_get(QueueObject *self, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames)
{
    PyObject *a[3];
    int64_t deadline = PW_FOREVER;
    if (nargs || kwnames) { /* get(), the common call, parses nothing */
        if (pw_parse_args("get", args, nargs, kwnames, get_names, 3, 0, a) < 0)
            return NULL;
        int in_place;
        PyObject *view = pw_view_instead((PyObject *)self, a[2], "_get_view",
                                         a[0] ? a[0] : Py_True, a[1], &in_place);
        if (in_place)
            return view;
        if (pw_parse_block_timeout(a[0], a[1], &deadline) < 0)
            return NULL;
    }
    return get_one(self, deadline);
}

static PyObject *Queue_get_nowait(QueueObject *self, PyObject *unused)
{
    return get_one(self, 0);
}

static const char *const get_many_names[] = {"block", "timeout", "max_messages"};

static PyObject *Queue_get_many(QueueObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames)
{
    PyObject *a[3];
    int64_t deadline;
    Py_ssize_t max = PY_SSIZE_T_MAX;
    if (pw_parse_args("get_many", args, nargs, kwnames, get_many_names, 3, 0, a) < 0 ||
        pw_parse_block_timeout(a[0], a[1], &deadline) < 0)
        return NULL;
    if (pw_index_arg(a[2], 1, 1, "max_messages must be at least 1, not %zd", &max) < 0)
        return NULL;
    if (enter(self) < 0)
        return NULL;
    /* A record that does not unpickle is consumed, as get() consumes it;
     * every other record of the batch is still returned (they are out of
     * the ring already: dropping them would lose them). The first failure's
     * exception is raised by this handle's next get call, or now if nothing
     * converted. */
    PyObject *result = raise_pending(self) ? NULL : PyList_New(0), *first_error = NULL;
    Py_ssize_t taken = 0, failed = 0;
    pw_record recs[PW_BATCH]; /* at most a batch per call into the ring: on the stack */
    while (result && taken < max) {
        Py_ssize_t want = max - taken < PW_BATCH ? max - taken : PW_BATCH;
        /* Wait only for the first message; then take what is already there. */
        Py_ssize_t n = take_records(self, recs, (size_t)want, taken ? 0 : deadline, 0);
        if (n <= 0) {
            if (taken) { /* deliver what we have; an error comes back next call */
                PyErr_Clear();
            } else {
                if (n == 0)
                    PyErr_SetNone(pw_get_state()->Empty);
                Py_CLEAR(result);
            }
            break;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            if (!result) { /* out of memory: nothing more can be returned */
                Py_DECREF(recs[i].payload);
                Py_XDECREF(recs[i].buffers);
                continue;
            }
            PyObject *obj = record_to_object(self, &recs[i]);
            if (!obj) {
                if (failed++ == 0)
                    first_error = take_raised();
                else
                    PyErr_Clear();
                continue;
            }
            if (PyList_Append(result, obj) < 0)
                Py_CLEAR(result);
            Py_DECREF(obj);
        }
        taken += n;
        if (n < want)
            break;
    }
    if (first_error) {
        if (failed > 1) {
            PyObject *r = PyObject_CallMethod(first_error, "add_note", "s",
                                              "get_many(): more messages of the same batch "
                                              "failed to unpickle; this is the first");
            if (!r)
                PyErr_Clear();
            Py_XDECREF(r);
        }
        if (result && PyList_GET_SIZE(result) > 0) {
            self->pending = first_error; /* raised by the next get call on this handle */
        } else {
            Py_CLEAR(result);
            raise_taken(first_error);
        }
    }
    leave(self);
    return result;
}

/* ------------------------------------------------------------ state */

static PyObject *Queue_qsize(QueueObject *self, PyObject *unused)
{
    if (enter(self) < 0)
        return NULL;
    uint32_t n = pw_ring_count(&self->rr);
    leave(self);
    return PyLong_FromUnsignedLong(n);
}

static PyObject *Queue_empty(QueueObject *self, PyObject *unused)
{
    if (enter(self) < 0)
        return NULL;
    uint32_t n = pw_ring_count(&self->rr);
    leave(self);
    return PyBool_FromLong(n == 0);
}

static PyObject *Queue_full(QueueObject *self, PyObject *unused)
{
    if (enter(self) < 0)
        return NULL;
    /* Without maxsize, never: what the ring cannot take spills (every QueueBase has a spill). */
    int full = self->maxsize && pw_ring_count(&self->rr) >= self->maxsize;
    leave(self);
    return PyBool_FromLong(full);
}

static PyObject *Queue_task_done(QueueObject *self, PyObject *unused)
{
    if (enter(self) < 0)
        return NULL;
    struct pw_ring *r = self->rr.ring;
    /* unfinished = messages ever put - task_done() calls, both mod 2^32; the
     * put count is the authoritative one in the tail word, so a producer
     * killed mid-put can never leave join() waiting for a phantom task. */
    uint32_t done = atomic_load(&r->tasks_done);
    for (;;) {
        uint32_t put = pw_count(atomic_load(&r->tail));
        if (done == put) {
            leave(self);
            PyErr_SetString(PyExc_ValueError, "task_done() called too many times");
            return NULL;
        }
        if (atomic_compare_exchange_weak(&r->tasks_done, &done, done + 1))
            break;
    }
    if (pw_waiters_any(&r->joiners))
        pw_waiters_wake(&r->joiners, &r->tasks_done, INT32_MAX, PW_FUTEX_ANY);
    leave(self);
    Py_RETURN_NONE;
}

static int all_tasks_done(void *ctx)
{
    struct pw_ring *r = ctx;
    return atomic_load(&r->tasks_done) == pw_count(atomic_load(&r->tail));
}

static const char *const join_names[] = {"timeout"};

static PyObject *Queue_join(QueueObject *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    PyObject *a[1];
    int64_t deadline;
    if (pw_parse_args("join", args, nargs, kwnames, join_names, 1, 0, a) < 0 ||
        pw_deadline_from(1, a[0], &deadline) < 0 || enter(self) < 0)
        return NULL;
    struct pw_ring *r = self->rr.ring;
    /* Sleeps on tasks_done, which every task_done() moves, and close() from
     * another thread of ours (Queue_release wakes the joiners too). */
    pw_wait w = {.done = all_tasks_done, .ctx = r, .waiters = &r->joiners,
                 .futex = &r->tasks_done, .mask = PW_FUTEX_ANY,
                 .cancel = &self->base.guard.closed};
    int rc = pw_wait_until(&w, deadline);
    PyObject *result = rc == PW_OK ? Py_NewRef(Py_True)
                       : rc == PW_TIMEOUT ? Py_NewRef(Py_False) : ring_failed(self, rc, NULL);
    leave(self);
    return result;
}

/* _statistics() -> dict: the live counters, read by inspect.c's one reader
 * (the same figures `procwire stat` shows); dead sleepers' slots are freed
 * first, so that they are not counted. */
static PyObject *Queue_statistics(QueueObject *self, PyObject *unused)
{
    if (enter(self) < 0)
        return NULL;
    PyObject *d = pw_counters(PW_KIND_QUEUE, self->rr.ring, 1);
    leave(self);
    return d;
}

/* ---------------------------------------------- watchers (procwire._aio) */

/* _word(side), _wait_change(side, token, timeout), _kick(): lease.c. */
static PyObject *Queue_word(QueueObject *self, PyObject *arg)
{
    return pw_watch_word(&self->base, &self->rr, arg);
}

static PyObject *Queue_wait_change(QueueObject *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    return pw_watch_wait(&self->base, &self->rr, args, nargs, kwnames);
}

static PyObject *Queue_kick(QueueObject *self, PyObject *unused)
{
    return pw_watch_kick(&self->base, &self->rr);
}

/* ------------------------------------------------------- loans and views */

/* _loan_begin(nbytes, block, timeout) -> the payload's offset in the segment
 * buffer, or -1 (lease.c). Returns with the producers' lock held. */
static PyObject *Queue_loan_begin(QueueObject *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    uint64_t n;
    int64_t deadline;
    if (pw_loan_args(&self->base, &self->lease, args, nargs, kwnames, &n, &deadline) < 0 ||
        enter(self) < 0)
        return NULL;
    uint32_t pos;
    uint64_t limit = pw_ring_max_payload(self->rr.capacity); /* in place: the ring's */
    int rc = n > limit ? pw_too_large(self->base.name, &self->rr, n, limit)
                       : pw_ring_reserve(&self->rr, n, deadline, &pos);
    PyObject *r = rc ? ring_failed(self, rc, pw_get_state()->Full)
                     : pw_loan_opened(&self->base, &self->lease, &self->rr, pos, n);
    if (!r) /* no loan open: nothing held */
        leave(self);
    return r;
}

/* _loan_commit(nbytes, written): publishes the open loan (lease.c). */
static PyObject *Queue_loan_commit(QueueObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (pw_loan_commit(&self->base, &self->lease, args, nargs) < 0)
        return NULL;
    leave(self);
    Py_RETURN_NONE;
}

/* _end_lease(view): ends the open view or loan (lease.c). */
static PyObject *Queue_end_lease(QueueObject *self, PyObject *view)
{
    int v = PyObject_IsTrue(view);
    if (v < 0)
        return NULL;
    if (pw_lease_end(&self->lease, v))
        leave(self);
    Py_RETURN_NONE;
}

/* _view_begin's answer for a spilled message: taken now, its payload copied
 * (offset -1), as for a record that wraps. */
static PyObject *take_raw(QueueObject *self)
{
    pw_record rec;
    Py_ssize_t got = take_records(self, &rec, 1, 0, 1);
    if (got == 0) /* another reader took it */
        PyErr_SetNone(pw_get_state()->Empty);
    if (got <= 0)
        return NULL;
    return Py_BuildValue("(InnN)", rec.type, (Py_ssize_t)-1, PyBytes_GET_SIZE(rec.payload),
                         rec.payload);
}

/* _view_begin(block, timeout) -> (type, offset, length, copied): the oldest
 * message left in place, the consumers' lock held, with its payload's offset
 * in the segment buffer; or, if it wraps around the ring's end, copied out
 * into `copied` (bytes) and consumed, with offset -1 and no lock held. */
static PyObject *Queue_view_begin(QueueObject *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    PyObject *a[2];
    int64_t deadline;
    if (pw_parse_args("get", args, nargs, kwnames, get_names, 2, 0, a) < 0 ||
        pw_parse_block_timeout(a[0], a[1], &deadline) < 0 ||
        pw_view_free(&self->base, &self->lease) < 0 || enter(self) < 0)
        return NULL;
    uint32_t pos, type;
    uint64_t len;
    int held = 0, rc = raise_pending(self) ? PW_ERAISED
                                           : pw_ring_peek(&self->rr, deadline, &pos, &type, &len);
    PyObject *r = rc == PW_SPILLED ? take_raw(self) /* no view of the spill: its payload, copied */
                  : rc           ? ring_failed(self, rc, pw_get_state()->Empty)
                                 : pw_view_opened(&self->base, &self->lease, &self->rr, pos,
                                                  type, len, &held);
    if (!held) /* no view open (copied, or an error): nothing held */
        leave(self);
    return r;
}

static PyObject *Queue_release(QueueObject *self, PyObject *unused)
{
    /* Idempotent. The mapping goes when the last call in progress leaves;
     * this process's threads waiting in it wake (as every sleeper does, and
     * re-checks), see the flag and raise. */
    int was_closed = self->base.guard.closed;
    if (!pw_object_close(&self->base) && !was_closed) {
        pw_ring_kick(&self->rr);
        /* A wake with no bump: tasks_done is a count, not a sequence. A joiner
         * about to sleep misses it and sees the flag at its slice's end. */
        struct pw_ring *r = self->rr.ring;
        if (pw_waiters_any(&r->joiners))
            pw_waiters_wake(&r->joiners, &r->tasks_done, INT32_MAX, PW_FUTEX_ANY);
    }
    Py_RETURN_NONE;
}

/*
 * Crash-test hook, in _core._testing (testing.c), not on the queue classes:
 * hold_queue_lock(queue, side, partial=None, publish=False) takes a
 * side's lock and returns with it held, so that a test process can SIGKILL
 * itself (or be SIGSTOPped) at exactly the worst moment. With `partial`
 * (tail only) it also writes half a record beyond the tail, never published.
 * With `publish` it moves the side's position word by one message, as a
 * process killed right after its publishing store leaves it (statistics not
 * yet updated). Never used by the library.
 */
PyObject *pw_testing_queue_hold(PyObject *module, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"queue", "side", "partial", "publish", NULL};
    QueueObject *self;
    const char *side;
    Py_buffer partial = {0};
    int publish = 0, rc = PW_ERAISED;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!s|z*p:hold_queue_lock", kwlist, &QueueType,
                                     &self, &side, &partial, &publish))
        return NULL;
    int producer = strcmp(side, "tail") == 0;
    if (!producer && strcmp(side, "head") != 0)
        PyErr_SetString(PyExc_ValueError, "side must be 'head' or 'tail'");
    else if (pw_object_check_open(&self->base) == 0)
        rc = pw_ring_debug_hold(&self->rr, producer, partial.buf, (uint64_t)partial.len, publish);
    if (partial.buf)
        PyBuffer_Release(&partial);
    return rc < 0 ? pw_raise(rc) : Py_NewRef(Py_None);
}

static PyMethodDef Queue_methods[] = {
    PW_KWARGS("put", Queue_put, "obj, block=True, timeout=None",
              "Put obj into the queue. Blocks while it is full; raises queue.Full if block is "
              "false or the timeout passes."),
    PW_ONEARG("put_nowait", Queue_put_nowait, "obj", "Equivalent to put(obj, False)."),
    PW_KWARGS("put_many", Queue_put_many, "items, block=True, timeout=None",
              "Put every item, in order, taking the lock once per group of items (see "
              "procwire.Queue.put_many)."),
    PW_KWARGS("get", Queue_get, "block=True, timeout=None, *, copy=True",
              "Remove and return an item. Blocks while the queue is empty; raises queue.Empty "
              "if block is false or the timeout passes. copy=False: a procwire.queue.View of "
              "the message in place instead."),
    PW_NOARGS("get_nowait", Queue_get_nowait, "Equivalent to get(False)."),
    PW_KWARGS("get_many", Queue_get_many, "block=True, timeout=None, max_messages=None",
              "Wait like get() for the first item, then return a list of it and every item "
              "already queued behind it, up to max_messages. A message that fails to unpickle "
              "is consumed (as get() consumes it) and the others are returned; its exception "
              "is raised by this queue handle's next get call."),
    PW_LEASE_METHODS(Queue),
    PW_NOARGS("qsize", Queue_qsize, "The number of items in the queue now."),
    PW_NOARGS("empty", Queue_empty, "True if the queue holds no item now."),
    PW_NOARGS("full", Queue_full, "True if a put() would block now (maxsize items queued)."),
    {"_task_done", (PyCFunction)Queue_task_done, METH_NOARGS, NULL},
    {"_join", (PyCFunction)(void (*)(void))Queue_join, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"_statistics", (PyCFunction)Queue_statistics, METH_NOARGS, NULL},
    {"_release", (PyCFunction)Queue_release, METH_NOARGS, NULL},
    {"_word", (PyCFunction)Queue_word, METH_O, NULL},
    PW_WATCH_METHODS(Queue),
    PW_END_METHODS,
};

static PyMemberDef Queue_members[] = {
    {"capacity", T_ULONGLONG, offsetof(QueueObject, rr.capacity), READONLY,
     "Bytes of messages the ring holds."},
    {"maxsize", T_UINT, offsetof(QueueObject, maxsize), READONLY,
     "Most messages queued at once; 0 = no count limit."},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Queue_getset[] = {
    {"_released", (getter)pw_object_get_closed, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PW_RING_TYPE(Queue, QueueObject, "QueueBase", PyType_GenericNew,
             "QueueBase(buffer, *, name, dumps, protocol, dumps_buffers, loads, spill_fd)\n--\n\n"
             "A multi-producer multi-consumer message ring in a shared segment.");

int pw_queue_register(PyObject *module)
{
    QueueType.tp_members = Queue_members;
    return pw_add_type(module, &QueueType, "QueueBase");
}
