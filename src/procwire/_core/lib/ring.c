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
 * Waiting is pw_wait_until (wait.c): spin while the peer runs on another CPU,
 * then sleep on the side's futex sequence word. Wakers only make the system
 * call when someone is actually asleep.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* fallocate, FALLOC_FL_PUNCH_HOLE */
#endif
#include "ring.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

uint64_t pw_ring_segment_size(uint64_t capacity)
{
    return pw_ring_data_offset(sizeof(struct pw_header) + sizeof(struct pw_ring)) + capacity;
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
    if (!pw_ring_capacity_ok(cap))
        return pw_fail(PW_ECORRUPT, "%s is corrupt: ring capacity %llu is not a power of two "
                       "between %u and %u", what, (unsigned long long)cap,
                       PW_RING_MIN_CAPACITY, PW_RING_MAX_CAPACITY);
    if (cap > data_bytes)
        return pw_fail(PW_ECORRUPT, "%s is corrupt: ring capacity %llu exceeds the %llu data "
                       "bytes mapped", what, (unsigned long long)cap,
                       (unsigned long long)data_bytes);
    if (r->maxsize > INT32_MAX)
        return pw_fail(PW_ECORRUPT, "%s is corrupt: maxsize %u", what, r->maxsize);
    uint64_t head = atomic_load(&((struct pw_ring *)r)->head);
    uint64_t tail = atomic_load(&((struct pw_ring *)r)->tail);
    if ((uint32_t)(pw_pos(tail) - pw_pos(head)) > cap || (pw_pos(head) | pw_pos(tail)) & 7)
        return pw_fail(PW_ECORRUPT, "%s is corrupt: head and tail positions are inconsistent",
                       what);
    /* The robust mutexes' bytes, before glibc trusts them (mutex.c). */
    int rc = pw_mutex_check(&r->tail_lock, what);
    return rc ? rc : pw_mutex_check(&r->head_lock, what);
}

