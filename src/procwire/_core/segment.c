/*
 * segment.c -- the common header of every segment: initialise, publish,
 * validate, and describe it for `procwire ls`.
 *
 * Naming, creating, mapping and unlinking segments is policy and lives in
 * procwire/_segment.py; this file only reads and writes the header bytes.
 */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The magic number the SIGBUS guard (below) writes into a named segment
 * whose file was truncated under it: attachers then get a clear error. */
#define PW_MAGIC_LOST 0x54534f4c45524957ULL /* "WIRELOST" */

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
    if (magic == PW_MAGIC_LOST)
        return pw_segment_error("%s was truncated while in use (its file in the shared-memory "
                                "directory shrank under the processes using it): its contents "
                                "are lost. Remove it (`procwire rm`) and create it again", what);
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

/* ------------------------------------------------------------ SIGBUS guard
 *
 * A named segment is a file in a tmpfs that any process of its user can
 * truncate (`truncate -s 0 /dev/shm/procwire.x`). The kernel then takes the
 * pages away from every mapping, and the next access to them raises SIGBUS,
 * which kills the process. Nothing can forbid the truncation (seals exist
 * for memfds only), so each process registers its mappings of named segments
 * here, and a SIGBUS handler repairs a fault inside one of them:
 *
 *  - it gives the file its size back (ftruncate on a descriptor kept for this
 *    purpose, async-signal-safe), so that every process keeps sharing the
 *    same, now zeroed, pages, and marks the segment lost with a magic number
 *    that makes every later attach fail with a clear SegmentError;
 *  - if the file has its size but the page cannot be had (a full tmpfs), it
 *    maps a private zeroed page at the faulting address.
 *
 * Either way the faulting instruction is simply re-executed, on valid memory:
 * no longjmp, no interpreter state touched. A SIGBUS anywhere else goes to
 * the handler that was there before (faulthandler, a sanitizer, or the
 * default action, which still kills the process).
 */
#define GUARD_SLOTS 1024

struct guard_slot {
    _Atomic uintptr_t start;  /* 0 free, 1 being set up, else the mapping */
    _Atomic uintptr_t len;
    _Atomic int fd;           /* the segment's file, or -1 */
    _Atomic int lost;         /* a fault was repaired in it */
};

struct guard_chunk {
    struct guard_slot slot[GUARD_SLOTS];
    struct guard_chunk *_Atomic next;
};

static struct guard_chunk guard_first;
static struct sigaction guard_old;
static long guard_page;

static int guard_repair(struct guard_slot *g, uintptr_t addr)
{
    uintptr_t start = atomic_load(&g->start), len = atomic_load(&g->len);
    int fd = atomic_load(&g->fd);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && (uint64_t)st.st_size < len &&
        ftruncate(fd, (off_t)len) == 0) {
        atomic_store(&g->lost, 1);
        /* Claim the pages (the tmpfs may be full) before writing the mark. */
        if (fallocate(fd, 0, 0, (off_t)len) == 0 && len >= sizeof(struct pw_header))
            atomic_store(&((struct pw_header *)start)->magic, PW_MAGIC_LOST);
        return 1;
    }
    void *page = (void *)(addr & ~(uintptr_t)(guard_page - 1));
    if (mmap(page, (size_t)guard_page, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED) {
        atomic_store(&g->lost, 1);
        return 1;
    }
    return 0;
}

static void guard_handler(int sig, siginfo_t *si, void *uc)
{
    int saved = errno;
    if (si && si->si_code > 0) { /* a fault, not a kill() */
        uintptr_t a = (uintptr_t)si->si_addr;
        for (struct guard_chunk *c = &guard_first; c; c = atomic_load(&c->next)) {
            for (int i = 0; i < GUARD_SLOTS; i++) {
                struct guard_slot *g = &c->slot[i];
                uintptr_t s = atomic_load(&g->start);
                if (s > 1 && a >= s && a - s < atomic_load(&g->len) && guard_repair(g, a)) {
                    errno = saved;
                    return;
                }
            }
        }
    }
    /* Not ours: what was there before. */
    if ((guard_old.sa_flags & SA_SIGINFO) && guard_old.sa_sigaction) {
        guard_old.sa_sigaction(sig, si, uc);
    } else if (guard_old.sa_handler != SIG_DFL && guard_old.sa_handler != SIG_IGN) {
        guard_old.sa_handler(sig);
    } else {
        /* The default action: a fault recurs when we return; a kill() must
         * be delivered again once this handler has returned. */
        sigaction(sig, &guard_old, NULL);
        if (!si || si->si_code <= 0)
            raise(sig);
    }
    errno = saved;
}

