/*
 * core.h -- the internal API shared by the C files of procwire._core.
 *
 * Rules every blocking primitive here follows (CPython's semaphore.c idiom,
 * with monotonic deadlines):
 *   1. try once without releasing the GIL;
 *   2. otherwise wait with the GIL released, never longer than the deadline;
 *   3. an interrupted wait re-takes the GIL and runs PyErr_CheckSignals(), so
 *      Ctrl-C raises KeyboardInterrupt promptly;
 *   4. never block on a shared mutex while holding the GIL (a thread of this
 *      process that holds the mutex may be waiting for the GIL).
 */
#ifndef PROCWIRE_CORE_H
#define PROCWIRE_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "layout.h"

/* ---------------------------------------------------------------- errors */

/* Exception classes, created in module.c and re-exported by procwire.errors. */
extern PyObject *PwExc_ProcwireError;   /* base of procwire's own errors        */
extern PyObject *PwExc_SegmentError;    /* corrupt, foreign or truncated segment */
extern PyObject *PwExc_MessageTooLarge; /* a message that can never fit         */
extern PyObject *PwExc_Empty;           /* queue.Empty                          */
extern PyObject *PwExc_Full;            /* queue.Full                           */

/* ------------------------------------------------------------- deadlines */

#define PW_FOREVER INT64_MAX

/* Nanoseconds on CLOCK_MONOTONIC. */
int64_t pw_now_ns(void);

/*
 * Turns multiprocessing's (block, timeout) pair into an absolute deadline:
 * block=False -> now (try once); timeout=None -> PW_FOREVER; a negative
 * timeout counts as 0, as in multiprocessing. Returns -1 with TypeError or
 * ValueError set for a timeout that is not a real number.
 */
int pw_deadline_from(int block, PyObject *timeout, int64_t *deadline);

/*
 * Parses fast-call arguments against `names` (positional order); the first
 * `nrequired` are mandatory. Absent arguments are NULL in out[]. Returns -1
 * with TypeError set on a bad call.
 */
int pw_parse_args(const char *func, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                  const char *const *names, int nnames, int nrequired, PyObject **out);

/* pw_deadline_from() for optional (NULL = default) block and timeout objects. */
int pw_parse_block_timeout(PyObject *block, PyObject *timeout, int64_t *deadline);

/*
 * The 64-bit lifetime count whose low 32 bits are `count` (a position word's
 * message count), given a stored total that lags it by less than 2^32.
 * total_in/total_out are stored after the publishing store, so a process
 * killed in between leaves them short; widening from the position word,
 * which is authoritative, makes them exact again.
 */
static inline uint64_t pw_widen_count(uint64_t total, uint32_t count)
{
    uint64_t t = (total & ~0xffffffffULL) | count;
    return t < total ? t + (1ULL << 32) : t;
}

/* ----------------------------------------------------------------- futex */

/*
 * Sleeps while *word == expected, until woken or the deadline passes.
 * Call with the GIL held; it is released while asleep.
 * Returns 0 when woken (or the word already differed), 1 on timeout,
 * -1 with an exception set when a signal handler raised.
 */
int pw_futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t deadline);
/* The same, woken only by wakes whose bitset shares a bit with mask. */
int pw_futex_wait_mask(_Atomic uint32_t *word, uint32_t expected, int64_t deadline,
                       uint32_t mask);

/* Wakes up to n sleepers (INT32_MAX for all). Never blocks. Returns how many
 * it woke (0 on error). */
int pw_futex_wake(_Atomic uint32_t *word, int n);

/*
 * Sleeper registration: THE wait primitive every blocking type uses to tell
 * wakers that someone sleeps (layout.h, struct pw_waiters). The protocol:
 *
 *   sleeper                               waker
 *   pw_sleeper_enter(w, &s)               change the condition (seq_cst)
 *   re-check the condition (seq_cst)      if (pw_waiters_any(w))
 *   pw_sleeper_wait(&s, word, v, dl)          bump the futex word if needed,
 *   pw_sleeper_leave(&s)                      pw_waiters_wake(w, word, n)
 *
 * Neither side can miss the other: the sleeper's slot store precedes its
 * re-check, the waker's change precedes its look at the slots. Sleepers
 * killed while asleep are reaped (see pw_waiters_reconcile), so their slot
 * never makes wakers pay a system call for long.
 */
