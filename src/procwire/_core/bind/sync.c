/*
 * sync.c -- _core.Lock, Semaphore, Event and Condition: the native bases of
 * procwire.sync's classes (its Barrier is Python over a Condition), on one
 * native base, _core.SyncBase (_counters, _close, _display).
 *
 * Every object maps one segment (or, for a lock inside a Value, Array or
 * Condition, part of one) and keeps its state in the structs of layout.h.
 * Python creates the segment, lays it out with _core.segment_init()
 * (segment.c), and then opens it with the type's constructor, which
 * validates it: creating and attaching share one path.
 *
 * Locks are robust pthread mutexes (lib/mutex.c). Semaphores, events and
 * conditions are futex words, waited on with pw_wait_until (lib/wait.c),
 * which sleeps in slices so that a signal delivered to another thread of the
 * process still reaches PyErr_CheckSignals promptly.
 */
#include "core.h"

#include <errno.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>


/* ------------------------------------------------------------ thread ids */

/* The calling thread's kernel tid, cached; a forked child resets the cache
 * (pthread_atfork), as the forking thread gets a new tid there. Initial-exec:
 * read straight off the thread pointer, without the __tls_get_addr() call a
 * dlopen()ed module's TLS otherwise costs on every release (4 bytes of
 * glibc's static TLS reserve for dlopen()ed modules). */
static _Thread_local pid_t cached_tid __attribute__((tls_model("initial-exec")));

/*
 * A random id of this process, written into a lock by its holder. A tid is
 * unique only inside one PID namespace: processes in two containers sharing
 * /dev/shm both have a thread 1, and glibc, which knows only the tid, would
 * take the other's lock for ours. "This thread holds it" is therefore the tid
 * AND this id. A forked child draws a new one.
 */
static uint64_t proc_id;
static uint64_t hold_serial; /* GIL-protected */

static void new_proc_id(void)
{
    uint64_t v = 0;
    if (syscall(SYS_getrandom, &v, sizeof v, 0) != (long)sizeof v || v == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        v = ((uint64_t)getpid() << 32) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^
            (uint64_t)(uintptr_t)&v;
    }
    proc_id = v ? v : 1;
}

static void reset_tid(void)
{
    cached_tid = 0;
    new_proc_id();
}

static inline pid_t my_tid(void)
{
    if (!cached_tid)
        cached_tid = (pid_t)syscall(SYS_gettid);
    return cached_tid;
}

/* ------------------------------------------------------- common object */

typedef struct {
    PwObject base;    /* the mapping, its name, the guard against a concurrent close */
    pw_spinner spin;  /* adaptive spin before sleeping */
    void *p;          /* the kind's struct inside the mapping (a Lock's pw_lock) */
    uint32_t kind;    /* p's kind (a Lock's: PW_KIND_LOCK, wherever it lives) */
} SyncObject;

static void sync_release(PwObject *o)
{
    ((SyncObject *)o)->p = NULL;
    pw_object_unmap(o);
}

static const pw_object_ops sync_ops = {sync_release, NULL};

