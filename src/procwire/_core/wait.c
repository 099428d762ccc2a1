/*
 * wait.c -- deadlines, futex sleeps and bounded spinning.
 *
 * Deadlines are absolute CLOCK_MONOTONIC nanoseconds, so a wall-clock jump
 * never shortens or stretches a timeout (multiprocessing uses gettimeofday).
 */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <linux/futex.h>
#include <math.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int64_t pw_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int pw_deadline_from(int block, PyObject *timeout, int64_t *deadline)
{
    if (!block) {
        *deadline = 0; /* already passed: try once */
        return 0;
    }
    if (timeout == NULL || timeout == Py_None) {
        *deadline = PW_FOREVER;
        return 0;
    }
    double seconds = PyFloat_AsDouble(timeout);
    if (seconds == -1.0 && PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError,
                     "timeout must be a number of seconds or None, not %.100s",
                     Py_TYPE(timeout)->tp_name);
        return -1;
    }
    if (isnan(seconds)) {
        PyErr_SetString(PyExc_ValueError, "timeout must be a number of seconds, not NaN");
        return -1;
    }
    if (seconds <= 0) {
        *deadline = 0;
        return 0;
    }
    int64_t now = pw_now_ns();
    double ns = seconds * 1e9;
    *deadline = ns >= (double)(PW_FOREVER - now) ? PW_FOREVER : now + (int64_t)ns;
    return 0;
}

int pw_futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t deadline)
{
    return pw_futex_wait_mask(word, expected, deadline, FUTEX_BITSET_MATCH_ANY);
}

int pw_futex_wait_mask(_Atomic uint32_t *word, uint32_t expected, int64_t deadline,
                       uint32_t mask)
{
    struct timespec ts, *tsp = NULL;
    if (deadline != PW_FOREVER) {
        if (pw_now_ns() >= deadline)
            return 1;
        /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline. */
        ts.tv_sec = deadline / 1000000000LL;
        ts.tv_nsec = deadline % 1000000000LL;
        tsp = &ts;
    }
    long rc;
    int err;
    Py_BEGIN_ALLOW_THREADS
    rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_BITSET, expected, tsp, NULL, mask);
    err = errno;
    Py_END_ALLOW_THREADS
    if (rc == 0)
        return 0;
    switch (err) {
    case EAGAIN: /* the word had already changed */
        return 0;
    case ETIMEDOUT:
        return 1;
    case EINTR:
        /* A handler that did not raise lets the caller re-check its
         * condition, which may have changed meanwhile. */
        return PyErr_CheckSignals() < 0 ? -1 : 0;
    default:
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
}

int pw_futex_wake(_Atomic uint32_t *word, int n)
{
    /* Shared futexes (no FUTEX_PRIVATE_FLAG): the word lives in a MAP_SHARED
     * segment, and sleeper and waker are different processes. */
    long woke = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, n, NULL, NULL, 0);
    return woke > 0 ? (int)woke : 0;
}

/* ------------------------------------------------------------- sleepers */

/*
 * Who sleeps: see struct pw_waiters in layout.h. Everything here runs on the
 * slow path only (a thread about to make a futex system call, a waker whose
 * wake-up found nobody, statistics()), so reading /proc is affordable.
 */

#define ID_NS(id) ((uint32_t)((id) >> 54))
#define ID_PID(id) ((pid_t)(((id) >> 32) & 0x3fffff))
#define ID_START(id) ((uint32_t)(id))

/* Reads /proc/<pid>/stat (pid 0: self): its state letter and start time.
 * 1 read, 0 no such process, -1 unknown (no /proc, unreadable, unparsable). */
static int read_proc_stat(pid_t pid, char *state, uint64_t *start)
{
    char path[64], buf[1024];
    if (pid)
        snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    else
        snprintf(path, sizeof path, "/proc/self/stat");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT || errno == ESRCH ? 0 : -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    int err = errno;
    close(fd);
    if (n < 0)
        return err == ESRCH ? 0 : -1;
    buf[n] = 0;
    /* The command name may hold spaces and parentheses: skip to the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ' || !p[2])
        return -1;
    *state = p[2];
    p += 2; /* field 3 */
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p)
            return -1;
        p++;
    }
    char *end;
    *start = strtoull(p, &end, 10);
    return end == p ? -1 : 1;
}

/* This process's identity (layout.h), computed once per process (pid). */
static uint64_t self_identity(void)
{
    static _Atomic uint64_t cached_id;
    static _Atomic int cached_pid;
    pid_t pid = getpid();
    uint64_t id = atomic_load(&cached_id);
    if (id && atomic_load(&cached_pid) == pid)
        return id;
    uint32_t ns = 0;
    struct stat st;
    if (stat("/proc/self/ns/pid", &st) == 0)
        ns = (uint32_t)st.st_ino & 0x3ff;
    char state;
    uint64_t start = 0;
    if (read_proc_stat(0, &state, &start) != 1)
        start = 0; /* unknown: reconcilers fall back to kill(pid, 0) */
    id = (uint64_t)ns << 54 | ((uint64_t)pid & 0x3fffff) << 32 | (start & 0xffffffffu);
    atomic_store(&cached_id, id);
    atomic_store(&cached_pid, pid);
    return id;
}

