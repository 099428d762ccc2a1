/*
 * mutex.c -- robust, process-shared mutexes.
 *
 * These are glibc's robust mutexes: the kernel keeps a per-thread list of
 * the robust mutexes a thread holds, and when the thread dies -- even by
 * SIGKILL -- it marks each one FUTEX_OWNER_DIED and wakes a waiter. The next
 * locker gets EOWNERDEAD instead of hanging forever, which is the whole point:
 * a process killed inside a put or get must not deadlock the others.
 *
 * The mutexes are error-checking, so a thread that locks a mutex it already
 * holds gets an exception instead of a self-deadlock.
 */
#include "core.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <time.h>

/* __kind of the mutexes pw_mutex_init() makes, learnt from glibc itself on
 * first use (-1 until then). */
int pw_mutex_kind = -1;

static void learn_kind(void)
{
    pthread_mutex_t m;
    memset(&m, 0, sizeof m);
    if (pw_mutex_init_raw(&m) == 0) {
        pw_mutex_kind = m.__data.__kind;
        pthread_mutex_destroy(&m);
    }
}

int pw_mutex_init(pthread_mutex_t *m)
{
    if (pw_mutex_kind < 0)
        learn_kind();
    return pw_mutex_init_raw(m);
}

/*
 * What glibc trusts in a pthread_mutex_t it did not initialise in this
 * process (the bytes are shared memory, so any process may have scribbled on
 * them): __kind selects the locking algorithm, and a kind we did not create
 * (not robust, priority-inheriting, elision, ...) leads glibc into paths that
 * assert() on states they cannot reach, which aborts the interpreter. So the
 * kind must be exactly ours. The rest is safe to meet corrupt: the lock word
 * is only compared and swapped (a garbage holder makes lockers wait out their
 * deadline, a dead one is taken over), __owner == NOTRECOVERABLE makes glibc
 * answer ENOTRECOVERABLE (a SegmentError here), and the robust-list pointers
 * are only read by the holder, which wrote them itself when it locked.
 */
int pw_mutex_check(const pthread_mutex_t *m, const char *what)
{
    if (pw_mutex_kind < 0)
        learn_kind();
    int kind = atomic_load_explicit((_Atomic int *)&m->__data.__kind, memory_order_relaxed);
    int owner = atomic_load_explicit((_Atomic int *)&m->__data.__owner, memory_order_relaxed);
    if (kind == pw_mutex_kind && owner != INT_MAX - 1)
        return 0;
    if (kind == pw_mutex_kind) {
        /* glibc's PTHREAD_MUTEX_NOTRECOVERABLE: procwire always makes an
         * owner-died mutex consistent again, so only a corruption gets here. */
        pw_segment_error("%s is corrupt: one of its robust mutexes is marked unrecoverable "
                         "(re-create the object)", what ? what : "a shared object");
        return -1;
    }
    pw_segment_error("%s is corrupt: one of its robust mutexes has kind 0x%x, expected 0x%x "
                     "(re-create the object)", what ? what : "a shared object", (unsigned)kind,
                     (unsigned)pw_mutex_kind);
    return -1;
}

int pw_mutex_init_raw(pthread_mutex_t *m)
{
    pthread_mutexattr_t attr;
    int rc = pthread_mutexattr_init(&attr);
    if (rc)
        return rc;
    if ((rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED)) == 0 &&
        (rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST)) == 0 &&
        (rc = pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK)) == 0)
        rc = pthread_mutex_init(m, &attr);
    pthread_mutexattr_destroy(&attr);
    return rc;
}

/* Maps a pthread result to ours; sets an exception for real errors. */
static enum pw_lock_result lock_result(pthread_mutex_t *m, int rc)
{
    switch (rc) {
    case 0:
        return PW_LOCK_OK;
    case EOWNERDEAD:
        /* The previous owner died holding the lock. We own it now; mark it
         * consistent so that it stays usable after we unlock. */
        pthread_mutex_consistent(m);
        return PW_LOCK_OWNER_DIED;
    case EBUSY:
    case ETIMEDOUT:
        return PW_LOCK_TIMEOUT;
    case EDEADLK:
        PyErr_SetString(PyExc_RuntimeError,
                        "this thread already holds the lock it is trying to take "
                        "(a re-entrant call, e.g. from a signal handler?)");
        return PW_LOCK_ERROR;
    case ENOTRECOVERABLE:
        pw_segment_error("a shared lock is permanently unusable: a process died "
                         "holding it and its state was never repaired; "
                         "re-create the object");
        return PW_LOCK_ERROR;
    default:
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return PW_LOCK_ERROR;
    }
}

enum pw_lock_result pw_mutex_trylock(pthread_mutex_t *m)
{
    if (!pw_mutex_sane(m)) {
        pw_mutex_check(m, NULL);
        return PW_LOCK_ERROR;
    }
    return lock_result(m, pthread_mutex_trylock(m));
}

enum pw_lock_result pw_mutex_lock(pthread_mutex_t *m, int64_t deadline)
{
    return pw_mutex_lock_cancellable(m, deadline, NULL);
}

enum pw_lock_result pw_mutex_lock_cancellable(pthread_mutex_t *m, int64_t deadline,
                                              const int *cancel)
{
    enum pw_lock_result r = pw_mutex_trylock(m);
    if (r != PW_LOCK_TIMEOUT)
        return r;
    for (;;) {
        if (cancel && *cancel)
            return PW_LOCK_TIMEOUT;
        int64_t now = pw_now_ns();
        if (now >= deadline)
            return PW_LOCK_TIMEOUT;
        /* glibc restarts a robust mutex wait after a signal, so Ctrl-C could
         * not get through a long wait: wait in slices and check signals
         * between them. The owner's death still wakes us at once. */
        int64_t until = deadline - now > PW_LOCK_SLICE_NS ? now + PW_LOCK_SLICE_NS : deadline;
        struct timespec ts = {.tv_sec = until / 1000000000LL, .tv_nsec = until % 1000000000LL};
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &ts);
        Py_END_ALLOW_THREADS
        r = lock_result(m, rc);
        if (r != PW_LOCK_TIMEOUT)
            return r;
        if (PyErr_CheckSignals() < 0)
            return PW_LOCK_ERROR;
    }
}

void pw_mutex_unlock(pthread_mutex_t *m)
{
    pthread_mutex_unlock(m);
}