static void Sync_dealloc(SyncObject *self)
{
    pw_object_dealloc(&self->base);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

#define check_open(self) pw_object_check_open(&(self)->base)
#define sync_enter(self) pw_object_enter(&(self)->base)
#define sync_leave(self) pw_object_leave(&(self)->base)
#define closed_while_waiting(self) pw_object_closed_while_waiting(&(self)->base)

/* Gives the mapping back after a failed __init__: -1. */
static int sync_fail(SyncObject *self)
{
    sync_release(&self->base);
    return -1;
}

/*
 * Maps `buffer` for a sync object and validates it whole (header.c,
 * pw_segment_validate) as a segment of `kind` (0: of any kind): the struct
 * after the header, or NULL with SegmentError set.
 */
static void *sync_map(SyncObject *self, PyObject *buffer, PyObject *name, uint32_t kind)
{
    if (pw_object_map(&self->base, &sync_ops, buffer, name) < 0)
        return NULL;
    const char *what = PyUnicode_AsUTF8(name);
    const struct pw_header *h = self->base.view.buf;
    int rc = what ? pw_segment_validate(h, (uint64_t)self->base.view.len, kind, what) : PW_ERAISED;
    if (rc) {
        pw_raise(rc);
        sync_fail(self);
        return NULL;
    }
    pw_spinner_init(&self->spin);
    self->kind = h->kind;
    return self->p = (char *)self->base.view.buf + sizeof *h;
}

/* The __init__(buffer, name) of a type of one kind: its struct, or NULL. */
static void *sync_open(SyncObject *self, PyObject *args, PyObject *kwds, uint32_t kind)
{
    static char *kwlist[] = {"buffer", "name", NULL};
    PyObject *buffer, *name;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OU", kwlist, &buffer, &name))
        return NULL;
    return sync_map(self, buffer, name, kind);
}

/* A wait's outcome as the call's result: True (done), False (timed out), or
 * the error (closed by another thread, a signal handler's exception...). */
static PyObject *wait_result(SyncObject *self, int status)
{
    switch (status) {
    case PW_OK:
        Py_RETURN_TRUE;
    case PW_TIMEOUT:
        Py_RETURN_FALSE;
    case PW_CANCELLED:
        return closed_while_waiting(self);
    default:
        return pw_raise(status);
    }
}

/* What a wait's done() looks at: the kind's struct (sync.p), and its futex
 * word when the call began. */
struct watch {
    void *p;
    uint32_t start;
};

/* sync_wait's slow path: waits with the GIL released until done(ctx),
 * spinning first, then sleeping on `word`; the wait's result (wait_result). */
static __attribute__((noinline)) PyObject *
sync_sleep(SyncObject *self, int (*done)(void *), struct watch *ctx, struct pw_waiters *sleepers,
           _Atomic uint32_t *word, int64_t deadline)
{
    if (sync_enter(self) < 0)
        return NULL;
    pw_wait w = {.done = done, .ctx = ctx, .waiters = sleepers, .futex = word,
                 .mask = PW_FUTEX_ANY, .spin = &self->spin, .cancel = &self->base.guard.closed};
    PyObject *result = wait_result(self, pw_wait_until(&w, deadline));
    sync_leave(self);
    return result;
}

/*
 * The one waiting call of Semaphore.acquire and Event.wait, which differ only
 * in done(watch) and where the kind's sleepers and futex word are (offsets in
 * the kind's struct): parses (block=True,) timeout=None; True at once if
 * done(), False at once for a zero deadline; else sync_sleep(). Inlined, so
 * that each caller's fast path calls its done() directly.
 */
static inline __attribute__((always_inline)) PyObject *
sync_wait(SyncObject *self, const char *func, int with_block, PyObject *const *args,
          Py_ssize_t nargs, PyObject *kwnames, int (*done)(void *), size_t sleepers, size_t futex)
{
    int64_t deadline;
    if (pw_parse_deadline(func, args, nargs, kwnames, with_block, &deadline) < 0 ||
        check_open(self) < 0)
        return NULL;
    _Atomic uint32_t *word = (_Atomic uint32_t *)((char *)self->p + futex);
    struct watch ctx = {self->p, atomic_load_explicit(word, memory_order_acquire)};
    if (done(&ctx))
        Py_RETURN_TRUE;
    if (deadline == 0)
        Py_RETURN_FALSE;
    return sync_sleep(self, done, &ctx, (void *)((char *)self->p + sleepers), word, deadline);
}

/* _counters() -> dict: the live counters, read by inspect.c's one reader,
 * dead sleepers' slots freed first. */
static PyObject *Sync_counters(SyncObject *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    return pw_counters(self->kind, self->p, 1);
}

/* Idempotent. A call waiting in another thread leaves with an error within
 * one wait slice; the mapping goes when the last call in progress leaves. */
static PyObject *Sync_close(SyncObject *self, PyObject *unused)
{
    pw_object_close(&self->base);
    Py_RETURN_NONE;
}

static PyMethodDef SyncBase_methods[] = {
    PW_NOARGS("_counters", Sync_counters, "The live counters (procwire.stats reads them)."),
    PW_NOARGS("_close", Sync_close, "Release this handle's mapping (idempotent)."),
    PW_END_METHODS,
};

static PyGetSetDef SyncBase_getset[] = {
    {"_display", (getter)pw_object_get_name, NULL, "The name given at __init__.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SyncBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "procwire._core.SyncBase",
    .tp_basicsize = sizeof(SyncObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "What every synchronisation primitive's native type shares (not instantiable).",
    .tp_dealloc = (destructor)Sync_dealloc,
    .tp_methods = SyncBase_methods,
    .tp_getset = SyncBase_getset,
};

/* The type object of sync type Name on SyncBase: Name_init, Name_methods,
 * and the given struct, dealloc, getset and doc (its first line is the
 * constructor's text signature). */
#define PW_SYNC_TYPE(Name, Struct, dealloc, getset, doc)                       \
    static PyTypeObject Name##Type = {                                         \
        PyVarObject_HEAD_INIT(NULL, 0)                                         \
        .tp_name = "procwire._core." #Name, .tp_basicsize = sizeof(Struct),    \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, .tp_doc = doc,   \
        .tp_base = &SyncBaseType, .tp_new = PyType_GenericNew,                 \
        .tp_init = (initproc)Name##_init, .tp_dealloc = (destructor)dealloc,   \
        .tp_methods = Name##_methods, .tp_getset = getset,                     \
    }

/* ... for a type of one kind, opened by __init__(buffer, name). */
#define PW_SYNC_KIND_TYPE(Name, kind, doc)                                     \
    static int Name##_init(SyncObject *self, PyObject *args, PyObject *kwds)   \
    {                                                                          \
        return sync_open(self, args, kwds, kind) ? 0 : -1;                     \
    }                                                                          \
    PW_SYNC_TYPE(Name, SyncObject, Sync_dealloc, NULL, doc)

/* A primitive with Name_acquire() and Name_release() (Self *self): its
 * context-manager methods, and its method-table rows, as multiprocessing's
 * (the signatures are its). */
#define PW_ENTER_EXIT(Name, Self)                                              \
    static PyObject *Name##_enter(Self *self, PyObject *unused)                \
    {                                                                          \
        return Name##_acquire(self, NULL, 0, NULL);                            \
    }                                                                          \
    static PyObject *Name##_exit(Self *self, PyObject *const *args, Py_ssize_t nargs) \
    {                                                                          \
        return Name##_release(self, NULL);                                     \
    }

#define PW_ACQUIRABLE_METHODS(Name, doc)                                       \
    PW_KWARGS("acquire", Name##_acquire, "block=True, timeout=None", doc),     \
    PW_NOARGS("release", Name##_release, "Release it once."),                  \
    PW_NOARGS("__enter__", Name##_enter, "acquire()."),                        \
    {"__exit__", (PyCFunction)(void (*)(void))Name##_exit, METH_FASTCALL,      \
     "__exit__($self, /, *args)\n--\n\nrelease()."}

/* ============================================================== Lock */

/*
 * Who holds a lock, per handle. A process may open one named lock several
 * times (attach() twice, a pickled copy); each opening is a handle. As in
 * multiprocessing, acquisitions are counted per handle: `mine` counts those
 * made through this handle in the current hold (identified by the hold serial
 * the holder writes into the lock), so that closing or collecting a handle
 * releases only what was acquired through it.
 */
typedef struct {
    SyncObject sync;     /* sync.p: the pw_lock, in its own segment or a container's */
    uint32_t mine;       /* acquisitions through this handle in hold `hold` */
    uint64_t hold;       /* the hold serial those belong to                 */
    int locked_here;     /* this handle's mapping took the pthread mutex     */
} LockObject;

#define LOCK(self) ((struct pw_lock *)(self)->sync.p)

static int Lock_init(LockObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "name", "recursive", NULL};
    PyObject *buffer, *name;
    int recursive = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OU|$p:Lock", kwlist, &buffer, &name,
                                     &recursive))
        return -1;
    void *p = sync_map(&self->sync, buffer, name, 0);
    if (!p)
        return -1;
    /* A lock's own segment, or the RLock a Condition, Value or Array embeds. */
    struct pw_lock *l = p;
    uint32_t kind = self->sync.kind;
    if (kind == PW_KIND_CONDITION) {
        l = &((struct pw_cond *)p)->lock; /* (checked by pw_segment_validate) */
    } else if (kind == PW_KIND_VALUE || kind == PW_KIND_ARRAY) {
        struct pw_shared *s = p;
        if (s->lock_mode != PW_LOCKMODE_EMBEDDED) {
            pw_segment_error("%U has no lock of its own", name);
            return sync_fail(&self->sync);
        }
        l = &s->lock;
    } else if (kind != PW_KIND_LOCK && kind != PW_KIND_RLOCK) {
        pw_segment_error("%U is a %s, not a lock", name, pw_kind_name(kind));
        return sync_fail(&self->sync);
    }
    if (l->recursive != (uint32_t)recursive) {
        pw_segment_error("%U holds %s, not %s", name, l->recursive ? "an RLock" : "a Lock",
                         recursive ? "an RLock" : "a Lock");
        return sync_fail(&self->sync);
    }
    self->sync.p = l;
    self->sync.kind = PW_KIND_LOCK;
    self->mine = 0;
    self->hold = 0;
    self->locked_here = 0;
    return 0;
}

/* This thread of this process holds the mutex (through any handle). */
static inline int held_by_this_thread(struct pw_lock *l)
{
    return pw_mutex_holder(&l->mutex) == my_tid() && !pw_mutex_owner_died(&l->mutex) &&
           atomic_load_explicit(&l->holder_proc, memory_order_relaxed) == proc_id;
}

/* ... and acquired it through this handle. */
static inline int held_via(LockObject *self, struct pw_lock *l)
{
    return self->mine > 0 && held_by_this_thread(l) &&
           atomic_load_explicit(&l->holder_hold, memory_order_relaxed) == self->hold;
}

/* The pthread mutex was just taken through this handle: a new hold. */
static void took(LockObject *self, struct pw_lock *l)
{
    self->hold = ++hold_serial;
    self->mine = 1;
    self->locked_here = 1;
    atomic_store_explicit(&l->holder_hold, self->hold, memory_order_relaxed);
    atomic_store_explicit(&l->holder_proc, proc_id, memory_order_relaxed);
    atomic_store_explicit(&l->depth, 1, memory_order_relaxed);
}

/* Unlocks a mutex this thread holds, whatever the depth. 0 or an errno;
 * EUCLEAN if another process corrupted the mutex meanwhile (it is left
 * locked: glibc's unlock of a kind we did not create may abort). */
static int unlock_now(struct pw_lock *l)
{
    if (!pw_mutex_sane(&l->mutex))
        return EUCLEAN;
    atomic_store_explicit(&l->depth, 0, memory_order_relaxed);
    atomic_store_explicit(&l->holder_proc, 0, memory_order_relaxed);
    atomic_store_explicit(&l->holder_hold, 0, memory_order_relaxed);
    return pthread_mutex_unlock(&l->mutex);
}

/* Gives up n of this thread's acquisitions in the current hold (n <= this
 * handle's while the depth exceeds n): the depth drops by n, and when none
 * are left the mutex is unlocked (other handles of this thread may hold it
 * too: they keep it). A Lock's release() may come through a handle that did
 * not acquire it. 0, or unlock_now()'s errno. */
static int release_n(LockObject *self, struct pw_lock *l, uint32_t n)
{
    uint32_t d = atomic_load_explicit(&l->depth, memory_order_relaxed);
    if (d > n) {
        self->mine -= n;
        atomic_store_explicit(&l->depth, d - n, memory_order_relaxed);
        return 0;
    }
    self->mine = 0;
    return unlock_now(l);
}

/* Another live thread of this process holds the mutex through this handle. */
static pid_t other_thread_holds_via(LockObject *self, struct pw_lock *l)
{
    pid_t holder = pw_mutex_holder(&l->mutex);
    if (!holder || holder == my_tid() || self->mine == 0 || pw_mutex_owner_died(&l->mutex) ||
        atomic_load(&l->holder_proc) != proc_id || atomic_load(&l->holder_hold) != self->hold)
        return 0;
    char task[64];
    snprintf(task, sizeof task, "/proc/self/task/%d", (int)holder);
    return access(task, F_OK) == 0 ? holder : 0;
}

/*
 * Drops this object's view of the mapping. A robust mutex held by a thread
 * of this process sits on that thread's robust list, which glibc and the
 * kernel walk later: unmapping it would make them touch freed memory. So what
 * the calling thread acquired through this handle is released first (and
 * nothing acquired through another handle); close() of a lock another thread
 * of this process holds through this handle raises; and if such a lock is
 * garbage-collected (no thread can release it any more), its mapping is kept
 * for the life of the process. A call waiting in another thread leaves with
 * an error; the mapping goes when it has left.
 */
static int lock_drop(LockObject *self, int from_close)
{
    struct pw_lock *l = LOCK(self);
    if (l && self->sync.base.mapped && !self->sync.base.guard.closed) {
        pid_t other = other_thread_holds_via(self, l);
        if (other) {
            if (from_close) {
                PyErr_Format(PyExc_RuntimeError,
                             "%U is held by another thread of this process (tid %d); "
                             "release it there before closing it",
                             self->sync.base.name, (int)other);
                return -1;
            }
            self->sync.base.keep_mapping = 1; /* the view is deliberately never released */
        } else if (held_via(self, l)) {
            /* What this handle acquired in the current hold is given up (the
             * mutex is unlocked when no handle of this thread holds it any
             * more). If the mutex stays on this thread's robust list (its
             * unlock failed, or another handle of this thread holds it after
             * this mapping took it), the list's entry points into our view. */
            int shared = atomic_load_explicit(&l->depth, memory_order_relaxed) > self->mine;
            if (release_n(self, l, self->mine) != 0 || (shared && self->locked_here))
                self->sync.base.keep_mapping = 1;
        }
    }
    pw_object_close(&self->sync.base);
    return 0;
}

static void Lock_dealloc(LockObject *self)
{
    lock_drop(self, 0);
    Sync_dealloc(&self->sync);
}

static PyObject *Lock_close(LockObject *self, PyObject *unused)
{
    if (lock_drop(self, 1) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static inline struct pw_lock *lock_of(LockObject *self)
{
    return check_open(&self->sync) < 0 ? NULL : LOCK(self);
}

/* The mutex was taken (rc 0 or EOWNERDEAD) through this handle: True, or
 * an error with the mutex given back. */
static PyObject *acquired(LockObject *self, struct pw_lock *l, int owner_dead)
{
    if (owner_dead) {
        pthread_mutex_consistent(&l->mutex);
        atomic_fetch_add(&l->owner_deaths, 1);
        atomic_store(&l->inconsistent, 1);
    }
    took(self, l);
    /* Do not keep a lock through a handle that close() is taking away while
     * we waited, nor one we report failing to take (warnings are errors). */
    if (self->sync.base.guard.closed ||
        (owner_dead &&
         PyErr_WarnFormat(pw_get_state()->OwnerDiedWarning, 1,
                          "%U: a process died while holding this lock; it is yours now, but "
                          "what it protected may be half-updated. Repair it, then call "
                          "make_consistent()", self->sync.base.name) < 0)) {
        self->mine = 0;
        unlock_now(l);
        return PyErr_Occurred() ? NULL : closed_while_waiting(&self->sync);
    }
    Py_RETURN_TRUE;
}

/* pw_wait's done() for "until the lock word moves from `seen`". */
struct lock_watch {
    pthread_mutex_t *m;
    uint32_t seen;
};

static int lock_word_moved(void *ctx)
{
    struct lock_watch *w = ctx;
    return pw_mutex_word(w->m) != w->seen;
}

/*
 * The lock word names this tid. Either this thread holds the lock (only it
 * could release it, by returning from here: this waits out the deadline,
 * counted as blocked in acquire as every waiter), or a thread with the same
 * tid in another PID namespace does, and glibc (which answers EDEADLK) cannot
 * wait for it. Sleep on the lock word ourselves, flagging it so that the
 * holder's unlock wakes us, until it changes or the deadline.
 * Returns 0 to retry the lock, 1 on timeout, -1 with an exception set.
 */
static int wait_lock_word(LockObject *self, struct pw_lock *l, int64_t deadline)
{
    _Atomic uint32_t *word = (_Atomic uint32_t *)&l->mutex.__data.__lock;
    uint32_t w = atomic_load(word);
    if ((pid_t)(w & PW_MUTEX_TID_MASK) != my_tid() || (w & PW_MUTEX_OWNER_DIED))
        return 0;
    if (!(w & PW_MUTEX_WAITERS)) {
        uint32_t flagged = w | PW_MUTEX_WAITERS;
        if (!atomic_compare_exchange_strong(word, &w, flagged))
            return 0;
        w = flagged;
    }
    struct lock_watch m = {&l->mutex, w};
    pw_wait wt = {.done = lock_word_moved, .ctx = &m, .waiters = &l->sleepers, .futex = word,
                  .mask = PW_FUTEX_ANY, .cancel = &self->sync.base.guard.closed};
    int rc = pw_wait_until(&wt, deadline);
    return rc == PW_TIMEOUT ? 1 : rc < 0 ? pw_raise_int(rc) : 0;
}

/* Lock_acquire once its trylock answered rc (not 0 or EOWNERDEAD at first).
 * Not inlined: the uncontended acquire stays a small function. */
static __attribute__((noinline)) PyObject *lock_acquire_slow(LockObject *self, struct pw_lock *l, int rc,
                                   int64_t deadline)
{
    for (;;) {
        if (rc == 0 || rc == EOWNERDEAD)
            return acquired(self, l, rc == EOWNERDEAD);
        if (rc != EBUSY && rc != EDEADLK)
            return pw_raise(pw_fail_errno(rc));
        if (deadline == PW_FOREVER && held_by_this_thread(l)) {
            /* Procwire locks are released by their holder only. */
            PyErr_Format(PyExc_RuntimeError,
                         "%U: this thread already holds this Lock, so acquire() would "
                         "wait forever (use an RLock for re-entrant locking)",
                         self->sync.base.name);
            return NULL;
        }
        if (deadline == 0)
            Py_RETURN_FALSE;
        if (self->sync.base.guard.closed)
            return closed_while_waiting(&self->sync);
        if (rc == EDEADLK || pw_mutex_holder(&l->mutex) == my_tid()) {
            int r = wait_lock_word(self, l, deadline);
            if (r < 0)
                return NULL;
            if (r == 1)
                Py_RETURN_FALSE;
            rc = pthread_mutex_trylock(&l->mutex);
            continue;
        }
        /* Adaptive: a lock held for a few microseconds is cheaper to spin for
         * than to sleep on, when the holder runs on another CPU. Taking the
         * GIL back while holding the mutex is safe (core.h, rule 4). */
        rc = pw_mutex_spin(&l->mutex, &self->sync.spin, deadline);
        if (rc == 0 || rc == EOWNERDEAD || rc == EDEADLK)
            continue;
        atomic_fetch_add(&l->contended, 1);
        pw_sleeper sl; /* issue 9 #15: registered so a killed waiter is reaped */
        pw_sleeper_enter(&l->sleepers, &sl);
        int r = pw_mutex_lock(&l->mutex, deadline, &self->sync.base.guard.closed);
        pw_sleeper_leave(&sl);
        if (r == PW_OK || r == PW_OWNER_DIED) /* pw_mutex_lock made it consistent already */
            return acquired(self, l, r == PW_OWNER_DIED);
        /* Only EDEADLK from a same-tid holder in another PID namespace goes round again. */
        if (r != PW_EDEADLK || held_by_this_thread(l) || pw_mutex_holder(&l->mutex) != my_tid())
            return wait_result(&self->sync, r);
        rc = EDEADLK;
    }
}

static PyObject *Lock_acquire(LockObject *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    int64_t deadline;
    if (pw_parse_deadline("acquire", args, nargs, kwnames, 1, &deadline) < 0)
        return NULL;
    struct pw_lock *l = lock_of(self);
    if (!l)
        return NULL;
    if (!pw_mutex_sane(&l->mutex)) {
        int rc = pw_mutex_check(&l->mutex, PyUnicode_AsUTF8(self->sync.base.name));
        if (rc)
            return pw_raise(rc);
    }
    if (l->recursive && held_by_this_thread(l)) {
        if (l->depth == UINT32_MAX) {
            PyErr_SetString(PyExc_OverflowError, "RLock recursion too deep");
            return NULL;
        }
        uint64_t hold = atomic_load_explicit(&l->holder_hold, memory_order_relaxed);
        if (self->hold != hold) {
            /* Joining a hold another handle of this thread began. */
            self->hold = hold;
            self->mine = 0;
            self->locked_here = 0;
        }
        self->mine++;
        atomic_store_explicit(&l->depth, l->depth + 1, memory_order_relaxed);
        Py_RETURN_TRUE;
    }
    int rc = pthread_mutex_trylock(&l->mutex);
    if (rc == 0 || rc == EOWNERDEAD)
        return acquired(self, l, rc == EOWNERDEAD);
    if (sync_enter(&self->sync) < 0)
        return NULL;
    PyObject *result = lock_acquire_slow(self, l, rc, deadline);
    sync_leave(&self->sync);
    return result;
}

static PyObject *Lock_release(LockObject *self, PyObject *unused)
{
    struct pw_lock *l = lock_of(self);
    if (!l)
        return NULL;
    if (!held_by_this_thread(l) || (l->recursive && !held_via(self, l))) {
        pid_t holder = pw_mutex_holder(&l->mutex);
        if (l->recursive)
            PyErr_SetString(PyExc_AssertionError,
                            "attempt to release recursive lock not owned by thread");
        else if (holder == 0)
            PyErr_SetString(PyExc_ValueError, "semaphore or lock released too many times");
        else
            PyErr_Format(PyExc_RuntimeError,
                         "%U is held by thread %d, not by this thread: a procwire Lock can "
                         "only be released by the thread that acquired it (unlike "
                         "multiprocessing.Lock). To signal another process, use a "
                         "Semaphore or an Event", self->sync.base.name, (int)holder);
        return NULL;
    }
    int rc = release_n(self, l, 1); /* (a Lock's depth is 1) */
    if (rc)
        return pw_raise(pw_fail_errno(rc));
    Py_RETURN_NONE;
}

PW_ENTER_EXIT(Lock, LockObject)

/* As multiprocessing's SemLock._is_mine(): held by this thread through this handle. */
static PyObject *Lock_is_mine(LockObject *self, PyObject *unused)
{
    struct pw_lock *l = lock_of(self);
    return l ? PyBool_FromLong(held_via(self, l)) : NULL;
}

static PyObject *Lock_count(LockObject *self, PyObject *unused)
{
    struct pw_lock *l = lock_of(self);
    return l ? PyLong_FromUnsignedLong(held_via(self, l) ? (l->recursive ? self->mine : 1) : 0)
             : NULL;
}

/* _release_save() -> depth: releases what this handle holds (Condition.wait). */
static PyObject *Lock_release_save(LockObject *self, PyObject *unused)
{
    struct pw_lock *l = lock_of(self);
    if (!l)
        return NULL;
    if (!held_via(self, l)) {
        PyErr_SetString(PyExc_RuntimeError, "cannot release un-acquired lock");
        return NULL;
    }
    uint32_t saved = self->mine; /* 1 for a Lock */
    int rc = release_n(self, l, saved);
    return rc ? pw_raise(pw_fail_errno(rc)) : PyLong_FromUnsignedLong(saved);
}

/* _acquire_restore(depth): re-takes the lock, blocking, with that depth. */
static PyObject *Lock_acquire_restore(LockObject *self, PyObject *arg)
{
    unsigned long depth = PyLong_AsUnsignedLong(arg);
    if (depth == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    struct pw_lock *l = lock_of(self);
    if (!l)
        return NULL;
    PyObject *r = Lock_acquire(self, NULL, 0, NULL);
    if (!r)
        return NULL;
    Py_DECREF(r);
    if (depth > 1 && l->recursive) {
        uint32_t d = atomic_load_explicit(&l->depth, memory_order_relaxed);
        self->mine += (uint32_t)depth - 1;
        atomic_store_explicit(&l->depth, d + (uint32_t)depth - 1, memory_order_relaxed);
    }
    Py_RETURN_NONE;
}

static PyObject *Lock_make_consistent(LockObject *self, PyObject *unused)
{
    struct pw_lock *l = lock_of(self);
    if (!l)
        return NULL;
    if (!held_by_this_thread(l)) {
        PyErr_Format(PyExc_RuntimeError, "%U: make_consistent() must be called while holding "
                     "the lock, after repairing what it protects", self->sync.base.name);
        return NULL;
    }
    atomic_store(&l->inconsistent, 0);
    Py_RETURN_NONE;
}

static PyObject *Lock_get_owner_died(LockObject *self, void *closure)
{
    struct pw_lock *l = lock_of(self);
    return l ? PyBool_FromLong(atomic_load(&l->inconsistent) || pw_mutex_owner_died(&l->mutex))
             : NULL;
}

static PyMethodDef Lock_methods[] = {
    PW_ACQUIRABLE_METHODS(Lock, "Take the lock; False if the timeout passed first. Raises "
                          "OwnerDiedWarning (as a warning) if its holder died holding it."),
    PW_NOARGS("_is_mine", Lock_is_mine, "Held by this thread through this handle."),
    PW_NOARGS("_count", Lock_count, "This handle's recursion depth in this thread."),
    PW_NOARGS("_release_save", Lock_release_save,
              "Release what this handle holds; the depth to restore."),
    PW_ONEARG("_acquire_restore", Lock_acquire_restore, "depth",
              "Take the lock again, blocking, with that depth."),
    PW_NOARGS("make_consistent", Lock_make_consistent,
              "After an acquire that found the previous holder dead, and after repairing "
              "the state the lock protects: clear owner_died. Hold the lock."),
    PW_NOARGS("_close", Lock_close, "Release what this handle holds, then its mapping."),
    PW_END_METHODS,
};

static PyGetSetDef Lock_getset[] = {
    {"owner_died", (getter)Lock_get_owner_died, NULL,
     "True from an acquire() that found the previous holder dead until make_consistent().",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PW_SYNC_TYPE(Lock, LockObject, Lock_dealloc, Lock_getset,
             "Lock(buffer, name, *, recursive=False)\n--\n\n"
             "A robust lock in a mapped segment (an RLock if recursive).");

/* ========================================================= Semaphore */

/* Takes one count if there is one: 1 if taken (and counted). */
static int sem_trydown(void *ctx)
{
    struct pw_sem *s = ((struct watch *)ctx)->p;
    uint32_t v = atomic_load_explicit(&s->value, memory_order_relaxed);
    while (v > 0) {
        if (atomic_compare_exchange_weak(&s->value, &v, v - 1)) {
            atomic_fetch_add_explicit(&s->acquires, 1, memory_order_relaxed);
            return 1;
        }
    }
    return 0;
}

/* Sleeps on the count itself: release() moves it. */
static PyObject *Semaphore_acquire(SyncObject *self, PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames)
{
    return sync_wait(self, "acquire", 1, args, nargs, kwnames, sem_trydown,
                     offsetof(struct pw_sem, sleepers), offsetof(struct pw_sem, value));
}

static PyObject *Semaphore_release(SyncObject *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    struct pw_sem *s = self->p;
    uint32_t v = atomic_load_explicit(&s->value, memory_order_relaxed);
    do {
        if (v >= s->maxvalue) {
            if (s->bounded)
                PyErr_SetString(PyExc_ValueError, "semaphore or lock released too many times");
            else
                PyErr_SetString(PyExc_OverflowError, "semaphore value would exceed 2**31-1");
            return NULL;
        }
    } while (!atomic_compare_exchange_weak(&s->value, &v, v + 1));
    atomic_fetch_add_explicit(&s->releases, 1, memory_order_relaxed);
    if (pw_waiters_any(&s->sleepers))
        pw_waiters_wake(&s->sleepers, &s->value, 1, PW_FUTEX_ANY);
    Py_RETURN_NONE;
}

PW_ENTER_EXIT(Semaphore, SyncObject)

static PyObject *Semaphore_get_value(SyncObject *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    return PyLong_FromUnsignedLong(atomic_load(&((struct pw_sem *)self->p)->value));
}

static PyMethodDef Semaphore_methods[] = {
    PW_ACQUIRABLE_METHODS(Semaphore, "Take one count; False if the timeout passed first."),
    PW_NOARGS("get_value", Semaphore_get_value, "The count now."),
    PW_END_METHODS,
};

PW_SYNC_KIND_TYPE(Semaphore, PW_KIND_SEMAPHORE,
                  "Semaphore(buffer, name)\n--\n\nA futex semaphore in a mapped segment.");

/* ============================================================= Event */

static PyObject *Event_is_set(SyncObject *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    struct pw_event *e = self->p;
    return PyBool_FromLong(atomic_load_explicit(&e->state, memory_order_acquire) & 1);
}

static PyObject *Event_set(SyncObject *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    struct pw_event *e = self->p;
    uint32_t s = atomic_load(&e->state);
    do {
        if (s & 1)
            Py_RETURN_NONE;
    } while (!atomic_compare_exchange_weak(&e->state, &s, (s + 2) | 1));
    atomic_fetch_add_explicit(&e->sets, 1, memory_order_relaxed);
    if (pw_waiters_any(&e->sleepers))
        pw_waiters_wake(&e->sleepers, &e->state, INT32_MAX, PW_FUTEX_ANY);
    Py_RETURN_NONE;
}

static PyObject *Event_clear(SyncObject *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    atomic_fetch_and(&((struct pw_event *)self->p)->state, ~1u);
    Py_RETURN_NONE;
}

/* The flag is set, or a set() came since the wait began: a set() changes
 * the generation bits even if a clear() follows at once. */
static int event_happened(void *ctx)
{
    struct watch *w = ctx;
    uint32_t s = atomic_load_explicit(&((struct pw_event *)w->p)->state, memory_order_acquire);
    return (s & 1) || (s >> 1) != (w->start >> 1);
}

static PyObject *Event_wait(SyncObject *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    return sync_wait(self, "wait", 0, args, nargs, kwnames, event_happened,
                     offsetof(struct pw_event, sleepers), offsetof(struct pw_event, state));
}

static PyMethodDef Event_methods[] = {
    PW_NOARGS("is_set", Event_is_set, "True if the flag is set."),
    PW_NOARGS("set", Event_set, "Set the flag and wake every waiter."),
    PW_NOARGS("clear", Event_clear, "Clear the flag."),
    PW_KWARGS("wait", Event_wait, "timeout=None", "Wait until the flag is set (or was set "
              "while waiting); False if the timeout passed first."),
    PW_END_METHODS,
};

PW_SYNC_KIND_TYPE(Event, PW_KIND_EVENT,
                  "Event(buffer, name)\n--\n\nA futex event in a mapped segment.");

/* ========================================================= Condition */

/*
 * The `wake` word (layout.h), for waiters without a registry slot only:
 * (waiting << 32) | granted. Every change is one compare-and-swap, so a
 * notify and a waiter that times out never both count the same waiter.
 */
#define COND_ONE_WAITING (1ULL << 32)
/* The bit of the futex bitset for slotless waiters (they wait on every bit). */
#define COND_SLOTLESS_BIT (1u << PW_WAIT_SLOTS)
_Static_assert(PW_WAIT_SLOTS < 32, "one futex bitset bit per registry slot");

/* Takes one grant if there is one. 1 if taken. */
static int cond_take_grant(struct pw_cond *c)
{
    uint64_t w = atomic_load(&c->wake);
    while ((uint32_t)w > 0) {
        if (atomic_compare_exchange_weak(&c->wake, &w, w - 1))
            return 1;
    }
    return 0;
}

/*
 * A slotless waiter leaves without having taken a grant (timeout, error,
 * close). If no notify came since it began (seq == seq0) it was not notified:
 * it leaves the waiting count. Otherwise it may have been one of those
 * notified: it takes a grant if one is left (and counts as woken), else it
 * leaves the waiting count. Returns 1 if it took a grant.
 */
static int cond_give_up(struct pw_cond *c, uint32_t seq0)
{
    uint64_t w = atomic_load(&c->wake);
    for (;;) {
        uint64_t waiting = w >> 32, granted = (uint32_t)w, next;
        int took;
        if (granted > 0 && (atomic_load(&c->seq) != seq0 || waiting == 0)) {
            next = w - 1;
            took = 1;
        } else if (waiting > 0) {
            next = w - COND_ONE_WAITING;
            took = 0;
        } else {
            return 0; /* nothing counts us: a corrupt or reset segment */
        }
        if (atomic_compare_exchange_weak(&c->wake, &w, next))
            return took;
    }
}

/* _prepare_wait() -> int: registers this thread as a waiter (lock held).
 * Bits 31..0: seq now; bits 32..: its registry slot + 1 (0: slotless). */
static PyObject *Condition_prepare_wait(SyncObject *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    struct pw_cond *c = self->p;
    /* issue 9 #15: registered so a killed waiter is reaped, and with it its
     * notify state (which counts only while the slot is taken). */
    pw_sleeper sl;
    pw_sleeper_enter(&c->sleepers, &sl);
    if (sl.slot >= 0)
        atomic_store(&c->state[sl.slot], PW_COND_WAITING);
    else
        atomic_fetch_add(&c->wake, COND_ONE_WAITING);
    return PyLong_FromUnsignedLongLong((unsigned long long)(sl.slot + 1) << 32 |
                                       atomic_load(&c->seq));
}

/* pw_wait's done() for Condition._sleep: this waiter was notified. */
struct cond_wait {
    struct pw_cond *c;
    int slot;      /* its registry slot, or -1: slotless */
    uint32_t seq0; /* seq at _prepare_wait() */
};

static int cond_notified(void *ctx)
{
    struct cond_wait *w = ctx;
    /* (pw_wait_until read seq before calling: a notify marks, then bumps seq) */
    if (w->slot >= 0)
        return atomic_load(&w->c->state[w->slot]) == PW_COND_NOTIFIED;
    return atomic_load(&w->c->seq) != w->seq0 && cond_take_grant(w->c);
}

/* _sleep(seq, timeout) -> bool: after _prepare_wait() and releasing the lock,
 * wait for a notify. False on timeout. Always unregisters the waiter.
 * Only a notify that came after _prepare_wait() wakes it, and each notify(n)
 * wakes at most n waiters: a registered waiter returns True only if a notify
 * marked it, a slotless one only if it took one of a notify's grants. */
static PyObject *Condition_sleep(SyncObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_sleep(seq, timeout)");
        return NULL;
    }
    if (sync_enter(self) < 0)
        return NULL;
    struct pw_cond *c = self->p;
    unsigned long seq = PyLong_AsUnsignedLong(args[0]);
    int seq_ok = !(seq == (unsigned long)-1 && PyErr_Occurred());
    pw_sleeper sl;
    pw_sleeper_resume(&c->sleepers, &sl, seq_ok ? (int)(seq >> 32) - 1 : -1);
    /* The registration is kept from _prepare_wait() to here (no re-claiming
     * of another slot, as pw_sleeper_wait would): state[slot] is ours. */
    int slot = sl.slot;
    struct cond_wait cw = {c, slot, (uint32_t)seq};
    pw_wait w = {.done = cond_notified, .ctx = &cw, .waiters = &c->sleepers, .futex = &c->seq,
                 .mask = slot >= 0 ? 1u << slot : PW_FUTEX_ANY, .held = &sl,
                 .cancel = &self->base.guard.closed};
    int64_t deadline = 0;
    int r = seq_ok && pw_deadline_from(1, args[1], &deadline) == 0 ? pw_wait_until(&w, deadline)
                                                                   : PW_ERAISED;
    if (slot >= 0) {
        /* One exchange: either a notify marked us first (we count as woken:
         * "notified just as the timeout passed"), or it will not find us. */
        if (atomic_exchange(&c->state[slot], 0) == PW_COND_NOTIFIED && r == PW_TIMEOUT)
            r = PW_OK;
    } else if (seq_ok && r != PW_OK && cond_give_up(c, (uint32_t)seq) && r == PW_TIMEOUT) {
        r = PW_OK; /* notified just as the timeout passed */
    }
    pw_sleeper_leave(&sl);
    PyObject *result = wait_result(self, r);
    sync_leave(self);
    return result;
}

/* Marks slot i's waiter notified if it still waits. 1 if marked. */
static int cond_mark(struct pw_cond *c, int i)
{
    uint32_t expected = PW_COND_WAITING;
    return atomic_compare_exchange_strong(&c->state[i], &expected, PW_COND_NOTIFIED);
}

/* _notify(n): wake up to n waiters (lock held). */
static PyObject *Condition_notify(SyncObject *self, PyObject *arg)
{
    Py_ssize_t n;
    if (!PyArg_Parse(arg, "n:_notify", &n) || check_open(self) < 0)
        return NULL;
    struct pw_cond *c = self->p;
    if (n <= 0 || !pw_waiters_any(&c->sleepers))
        Py_RETURN_NONE;
    /* Registered waiters not yet notified. The lock keeps new ones out. The
     * scan starts at a slot that moves with every notify, so that repeated
     * notify(1)s do not always favour the same slots. */
    int waiting[PW_WAIT_SLOTS], k = 0;
    unsigned first = atomic_load(&c->seq);
    for (unsigned j = 0; j < PW_WAIT_SLOTS; j++) {
        int i = (int)((first + j) % PW_WAIT_SLOTS);
        if (atomic_load(&c->state[i]) == PW_COND_WAITING && atomic_load(&c->sleepers.slot[i]))
            waiting[k++] = i;
    }
    uint32_t bits = 0;
    Py_ssize_t m = 0;
    /* With a choice to make, a killed waiter must not take a live one's
     * wake-up: check (and reap) the process of each waiter about to be
     * marked, unless it is this one. Without a choice, all are marked, and
     * a dead one's mark is simply never taken. */
    int choose = k > n;
    pid_t me = getpid();
    for (int j = 0; j < k && m < n; j++) {
        int i = waiting[j];
        if (choose && pw_waiters_slot_pid(&c->sleepers, i) != me &&
            pw_waiters_slot_dead(&c->sleepers, i))
            continue;
        if (cond_mark(c, i)) {
            bits |= 1u << i;
            m++;
        }
    }
    if (m < n) {
        /* Slotless waiters (more than PW_WAIT_SLOTS at once): grants. */
        uint64_t w = atomic_load(&c->wake), g;
        do {
            uint64_t left = (uint64_t)(n - m), slotless = w >> 32;
            g = left < slotless ? left : slotless;
            if (g == 0)
                break;
        } while (!atomic_compare_exchange_weak(&c->wake, &w, w - g * COND_ONE_WAITING + g));
        if (g) {
            bits |= COND_SLOTLESS_BIT;
            m += (Py_ssize_t)g;
        }
    }
    if (m == 0)
        Py_RETURN_NONE;
    /* The marks are visible before seq moves: a waiter that sees the new
     * seq finds its mark. */
    atomic_fetch_add(&c->seq, 1);
    atomic_fetch_add_explicit(&c->notifies, 1, memory_order_relaxed);
    /* Exactly the marked waiters (and every slotless one, which re-checks). */
    pw_waiters_wake(&c->sleepers, &c->seq, INT32_MAX, bits);
    Py_RETURN_NONE;
}

static PyMethodDef Condition_methods[] = {
    PW_NOARGS("_prepare_wait", Condition_prepare_wait,
              "Register this thread as a waiter (lock held); the token _sleep() takes."),
    PW_POSARGS("_sleep", Condition_sleep, "seq, timeout",
               "After _prepare_wait() and releasing the lock: wait for a notify; False on "
               "timeout."),
    PW_ONEARG("_notify", Condition_notify, "n", "Wake up to n waiters (lock held)."),
    PW_END_METHODS,
};

PW_SYNC_KIND_TYPE(Condition, PW_KIND_CONDITION,
                  "Condition(buffer, name)\n--\n\nA futex condition variable in a mapped "
                  "segment.");

/* ====================================================== registration */

int pw_sync_register(PyObject *module)
{
    static int atfork_done;
    if (!proc_id)
        new_proc_id();
    if (!atfork_done) {
        if (pthread_atfork(NULL, NULL, reset_tid) != 0) {
            PyErr_SetString(PyExc_RuntimeError, "pthread_atfork failed");
            return -1;
        }
        atfork_done = 1;
    }
    PyTypeObject *types[] = {&SyncBaseType, &LockType, &SemaphoreType, &EventType,
                             &ConditionType};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        if (pw_add_type(module, types[i], strrchr(types[i]->tp_name, '.') + 1) < 0)
            return -1;
    return 0;
}