typedef struct {
    struct pw_waiters *w;
    int slot;     /* index in w->slot, or -1: no slot free (polling) */
    uint64_t id;  /* this process's identity (pw_sleeper_identity) */
} pw_sleeper;

/* Registers the calling thread as asleep on w. Never fails, never blocks. */
void pw_sleeper_enter(struct pw_waiters *w, pw_sleeper *s);
/* Unregisters it (idempotent). */
void pw_sleeper_leave(pw_sleeper *s);
/* Rebuilds the pw_sleeper of a registration made by an earlier call of this
 * thread (Condition: _prepare_wait() then _sleep()); slot -1 or out of range
 * makes leave a no-op. */
void pw_sleeper_resume(struct pw_waiters *w, pw_sleeper *s, int slot);
/*
 * Sleeps on *word while it equals expected, at most until the deadline and
 * for at most one slice (PW_WAIT_SLICE_NS; PW_WAIT_POLL_NS while without a
 * slot). Between slices it checks signals and re-registers if its slot was
 * taken from it. Returns 0 (woken, word changed or slice over: re-check),
 * 1 when the deadline passed, -1 with an exception set.
 */
int pw_sleeper_wait(pw_sleeper *s, _Atomic uint32_t *word, uint32_t expected, int64_t deadline);
#define PW_WAIT_SLICE_NS 100000000LL /* re-check own registration this often */
#define PW_WAIT_POLL_NS 10000000LL   /* sleepers beyond PW_WAIT_SLOTS poll this often */

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

/*
 * Wakes up to n sleepers of *word if pw_waiters_any(w), counting the system
 * call. A wake that found a slot taken but woke nobody runs a (rate-limited)
 * reconciliation: a killed sleeper costs wakers one system call, not one per
 * operation forever. Returns the number woken.
 */
int pw_waiters_wake(struct pw_waiters *w, _Atomic uint32_t *word, int n);
/* pw_waiters_wake for sleepers that wait with a bitset (pw_futex_wait_mask):
 * wakes up to n of those whose mask shares a bit with mask. */
int pw_waiters_wake_mask(struct pw_waiters *w, _Atomic uint32_t *word, int n, uint32_t mask);
/* 1 if slot i is free or its sleeper's process is dead (the slot is freed
 * then, as pw_waiters_reconcile does), 0 if it may be alive. Reads /proc. */
int pw_waiters_slot_dead(struct pw_waiters *w, int i);
/* For sleepers woken by other means (a Pipe's eventfd): counts one wake
 * system call and reconciles at most every 100 ms. */
void pw_waiters_woke_unknown(struct pw_waiters *w);
/* Frees the slots of sleepers whose process is dead; returns the sleepers
 * counted after that. Never blocks; reads /proc for occupied slots only. */
uint32_t pw_waiters_reconcile(struct pw_waiters *w);
/* Counts slots held by live processes without changing anything (for
 * read-only inspection). */
uint32_t pw_waiters_count_live(const struct pw_waiters *w);

/*
 * Spins, with the GIL released, until *word != expected or spin_ns pass.
 * Returns 1 if the word changed. Spinning only pays when the peer runs on another CPU: callers
 * get their budget from pw_spin_budget().
 */
int pw_spin_while_equal(_Atomic uint64_t *word, uint64_t expected, int64_t spin_ns);
int pw_spin_while_equal32(_Atomic uint32_t *word, uint32_t expected, int64_t spin_ns);

/* The longest useful spin for this process, 0 if it may run on one CPU only. */
int64_t pw_spin_budget(void);
#define PW_SPIN_MAX_NS 50000

static inline void pw_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* ---------------------------------------------------------- robust mutex */

/* Initialises a process-shared robust mutex in shared memory. 0 or errno. */
int pw_mutex_init(pthread_mutex_t *m);
int pw_mutex_init_raw(pthread_mutex_t *m); /* the same, without learning the kind */

/*
 * Checks the bytes of a mutex in a segment before glibc trusts them (see
 * mutex.c): 0, or -1 with SegmentError naming `what` (NULL: "a shared
 * object"). Called on attach for every mutex of every kind of segment, and
 * pw_mutex_trylock()/pw_mutex_lock() check again before each use (a process
 * may corrupt the segment after we attached).
 */
int pw_mutex_check(const pthread_mutex_t *m, const char *what);
extern int pw_mutex_kind;

