/*
 * wait.c -- deadlines, futex sleeps and bounded spinning.
 *
 * Deadlines are absolute CLOCK_MONOTONIC nanoseconds, so a wall-clock jump
 * never shortens or stretches a timeout (multiprocessing uses gettimeofday).
 */
#include "core.h"

#include <errno.h>
#include <limits.h>
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
    rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_BITSET, expected, tsp, NULL,
                 FUTEX_BITSET_MATCH_ANY);
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

void pw_futex_wake(_Atomic uint32_t *word, int n)
{
    /* Shared futexes (no FUTEX_PRIVATE_FLAG): the word lives in a MAP_SHARED
     * segment, and sleeper and waker are different processes. */
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, n, NULL, NULL, 0);
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
