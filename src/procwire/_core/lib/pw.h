/*
 * pw.h -- the lower layer of procwire's core: plain C, no Python.h.
 *
 * Everything here works on the shared-memory structs of layout.h and on the
 * kernel: deadlines, futex sleeps and spinning, the sleeper registry and the
 * one wait primitive built on them, robust mutexes, and the common segment
 * header. The ring (ring.h) sits on top. tests/native/test_core.c drives this
 * layer without any interpreter; the binding layer (../bind) wraps it in
 * CPython types and turns its status codes into exceptions in one place
 * (bind/errors.c).
 *
 * Conventions:
 *  - functions return an int status (enum pw_status): 0 or a positive outcome
 *    (timeout, owner died, cancelled), or a negative error whose message is in
 *    pw_last_error() (thread-local);
 *  - deadlines are absolute CLOCK_MONOTONIC nanoseconds, PW_FOREVER = none;
 *  - whatever may block or copy for long goes through pw_hooks, which the
 *    binding layer points at "release the GIL", "take it back" and "check
 *    signals" (defaults: do nothing).
 */
#ifndef PROCWIRE_PW_H
#define PROCWIRE_PW_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "layout.h"

/* ---------------------------------------------------------------- status */

enum pw_status {
    PW_OK = 0,
    PW_TIMEOUT = 1,     /* the deadline passed first                              */
    PW_OWNER_DIED = 2,  /* a lock was taken; its previous holder died holding it   */
    PW_CANCELLED = 3,   /* the caller's cancel flag was set (a concurrent close)   */
    PW_SPILLED = 4,     /* pw_ring_peek: the oldest message is in the spill area  */
    PW_ERAISED = -1,    /* a hook or callback failed; it reported the error itself */
    PW_ECORRUPT = -2,   /* a segment is corrupt or foreign: see pw_last_error()    */
    PW_ESYS = -3,       /* a system call failed: pw_last_errno()                   */
    PW_EDEADLK = -4,    /* this thread already holds the lock it tries to take     */
    PW_EINVAL = -5,     /* bad arguments from the caller                           */
};

/* Records an error for the caller (thread-local) and returns `code`. */
int pw_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int pw_fail_errno(int err); /* PW_ESYS with errno `err` */
const char *pw_last_error(void);
int pw_last_errno(void);

/* ----------------------------------------------------------------- hooks */

/*
 * What the layer above does around a blocking call (a futex sleep, a mutex
 * wait, a spin, a large copy): unblock() before it (returns a token),
 * reblock(token) after it; interrupted() between the slices of a long sleep,
 * nonzero to stop the wait (it then returns PW_ERAISED).
 */
struct pw_hooks {
    void *(*unblock)(void);
    void (*reblock)(void *token);
    int (*interrupted)(void);
};
extern struct pw_hooks pw_hooks;

#define PW_UNBLOCKED(stmt)                                                     \
    do {                                                                       \
        void *pw_token_ = pw_hooks.unblock ? pw_hooks.unblock() : NULL;        \
        stmt;                                                                  \
        if (pw_hooks.reblock)                                                  \
            pw_hooks.reblock(pw_token_);                                       \
    } while (0)

/* ------------------------------------------------------------- deadlines */

#define PW_FOREVER INT64_MAX
int64_t pw_now_ns(void); /* CLOCK_MONOTONIC */

/* ---------------------------------------------------------------- futex */

/* Wakes up to n sleepers of *word whose futex bitset meets mask. */
int pw_futex_wake(_Atomic uint32_t *word, int n, uint32_t mask); /* how many woke */
#define PW_FUTEX_ANY 0xffffffffu

/* --------------------------------------------------------- sleeper registry */

/*
 * Sleeper registration (layout.h, struct pw_waiters). The protocol:
 *
 *   sleeper                               waker
 *   pw_sleeper_enter(w, &s)               change the condition (seq_cst)
 *   re-check the condition (seq_cst)      if (pw_waiters_any(w))
 *   sleep                                     bump the futex word if needed,
 *   pw_sleeper_leave(&s)                      pw_waiters_wake(w, word, n, mask)
 *
 * Neither side can miss the other: the sleeper's slot store precedes its
 * re-check, the waker's change precedes its look at the slots. Sleepers
 * killed while asleep are reaped (pw_waiters_live), so their slot never
 * makes wakers pay a system call for long. pw_wait() below does the
 * sleeper's side; callers rarely touch these directly.
 */
