/*
 * wait.c -- deadlines, futex sleeps, the sleeper registry, the spin policy
 * and pw_wait_until(), the one wait every blocking call of procwire uses.
 *
 * Deadlines are absolute CLOCK_MONOTONIC nanoseconds, so a wall-clock jump
 * never shortens or stretches a timeout (multiprocessing uses gettimeofday).
 */
#include "pw.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

_Static_assert(PW_FUTEX_ANY == FUTEX_BITSET_MATCH_ANY, "futex bitset");

int64_t pw_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Sleeps while *word == seen (and a wake names a bit of w->mask), at most
 * until `until`, with the hooks' unblock around the system call. PW_OK
 * (woken, word differed, or EINTR: the caller re-checks, and its hooks look
 * at signals), PW_TIMEOUT, PW_ESYS. */
static int futex_sleep(const pw_wait *w, uint32_t seen, int64_t until)
{
    if (pw_now_ns() >= until)
        return PW_TIMEOUT;
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline; until is
     * never PW_FOREVER (waits sleep in slices). */
    struct timespec ts = {.tv_sec = until / 1000000000LL, .tv_nsec = until % 1000000000LL};
    int err;
    /* Shared futexes (no FUTEX_PRIVATE_FLAG): the word lives in a MAP_SHARED
     * segment, and sleeper and waker are different processes. */
    PW_UNBLOCKED(err = syscall(SYS_futex, (uint32_t *)w->futex, FUTEX_WAIT_BITSET, seen, &ts,
                               NULL, w->mask) == 0 ? 0 : errno);
    if (err == 0 || err == EAGAIN || err == EINTR)
        return PW_OK;
    return err == ETIMEDOUT ? PW_TIMEOUT : pw_fail_errno(err);
}

int pw_futex_wake(_Atomic uint32_t *word, int n, uint32_t mask)
{
    long woke = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_BITSET, n, NULL, NULL, mask);
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

