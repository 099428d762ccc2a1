/*
 * ring.c -- the multi-producer multi-consumer message ring.
 *
 * Crash safety comes from the order of writes, not from repair:
 *   - a producer writes its record bytes beyond the published tail, then
 *     publishes them with one release store of the tail word;
 *   - a consumer copies records out, then frees them with one release store
 *     of the head word.
 * A process killed at any point has either published or not. The robust
 * mutex hands its side's lock to the next process, which finds the ring
 * exactly as the last completed publish left it.
 *
 * Waiting: spin briefly while the peer runs on another CPU (a futex wake
 * across vCPUs costs 30-100 us here, a shared-memory hand-off ~0.3 us), then
 * sleep on a futex sequence word. Wakers only make the system call when
 * someone is actually asleep.
 */
#include "ring.h" /* Python.h first: it defines _GNU_SOURCE (fallocate, PUNCH_HOLE) */

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

uint64_t pw_ring_segment_size(uint64_t capacity)
{
    uint64_t hdr = sizeof(struct pw_header) + sizeof(struct pw_ring);
    uint64_t data_offset = (hdr + PW_RING_DATA_ALIGN - 1) & ~(uint64_t)(PW_RING_DATA_ALIGN - 1);
    return data_offset + capacity;
}

int pw_ring_init(struct pw_ring *r, uint64_t capacity, uint32_t maxsize)
{
    memset(r, 0, sizeof *r);
    r->capacity = capacity;
    r->maxsize = maxsize;
    int rc = pw_mutex_init(&r->tail_lock);
    if (rc == 0)
        rc = pw_mutex_init(&r->head_lock);
    return rc;
}

int pw_ring_validate(const struct pw_ring *r, uint64_t data_bytes, const char *what)
{
    uint64_t cap = r->capacity;
    if (cap < PW_RING_MIN_CAPACITY || cap > PW_RING_MAX_CAPACITY || (cap & (cap - 1)))
        return pw_segment_error("%s is corrupt: ring capacity %llu is not a power of two "
                                "between %u and %u", what, (unsigned long long)cap,
                                PW_RING_MIN_CAPACITY, PW_RING_MAX_CAPACITY);
    if (cap > data_bytes)
        return pw_segment_error("%s is corrupt: ring capacity %llu exceeds the %llu data "
                                "bytes mapped", what, (unsigned long long)cap,
                                (unsigned long long)data_bytes);
    if (r->maxsize > INT32_MAX)
        return pw_segment_error("%s is corrupt: maxsize %u", what, r->maxsize);
    uint64_t head = atomic_load(&((struct pw_ring *)r)->head);
    uint64_t tail = atomic_load(&((struct pw_ring *)r)->tail);
    if ((uint32_t)(pw_pos(tail) - pw_pos(head)) > cap || (pw_pos(head) | pw_pos(tail)) & 7)
        return pw_segment_error("%s is corrupt: head and tail positions are inconsistent",
                                what);
    /* The robust mutexes' bytes, before glibc trusts them (mutex.c). */
    if (pw_mutex_check(&r->tail_lock, what) < 0 || pw_mutex_check(&r->head_lock, what) < 0)
        return -1;
    return 0;
}

uint32_t pw_ring_count(const pw_ringref *rr)
{
    uint64_t head = atomic_load_explicit(&rr->ring->head, memory_order_acquire);
    uint64_t tail = atomic_load_explicit(&rr->ring->tail, memory_order_acquire);
    uint32_t n = pw_count(tail) - pw_count(head);
    return n > INT32_MAX ? 0 : n; /* head moved past our tail snapshot */
}

uint64_t pw_ring_used_bytes(const pw_ringref *rr)
{
    uint64_t head = atomic_load_explicit(&rr->ring->head, memory_order_acquire);
    uint64_t tail = atomic_load_explicit(&rr->ring->tail, memory_order_acquire);
    uint32_t n = pw_pos(tail) - pw_pos(head);
    return n > rr->capacity ? 0 : n;
}

/* ------------------------------------------------------------- byte copies */

