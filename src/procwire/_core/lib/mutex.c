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
#include "pw.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <time.h>

/* __kind of the mutexes pw_mutex_init() makes, learnt from glibc itself on
 * first use (-1 until then). */
int pw_mutex_kind = -1;

static int init_raw(pthread_mutex_t *m)
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

static void learn_kind(void)
{
    pthread_mutex_t m;
    memset(&m, 0, sizeof m);
    if (init_raw(&m) == 0) {
        pw_mutex_kind = m.__data.__kind;
        pthread_mutex_destroy(&m);
    }
}

int pw_mutex_init(pthread_mutex_t *m)
{
    if (pw_mutex_kind < 0)
        learn_kind();
    return init_raw(m);
}

int pw_lock_init(struct pw_lock *l, int recursive)
{
    memset(l, 0, sizeof *l);
    l->recursive = recursive ? 1 : 0;
    return pw_mutex_init(&l->mutex);
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
    if (!what)
        what = "a shared object";
    if (kind == pw_mutex_kind && owner != INT_MAX - 1)
        return PW_OK;
    if (kind == pw_mutex_kind) /* glibc's PTHREAD_MUTEX_NOTRECOVERABLE: procwire always
                                  makes an owner-died mutex consistent, so only a
                                  corruption gets here */
        return pw_fail(PW_ECORRUPT, "%s is corrupt: one of its robust mutexes is marked "
                       "unrecoverable (re-create the object)", what);
    return pw_fail(PW_ECORRUPT, "%s is corrupt: one of its robust mutexes has kind 0x%x, "
                   "expected 0x%x (re-create the object)", what, (unsigned)kind,
                   (unsigned)pw_mutex_kind);
}

int pw_mutex_status(pthread_mutex_t *m, int rc)
{
    switch (rc) {
    case 0:
        return PW_OK;
    case EOWNERDEAD:
        /* The previous owner died holding the lock. We own it now; mark it
         * consistent so that it stays usable after we unlock. */
        pthread_mutex_consistent(m);
        return PW_OWNER_DIED;
    case EBUSY:
    case ETIMEDOUT:
        return PW_TIMEOUT;
    case EDEADLK:
        return pw_fail(PW_EDEADLK, "this thread already holds the lock it is trying to take "
                       "(a re-entrant call, e.g. from a signal handler?)");
    case ENOTRECOVERABLE:
        return pw_fail(PW_ECORRUPT, "a shared lock is permanently unusable: a process died "
                       "holding it and its state was never repaired; re-create the object");
    default:
        return pw_fail_errno(rc);
    }
}

int pw_mutex_trylock(pthread_mutex_t *m)
{
    if (!pw_mutex_sane(m))
        return pw_mutex_check(m, NULL);
    return pw_mutex_status(m, pthread_mutex_trylock(m));
}

int pw_mutex_lock(pthread_mutex_t *m, int64_t deadline, const int *cancel)
{
    int r = pw_mutex_trylock(m);
    if (r != PW_TIMEOUT)
        return r;
    for (;;) {
        if (cancel && *cancel)
            return PW_CANCELLED;
        int64_t now = pw_now_ns();
        if (now >= deadline)
            return PW_TIMEOUT;
        /* glibc restarts a robust mutex wait after a signal, so Ctrl-C could
         * not get through a long wait: wait in slices and check signals
         * between them. The owner's death still wakes us at once. */
        int64_t until = deadline - now > PW_LOCK_SLICE_NS ? now + PW_LOCK_SLICE_NS : deadline;
        struct timespec ts = {.tv_sec = until / 1000000000LL, .tv_nsec = until % 1000000000LL};
        int rc;
        PW_UNBLOCKED(rc = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &ts));
        r = pw_mutex_status(m, rc);
        if (r != PW_TIMEOUT)
            return r;
        if (pw_hooks.interrupted && pw_hooks.interrupted())
            return PW_ERAISED;
    }
}

void pw_mutex_unlock(pthread_mutex_t *m)
{
    pthread_mutex_unlock(m);
}

/* pw_mutex_spin's done(). Every look at the lock word pulls its cache line
 * to this CPU and makes the holder's next write fetch it back, so looks are
 * spaced by a growing number of pauses (1, 3, 7, 15), while the holder works
 * unhindered. */
#define PW_MUTEX_BACKOFF_MAX 15
struct take_if_free {
    pthread_mutex_t *m;
    int rc;           /* pthread_mutex_trylock's last answer */
    unsigned skip;    /* pauses left before the next look */
    unsigned backoff; /* pauses after the next look that finds it taken */
};

static int take_if_free(void *ctx)
{
    struct take_if_free *t = ctx;
    if (t->skip) {
        t->skip--;
        return 0;
    }
    uint32_t w = pw_mutex_word(t->m);
    if ((w & PW_MUTEX_TID_MASK) == 0 || (w & PW_MUTEX_OWNER_DIED)) {
        t->rc = pthread_mutex_trylock(t->m);
        if (t->rc != EBUSY)
            return 1;
    }
    t->skip = t->backoff;
    if (t->backoff < PW_MUTEX_BACKOFF_MAX)
        t->backoff = t->backoff * 2 + 1;
    return 0;
}

int pw_mutex_spin(pthread_mutex_t *m, pw_spinner *sp, int64_t deadline)
{
    struct take_if_free t = {m, EBUSY, 0, 1};
    /* The holder's CPU is unknown (NULL): pinned to one CPU, the waiter
     * sleeps at once, as glibc's own mutex does. (Spinning pinned apart,
     * measured, cost throughput: the waiter's looks moved the line.) */
    pw_spin(sp, take_if_free, &t, deadline, NULL);
    return t.rc;
}