/* The cheap part of pw_mutex_check, for fast paths: 1 if sane. */
static inline int pw_mutex_sane(const pthread_mutex_t *m)
{
    return atomic_load_explicit((_Atomic int *)&m->__data.__kind, memory_order_relaxed) ==
           pw_mutex_kind;
}

enum pw_lock_result {
    PW_LOCK_ERROR = -1,      /* exception set                                */
    PW_LOCK_OK = 0,          /* acquired                                     */
    PW_LOCK_OWNER_DIED = 1,  /* acquired; the previous owner died holding it.
                                The mutex was already marked consistent: the
                                caller repairs the state it protects, if any */
    PW_LOCK_TIMEOUT = 2      /* not acquired before the deadline             */
};

/*
 * Locks m, waiting at most until the deadline. Call with the GIL held; if the
 * mutex is busy the GIL is released while waiting, and signals are checked at
 * least every PW_LOCK_SLICE_NS so Ctrl-C stays prompt.
 */
enum pw_lock_result pw_mutex_lock(pthread_mutex_t *m, int64_t deadline);
#define PW_LOCK_SLICE_NS 50000000LL

/*
 * pw_mutex_lock that also gives up (PW_LOCK_TIMEOUT) as soon as *cancel is
 * non-zero, checked between slices with the GIL held: the guard's `closed`
 * flag, so that close() from another thread ends the wait.
 */
enum pw_lock_result pw_mutex_lock_cancellable(pthread_mutex_t *m, int64_t deadline,
                                              const int *cancel);

/* Like pw_mutex_lock but never waits: PW_LOCK_TIMEOUT when busy. */
enum pw_lock_result pw_mutex_trylock(pthread_mutex_t *m);

void pw_mutex_unlock(pthread_mutex_t *m);

/* ------------------------------------------ guard against a concurrent close */

/*
 * A native object whose calls release the GIL brackets each such call with
 * pw_guard_enter()/pw_guard_leave(): close() from another thread then only
 * marks it closed (pw_guard_close()), waiting calls notice the flag and leave
 * with an error, and the mapping is released by whoever leaves last -- never
 * under a thread inside a native call. The fields are protected by the GIL.
 * (queue.c and pipe.c have the same idiom written inline.)
 */
typedef struct {
    int closed; /* close() was called */
    int active; /* calls in progress in this process */
} pw_guard;

/* 0, or -1 (no exception set) if the object is closed. */
static inline int pw_guard_enter(pw_guard *g)
{
    if (g->closed)
        return -1;
    g->active++;
    return 0;
}

/* 1 if the caller left last after a close: it must release the mapping now. */
static inline int pw_guard_leave(pw_guard *g)
{
    return --g->active == 0 && g->closed;
}

/* Marks closed. 1 if no call is in progress: release the mapping now. */
static inline int pw_guard_close(pw_guard *g)
{
    g->closed = 1;
    return g->active == 0;
}

/* --------------------------------------------------------------- segment */

/*
 * Fills the common header except `magic`. The creator initialises the rest of
 * the segment and then calls pw_header_publish().
 */
void pw_header_init(struct pw_header *h, uint32_t kind, uint64_t total_size,
                    uint32_t header_size, uint64_t data_offset);
void pw_header_publish(struct pw_header *h);

/*
 * Checks the common header of a segment of `size` bytes against the expected
 * kind (0 accepts any kind). Returns 0, or -1 with SegmentError set naming
 * `what` (the segment's name, for the message).
 */
int pw_header_validate(const void *base, Py_ssize_t size, uint32_t kind, const char *what);

/* Human-readable name of a kind ("queue", "pipe", ...). */
const char *pw_kind_name(uint32_t kind);

/* Raises SegmentError with a formatted message. Returns -1. */
int pw_segment_error(const char *fmt, ...);

/* -------------------------------------------------------- module plumbing */

int pw_ring_register(PyObject *module);
int pw_sync_register(PyObject *module);   /* sync.c: Lock, Semaphore, Event, ... */
int pw_shared_register(PyObject *module); /* shared.c: Value and Array segments  */

/* --------------------------------------------------- sync.c for shared.c */

/* Initialises an embedded or standalone lock. 0 or errno. */
int pw_lock_init(struct pw_lock *l, int recursive);
int pw_segment_register(PyObject *module);
int pw_inspect_register(PyObject *module); /* inspect.c: read-only _core.inspect() */
int pw_pipe_register(PyObject *module);

#endif /* PROCWIRE_CORE_H */