static void copy_in(pw_ringref *rr, uint32_t pos, const void *src, uint64_t n)
{
    uint64_t off = pos & (rr->capacity - 1);
    uint64_t first = rr->capacity - off < n ? rr->capacity - off : n;
    memcpy(rr->data + off, src, first);
    if (n > first)
        memcpy(rr->data, (const uint8_t *)src + first, n - first);
}

static void copy_out(const pw_ringref *rr, uint32_t pos, void *dst, uint64_t n)
{
    uint64_t off = pos & (rr->capacity - 1);
    uint64_t first = rr->capacity - off < n ? rr->capacity - off : n;
    memcpy(dst, rr->data + off, first);
    if (n > first)
        memcpy((uint8_t *)dst + first, rr->data, n - first);
}

/* Writes one record at pos; returns the position after it. */
static uint32_t write_record(pw_ringref *rr, uint32_t pos, const pw_msg *m)
{
    uint32_t hdr[2] = {(uint32_t)m->len, m->type};
    copy_in(rr, pos, hdr, sizeof hdr);
    uint32_t p = pos + PW_REC_HEADER;
    for (int i = 0; i < m->nparts; i++) {
        copy_in(rr, p, m->part[i], m->part_len[i]);
        p += (uint32_t)m->part_len[i];
    }
    return pos + (uint32_t)pw_record_size(m->len);
}

/* ------------------------------------------------------------------ waits */

/*
 * Waits until *word moves away from `seen` (the other side published), the
 * deadline passes (returns 1), a slice ends (0: the caller re-checks) or a
 * signal handler raises (-1). The sleeper protocol (core.h): register as a
 * sleeper, read the sequence, re-check, then sleep on the sequence. A waker
 * that publishes and then sees a sleeper bumps the sequence before waking,
 * so no wake-up is lost in between.
 */
static int wait_for_change(pw_ringref *rr, _Atomic uint64_t *word, uint64_t seen,
                           _Atomic uint32_t *seq, struct pw_waiters *sleepers, int64_t deadline)
{
    if (pw_now_ns() >= deadline)
        return 1;
    int64_t budget = pw_spin_budget();
    if (rr->spin_ns > budget)
        rr->spin_ns = budget;
    if (rr->spin_ns > 0) {
        if (pw_spin_while_equal(word, seen, rr->spin_ns)) {
            /* Spinning paid off: keep the full budget. */
            rr->spin_ns = budget;
            return 0;
        }
        /* The peer is slow or away: spin less next time, so that an idle
         * waiter stops burning CPU quickly. */
        rr->spin_ns /= 2;
    } else if (budget > 0) {
        rr->spin_ns = 2000; /* try spinning again, a little */
    }
    pw_sleeper sl;
    pw_sleeper_enter(sleepers, &sl);
    uint32_t s = atomic_load(seq);
    int rc = 0;
    if (atomic_load(word) == seen)
        rc = pw_sleeper_wait(&sl, seq, s, deadline);
    pw_sleeper_leave(&sl);
    return rc;
}

static void wake_sleepers(_Atomic uint32_t *seq, struct pw_waiters *sleepers)
{
    /* seq_cst: these loads must not be ordered before the publishing store
     * that precedes them (the sleeper does the mirror image). */
    if (pw_waiters_any(sleepers)) {
        atomic_fetch_add(seq, 1);
        pw_waiters_wake(sleepers, seq, INT32_MAX);
    }
}

/*
 * How long a call may wait for a side's lock. The lock is held for
 * microseconds, so a non-blocking call (deadline already passed) still gets
 * a short grace to take it: "Full"/"Empty" should mean full or empty, not
 * "another process was inside put() right now". But the wait always ends:
 * a holder that is stopped (SIGSTOP, Ctrl-Z, a debugger) or a corrupt lock
 * word makes the call raise Full/Empty after the grace or its own timeout,
 * whichever is later, instead of hanging.
 */
#define PW_NOWAIT_LOCK_GRACE_NS 5000000LL

static int64_t lock_deadline_for(int64_t deadline)
{
    if (deadline == PW_FOREVER)
        return deadline;
    int64_t grace = pw_now_ns() + PW_NOWAIT_LOCK_GRACE_NS;
    return deadline > grace ? deadline : grace;
}