/* Installs the handler, chaining to whatever is there now, unless it is
 * already ours (faulthandler or a user may have replaced it since). */
static int guard_install(void)
{
    struct sigaction cur, sa;
    if (sigaction(SIGBUS, NULL, &cur) < 0)
        return -1;
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == guard_handler)
        return 0;
    if (!guard_page)
        guard_page = sysconf(_SC_PAGESIZE);
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = guard_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    guard_old = cur;
    return sigaction(SIGBUS, &sa, NULL);
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
    uintptr_t start = (uintptr_t)view.buf, len = (uintptr_t)view.len;
    PyBuffer_Release(&view); /* the caller keeps the mapping while registered */
    if (guard_install() < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    struct guard_chunk *c = &guard_first;
    for (;;) {
        for (int i = 0; i < GUARD_SLOTS; i++) {
            struct guard_slot *g = &c->slot[i];
            uintptr_t expected = 0;
            if (atomic_compare_exchange_strong(&g->start, &expected, 1)) {
                atomic_store(&g->len, len);
                atomic_store(&g->fd, fd);
                atomic_store(&g->lost, 0);
                atomic_store(&g->start, start); /* now the handler sees it */
                return PyLong_FromVoidPtr(g);
            }
        }
        struct guard_chunk *next = atomic_load(&c->next);
        if (!next) {
            /* Never freed: the handler may walk it at any time. */
            void *m = mmap(NULL, sizeof *next, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (m == MAP_FAILED)
                return PyErr_SetFromErrno(PyExc_OSError);
            struct guard_chunk *fresh = m, *none = NULL;
            if (!atomic_compare_exchange_strong(&c->next, &none, fresh)) {
                munmap(m, sizeof *next);
                fresh = none;
            }
            next = fresh;
        }
        c = next;
    }
}

static struct guard_slot *guard_slot_of(PyObject *token)
{
    struct guard_slot *g = PyLong_AsVoidPtr(token);
    if (!g && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "not a guard token");
    return g;
}

/* _core.unguard_mapping(token) -> bool: stop protecting; whether it was lost. */
static PyObject *unguard_mapping(PyObject *self, PyObject *token)
{
    struct guard_slot *g = guard_slot_of(token);
    if (!g)
        return NULL;
    int lost = atomic_load(&g->lost);
    atomic_store(&g->start, 1);
    atomic_store(&g->fd, -1);
    atomic_store(&g->len, 0);
    atomic_store(&g->start, 0);
    return PyBool_FromLong(lost);
}

/* _core.mapping_lost(token) -> bool: a truncation was repaired in it. */
static PyObject *mapping_lost(PyObject *self, PyObject *token)
{
    struct guard_slot *g = guard_slot_of(token);
    if (!g)
        return NULL;
    return PyBool_FromLong(atomic_load(&g->lost));
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
    {"guard_mapping", guard_mapping, METH_VARARGS,
     "guard_mapping(buffer, fd) -> token\n\nRepair SIGBUS faults in this mapping of a named "
     "segment whose file `fd` gets truncated, instead of dying. The buffer must stay mapped "
     "and fd open until unguard_mapping(token)."},
    {"unguard_mapping", unguard_mapping, METH_O,
     "unguard_mapping(token) -> bool\n\nStop guarding; True if a truncation was repaired."},
    {"mapping_lost", mapping_lost, METH_O,
     "mapping_lost(token) -> bool\n\nTrue once a truncation of the segment was repaired."},
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
