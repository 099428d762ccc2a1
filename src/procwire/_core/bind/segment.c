/*
 * segment.c -- laying out the segments of every kind but the pipe (queues,
 * locks, semaphores, events, conditions, values and arrays), the SIGBUS
 * guard's entry points, and the module's layout constants (the kinds come
 * from layout.h's table).
 *
 * Python creates a segment of segment_size() bytes, lays it out with
 * segment_init(), then opens it with the kind's type, which validates it:
 * creating and attaching share one path. Pipes lay out their own (pipe.c).
 */
#include "core.h"
#include "../lib/guard.h"

#include <string.h>

/* The most shared bytes a Value or Array may hold (64 TiB). */
#define PW_SHARED_MAX ((uint64_t)1 << 46)

/* Bytes of a segment of `kind` holding `nbytes` of elements (Value, Array)
 * or of messages (a queue's ring capacity), or 0 with ValueError set. */
static size_t size_of(unsigned long kind, unsigned long long nbytes)
{
    if (kind == PW_KIND_QUEUE)
        return pw_check_capacity(nbytes) < 0 ? 0 : pw_ring_segment_size(nbytes);
    if (kind == PW_KIND_VALUE || kind == PW_KIND_ARRAY) {
        if (nbytes <= PW_SHARED_MAX) /* at least one byte: a zero-length Array still maps */
            return PW_SHARED_DATA_OFFSET + (nbytes ? nbytes : 1);
        PyErr_Format(PyExc_ValueError, "cannot share %llu bytes", nbytes);
        return 0;
    }
    if (kind == PW_KIND_LOCK || kind == PW_KIND_RLOCK || kind == PW_KIND_SEMAPHORE ||
        kind == PW_KIND_EVENT || kind == PW_KIND_CONDITION)
        return sizeof(struct pw_header) + pw_kind_info((uint32_t)kind)->header_size;
    PyErr_Format(PyExc_ValueError, "kind %lu is not laid out by segment_init()", kind);
    return 0;
}

/* _core.segment_size(kind, nbytes=0) -> bytes of a segment of that kind. */
static PyObject *segment_size(PyObject *mod, PyObject *args)
{
    unsigned long kind;
    unsigned long long nbytes = 0;
    if (!PyArg_ParseTuple(args, "k|K:segment_size", &kind, &nbytes))
        return NULL;
    size_t size = size_of(kind, nbytes);
    return size ? PyLong_FromSize_t(size) : NULL;
}

/* segment_init()'s keyword arguments. */
struct layout_params {
    unsigned int value, lock_mode;       /* a semaphore's count; where a lock lives */
    unsigned int maxsize;                /* a queue's message limit (0: none)       */
    unsigned long long capacity;         /* a queue's ring bytes                    */
    int bounded;                         /* a BoundedSemaphore                      */
    Py_buffer lock_name;                 /* a named lock's name (buf NULL: none)    */
    const char *typecode;                /* a Value's or Array's elements ...       */
    Py_ssize_t typecode_len;
    unsigned long long elem_size, length;
};

/* Records in a Condition's or Value's header where its lock lives; returns
 * the RLock embedded in it (initialised whatever the mode: cheap, and an
 * attacher may check it). */
static struct pw_lock *record_lock(struct pw_lock *embedded, uint32_t *mode, uint32_t *name_len,
                                   char *name, const struct layout_params *a)
{
    *mode = a->lock_mode;
    if (a->lock_name.buf) {
        memcpy(name, a->lock_name.buf, a->lock_name.len);
        *name_len = (uint32_t)a->lock_name.len;
    }
    return embedded;
}

/* The kind's own header, in a zeroed segment of the right size (checked).
 * 0, or -1 with an exception. */