/* Locks one side, counting an owner's death; -1 error, 1 timeout, 0 locked. */
static int lock_side(pthread_mutex_t *m, _Atomic uint64_t *died, int64_t deadline)
{
    switch (pw_mutex_lock(m, deadline)) {
    case PW_LOCK_OK:
        return 0;
    case PW_LOCK_OWNER_DIED:
        /* Nothing to repair: the dead process's last publish is the state. */
        atomic_fetch_add_explicit(died, 1, memory_order_relaxed);
        return 0;
    case PW_LOCK_TIMEOUT:
        return 1;
    default:
        return -1;
    }
}

/* ------------------------------------------------------------------ spill */

static uint64_t spill_record_size(uint64_t len) { return PW_SPILL_HEADER + ((len + 7) & ~7ULL); }

/*
 * Finishes a dead holder's intent on one side (layout.h, "The spill area"):
 * the side's lock is held and `count` is its position word's count now.
 */
static void spill_repair(_Atomic uint64_t *intent, _Atomic uint64_t *intent_end,
                         _Atomic uint64_t *offset, uint32_t count)
{
    uint64_t in = atomic_load(intent);
    if (!(in & PW_INTENT_VALID))
        return;
    if ((uint32_t)in != count) /* the publish happened: its offset stands */
        atomic_store(offset, atomic_load(intent_end));
    atomic_store(intent, 0);
}

/* Makes sure the file has pages for [off, end) of the spill; 0, or -1 with errno. */
static int spill_reserve(pw_ringref *rr, uint64_t end)
{
    struct pw_ring *r = rr->ring;
    uint64_t have = atomic_load_explicit(&r->ov_reserved, memory_order_relaxed);
    if (end <= have)
        return 0;
    uint64_t want = end - have < PW_SPILL_CHUNK ? have + PW_SPILL_CHUNK : end;
    /* Every page allocated now: a full /dev/shm is ENOSPC here, not a
     * SIGBUS later (the same rule as creating a segment). */
    int rc = posix_fallocate(rr->spill_fd, (off_t)(r->spill_base + have), (off_t)(want - have));
    if (rc) {
        errno = rc;
        return -1;
    }
    atomic_store_explicit(&r->ov_reserved, want, memory_order_relaxed);
    return 0;
}

/* Writes one spilled record at spill offset off; 0, or -1 with errno. */
static int spill_write(pw_ringref *rr, uint64_t off, const pw_msg *m, uint32_t count)
{
    struct iovec iov[PW_MSG_INLINE_PARTS + 70];
    uint64_t hdr[2] = {m->len, (uint64_t)m->type | ((uint64_t)count << 32)};
    static const uint64_t zero = 0;
    int n = 0;
    iov[n++] = (struct iovec){hdr, sizeof hdr};
    for (int i = 0; i < m->nparts; i++)
        iov[n++] = (struct iovec){(void *)m->part[i], m->part_len[i]};
    uint64_t pad = ((m->len + 7) & ~7ULL) - m->len;
    if (pad)
        iov[n++] = (struct iovec){(void *)&zero, pad};
    uint64_t total = PW_SPILL_HEADER + m->len + pad;
    off_t at = (off_t)(rr->ring->spill_base + off);
    int first = 0;
    while (total) {
        ssize_t w = pwritev(rr->spill_fd, iov + first, n - first, at);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        at += w;
        total -= (uint64_t)w;
        while (first < n && (uint64_t)w >= iov[first].iov_len) {
            w -= (ssize_t)iov[first].iov_len;
            first++;
        }
        if (first < n) {
            iov[first].iov_base = (char *)iov[first].iov_base + w;
            iov[first].iov_len -= (size_t)w;
        }
    }
    return 0;
}

/* Reads n bytes of the spill at offset off; 0, or -1 (errno, or EIO if short). */
static int spill_read(const pw_ringref *rr, uint64_t off, void *dst, uint64_t n)
{
    off_t at = (off_t)(rr->ring->spill_base + off);
    char *p = dst;
    while (n) {
        ssize_t got = pread(rr->spill_fd, p, n, at);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            if (got == 0)
                errno = EIO;
            return -1;
        }
        p += got;
        at += got;
        n -= (uint64_t)got;
    }
    return 0;
}