/*
 * Is the process that wrote identity id certainly dead? Never guesses "dead":
 * a slot from another pid namespace, or one that cannot be checked, is
 * alive. Dead means: no such pid (in our namespace, which the namespace bits
 * say is the writer's), a zombie, or a pid now used by a process that started
 * at another time (pid reuse).
 */
static int sleeper_dead(uint64_t id, uint64_t self)
{
    pid_t pid = ID_PID(id);
    if (ID_NS(id) != ID_NS(self) || pid <= 0)
        return 0;
    if (pid == ID_PID(self)) /* us, or a dead process whose pid we now have */
        return ID_START(id) != ID_START(self) && ID_START(id) && ID_START(self);
    char state = 0;
    uint64_t start = 0;
    int r = read_proc_stat(pid, &state, &start);
    if (r == 1)
        return state == 'Z' || state == 'X' ||
               (ID_START(id) != 0 && (uint32_t)start != ID_START(id));
    if (r == 0 && ID_START(self) != 0)
        return 1; /* our /proc works and has no such process */
    return kill(pid, 0) < 0 && errno == ESRCH;
}

static int claim_slot(struct pw_waiters *w, uint64_t id)
{
    /* Start at a per-thread place, so that threads rarely race for a slot. */
    static _Thread_local unsigned first;
    if (!first)
        first = (unsigned)syscall(SYS_gettid) | 0x80000000u;
    for (int k = 0; k < PW_WAIT_SLOTS; k++) {
        int i = (int)((first + (unsigned)k) % PW_WAIT_SLOTS);
        uint64_t expected = 0;
        if (atomic_load_explicit(&w->slot[i], memory_order_relaxed) == 0 &&
            atomic_compare_exchange_strong(&w->slot[i], &expected, id))
            return i;
    }
    return -1;
}

void pw_sleeper_enter(struct pw_waiters *w, pw_sleeper *s)
{
    s->w = w;
    s->id = self_identity();
    s->slot = claim_slot(w, s->id);
}

void pw_sleeper_resume(struct pw_waiters *w, pw_sleeper *s, int slot)
{
    s->w = w;
    s->id = self_identity();
    s->slot = slot >= 0 && slot < PW_WAIT_SLOTS ? slot : -1;
}

void pw_sleeper_leave(pw_sleeper *s)
{
    if (s->slot >= 0) {
        uint64_t expected = s->id;
        /* Fails only if a reconciler freed it: nothing left to undo. */
        atomic_compare_exchange_strong(&s->w->slot[s->slot], &expected, 0);
        s->slot = -1;
    }
}

int pw_sleeper_wait(pw_sleeper *s, _Atomic uint32_t *word, uint32_t expected, int64_t deadline)
{
    int64_t now = pw_now_ns();
    if (now >= deadline)
        return 1;
    int64_t slice = s->slot >= 0 ? PW_WAIT_SLICE_NS : PW_WAIT_POLL_NS;
    int64_t until = deadline - now > slice ? now + slice : deadline;
    int r = pw_futex_wait(word, expected, until);
    if (r == 1) {
        if (until == deadline)
            return 1;
        if (PyErr_CheckSignals() < 0)
            return -1;
        r = 0;
    }
    if (r == 0 && (s->slot < 0 || atomic_load(&s->w->slot[s->slot]) != s->id)) {
        /* Without a slot (all taken), or it was taken from us: register
         * again before the caller re-checks its condition. */
        s->slot = claim_slot(s->w, s->id);
    }
    return r;
}

uint32_t pw_waiters_reconcile(struct pw_waiters *w)
{
    uint64_t self = self_identity();
    uint32_t live = 0;
    for (int i = 0; i < PW_WAIT_SLOTS; i++) {
        uint64_t id = atomic_load(&w->slot[i]);
        if (!id)
            continue;
        if (sleeper_dead(id, self)) {
            /* Only a dead process's slot is freed, and only once: a live
             * sleeper's slot never holds a dead process's identity. */
            if (atomic_compare_exchange_strong(&w->slot[i], &id, 0)) {
                atomic_fetch_add_explicit(&w->reaped, 1, memory_order_relaxed);
                continue;
            }
            if (!id)
                continue;
        }
        live++;
    }
    return live;
}

uint32_t pw_waiters_count_live(const struct pw_waiters *w)
{
    struct pw_waiters *ww = (struct pw_waiters *)w;
    uint64_t self = self_identity();
    uint32_t live = 0;
    for (int i = 0; i < PW_WAIT_SLOTS; i++) {
        uint64_t id = atomic_load(&ww->slot[i]);
        if (id && !sleeper_dead(id, self))
            live++;
    }
    return live;
}