typedef struct {
    struct pw_waiters *w;
    int slot;     /* index in w->slot, or -1: no slot free (polling) */
    uint64_t id;  /* this process's identity (layout.h) */
} pw_sleeper;

void pw_sleeper_enter(struct pw_waiters *w, pw_sleeper *s);
void pw_sleeper_leave(pw_sleeper *s); /* idempotent */
/* Rebuilds a registration made earlier by this thread (Condition's
 * _prepare_wait then _sleep); a bad slot makes leave a no-op. */
void pw_sleeper_resume(struct pw_waiters *w, pw_sleeper *s, int slot);

/* The wakers' fast path: 1 if any slot is taken (no system call). */
static inline int pw_waiters_any(struct pw_waiters *w)
{
    /* Sixteen plain loads on x86 (seq_cst loads need no fence there). */
    uint64_t any = 0;
#pragma GCC unroll 16
    for (int i = 0; i < PW_WAIT_SLOTS; i++)
        any |= atomic_load(&w->slot[i]);
    return any != 0;
}

/* Wakes up to n sleepers of *word whose bitset meets mask, counting the
 * system call; a wake that woke nobody reconciles (rate-limited). */
int pw_waiters_wake(struct pw_waiters *w, _Atomic uint32_t *word, int n, uint32_t mask);
/* The usual waker: bump *seq and wake everyone, if anyone sleeps. */
void pw_waiters_notify_all(struct pw_waiters *w, _Atomic uint32_t *seq);
/* For sleepers woken by other means (a Pipe's eventfd): counts one wake
 * system call and reconciles at most every 100 ms. */
void pw_waiters_woke_unknown(struct pw_waiters *w);
/* 1 if slot i is free or its process is dead (freeing it), 0 if it may live. */
int pw_waiters_slot_dead(struct pw_waiters *w, int i);
/* Counts the live sleepers; with `reap`, frees dead ones' slots first (without,
 * it writes nothing: read-only inspection). Never blocks. */
uint32_t pw_waiters_live(struct pw_waiters *w, int reap);
/* The pid written in a slot's identity (0 when free). */
static inline int pw_waiters_slot_pid(struct pw_waiters *w, int i)
{
    return (int)((atomic_load(&w->slot[i]) >> 32) & 0x3fffff);
}

/* -------------------------------------------------------------- spinning */

/*
 * The one spin policy. Spinning pays only while the process we wait for runs
 * on another CPU (a futex wake across vCPUs costs 30-100 us here, a hand-off
 * through shared memory ~0.3 us). pw_spin_budget() decides how long is
 * useful now; a pw_spinner adapts within it: a spin that paid off keeps the
 * whole budget, one that did not halves the next, so an idle waiter stops
 * burning CPU after a few rounds, and one small spin is retried now and then.
 */
#define PW_SPIN_MAX_NS 50000
#define PW_SPIN_RETRY_NS 2000

typedef struct {
    int64_t spin_ns; /* the next spin's length, <= budget */
} pw_spinner;

static inline void pw_spinner_init(pw_spinner *s) { s->spin_ns = PW_SPIN_MAX_NS; }

/*
 * How long spinning may pay off for this thread now: PW_SPIN_MAX_NS, or 0
 * when it cannot. The single place where that is decided: spin if this
 * process may run on several CPUs, or -- pinned to one -- if the peer it
 * waits for last ran on another CPU (`peer_cpu`: the CPU + 1 the peer
 * publishes in the segment, pw_publish_cpu; NULL or 0 = unknown). Two
 * processes sharing one CPU never spin: the spinner would only delay the
 * peer it waits for.
 */
int64_t pw_spin_budget(const _Atomic uint32_t *peer_cpu);
/* Publishes the calling thread's CPU + 1 in *cpu (for the peer's spin policy). */
void pw_publish_cpu(_Atomic uint32_t *cpu);