/* Frees the spill's pages below ov_head (consumers; head lock held). */
static void spill_punch(pw_ringref *rr)
{
    struct pw_ring *r = rr->ring;
    uint64_t done = atomic_load_explicit(&r->ov_punched, memory_order_relaxed);
    uint64_t upto = atomic_load_explicit(&r->ov_head, memory_order_relaxed) & ~4095ULL;
    if (upto <= done)
        return;
    if (fallocate(rr->spill_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  (off_t)(r->spill_base + done), (off_t)(upto - done)) == 0)
        atomic_store_explicit(&r->ov_punched, upto, memory_order_relaxed);
}

static int spill_error(pw_ringref *rr, const char *doing)
{
    int e = errno;
    if (e == ENOSPC || e == ENOMEM || e == EFBIG || e == EDQUOT)
        PyErr_Format(PyExc_OSError, "%s: %s its spill area failed (%s): the message did "
                     "not fit the ring and shared memory has no room for it (`df -h "
                     "/dev/shm`); consume the queue or give it more room", rr->what, doing,
                     strerror(e));
    else
        PyErr_Format(PyExc_OSError, "%s: %s its spill area failed (%s)", rr->what, doing,
                     strerror(e));
    return -1;
}

/*
 * Appends msgs[i..n) to the spill (tail lock held), as many as maxsize
 * allows, after finishing a dead producer's intent; stores the intent for the
 * publish that follows. *count and *bytes advance with each message; returns
 * the index reached, and sets *err (errno) if a write failed.
 */
static __attribute__((noinline, cold)) Py_ssize_t
spill_put(pw_ringref *rr, pw_msg *msgs, Py_ssize_t i, Py_ssize_t n, uint32_t head_count,
          uint32_t before, uint32_t *count, uint64_t *bytes, int *err)
{
    struct pw_ring *r = rr->ring;
    spill_repair(&r->ov_tail_intent, &r->ov_tail_intent_end, &r->ov_tail, before);
    uint64_t ovt = atomic_load_explicit(&r->ov_tail, memory_order_relaxed), start = ovt;
    for (; i < n; i++) {
        if (r->maxsize && (uint32_t)(*count - head_count) >= r->maxsize)
            break;
        uint64_t end = ovt + spill_record_size(msgs[i].len);
        int w;
        if (msgs[i].len >= PW_GIL_FREE_COPY) {
            Py_BEGIN_ALLOW_THREADS
            w = spill_reserve(rr, end);
            if (w == 0)
                w = spill_write(rr, ovt, &msgs[i], *count);
            Py_END_ALLOW_THREADS
        } else {
            w = spill_reserve(rr, end);
            if (w == 0)
                w = spill_write(rr, ovt, &msgs[i], *count);
        }
        if (w < 0) {
            *err = errno;
            break;
        }
        ovt = end;
        (*count)++;
        *bytes += msgs[i].len;
    }
    if (ovt != start) { /* the intent, before the caller's publish */
        atomic_store(&r->ov_tail_intent_end, ovt);
        atomic_store(&r->ov_tail_intent, PW_INTENT_VALID | before);
    }
    return i;
}

/* After the publish: the spill's new end, then the intent is done. */
static __attribute__((noinline, cold)) void spill_put_done(struct pw_ring *r)
{
    atomic_store(&r->ov_tail, atomic_load(&r->ov_tail_intent_end));
    atomic_store(&r->ov_tail_intent, 0);
}

/* -------------------------------------------------------------------- put */