static int lay_out(struct pw_header *h, const struct layout_params *a)
{
    struct pw_lock *lock = NULL;
    switch (h->kind) {
    case PW_KIND_QUEUE: {
        struct pw_ring *r = (struct pw_ring *)(h + 1);
        int rc = pw_ring_init(r, a->capacity, a->maxsize);
        if (rc)
            return pw_raise_int(pw_fail_errno(rc));
        pw_ring_init_spill(r, h->total_size); /* its spill area starts where the mapping ends */
        break;
    }
    case PW_KIND_LOCK:
    case PW_KIND_RLOCK:
        lock = (struct pw_lock *)(h + 1);
        break;
    case PW_KIND_SEMAPHORE: {
        struct pw_sem *sem = (struct pw_sem *)(h + 1);
        atomic_store(&sem->value, a->value);
        sem->maxvalue = a->bounded ? a->value : INT32_MAX;
        sem->bounded = a->bounded ? 1 : 0;
        break;
    }
    case PW_KIND_CONDITION: {
        struct pw_cond *c = (struct pw_cond *)(h + 1);
        lock = record_lock(&c->lock, &c->lock_mode, &c->lock_name_len, c->lock_name, a);
        break;
    }
    case PW_KIND_VALUE:
    case PW_KIND_ARRAY: {
        struct pw_shared *s = (struct pw_shared *)(h + 1);
        memcpy(s->typecode, a->typecode, a->typecode_len);
        s->elem_size = a->elem_size;
        s->length = a->length;
        lock = record_lock(&s->lock, &s->lock_mode, &s->lock_name_len, s->lock_name, a);
        break;
    }
    }
    int rc = lock ? pw_lock_init(lock, h->kind != PW_KIND_LOCK) : 0;
    return rc ? pw_raise_int(pw_fail_errno(rc)) : 0;
}

/*
 * _core.segment_init(buffer, kind, *, value=0, bounded=False, lock_mode=0,
 *                    lock_name=b"", typecode="", elem_size=0, length=0,
 *                    capacity=0, maxsize=0)
 * Lays out a fresh segment of `kind` in `buffer` (segment_size() bytes, a
 * new file's zeroes) and publishes it. value/bounded: a semaphore's;
 * lock_mode/lock_name: where a Condition's, Value's or Array's lock lives;
 * typecode/elem_size/length: a Value's or Array's elements (left zero, as
 * ctypes would have them); capacity/maxsize: a queue's ring and message
 * limit. Keeps no reference to the buffer.
 */
static PyObject *segment_init(PyObject *mod, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "kind", "value", "bounded", "lock_mode", "lock_name",
                             "typecode", "elem_size", "length", "capacity", "maxsize", NULL};
    Py_buffer view;
    unsigned int kind;
    struct layout_params a = {.typecode = ""};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "w*I|$IpIy*s#KKKI:segment_init", kwlist, &view,
                                     &kind, &a.value, &a.bounded, &a.lock_mode, &a.lock_name,
                                     &a.typecode, &a.typecode_len, &a.elem_size, &a.length,
                                     &a.capacity, &a.maxsize))
        return NULL;
    PyObject *result = NULL;
    int shared = kind == PW_KIND_VALUE || kind == PW_KIND_ARRAY;
    if (a.value > INT32_MAX || a.maxsize > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "a semaphore value or a maxsize may be at most %d, not "
                     "%u", INT32_MAX, a.value > INT32_MAX ? a.value : a.maxsize);
        goto out;
    }
    if (shared && (a.typecode_len >= PW_TYPECODE_MAX || a.elem_size == 0 ||
                   (kind == PW_KIND_VALUE && a.length != 1) ||
                   a.length > PW_SHARED_MAX / a.elem_size)) {
        PyErr_Format(PyExc_ValueError, "invalid value/array: %llu elements of %llu bytes, a "
                     "type code of %zd characters", a.length, a.elem_size, a.typecode_len);
        goto out;
    }
    size_t size = size_of(kind, kind == PW_KIND_QUEUE ? a.capacity : a.elem_size * a.length);
    if (!size)
        goto out;
    if ((size_t)view.len != size) {
        PyErr_Format(PyExc_ValueError, "buffer is %zd bytes; this %s needs %zu", view.len,
                     pw_kind_name(kind), size);
        goto out;
    }
    if (a.lock_mode > PW_LOCKMODE_EXTERNAL ||
        (a.lock_name.buf && a.lock_name.len > PW_LOCK_NAME_MAX)) {
        PyErr_Format(PyExc_ValueError, "invalid lock mode %u or lock name of %zd bytes",
                     a.lock_mode, a.lock_name.buf ? a.lock_name.len : 0);
        goto out;
    }
    struct pw_header *h = view.buf;
    uint64_t data_offset = shared                   ? PW_SHARED_DATA_OFFSET
                           : kind == PW_KIND_QUEUE ? view.len - a.capacity
                                                   : (uint64_t)view.len;
    memset(view.buf, 0, data_offset); /* the headers; the data is a new file's zeroes */
    pw_header_init(h, kind, (uint64_t)view.len, (uint32_t)pw_kind_info(kind)->header_size,
                   data_offset);
    if (lay_out(h, &a) < 0)
        goto out;
    pw_header_publish(h);
    result = Py_NewRef(Py_None);