void pw_ringref_init(pw_ringref *rr, struct pw_ring *r, uint8_t *data, const char *what)
{
    /* No spill until pw_ring_set_spill, no cancel flag until the caller sets one. */
    *rr = (pw_ringref){.ring = r, .data = data, .capacity = r->capacity, .what = what,
                       .spill_fd = -1};
    pw_spinner_init(&rr->spin);
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

void pw_msg_single(pw_msg *m, uint32_t type, const void *buf, uint64_t len)
{
    m->type = type;
    m->len = len;
    m->nparts = 1;
    m->part = m->part_inline;
    m->part_len = m->part_len_inline;
    m->part[0] = buf;
    m->part_len[0] = len;
}

/* ------------------------------------------------------------- byte copies */

void pw_ring_copy_in(pw_ringref *rr, uint32_t pos, const void *src, uint64_t n)
{
    uint64_t off = pos & (rr->capacity - 1);
    uint64_t first = rr->capacity - off < n ? rr->capacity - off : n;
    memcpy(rr->data + off, src, first);
    if (n > first)
        memcpy(rr->data, (const uint8_t *)src + first, n - first);
}

/* Writes one record at pos; returns the position after it. */
static uint32_t write_record(pw_ringref *rr, uint32_t pos, const pw_msg *m)
{
    uint32_t hdr[2] = {(uint32_t)m->len, m->type};
    pw_ring_copy_in(rr, pos, hdr, sizeof hdr);
    uint32_t p = pos + PW_REC_HEADER;
    for (int i = 0; i < m->nparts; i++) {
        pw_ring_copy_in(rr, p, m->part[i], m->part_len[i]);
        p += (uint32_t)m->part_len[i];
    }
    return pos + (uint32_t)pw_record_size(m->len);
}

/* ------------------------------------------------------------------ sides */

/*
 * The ring's two sides mirror each other: producers hold tail_lock and
 * publish the tail word, consumers hold head_lock and publish the head. A
 * side's publish wakes the threads waiting for its word to move: the other
 * side's sleepers.
 */
enum { TAIL, HEAD };
struct side {
    pthread_mutex_t *lock;
    _Atomic uint64_t *word, *other;               /* its position word; the other side's */
    _Atomic uint64_t *total, *bytes, *owner_died; /* its statistics (advisory)          */
    _Atomic uint32_t *cpu;            /* CPU + 1 of its last publisher (spin policy) */
    _Atomic uint32_t *seq;            /* bumped after its publish, to wake ...       */
    struct pw_waiters *sleepers;      /* ... the threads waiting for its word        */
};

static inline __attribute__((always_inline)) struct side side_of(struct pw_ring *r, int which)
{
    if (which == HEAD)
        return (struct side){&r->head_lock, &r->head, &r->tail, &r->total_out, &r->bytes_out,
                             &r->head_owner_died, &r->head_cpu, &r->not_full_seq, &r->producers};
    return (struct side){&r->tail_lock, &r->tail, &r->head, &r->total_in, &r->bytes_in,
                         &r->tail_owner_died, &r->tail_cpu, &r->not_empty_seq, &r->consumers};
}

struct moved {
    _Atomic uint64_t *word;
    uint64_t seen;
    _Atomic uint32_t *seq; /* a watcher's: any wake-up ends the wait too (NULL: not) */
    uint32_t seq_seen;
};

static int word_moved(void *ctx)
{
    struct moved *m = ctx;
    return atomic_load(m->word) != m->seen || (m->seq && atomic_load(m->seq) != m->seq_seen);
}

/* Waits until side `which`'s word moves away from `seen`: it published. Its
 * last publisher's CPU decides the spin. A watcher (pw_ring_wait_word) never
 * spins, is never cancelled, and returns at any wake-up too. */
static int wait_for_move(pw_ringref *rr, int which, uint64_t seen, int watcher, int64_t deadline)
{
    const struct side s = side_of(rr->ring, which);
    struct moved m = {s.word, seen, watcher ? s.seq : NULL, atomic_load(s.seq)};
    pw_wait w = {.done = word_moved, .ctx = &m, .waiters = s.sleepers, .futex = s.seq,
                 .mask = PW_FUTEX_ANY, .spin = watcher ? NULL : &rr->spin,
                 .peer_cpu = s.cpu, .cancel = watcher ? NULL : rr->cancel,
                 .slice = PW_WAIT_LONG_SLICE_NS};
    return pw_wait_until(&w, deadline);
}

/* Found no room (no message): unlocks side `mine` and waits for the other
 * side to move its word from seen. PW_OK to look again, PW_TIMEOUT, or an
 * error. */
static int unlock_and_wait(pw_ringref *rr, int mine, uint64_t seen, int64_t deadline)
{
    pw_mutex_unlock(side_of(rr->ring, mine).lock);
    int rc = wait_for_move(rr, !mine, seen, 0, deadline);
    if (rc == PW_TIMEOUT && atomic_load(side_of(rr->ring, !mine).word) != seen)
        return PW_OK; /* timed out, but it moved meanwhile: one last look */
    return rc;
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

static void drop_dead_view(pw_ringref *rr);

/* Locks a side, counting an owner's death (the consumers' also drop a dead
 * reader's view; otherwise nothing to repair: the dead process's last publish
 * is the state), and reads its word and the other side's published one:
 * PW_OK, PW_TIMEOUT, PW_CANCELLED or an error. */
static inline __attribute__((always_inline)) int
lock_side(pw_ringref *rr, int which, int64_t deadline, uint64_t *mine, uint64_t *theirs)
{
    const struct side s = side_of(rr->ring, which);
    int rc = pw_mutex_lock(s.lock, deadline, rr->cancel);
    if (rc == PW_OWNER_DIED) {
        atomic_fetch_add_explicit(s.owner_died, 1, memory_order_relaxed);
        if (which == HEAD)
            drop_dead_view(rr);
    } else if (rc) {
        return rc;
    }
    *mine = atomic_load_explicit(s.word, memory_order_relaxed);
    *theirs = atomic_load_explicit(s.other, memory_order_acquire);
    return PW_OK;
}

int pw_ring_bad_record(const pw_ringref *rr, const char *why, uint64_t a, uint64_t b)
{
    return pw_fail(PW_ECORRUPT, "%s is corrupt: %s (%llu, %llu); no message was taken",
                   rr->what, why, (unsigned long long)a, (unsigned long long)b);
}

/* ------------------------------------------------------------------ spill */

void pw_ring_init_spill(struct pw_ring *r, uint64_t base)
{
    r->ring_flags |= PW_RING_SPILL;
    r->spill_base = base;
}

int pw_ring_set_spill(pw_ringref *rr, int fd)
{
    if (fd < 0)
        return pw_fail(PW_EINVAL, "%s: a spill descriptor must be >= 0", rr->what);
    /* Every queue procwire makes has one (layout 4): a ring without is not one. */
    if (!(rr->ring->ring_flags & PW_RING_SPILL))
        return pw_fail(PW_ECORRUPT, "%s is corrupt: its ring has no spill area", rr->what);
    rr->spill_fd = fd;
    rr->spill = 1;
    return PW_OK;
}

static uint64_t spill_record_size(uint64_t len) { return PW_SPILL_HEADER + ((len + 7) & ~7ULL); }

/* 1 while the spill holds messages or a dead producer's intent is open
 * (tail lock held): producers must append there, never to the ring. */
static inline int spill_busy(struct pw_ring *r)
{
    return (atomic_load_explicit(&r->ov_tail_intent, memory_order_relaxed) & PW_INTENT_VALID) ||
           atomic_load_explicit(&r->ov_tail, memory_order_relaxed) != atomic_load(&r->ov_head);
}

/* Finishes the intent on one side (layout.h, "The spill area"): a dead
 * holder's, or the caller's own after its publish. The side's lock is held
 * and `count` is its position word's count now. */
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

static int spill_failed(const pw_ringref *rr, const char *doing, int err)
{
    if (err == ENOSPC || err == ENOMEM || err == EFBIG || err == EDQUOT)
        pw_fail(PW_ESYS, "%s: %s its spill area failed (%s): the message did not fit the "
                "ring and shared memory has no room for it (`df -h /dev/shm`); consume the "
                "queue or make room", rr->what, doing, strerror(err));
    else
        pw_fail(PW_ESYS, "%s: %s its spill area failed (%s)", rr->what, doing, strerror(err));
    return pw_fail_errno(err);
}

/* Makes sure the file has pages up to spill offset end; 0 or an errno. */
static int spill_reserve(pw_ringref *rr, uint64_t end)
{
    struct pw_ring *r = rr->ring;
    uint64_t have = atomic_load_explicit(&r->ov_reserved, memory_order_relaxed);
    if (end <= have)
        return 0;
    uint64_t want = end - have < PW_SPILL_CHUNK ? have + PW_SPILL_CHUNK : end;
    /* Every page allocated now: a full /dev/shm is ENOSPC here, not a SIGBUS
     * later (the rule for creating a segment too). */
    int rc = posix_fallocate(rr->spill_fd, (off_t)(r->spill_base + have), (off_t)(want - have));
    if (rc == 0)
        atomic_store_explicit(&r->ov_reserved, want, memory_order_relaxed);
    return rc;
}

/* Reads (preadv) or writes (pwritev) all the n byte ranges of iov, from spill
 * offset off on; 0 or an errno (EIO: the file ended). */
static int spill_io(const pw_ringref *rr, int writing, struct iovec *iov, int n, uint64_t off)
{
    off_t at = (off_t)(rr->ring->spill_base + off);
    for (;;) {
        for (; n && iov->iov_len == 0; n--) /* the ranges done (or empty) */
            iov++;
        if (!n)
            return 0;
        ssize_t done = writing ? pwritev(rr->spill_fd, iov, n, at)
                               : preadv(rr->spill_fd, iov, n, at);
        if (done < 0 && errno == EINTR)
            continue;
        if (done <= 0)
            return done == 0 ? EIO : errno;
        at += done;
        for (; (size_t)done > iov->iov_len; n--, iov++)
            done -= (ssize_t)iov->iov_len;
        iov->iov_base = (char *)iov->iov_base + done;
        iov->iov_len -= (size_t)done;
    }
}

/* Writes one spilled record at spill offset off; 0 or an errno. */
static int spill_write(pw_ringref *rr, uint64_t off, const pw_msg *m, uint32_t count)
{
    struct iovec iov[PW_MSG_INLINE_PARTS + 72];
    uint64_t hdr[2] = {m->len, (uint64_t)m->type | ((uint64_t)count << 32)};
    static const uint64_t zero = 0;
    int n = 0;
    if (m->nparts + 2 > (int)(sizeof iov / sizeof iov[0]))
        return EINVAL;
    iov[n++] = (struct iovec){hdr, sizeof hdr};
    for (int i = 0; i < m->nparts; i++)
        iov[n++] = (struct iovec){(void *)m->part[i], m->part_len[i]};
    uint64_t pad = ((m->len + 7) & ~7ULL) - m->len;
    if (pad)
        iov[n++] = (struct iovec){(void *)&zero, pad};
    return spill_io(rr, 1, iov, n, off);
}

/* Reads n bytes of the spill at offset off; 0 or an errno (EIO if short). */
static int spill_read(const pw_ringref *rr, uint64_t off, void *dst, uint64_t n)
{
    struct iovec iov = {dst, n};
    return spill_io(rr, 0, &iov, 1, off);
}

void pw_ring_copy_out(const pw_ringref *rr, uint32_t pos, void *dst, uint64_t n)
{
    if (__builtin_expect(!rr->src_spill, 1)) {
        pw_ring_read(rr, pos, dst, n);
        return;
    }
    /* A spilled record's callback reads the spill. */
    int err = spill_read(rr, rr->src_off + pos, dst, n);
    if (err) { /* only if the file was truncated under us: reported after the callback */
        memset(dst, 0, n);
        ((pw_ringref *)rr)->src_err = err;
    }
}

void pw_ring_copy_out_slow(const pw_ringref *rr, uint32_t pos, void *dst, uint64_t n)
{
    if (n >= PW_LARGE_COPY)
        PW_UNBLOCKED(pw_ring_copy_out(rr, pos, dst, n));
    else
        pw_ring_copy_out(rr, pos, dst, n);
}

/* Frees the spill's pages below ov_head (head lock held). */
static void spill_punch(pw_ringref *rr)
{
    struct pw_ring *r = rr->ring;
    uint64_t done = atomic_load_explicit(&r->ov_punched, memory_order_relaxed);
    uint64_t upto = atomic_load_explicit(&r->ov_head, memory_order_relaxed) & ~4095ULL;
    if (upto > done && fallocate(rr->spill_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                 (off_t)(r->spill_base + done), (off_t)(upto - done)) == 0)
        atomic_store_explicit(&r->ov_punched, upto, memory_order_relaxed);
}

/*
 * Appends msgs[i..n) to the spill (tail lock held) as far as maxsize allows,
 * after finishing a dead producer's intent; stores the intent for the caller's
 * publish. *count and *bytes advance per message; returns the index reached,
 * with *err an errno if a write failed.
 */
static __attribute__((noinline, cold)) size_t
spill_put(pw_ringref *rr, const pw_msg *msgs, size_t i, size_t n, uint32_t head_count,
          uint32_t before, uint32_t *count, uint64_t *bytes, int *err)
{
    struct pw_ring *r = rr->ring;
    spill_repair(&r->ov_tail_intent, &r->ov_tail_intent_end, &r->ov_tail, before);
    uint64_t ovt = atomic_load_explicit(&r->ov_tail, memory_order_relaxed), start = ovt;
    for (; i < n; i++) {
        if (r->maxsize && (uint32_t)(*count - head_count) >= r->maxsize)
            break;
        if (msgs[i].len > PW_SPILL_MAX_PAYLOAD) {
            *err = EFBIG;
            break;
        }
        uint64_t end = ovt + spill_record_size(msgs[i].len);
        int w;
        if (msgs[i].len >= PW_LARGE_COPY)
            PW_UNBLOCKED(w = spill_reserve(rr, end); if (!w) w = spill_write(rr, ovt, &msgs[i], *count));
        else if (!(w = spill_reserve(rr, end)))
            w = spill_write(rr, ovt, &msgs[i], *count);
        if (w) {
            *err = w;
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

/*
 * Hands the oldest spilled record to fn (head lock held; the ring is empty up
 * to the tail snapshot and `count` says more were published). *ovh is the
 * spill offset this take has reached, loaded on the first call (*spilled 0).
 * Stores the intent for the caller's publish. Returns fn's result (0 or 1:
 * consumed, *len its payload bytes) or a negative status (not consumed).
 */
static __attribute__((noinline, cold)) int
spill_take(pw_ringref *rr, pw_take_fn fn, void *ctx, uint32_t before, uint32_t count,
           uint64_t *ovh, int *spilled, uint64_t *len)
{
    struct pw_ring *r = rr->ring;
    if (!*spilled)
        *ovh = atomic_load_explicit(&r->ov_head, memory_order_relaxed);
    uint64_t hdr[2];
    int e = spill_read(rr, *ovh, hdr, sizeof hdr);
    if (e)
        return spill_failed(rr, "reading", e);
    uint32_t type = (uint32_t)hdr[1], seq = (uint32_t)(hdr[1] >> 32);
    /* Checked like a ring record: the spill is untrusted too. */
    if (seq != count || type == 0 || type >= PW_REC_STREAM_FIRST || hdr[0] > PW_SPILL_MAX_PAYLOAD)
        return pw_ring_bad_record(rr, "spilled record does not follow", seq, type);
    uint64_t size = spill_record_size(hdr[0]);
    uint8_t last;
    e = spill_read(rr, *ovh + size - 1, &last, 1); /* the file holds all of it */
    if (e)
        return spill_failed(rr, "reading", e);
    rr->src_spill = 1;
    rr->src_err = 0;
    rr->src_off = *ovh + PW_SPILL_HEADER;
    int f = fn(ctx, rr, 0, type, hdr[0]);
    rr->src_spill = 0;
    if (f < 0)
        return f;
    if (rr->src_err) /* the file shrank under us (truncated): not consumed */
        return spill_failed(rr, "reading", rr->src_err);
    *ovh += size;
    *len = hdr[0];
    /* The intent, before the caller's publish. */
    atomic_store(&r->ov_head_intent_end, *ovh);
    if (!*spilled)
        atomic_store(&r->ov_head_intent, PW_INTENT_VALID | before);
    *spilled = 1;
    return f;
}

/* A side's publishing store: the producers' makes the records before pos,
 * count messages in all, appear at once; the consumers' frees them. Then the
 * advisory statistics. The side's lock held. */
static inline __attribute__((always_inline)) void
publish_side(struct pw_ring *r, int which, uint32_t count, uint32_t pos, uint64_t bytes)
{
    const struct side s = side_of(r, which);
    atomic_store(s.word, pw_pack(count, pos));
    /* Only the side's lock holder writes these: plain loads and stores. */
    uint64_t total = atomic_load_explicit(s.total, memory_order_relaxed);
    atomic_store_explicit(s.total, pw_widen_count(total, count), memory_order_relaxed);
    uint64_t sum = atomic_load_explicit(s.bytes, memory_order_relaxed);
    atomic_store_explicit(s.bytes, sum + bytes, memory_order_relaxed);
    pw_publish_cpu(s.cpu); /* for the other side's spin policy */
}

/* Unlocks a side; if it published, wakes the threads waiting for that. */
static inline __attribute__((always_inline)) void unlock_side(struct pw_ring *r, int which,
                                                              int published)
{
    const struct side s = side_of(r, which);
    pw_mutex_unlock(s.lock);
    if (published)
        pw_waiters_notify_all(s.sleepers, s.seq);
}

/* 1 if a record of `need` bytes fits after the tail (pos, count). */
static inline int room_for(const struct pw_ring *r, uint64_t cap, uint64_t head, uint32_t pos,
                           uint32_t count, uint64_t need)
{
    if (need > cap - (uint32_t)(pos - pw_pos(head)))
        return 0;
    return !(r->maxsize && (uint32_t)(count - pw_count(head)) >= r->maxsize);
}

/* -------------------------------------------------------------------- put */

int pw_ring_put(pw_ringref *rr, const pw_msg *msgs, size_t n, size_t *done, int64_t deadline)
{
    struct pw_ring *r = rr->ring;
    const uint64_t cap = rr->capacity;
    const int64_t lock_deadline = lock_deadline_for(deadline);
    int64_t grace = -1; /* until when a full ring is waited for before spilling */
    for (;;) {
        uint64_t tail, head;
        int rc = lock_side(rr, TAIL, lock_deadline, &tail, &head);
        if (rc)
            return rc;
        uint32_t pos = pw_pos(tail), count = pw_count(tail);
        uint64_t bytes = 0;
        size_t first = *done, i = first;
        /* While the spill holds messages (or a dead producer's intent is
         * open), everything goes there: ring records always come first. A
         * stale ov_head only says "not empty", which is always in order. */
        int spilling = rr->spill && spill_busy(r);
        if (!spilling) {
            for (; i < n; i++) {
                if (!room_for(r, cap, head, pos, count, pw_record_size(msgs[i].len)))
                    break;
                if (msgs[i].len >= PW_LARGE_COPY)
                    PW_UNBLOCKED(pos = write_record(rr, pos, &msgs[i]));
                else
                    pos = write_record(rr, pos, &msgs[i]);
                count++;
                bytes += msgs[i].len;
            }
        }
        /* What the ring cannot take spills: with maxsize == 0 anything, in a
         * bounded queue only a message larger than the ring (the others wait
         * for room, as documented). */
        int spilled = 0, spill_err = 0;
        int may_spill = i < n && rr->spill &&
            (spilling || !r->maxsize || msgs[i].len > pw_ring_max_payload(cap));
        if (may_spill && !spilling && msgs[i].len <= pw_ring_max_payload(cap)) {
            /* The ring is full but the message fits it: a running consumer
             * frees room within microseconds, and the ring is the fast path,
             * so wait a little before spilling (PW_SPILL_GRACE_NS, 10 ms; not when
             * the call may not wait at all). */
            int64_t now = pw_now_ns();
            if (grace < 0)
                grace = deadline <= now ? 0
                        : (deadline - now > PW_SPILL_GRACE_NS ? now + PW_SPILL_GRACE_NS
                                                              : deadline);
            if (now < grace)
                may_spill = 0;
        }
        if (may_spill) {
            size_t j = spill_put(rr, msgs, i, n, pw_count(head), pw_count(tail), &count,
                                 &bytes, &spill_err);
            spilled = j > i;
            i = j;
        }
        if (i > first) {
            publish_side(r, TAIL, count, pos, bytes);
            if (spilled) /* the spill's new end, then the intent is done */
                spill_repair(&r->ov_tail_intent, &r->ov_tail_intent_end, &r->ov_tail, count);
        }
        unlock_side(r, TAIL, i > first);
        *done = i;
        if (spill_err)
            return spill_failed(rr, "writing to", spill_err);
        if (i == n)
            return PW_OK;
        if (i == first) {
            /* No room: wait for a consumer to move the head (in the grace
             * before spilling, until its end: then the loop spills). */
            int in_grace = grace > 0 && rr->spill && !r->maxsize;
            rc = wait_for_move(rr, HEAD, head, 0, in_grace ? grace : deadline);
            if (rc < 0 || rc == PW_CANCELLED)
                return rc;
            /* Timed out: one last look, in case room appeared meanwhile. */
            if (rc == PW_TIMEOUT && !in_grace && atomic_load(&r->head) == head)
                return PW_TIMEOUT;
        }
    }
}

/* ------------------------------------------------------------------- take */

/*
 * Reads and checks the header of the record at head (tail: the published
 * tail word): PW_OK with its type and payload length, or PW_ECORRUPT. The
 * type is the caller's to check.
 */
static inline int record_at(const pw_ringref *rr, uint64_t head, uint64_t tail, uint32_t *type,
                     uint64_t *len)
{
    uint32_t used = pw_pos(tail) - pw_pos(head), hdr[2];
    if (used < PW_REC_HEADER || used > rr->capacity)
        return pw_ring_bad_record(rr, "message count and byte positions disagree", used,
                          pw_count(tail) - pw_count(head));
    pw_ring_read(rr, pw_pos(head), hdr, sizeof hdr);
    if (pw_record_size(hdr[0]) > used)
        return pw_ring_bad_record(rr, "record longer than the published data",
                                  pw_record_size(hdr[0]), used);
    *type = hdr[1];
    *len = hdr[0];
    return PW_OK;
}

/* The consumers' publish of the one record of len payload bytes at head (a
 * view's). Head lock held. */
static void consume_head(struct pw_ring *r, uint64_t len)
{
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    publish_side(r, HEAD, pw_count(head) + 1, pw_pos(head) + (uint32_t)pw_record_size(len),
                 len);
}

/*
 * The head lock came from a reader that died holding it. If it died holding
 * a view (the record at head, in place: pw_ring_peek), that record is
 * dropped, as the message a reader killed inside a get is: its room is freed
 * and the queue moves on. A mark a reader left after consuming (mark !=
 * head) is just cleared; a corrupt record is left for the next take to report.
 */
static void drop_dead_view(pw_ringref *rr)
{
    struct pw_ring *r = rr->ring;
    uint64_t mark = atomic_load_explicit(&r->view_mark, memory_order_relaxed);
    if (!mark)
        return;
    atomic_store_explicit(&r->view_mark, 0, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    uint32_t type = 0;
    uint64_t len = 0;
    if (mark == (head | 1) && pw_count(head) != pw_count(tail) &&
        record_at(rr, head, tail, &type, &len) == PW_OK) {
        consume_head(r, len);
        /* Its room is free: producers blocked on a full ring must not wait for
         * their slice's end (a second) to see it. */
        pw_waiters_notify_all(&r->producers, &r->not_full_seq);
    }
}

/* Locks the consumers' side once a message waits (the take's and the peek's
 * wait): PW_OK with the head lock held, PW_TIMEOUT, PW_CANCELLED or an error. */
static inline __attribute__((always_inline)) int
lock_head_nonempty(pw_ringref *rr, int64_t deadline, uint64_t *head, uint64_t *tail)
{
    const int64_t lock_deadline = lock_deadline_for(deadline);
    for (;;) {
        int rc = lock_side(rr, HEAD, lock_deadline, head, tail);
        if (rc || pw_count(*head) != pw_count(*tail))
            return rc;
        rc = unlock_and_wait(rr, HEAD, *tail, deadline);
        if (rc)
            return rc;
    }
}

int pw_ring_take(pw_ringref *rr, pw_take_fn fn, void *ctx, size_t max, int64_t deadline,
                 size_t *taken_out)
{
    struct pw_ring *r = rr->ring;
    uint64_t head, tail;
    *taken_out = 0;
    int rc = lock_head_nonempty(rr, deadline, &head, &tail);
    if (rc)
        return rc;
    uint32_t pos = pw_pos(head), count = pw_count(head);
    uint64_t bytes = 0, ovh = 0;
    size_t taken = 0;
    int err = 0, spilled = 0;
    /* A consumer killed inside a spilled take left its intent: finish it
     * before the count moves (layout.h, "The spill area"). */
    if (rr->spill && (atomic_load_explicit(&r->ov_head_intent, memory_order_relaxed) &
                      PW_INTENT_VALID))
        spill_repair(&r->ov_head_intent, &r->ov_head_intent_end, &r->ov_head, count);
    while (taken < max && count != pw_count(tail)) {
        uint32_t type = 0;
        uint64_t len = 0;
        int f;
        if (rr->spill && pos == pw_pos(tail)) {
            /* The ring is empty and messages remain: spilled ones. */
            f = spill_take(rr, fn, ctx, pw_count(head), count, &ovh, &spilled, &len);
        } else {
            /* Everything read from the ring is checked before it is used: a
             * corrupt length must not send the copy outside the mapping. */
            f = record_at(rr, pw_pack(count, pos), tail, &type, &len);
            if (f == PW_OK)
                f = fn(ctx, rr, pos + PW_REC_HEADER, type, len);
            if (f >= 0)
                pos += (uint32_t)pw_record_size(len);
        }
        if (f < 0) {
            err = f;
            break;
        }
        count++;
        bytes += len;
        taken++;
        if (f > 0)
            break;
    }
    if (taken) {
        publish_side(r, HEAD, count, pos, bytes);
        if (spilled) { /* the spill's new start, the intent done, pages freed */
            spill_repair(&r->ov_head_intent, &r->ov_head_intent_end, &r->ov_head, count);
            spill_punch(rr);
        }
    }
    unlock_side(r, HEAD, taken);
    *taken_out = taken;
    return err;
}

/* ---------------------------------------------------------------- watchers */

int pw_ring_wait_word(pw_ringref *rr, int side, uint64_t token, int64_t deadline)
{
    /* No spin: a watcher is a background thread, off the data path. Any
     * wake-up (a publish, or pw_ring_kick) bumps the sequence and returns. */
    return wait_for_move(rr, side ? HEAD : TAIL, token, 1, deadline);
}

void pw_ring_kick(pw_ringref *rr)
{
    pw_waiters_notify_all(&rr->ring->consumers, &rr->ring->not_empty_seq);
    pw_waiters_notify_all(&rr->ring->producers, &rr->ring->not_full_seq);
}

/* --------------------------------------------------------- loans and views */

int pw_ring_reserve(pw_ringref *rr, uint64_t len, int64_t deadline, uint32_t *pos)
{
    struct pw_ring *r = rr->ring;
    const uint64_t need = pw_record_size(len);
    const int64_t lock_deadline = lock_deadline_for(deadline);
    for (;;) {
        uint64_t tail, head;
        int rc = lock_side(rr, TAIL, lock_deadline, &tail, &head);
        if (rc)
            return rc;
        /* Not while the spill holds messages: the loan would overtake them. */
        if (room_for(r, rr->capacity, head, pw_pos(tail), pw_count(tail), need) &&
            !(rr->spill && spill_busy(r))) {
            *pos = pw_pos(tail);
            return PW_OK; /* the tail lock stays held until publish or unreserve */
        }
        rc = unlock_and_wait(rr, TAIL, head, deadline);
        if (rc)
            return rc;
    }
}

void pw_ring_publish_reserved(pw_ringref *rr, uint32_t pos, uint32_t type, uint64_t len)
{
    uint32_t hdr[2] = {(uint32_t)len, type};
    pw_ring_copy_in(rr, pos, hdr, sizeof hdr);
    uint32_t count = pw_count(atomic_load_explicit(&rr->ring->tail, memory_order_relaxed)) + 1;
    publish_side(rr->ring, TAIL, count, pos + (uint32_t)pw_record_size(len), len);
    unlock_side(rr->ring, TAIL, 1);
}

void pw_ring_unreserve(pw_ringref *rr)
{
    pw_mutex_unlock(&rr->ring->tail_lock);
}

int pw_ring_peek(pw_ringref *rr, int64_t deadline, uint32_t *pos, uint32_t *type, uint64_t *len)
{
    struct pw_ring *r = rr->ring;
    uint64_t head, tail;
    int rc = lock_head_nonempty(rr, deadline, &head, &tail);
    if (rc)
        return rc;
    if (rr->spill && pw_pos(head) == pw_pos(tail))
        rc = PW_SPILLED; /* not in the ring, so no view; the caller copies */
    else
        rc = record_at(rr, head, tail, type, len);
    if (rc) {
        pw_mutex_unlock(&r->head_lock);
        return rc;
    }
    *pos = pw_pos(head);
    /* From here to the consuming head store, this reader's death drops it. */
    atomic_store_explicit(&r->view_mark, head | 1, memory_order_relaxed);
    return PW_OK; /* the head lock stays held until consume or unpeek */
}

void pw_ring_consume_peeked(pw_ringref *rr, uint64_t len)
{
    consume_head(rr->ring, len);
    pw_ring_unpeek(rr);
    pw_waiters_notify_all(&rr->ring->producers, &rr->ring->not_full_seq);
}

void pw_ring_unpeek(pw_ringref *rr)
{
    atomic_store_explicit(&rr->ring->view_mark, 0, memory_order_relaxed);
    pw_mutex_unlock(&rr->ring->head_lock);
}

/* ------------------------------------------------------------- test hook */

int pw_ring_debug_hold(pw_ringref *rr, int producer, const void *partial, uint64_t partial_len,
                       int publish)
{
    struct pw_ring *r = rr->ring;
    pthread_mutex_t *m = producer ? &r->tail_lock : &r->head_lock;
    int rc = pw_mutex_lock(m, PW_FOREVER, NULL);
    if (rc < 0)
        return rc;
    rc = PW_OK; /* PW_OWNER_DIED: held all the same (a crash test's second hold) */
    uint64_t head = atomic_load(&r->head), tail = atomic_load(&r->tail), len = 0;
    uint32_t type;
    if (producer && (partial || publish)) {
        pw_msg msg;
        pw_msg_single(&msg, PW_REC_BYTES, partial, partial ? partial_len : 0);
        msg.nparts = partial != NULL; /* no copy from NULL */
        if (pw_record_size(msg.len) > rr->capacity - (uint32_t)(pw_pos(tail) - pw_pos(head)))
            rc = pw_fail(PW_EINVAL, "no room for the record");
        else if (publish) /* the position word alone: no statistics */
            atomic_store(&r->tail,
                         pw_pack(pw_count(tail) + 1, write_record(rr, pw_pos(tail), &msg)));
        else
            write_record(rr, pw_pos(tail), &msg);
    } else if (!producer && publish) {
        rc = pw_count(head) == pw_count(tail) ? pw_fail(PW_EINVAL, "the ring is empty")
                                              : record_at(rr, head, tail, &type, &len);
        if (rc == PW_OK)
            atomic_store(&r->head, pw_pack(pw_count(head) + 1,
                                           pw_pos(head) + (uint32_t)pw_record_size(len)));
    }
    if (rc)
        pw_mutex_unlock(m);
    return rc;
}