int pw_ring_put(pw_ringref *rr, pw_msg *msgs, Py_ssize_t n, Py_ssize_t *done, int64_t deadline)
{
    struct pw_ring *r = rr->ring;
    const uint64_t cap = rr->capacity;
    const int64_t lock_deadline = lock_deadline_for(deadline);
    for (;;) {
        int rc = lock_side(&r->tail_lock, &r->tail_owner_died, lock_deadline);
        if (rc)
            return rc;
        uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
        uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
        uint32_t pos = pw_pos(tail), count = pw_count(tail);
        uint64_t bytes = 0;
        Py_ssize_t first = *done, i = first;
        /* While the spill holds messages (or a dead producer's intent is
         * open), everything goes there: ring records always come first. A
         * stale ov_head only says "not empty", which is always in order. */
        int spilling = rr->spill &&
            ((atomic_load_explicit(&r->ov_tail_intent, memory_order_relaxed) & PW_INTENT_VALID) ||
             atomic_load_explicit(&r->ov_tail, memory_order_relaxed) != atomic_load(&r->ov_head));
        if (!spilling) {
            for (; i < n; i++) {
                uint64_t need = pw_record_size(msgs[i].len);
                if (need > cap - (uint32_t)(pos - pw_pos(head)))
                    break;
                if (r->maxsize && (uint32_t)(count - pw_count(head)) >= r->maxsize)
                    break;
                if (msgs[i].len >= PW_GIL_FREE_COPY) {
                    uint32_t p = pos;
                    Py_BEGIN_ALLOW_THREADS
                    p = write_record(rr, p, &msgs[i]);
                    Py_END_ALLOW_THREADS
                    pos = p;
                } else {
                    pos = write_record(rr, pos, &msgs[i]);
                }
                count++;
                bytes += msgs[i].len;
            }
        }
        /* What the ring cannot take spills: with maxsize == 0 anything, in a
         * bounded queue only a message larger than the ring (the others wait
         * for room, as documented). */
        int spilled = 0, spill_err = 0;
        if (i < n && rr->spill &&
            (spilling || !r->maxsize || msgs[i].len > pw_ring_max_payload(cap))) {
            Py_ssize_t j = spill_put(rr, msgs, i, n, pw_count(head), pw_count(tail), &count,
                                     &bytes, &spill_err);
            spilled = j > i;
            i = j;
        }
        if (i > first) {
            /* The publishing store: the records and their count appear at once. */
            atomic_store(&r->tail, pw_pack(count, pos));
            atomic_store_explicit(&r->total_in,
                                  pw_widen_count(atomic_load_explicit(&r->total_in,
                                                                      memory_order_relaxed),
                                                 count), memory_order_relaxed);
            atomic_store_explicit(&r->bytes_in,
                                  atomic_load_explicit(&r->bytes_in, memory_order_relaxed) + bytes,
                                  memory_order_relaxed);
            if (spilled)
                spill_put_done(r);
        }
        pw_mutex_unlock(&r->tail_lock);
        if (i > first)
            wake_sleepers(&r->not_empty_seq, &r->consumers);
        *done = i;
        if (spill_err) {
            errno = spill_err;
            return spill_error(rr, "writing to");
        }
        if (i == n)
            return 0;
        if (i == first) {
            /* No room: wait for a consumer to move the head. */
            rc = wait_for_change(rr, &r->head, head, &r->not_full_seq, &r->producers,
                                 deadline);
            if (rc < 0)
                return rc;
            if (rc == 1) {
                /* Timed out: one last look, in case room appeared meanwhile. */
                if (atomic_load(&r->head) == head)
                    return 1;
            }
        }
    }
}

/* ---------------------------------------------------------------- watchers */

int pw_ring_wait_word(pw_ringref *rr, int side, uint64_t token, int64_t deadline)
{
    struct pw_ring *r = rr->ring;
    _Atomic uint64_t *word = side ? &r->head : &r->tail;
    _Atomic uint32_t *seq = side ? &r->not_full_seq : &r->not_empty_seq;
    struct pw_waiters *w = side ? &r->producers : &r->consumers;
    /* No spin: a watcher is a background thread, off the data path. Slices
     * that end without a wake-up sleep again here, so an idle watcher costs
     * its process nothing; any wake-up (a publish, or pw_ring_kick) returns. */
    for (;;) {
        pw_sleeper sl;
        pw_sleeper_enter(w, &sl);
        uint32_t s = atomic_load(seq);
        int rc = 0;
        if (atomic_load(word) == token)
            rc = pw_sleeper_wait(&sl, seq, s, deadline);
        pw_sleeper_leave(&sl);
        if (rc != 0 || atomic_load(word) != token || atomic_load(seq) != s)
            return rc;
    }
}