out:
    PyBuffer_Release(&view);
    if (a.lock_name.buf)
        PyBuffer_Release(&a.lock_name);
    return result;
}

/* _core.guard_mapping(buffer, fd) -> token: protect a named segment's mapping. */
static PyObject *guard_mapping(PyObject *self, PyObject *args)
{
    PyObject *buffer;
    int fd;
    if (!PyArg_ParseTuple(args, "Oi:guard_mapping", &buffer, &fd))
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyBuffer_Release(&view); /* the caller keeps the mapping while registered */
    void *token = pw_guard_add(view.buf, (size_t)view.len, fd);
    return token ? PyLong_FromVoidPtr(token) : pw_raise(PW_ESYS);
}

static void *guard_slot_of(PyObject *token)
{
    void *g = PyLong_AsVoidPtr(token);
    if (!g && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "not a guard token");
    return g;
}

/* _core.unguard_mapping(token) -> bool: stop protecting; whether it was lost. */
static PyObject *unguard_mapping(PyObject *self, PyObject *token)
{
    void *g = guard_slot_of(token);
    return g ? PyBool_FromLong(pw_guard_remove(g)) : NULL;
}

/* _core.mapping_lost(token) -> bool: a truncation was repaired in it. */
static PyObject *mapping_lost(PyObject *self, PyObject *token)
{
    void *g = guard_slot_of(token);
    return g ? PyBool_FromLong(pw_guard_lost(g)) : NULL;
}

static PyMethodDef segment_methods[] = {
    {"segment_size", segment_size, METH_VARARGS,
     "segment_size($module, kind, nbytes=0, /)\n--\n\nBytes of a segment of `kind` (a lock, "
     "semaphore, event or condition; a Value or Array holding `nbytes`; a queue whose ring "
     "holds `nbytes`)."},
    {"segment_init", (PyCFunction)(void (*)(void))segment_init, METH_VARARGS | METH_KEYWORDS,
     "segment_init($module, /, buffer, kind, *, value=0, bounded=False, lock_mode=0, "
     "lock_name=b'', typecode='', elem_size=0, length=0, capacity=0, maxsize=0)\n--\n\nLay "
     "out and publish a fresh segment of `kind` in `buffer` (segment_size() bytes)."},
    {"guard_mapping", guard_mapping, METH_VARARGS,
     "guard_mapping($module, buffer, fd, /)\n--\n\nRepair SIGBUS faults in this mapping of a "
     "named segment whose file `fd` gets truncated, instead of dying; returns a token. The "
     "buffer must stay mapped and fd open until unguard_mapping(token)."},
    {"unguard_mapping", unguard_mapping, METH_O,
     "unguard_mapping($module, token, /)\n--\n\nStop guarding; True if a truncation was "
     "repaired."},
    {"mapping_lost", mapping_lost, METH_O,
     "mapping_lost($module, token, /)\n--\n\nTrue once a truncation of the segment was "
     "repaired."},
    {NULL, NULL, 0, NULL},
};

int pw_segment_register(PyObject *module)
{
    if (PyModule_AddFunctions(module, segment_methods) < 0)
        return -1;
    struct { const char *name; long value; } constants[] = {
        {"HEADER_SIZE", sizeof(struct pw_header)}, {"LAYOUT_VERSION", PW_LAYOUT_VERSION},
        {"RING_MIN_CAPACITY", PW_RING_MIN_CAPACITY}, {"RING_MAX_CAPACITY", PW_RING_MAX_CAPACITY},
        {"SHARED_DATA_OFFSET", PW_SHARED_DATA_OFFSET}, {"LOCKMODE_NONE", PW_LOCKMODE_NONE},
        {"LOCKMODE_EMBEDDED", PW_LOCKMODE_EMBEDDED}, {"LOCKMODE_NAMED", PW_LOCKMODE_NAMED},
        {"LOCKMODE_EXTERNAL", PW_LOCKMODE_EXTERNAL},
#define PW_KIND_CONST_(id, num, name, type) {"KIND_" #id, num},
        PW_KINDS(PW_KIND_CONST_)
#undef PW_KIND_CONST_
    };
    for (size_t i = 0; i < sizeof constants / sizeof *constants; i++)
        if (PyModule_AddIntConstant(module, constants[i].name, constants[i].value) < 0)
            return -1;
    return 0;
}