static inline void pw_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Spins (hooks' unblock around it) until done(ctx), the spinner's current
 * length or the deadline, whichever comes first, and adapts the spinner.
 * 1 if done. pw_wait_until's first phase; the Lock spins with it alone. */
int pw_spin(pw_spinner *sp, int (*done)(void *ctx), void *ctx, int64_t deadline,
            const _Atomic uint32_t *peer_cpu);

/* --------------------------------------------------------------- waiting */

/*
 * The one wait primitive: waits until done(ctx) returns nonzero.
 *
 *  1. spins (pw_spinner policy, hooks' unblock around it) re-checking done();
 *  2. registers in `waiters` (unless the caller registered already: `held`);
 *  3. loops: reads the futex word, checks done(), sleeps while the word is
 *     unchanged, in slices of `slice` (PW_WAIT_POLL_NS while without
 *     a slot), calling pw_hooks.interrupted() and checking *cancel between
 *     slices and re-registering if its slot was taken from it;
 *  4. unregisters.
 *
 * done() must not block; it runs with the hooks' unblock in effect during the
 * spin. `sleep`, if set, replaces the futex sleep (a Pipe sleeps in ppoll):
 * it returns PW_OK (re-check), PW_TIMEOUT (until passed) or an error.
 * Returns PW_OK (done), PW_TIMEOUT, PW_CANCELLED, or an error (PW_ERAISED
 * when interrupted() asked to stop).
 */
typedef struct pw_wait {
    int (*done)(void *ctx);
    void *ctx;
    struct pw_waiters *waiters;  /* where sleepers register                    */
    _Atomic uint32_t *futex;     /* the word slept on (wakers bump it)         */
    uint32_t mask;               /* futex bitset, PW_FUTEX_ANY for all wakes   */
    pw_spinner *spin;            /* NULL: never spin                           */
    const _Atomic uint32_t *peer_cpu; /* where the waited-for peer runs (pw_spin_budget) */
    pw_sleeper *held;            /* registered by the caller, kept as is       */
    const int *cancel;           /* nonzero: stop with PW_CANCELLED            */
    int (*sleep)(void *ctx, uint32_t seen, int64_t until);
    int64_t slice;               /* 0: PW_WAIT_SLICE_NS                        */
} pw_wait;

int pw_wait_until(const pw_wait *w, int64_t deadline);

#define PW_WAIT_SLICE_NS 100000000LL /* signals and registration re-checked this often */
/* For a wait whose close() wakes its sleepers (a Queue's pw_ring_kick, a Pipe
 * end's eventfd): only a signal that lands just before the sleep begins needs
 * the slice's end, as in CPython's own waits. Each slice's end costs an idle
 * waiter a wake-up (40-100 us of CPU on this VM): 100 ms slices made an idle
 * get() cost 1.1 ms of CPU a second. */
#define PW_WAIT_LONG_SLICE_NS 1000000000LL
#define PW_WAIT_POLL_NS 10000000LL   /* sleepers beyond PW_WAIT_SLOTS poll this often */

/* ------------------------------------------------------------ robust mutex */

/*
 * glibc robust, process-shared, error-checking mutexes (mutex.c). Lock
 * results: PW_OK, PW_OWNER_DIED (taken and already marked consistent: the
 * caller repairs what it protects), PW_TIMEOUT, PW_CANCELLED, PW_EDEADLK,
 * PW_ECORRUPT (bad bytes, or a mutex left unrecoverable), PW_ESYS.
 */
int pw_mutex_init(pthread_mutex_t *m); /* 0 or errno */
/* Checks a mutex's bytes in a segment before glibc trusts them. */
int pw_mutex_check(const pthread_mutex_t *m, const char *what);
extern int pw_mutex_kind;
/* The cheap part of pw_mutex_check, for fast paths: 1 if sane. */
static inline int pw_mutex_sane(const pthread_mutex_t *m)
{
    return atomic_load_explicit((_Atomic int *)&m->__data.__kind, memory_order_relaxed) ==
           pw_mutex_kind;
}
int pw_mutex_trylock(pthread_mutex_t *m);
/* Waits until the deadline, in slices of PW_LOCK_SLICE_NS (glibc restarts a
 * robust mutex wait after a signal: slices keep Ctrl-C prompt); gives up with
 * PW_CANCELLED when *cancel becomes nonzero (NULL: never). */
int pw_mutex_lock(pthread_mutex_t *m, int64_t deadline, const int *cancel);
void pw_mutex_unlock(pthread_mutex_t *m);
/* The contended Lock's spin, in pw_spin's policy: watches the lock word,
 * backing off between looks, and tries the mutex when it is free.
 * pthread_mutex_trylock's answer (EBUSY: not taken). */
int pw_mutex_spin(pthread_mutex_t *m, pw_spinner *sp, int64_t deadline);
#define PW_LOCK_SLICE_NS 50000000LL
/* Maps a pthread result (0, EOWNERDEAD, EBUSY, ...) to a status. */
int pw_mutex_status(pthread_mutex_t *m, int rc);

/* The one reader of glibc's lock word: the holder's tid (0 when free) and
 * whether the kernel marked the holder dead. */
static inline uint32_t pw_mutex_word(const pthread_mutex_t *m)
{
    return (uint32_t)atomic_load_explicit((_Atomic int *)&m->__data.__lock,
                                          memory_order_relaxed);
}
#define PW_MUTEX_TID_MASK 0x3fffffffu   /* FUTEX_TID_MASK */
#define PW_MUTEX_OWNER_DIED 0x40000000u /* FUTEX_OWNER_DIED */
#define PW_MUTEX_WAITERS 0x80000000u    /* FUTEX_WAITERS */
static inline int pw_mutex_holder(const pthread_mutex_t *m)
{
    return (int)(pw_mutex_word(m) & PW_MUTEX_TID_MASK);
}
static inline int pw_mutex_owner_died(const pthread_mutex_t *m)
{
    return (pw_mutex_word(m) & PW_MUTEX_OWNER_DIED) != 0;
}

/* Initialises an embedded or standalone lock (struct pw_lock). 0 or errno. */
int pw_lock_init(struct pw_lock *l, int recursive);

/* --------------------------------------------------------------- segment */

/* One row of layout.h's table of kinds. pw_kinds ends with a NULL name. */
struct pw_kind_info {
    uint32_t kind;
    const char *name;    /* "queue", "pipe", ...                     */
    size_t header_size;  /* sizeof the struct at offset 64           */
};
extern const struct pw_kind_info pw_kinds[];
const struct pw_kind_info *pw_kind_info(uint32_t kind); /* NULL if unknown */
const char *pw_kind_name(uint32_t kind);                /* "unknown" if unknown */

/* Fills the common header except `magic`; the creator initialises the rest
 * of the segment, then calls pw_header_publish(). */
void pw_header_init(struct pw_header *h, uint32_t kind, uint64_t total_size,
                    uint32_t header_size, uint64_t data_offset);
void pw_header_publish(struct pw_header *h);
/* Checks the common header of a segment of `size` bytes against the expected
 * kind (0: any). PW_OK or PW_ECORRUPT naming `what`. */
int pw_header_validate(const void *base, uint64_t size, uint32_t kind, const char *what);
/* ... and that the kind-specific header has its kind's size (layout.h table). */
int pw_header_validate_kind(const void *base, uint64_t size, uint32_t kind, const char *what);
/* ... and what the kind's own header must satisfy before any of it is used
 * (a ring's positions and mutexes, a semaphore's count, a lock's mutex, a
 * Value's element sizes): the one validator of every kind but the pipe's. */
int pw_segment_validate(const void *base, uint64_t size, uint32_t kind, const char *what);
#define PW_MAGIC_LOST 0x54534f4c45524957ULL /* "WIRELOST": truncated under its users */

/*
 * The 64-bit lifetime count whose low 32 bits are `count` (a position word's
 * message count), given a stored total that lags it by less than 2^32: the
 * totals are stored after the publishing store, so a process killed in
 * between leaves them short; the position word is authoritative.
 */
static inline uint64_t pw_widen_count(uint64_t total, uint32_t count)
{
    uint64_t t = (total & ~0xffffffffULL) | count;
    return t < total ? t + (1ULL << 32) : t;
}

#endif /* PROCWIRE_PW_H */