void pw_ring_kick(pw_ringref *rr)
{
    struct pw_ring *r = rr->ring;
    wake_sleepers(&r->not_empty_seq, &r->consumers);
    wake_sleepers(&r->not_full_seq, &r->producers);
}

/* -------------------------------------------------------------------- get */

static int bad_record(pw_ringref *rr, const char *why, uint64_t a, uint64_t b)
{
    return pw_segment_error("%s is corrupt: %s (%llu, %llu); no message was taken", rr->what,
                            why, (unsigned long long)a, (unsigned long long)b);
}

/* Where a record's payload is: the ring (at a wrapping position) or the spill. */
typedef struct {
    int spill;
    uint64_t pos; /* ring: the record's position; spill: its offset */
} rec_src;

/* Copies n bytes at `off` into the record's payload; 0, or -1 (spill read failed). */
static int src_copy(pw_ringref *rr, const rec_src *src, uint64_t off, void *dst, uint64_t n)
{
    if (src->spill)
        return spill_read(rr, src->pos + PW_SPILL_HEADER + off, dst, n);
    copy_out(rr, (uint32_t)(src->pos + PW_REC_HEADER + off), dst, n);
    return 0;
}

static int src_copy_gil_free(pw_ringref *rr, const rec_src *src, uint64_t off, void *dst,
                             uint64_t n)
{
    if (n < PW_GIL_FREE_COPY)
        return src_copy(rr, src, off, dst, n);
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = src_copy(rr, src, off, dst, n);
    Py_END_ALLOW_THREADS
    return rc;
}

static int spill_read_failed(pw_ringref *rr, PyObject *obj)
{
    Py_XDECREF(obj);
    return spill_error(rr, "reading");
}

/* Allocates the payload object(s) for a record and copies it out. */
static int read_record(pw_ringref *rr, const rec_src *src, uint32_t type, uint64_t len,
                       pw_record *out)
{
    PyObject *obj;
    if (type == PW_REC_PICKLE_OOB) {
        uint64_t nparts;
        if (len < 8)
            return bad_record(rr, "out-of-band record too short", len, 8);
        if (src_copy(rr, src, 0, &nparts, 8) < 0)
            return spill_read_failed(rr, NULL);
        nparts &= 0xffffffffu;
        if (nparts == 0 || nparts > 64 || 8 + 8 * nparts > len)
            return bad_record(rr, "out-of-band record has a bad part count", nparts, len);
        uint64_t lens[64], sum = 8 + 8 * nparts;
        if (src_copy(rr, src, 8, lens, 8 * nparts) < 0)
            return spill_read_failed(rr, NULL);
        for (uint64_t i = 0; i < nparts; i++) {
            if (lens[i] > len)
                return bad_record(rr, "out-of-band part longer than its record", lens[i], len);
            sum += lens[i];
        }
        if (sum != len)
            return bad_record(rr, "out-of-band parts do not add up", sum, len);
        obj = PyList_New((Py_ssize_t)nparts);
        if (!obj)
            return -1;
        uint64_t p = 8 + 8 * nparts;
        for (uint64_t i = 0; i < nparts; i++) {
            /* Part 0 is the pickle; the others become mutable buffers, as
             * out-of-band buffers are (numpy arrays stay writable). */
            PyObject *part = i == 0 ? PyBytes_FromStringAndSize(NULL, (Py_ssize_t)lens[i])
                                    : PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)lens[i]);
            if (!part) {
                Py_DECREF(obj);
                return -1;
            }
            char *dst = i == 0 ? PyBytes_AS_STRING(part) : PyByteArray_AS_STRING(part);
            PyList_SET_ITEM(obj, (Py_ssize_t)i, part);
            if (src_copy_gil_free(rr, src, p, dst, lens[i]) < 0)
                return spill_read_failed(rr, obj);
            p += lens[i];
        }
    } else {
        char *dst;
        if (type == PW_REC_BYTEARRAY) {
            obj = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)len);
            dst = obj ? PyByteArray_AS_STRING(obj) : NULL;
        } else {
            obj = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
            dst = obj ? PyBytes_AS_STRING(obj) : NULL;
        }
        if (!obj)
            return -1;
        if (src_copy_gil_free(rr, src, 0, dst, len) < 0)
            return spill_read_failed(rr, obj);
    }
    out->type = type;
    out->payload = obj;
    return 0;
}

