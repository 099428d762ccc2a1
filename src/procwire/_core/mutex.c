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
#include <time.h>

int pw_mutex_init(pthread_mutex_t *m)
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
    return lock_result(m, pthread_mutex_trylock(m));
}

enum pw_lock_result pw_mutex_lock(pthread_mutex_t *m, int64_t deadline)
{
    enum pw_lock_result r = pw_mutex_trylock(m);
    if (r != PW_LOCK_TIMEOUT)
        return r;
    for (;;) {
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
