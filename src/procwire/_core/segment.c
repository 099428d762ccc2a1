/*
 * segment.c -- the common header of every segment: initialise, publish,
 * validate, and describe it for `procwire ls`.
 *
 * Naming, creating, mapping and unlinking segments is policy and lives in
 * procwire/_segment.py; this file only reads and writes the header bytes.
 */
#include "core.h"

#include <stdarg.h>
#include <time.h>
#include <unistd.h>

static const char *const kind_names[] = {
    [PW_KIND_QUEUE] = "queue",         [PW_KIND_PIPE] = "pipe",
    [PW_KIND_VALUE] = "value",         [PW_KIND_ARRAY] = "array",
    [PW_KIND_LOCK] = "lock",           [PW_KIND_RLOCK] = "rlock",
    [PW_KIND_SEMAPHORE] = "semaphore", [PW_KIND_CONDITION] = "condition",
    [PW_KIND_EVENT] = "event",         [PW_KIND_BARRIER] = "barrier",
};

const char *pw_kind_name(uint32_t kind)
{
    if (kind < sizeof kind_names / sizeof *kind_names && kind_names[kind])
        return kind_names[kind];
    return "unknown";
}

int pw_segment_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    if (msg) {
        PyErr_SetObject(PwExc_SegmentError, msg);
        Py_DECREF(msg);
    }
    return -1;
}

void pw_header_init(struct pw_header *h, uint32_t kind, uint64_t total_size,
                    uint32_t header_size, uint64_t data_offset)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    atomic_store_explicit(&h->magic, 0, memory_order_relaxed);
    h->version = PW_LAYOUT_VERSION;
    h->kind = kind;
    h->total_size = total_size;
    h->creator_pid = (uint32_t)getpid();
    h->header_size = header_size;
    h->data_offset = data_offset;
    h->created_ns = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
    h->flags = 0;
    h->reserved = 0;
}

void pw_header_publish(struct pw_header *h)
{
    atomic_store_explicit(&h->magic, PW_MAGIC, memory_order_release);
}

int pw_header_validate(const void *base, Py_ssize_t size, uint32_t kind, const char *what)
{
    const struct pw_header *h = base;
    if (size < (Py_ssize_t)sizeof *h)
        return pw_segment_error("%s is not a procwire segment: %zd bytes is shorter than "
                                "the %zu-byte header", what, size, sizeof *h);
    uint64_t magic = atomic_load_explicit((_Atomic uint64_t *)&h->magic, memory_order_acquire);
    if (magic == 0)
        return pw_segment_error("%s is not initialised: its creator has not finished "
                                "creating it, or died while doing so", what);
    if (magic != PW_MAGIC) {
        char hex[24]; /* PyUnicode_FromFormat has no %llx before Python 3.12 */
        snprintf(hex, sizeof hex, "0x%016llx", (unsigned long long)magic);
        return pw_segment_error("%s is not a procwire segment (bad magic number %s)", what,
                                hex);
    }
    if (h->version != PW_LAYOUT_VERSION)
        return pw_segment_error("%s has layout version %u, but this procwire reads "
                                "version %u: use the same procwire version in every "
                                "process", what, h->version, PW_LAYOUT_VERSION);
    if (h->kind == 0 || h->kind >= PW_KIND_MAX_)
        return pw_segment_error("%s has an invalid object kind %u", what, h->kind);
    if (kind && h->kind != kind)
        return pw_segment_error("%s is a %s, not a %s", what, pw_kind_name(h->kind),
                                pw_kind_name(kind));
    if (h->total_size != (uint64_t)size)
        return pw_segment_error("%s is truncated or corrupt: its header says %llu bytes "
                                "but %zd are mapped", what,
                                (unsigned long long)h->total_size, size);
    if (h->header_size > (uint64_t)size - sizeof *h || h->data_offset > (uint64_t)size ||
        h->data_offset < sizeof *h + h->header_size)
        return pw_segment_error("%s is corrupt: header size %u or data offset %llu does "
                                "not fit its %zd bytes", what, h->header_size,
                                (unsigned long long)h->data_offset, size);
    return 0;
}

/* _core.header_info(buffer) -> dict: the validated common header. */
static PyObject *header_info(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = NULL;
    if (pw_header_validate(view.buf, view.len, 0, "the segment") == 0) {
        const struct pw_header *h = view.buf;
        result = Py_BuildValue("{s:s,s:I,s:I,s:K,s:I,s:K,s:K}", "kind", pw_kind_name(h->kind),
                               "kind_id", h->kind, "version", h->version, "total_size",
                               (unsigned long long)h->total_size, "creator_pid", h->creator_pid,
                               "created_ns", (unsigned long long)h->created_ns,
                               "data_offset", (unsigned long long)h->data_offset);
    }
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef segment_methods[] = {
    {"header_info", header_info, METH_O,
     "header_info(buffer) -> dict\n\nValidate a segment's common header and describe it. "
     "Raises SegmentError for anything that is not a whole, initialised procwire segment."},
    {NULL, NULL, 0, NULL},
};

int pw_segment_register(PyObject *module)
{
    if (PyModule_AddFunctions(module, segment_methods) < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "HEADER_SIZE", sizeof(struct pw_header)) < 0 ||
        PyModule_AddIntConstant(module, "LAYOUT_VERSION", PW_LAYOUT_VERSION) < 0)
        return -1;
    for (uint32_t k = 1; k < sizeof kind_names / sizeof *kind_names; k++) {
        char name[48];
        const char *n = kind_names[k];
        int len = snprintf(name, sizeof name, "KIND_%s", n);
        for (int i = 5; i < len; i++)
            name[i] = (char)(name[i] >= 'a' && name[i] <= 'z' ? name[i] - 32 : name[i]);
        if (PyModule_AddIntConstant(module, name, k) < 0)
            return -1;
    }
    return 0;
}