/*
 * Takes the oldest spilled record (head lock held; the ring is empty up to the
 * tail snapshot and `count` says more messages were published). *ovh is the
 * spill offset reached in this batch, 0 on the first call (then the intent of
 * a dead consumer is finished first and it is loaded). Stores the intent for
 * the caller's publish. 0 taken (*len its payload bytes), -1 error.
 */
static __attribute__((noinline, cold)) int
spill_take(pw_ringref *rr, uint32_t before, uint32_t count, uint64_t *ovh, int *spilled,
           pw_record *out, uint64_t *len)
{
    struct pw_ring *r = rr->ring;
    if (!*spilled)
        *ovh = atomic_load_explicit(&r->ov_head, memory_order_relaxed);
    uint64_t hdr[2];
    if (spill_read(rr, *ovh, hdr, sizeof hdr) < 0)
        return spill_error(rr, "reading");
    uint32_t type = (uint32_t)hdr[1], seq = (uint32_t)(hdr[1] >> 32);
    /* Checked like a ring record: the spill is untrusted too. */
    if (seq != count || type == 0 || type >= PW_REC_STREAM_FIRST ||
        hdr[0] > PW_SPILL_MAX_PAYLOAD)
        return bad_record(rr, "spilled record does not follow (count, type)", seq, type);
    rec_src src = {1, *ovh};
    if (read_record(rr, &src, type, hdr[0], out) < 0)
        return -1;
    *ovh += spill_record_size(hdr[0]);
    *len = hdr[0];
    /* The intent, before the caller's publish. */
    atomic_store(&r->ov_head_intent_end, *ovh);
    if (!*spilled)
        atomic_store(&r->ov_head_intent, PW_INTENT_VALID | before);
    *spilled = 1;
    return 0;
}

/* After the publish: the spill's new start, the intent done, pages freed. */
static __attribute__((noinline, cold)) void spill_take_done(pw_ringref *rr)
{
    struct pw_ring *r = rr->ring;
    atomic_store(&r->ov_head, atomic_load(&r->ov_head_intent_end));
    atomic_store(&r->ov_head_intent, 0);
    spill_punch(rr);
}