/* Registers again if the slot was lost (none free, or reaped). */
static void sleeper_refresh(pw_sleeper *s)
{
    if (s->slot < 0 || atomic_load(&s->w->slot[s->slot]) != s->id)
        s->slot = claim_slot(s->w, s->id);
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

/* 1 if slot i is free or its sleeper's process is certainly dead, freeing
 * it with `reap`; 0 if it may live. */
static int slot_dead(struct pw_waiters *w, int i, uint64_t self, int reap)
{
    uint64_t id = atomic_load(&w->slot[i]);
    if (!id || !sleeper_dead(id, self))
        return !id;
    if (!reap)
        return 1;
    /* Only a dead process's slot is freed, and only once: a live sleeper's
     * slot never holds a dead process's identity. */
    if (atomic_compare_exchange_strong(&w->slot[i], &id, 0)) {
        atomic_fetch_add_explicit(&w->reaped, 1, memory_order_relaxed);
        return 1;
    }
    return !id; /* freed by another reconciler meanwhile, or taken by a new sleeper */
}

uint32_t pw_waiters_live(struct pw_waiters *w, int reap)
{
    uint64_t self = self_identity();
    uint32_t live = 0;
    for (int i = 0; i < PW_WAIT_SLOTS; i++)
        live += !slot_dead(w, i, self, reap);
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
        pw_waiters_live(w, 1);
}

#define PW_RECONCILE_AFTER_EMPTY_WAKE_NS 1000000LL  /* 1 ms  */
#define PW_RECONCILE_BLIND_NS 100000000LL           /* 100 ms */

int pw_waiters_wake(struct pw_waiters *w, _Atomic uint32_t *word, int n, uint32_t mask)
{
    atomic_fetch_add_explicit(&w->wakes, 1, memory_order_relaxed);
    int woke = pw_futex_wake(word, n, mask);
    /* Nobody woken although a slot is taken: its sleeper may be dead, or
     * merely between registering and sleeping (then the check is wasted). */
    if (woke == 0)
        reconcile_at_most_every(w, PW_RECONCILE_AFTER_EMPTY_WAKE_NS);
    return woke;
}

void pw_waiters_notify_all(struct pw_waiters *w, _Atomic uint32_t *seq)
{
    /* seq_cst: these loads must not be ordered before the store that changed
     * the condition (the sleeper does the mirror image). */
    if (pw_waiters_any(w)) {
        atomic_fetch_add(seq, 1);
        pw_waiters_wake(w, seq, INT32_MAX, PW_FUTEX_ANY);
    }
}

int pw_waiters_slot_dead(struct pw_waiters *w, int i)
{
    return slot_dead(w, i, self_identity(), 1);
}

void pw_waiters_woke_unknown(struct pw_waiters *w)
{
    atomic_fetch_add_explicit(&w->wakes, 1, memory_order_relaxed);
    reconcile_at_most_every(w, PW_RECONCILE_BLIND_NS);
}

/* --------------------------------------------------------------- spinning */

int64_t pw_spin_budget(const _Atomic uint32_t *peer_cpu)
{
    /* Affinity can change at run time (taskset, os.sched_setaffinity), and
     * sched_getaffinity costs a system call, so re-read it at most every
     * 100 ms. */
    static _Thread_local int64_t checked_at = -1;
    static _Thread_local int cpus = 1;
    int64_t now = pw_now_ns();
    if (checked_at < 0 || now - checked_at > 100000000LL) {
        cpu_set_t set;
        cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
        checked_at = now;
    }
    if (cpus >= 2)
        return PW_SPIN_MAX_NS;
    /* Pinned to one CPU: spinning pays only while the peer runs elsewhere
     * (sched_getcpu reads the kernel's rseq area: no system call). */
    uint32_t peer = peer_cpu ? atomic_load_explicit(peer_cpu, memory_order_relaxed) : 0;
    int me = peer ? sched_getcpu() : -1;
    return peer && me >= 0 && peer != (uint32_t)me + 1 ? PW_SPIN_MAX_NS : 0;
}

void pw_publish_cpu(_Atomic uint32_t *cpu)
{
    int c = sched_getcpu();
    uint32_t v = c >= 0 ? (uint32_t)c + 1 : 0;
    if (atomic_load_explicit(cpu, memory_order_relaxed) != v)
        atomic_store_explicit(cpu, v, memory_order_relaxed);
}

/* Spins until done() or spin_ns pass; the clock (~20 ns through the vDSO)
 * is read every 64 relaxes. 1 if done. */
static int spin_until(int (*done)(void *), void *ctx, int64_t spin_ns)
{
    int64_t end = pw_now_ns() + spin_ns;
    for (;;) {
        for (int i = 0; i < 64; i++) {
            if (done(ctx))
                return 1;
            pw_cpu_relax();
        }
        if (pw_now_ns() >= end)
            return 0;
    }
}

int pw_spin(pw_spinner *sp, int (*done)(void *ctx), void *ctx, int64_t deadline,
            const _Atomic uint32_t *peer_cpu)
{
    int64_t budget = pw_spin_budget(peer_cpu);
    if (sp->spin_ns > budget)
        sp->spin_ns = budget;
    if (sp->spin_ns <= 0) {
        if (budget > 0)
            sp->spin_ns = PW_SPIN_RETRY_NS; /* try spinning again, a little */
        return 0;
    }
    int64_t spin = sp->spin_ns;
    if (deadline != PW_FOREVER && deadline - pw_now_ns() < spin)
        spin = deadline - pw_now_ns();
    if (spin <= 0)
        return 0;
    int paid;
    /* Spinning waits for another process: other threads of this one run. */
    PW_UNBLOCKED(paid = spin_until(done, ctx, spin));
    if (paid)
        sp->spin_ns = budget; /* spinning paid off: keep the whole budget */
    else
        sp->spin_ns /= 2; /* the peer is slow or away: spin less next time */
    return paid;
}

int pw_wait_until(const pw_wait *w, int64_t deadline)
{
    if (w->done(w->ctx))
        return PW_OK;
    if (pw_now_ns() >= deadline)
        return PW_TIMEOUT;
    if (w->spin && pw_spin(w->spin, w->done, w->ctx, deadline, w->peer_cpu))
        return PW_OK;
    pw_sleeper own, *s = w->held;
    if (!s) {
        s = &own;
        pw_sleeper_enter(w->waiters, s);
    }
    int rc;
    for (;;) {
        /* Registered (above), then the word, then the condition: a waker
         * that changed the condition after our check bumps the word. */
        uint32_t seen = w->futex ? atomic_load(w->futex) : 0;
        if (w->done(w->ctx)) {
            rc = PW_OK;
            break;
        }
        if (w->cancel && *w->cancel) {
            rc = PW_CANCELLED;
            break;
        }
        int64_t now = pw_now_ns();
        if (now >= deadline) {
            rc = PW_TIMEOUT;
            break;
        }
        int64_t slice = s->slot < 0 ? PW_WAIT_POLL_NS : w->slice ? w->slice : PW_WAIT_SLICE_NS;
        int64_t until = deadline - now > slice ? now + slice : deadline;
        rc = w->sleep ? w->sleep(w->ctx, seen, until) : futex_sleep(w, seen, until);
        if (rc < 0)
            break;
        if (pw_hooks.interrupted && pw_hooks.interrupted()) {
            rc = PW_ERAISED;
            break;
        }
        /* Without a slot (all taken), or it was reaped: register again
         * before re-checking. A caller-held registration stays as it is. */
        if (!w->held)
            sleeper_refresh(s);
    }
    if (!w->held)
        pw_sleeper_leave(s);
    return rc;
}