/* Reconciles unless some process did less than interval_ns ago. */
static void reconcile_at_most_every(struct pw_waiters *w, int64_t interval_ns)
{
    int64_t now = pw_now_ns();
    int64_t last = atomic_load_explicit(&w->last_reconcile_ns, memory_order_relaxed);
    if (now - last < interval_ns && last <= now)
        return;
    if (atomic_compare_exchange_strong(&w->last_reconcile_ns, &last, now))
        pw_waiters_reconcile(w);
}

#define PW_RECONCILE_AFTER_EMPTY_WAKE_NS 1000000LL  /* 1 ms  */
#define PW_RECONCILE_BLIND_NS 100000000LL           /* 100 ms */

int pw_waiters_wake(struct pw_waiters *w, _Atomic uint32_t *word, int n)
{
    atomic_fetch_add_explicit(&w->wakes, 1, memory_order_relaxed);
    int woke = pw_futex_wake(word, n);
    /* Nobody woken although a slot is taken: its sleeper may be dead, or
     * merely between registering and sleeping (then the check is wasted). */
    if (woke == 0)
        reconcile_at_most_every(w, PW_RECONCILE_AFTER_EMPTY_WAKE_NS);
    return woke;
}

int pw_waiters_wake_mask(struct pw_waiters *w, _Atomic uint32_t *word, int n, uint32_t mask)
{
    atomic_fetch_add_explicit(&w->wakes, 1, memory_order_relaxed);
    long rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_BITSET, n, NULL, NULL, mask);
    int woke = rc > 0 ? (int)rc : 0;
    if (woke == 0)
        reconcile_at_most_every(w, PW_RECONCILE_AFTER_EMPTY_WAKE_NS);
    return woke;
}

int pw_waiters_slot_dead(struct pw_waiters *w, int i)
{
    uint64_t id = atomic_load(&w->slot[i]);
    if (!id)
        return 1;
    if (!sleeper_dead(id, self_identity()))
        return 0;
    if (atomic_compare_exchange_strong(&w->slot[i], &id, 0))
        atomic_fetch_add_explicit(&w->reaped, 1, memory_order_relaxed);
    return 1;
}

void pw_waiters_woke_unknown(struct pw_waiters *w)
{
    atomic_fetch_add_explicit(&w->wakes, 1, memory_order_relaxed);
    reconcile_at_most_every(w, PW_RECONCILE_BLIND_NS);
}

/* The spin loops themselves: no GIL handling, no system calls. Reading the
 * clock costs ~20 ns through the vDSO, so it is read every 64 relaxes. */
#define SPIN_UNTIL_CHANGED(load_expr, expected, spin_ns)                       \
    do {                                                                       \
        int64_t end_ = pw_now_ns() + (spin_ns);                                \
        for (;;) {                                                             \
            for (int i_ = 0; i_ < 64; i_++) {                                  \
                if ((load_expr) != (expected))                                 \
                    return 1;                                                  \
                pw_cpu_relax();                                                \
            }                                                                  \
            if (pw_now_ns() >= end_)                                           \
                return 0;                                                      \
        }                                                                      \
    } while (0)

static int spin64(_Atomic uint64_t *word, uint64_t expected, int64_t spin_ns)
{
    SPIN_UNTIL_CHANGED(atomic_load_explicit(word, memory_order_acquire), expected, spin_ns);
}

static int spin32(_Atomic uint32_t *word, uint32_t expected, int64_t spin_ns)
{
    SPIN_UNTIL_CHANGED(atomic_load_explicit(word, memory_order_acquire), expected, spin_ns);
}

/* Spinning waits for another process, so other threads of this one keep
 * the GIL meanwhile. */
int pw_spin_while_equal(_Atomic uint64_t *word, uint64_t expected, int64_t spin_ns)
{
    if (spin_ns <= 0)
        return atomic_load_explicit(word, memory_order_acquire) != expected;
    int changed;
    Py_BEGIN_ALLOW_THREADS
    changed = spin64(word, expected, spin_ns);
    Py_END_ALLOW_THREADS
    return changed;
}

int pw_spin_while_equal32(_Atomic uint32_t *word, uint32_t expected, int64_t spin_ns)
{
    if (spin_ns <= 0)
        return atomic_load_explicit(word, memory_order_acquire) != expected;
    int changed;
    Py_BEGIN_ALLOW_THREADS
    changed = spin32(word, expected, spin_ns);
    Py_END_ALLOW_THREADS
    return changed;
}

int64_t pw_spin_budget(void)
{
    /* Affinity can change at run time (taskset, os.sched_setaffinity), and
     * sched_getaffinity costs a system call, so re-read it at most every
     * 100 ms. Pinned to one CPU, a spinner only delays the peer it waits for. */
    static _Thread_local int64_t checked_at = -1;
    static _Thread_local int64_t budget = 0;
    int64_t now = pw_now_ns();
    if (checked_at < 0 || now - checked_at > 100000000LL) {
        cpu_set_t set;
        int cpus = 1;
        if (sched_getaffinity(0, sizeof set, &set) == 0)
            cpus = CPU_COUNT(&set);
        budget = cpus >= 2 ? PW_SPIN_MAX_NS : 0;
        checked_at = now;
    }
    return budget;
}