Py_ssize_t pw_ring_get(pw_ringref *rr, pw_record *out, Py_ssize_t max, int64_t deadline)
{
    struct pw_ring *r = rr->ring;
    const int64_t lock_deadline = lock_deadline_for(deadline);
    for (;;) {
        int rc = lock_side(&r->head_lock, &r->head_owner_died, lock_deadline);
        if (rc)
            return rc < 0 ? -1 : 0;
        uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
        uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
        uint32_t pos = pw_pos(head), count = pw_count(head);
        uint64_t bytes = 0, ovh = 0;
        int spilled = 0;
        /* A consumer killed inside a spilled take left its intent: finish it
         * before the count moves (see layout.h). */
        if (rr->spill && (atomic_load_explicit(&r->ov_head_intent, memory_order_relaxed) &
                          PW_INTENT_VALID))
            spill_repair(&r->ov_head_intent, &r->ov_head_intent_end, &r->ov_head, count);
        Py_ssize_t taken = 0;
        int err = 0;
        while (taken < max && count != pw_count(tail)) {
            /* Everything read from the ring is checked before it is used: a
             * corrupt length must not send the copy outside the mapping. */
            uint32_t used = pw_pos(tail) - pos;
            uint32_t hdr[2];
            if (used < PW_REC_HEADER || used > rr->capacity) {
                if (used == 0 && rr->spill) {
                    /* The ring is empty and messages remain: spilled ones. */
                    uint64_t len;
                    if (spill_take(rr, pw_count(head), count, &ovh, &spilled, &out[taken],
                                   &len) < 0) {
                        err = -1;
                        break;
                    }
                    count++;
                    bytes += len;
                    taken++;
                    continue;
                }
                err = bad_record(rr, "message count and byte positions disagree", used,
                                 pw_count(tail) - count);
                break;
            }
            copy_out(rr, pos, hdr, sizeof hdr);
            uint64_t len = hdr[0], need = pw_record_size(len);
            if (need > used) {
                err = bad_record(rr, "record longer than the published data", need, used);
                break;
            }
            if (hdr[1] == 0 || hdr[1] >= PW_REC_MAX_) {
                err = bad_record(rr, "unknown record type", hdr[1], len);
                break;
            }
            rec_src src = {0, pos};
            if (read_record(rr, &src, hdr[1], len, &out[taken]) < 0) {
                err = -1;
                break;
            }
            pos += (uint32_t)need;
            count++;
            bytes += len;
            taken++;
        }
        if (taken) {
            atomic_store(&r->head, pw_pack(count, pos));
            atomic_store_explicit(&r->total_out,
                                  pw_widen_count(atomic_load_explicit(&r->total_out,
                                                                      memory_order_relaxed),
                                                 count), memory_order_relaxed);
            atomic_store_explicit(&r->bytes_out,
                                  atomic_load_explicit(&r->bytes_out, memory_order_relaxed) +
                                      bytes, memory_order_relaxed);
            if (spilled)
                spill_take_done(rr);
        }
        pw_mutex_unlock(&r->head_lock);
        if (taken)
            wake_sleepers(&r->not_full_seq, &r->producers);
        if (taken) {
            /* Deliver what was taken; a bad record after them raises on the
             * next call, with nothing lost in between. */
            if (err)
                PyErr_Clear();
            return taken;
        }
        if (err)
            return -1;
        rc = wait_for_change(rr, &r->tail, tail, &r->not_empty_seq, &r->consumers,
                             deadline);
        if (rc < 0)
            return -1;
        if (rc == 1 && atomic_load(&r->tail) == tail)
            return 0;
    }
}

/* ------------------------------------------------------------------- take */

void pw_ring_copy_out(const pw_ringref *rr, uint32_t pos, void *dst, uint64_t n)
{
    copy_out(rr, pos, dst, n);
}

void pw_ring_copy_in(pw_ringref *rr, uint32_t pos, const void *src, uint64_t n)
{
    copy_in(rr, pos, src, n);
}

int pw_ring_take(pw_ringref *rr, pw_take_fn fn, void *ctx, int *fn_rc)
{
    struct pw_ring *r = rr->ring;
    if (lock_side(&r->head_lock, &r->head_owner_died, PW_FOREVER) < 0)
        return -1;
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    uint32_t pos = pw_pos(head), count = pw_count(head);
    if (count == pw_count(tail)) {
        pw_mutex_unlock(&r->head_lock);
        return 0;
    }
    /* The same checks as pw_ring_get: nothing read from the ring is trusted. */
    uint32_t used = pw_pos(tail) - pos, hdr[2];
    int err = 0;
    if (used < PW_REC_HEADER || used > rr->capacity) {
        err = bad_record(rr, "message count and byte positions disagree", used,
                         pw_count(tail) - count);
    } else {
        copy_out(rr, pos, hdr, sizeof hdr);
        if (pw_record_size(hdr[0]) > used)
            err = bad_record(rr, "record longer than the published data",
                             pw_record_size(hdr[0]), used);
    }
    if (err) {
        pw_mutex_unlock(&r->head_lock);
        return -1;
    }
    *fn_rc = fn(ctx, rr, pos + PW_REC_HEADER, hdr[1], hdr[0]);
    pos += (uint32_t)pw_record_size(hdr[0]);
    atomic_store(&r->head, pw_pack(count + 1, pos));
    atomic_store_explicit(&r->total_out,
                          pw_widen_count(atomic_load_explicit(&r->total_out,
                                                              memory_order_relaxed),
                                         count + 1), memory_order_relaxed);
    atomic_store_explicit(&r->bytes_out,
                          atomic_load_explicit(&r->bytes_out, memory_order_relaxed) + hdr[0],
                          memory_order_relaxed);
    pw_mutex_unlock(&r->head_lock);
    wake_sleepers(&r->not_full_seq, &r->producers);
    return 1;
}
