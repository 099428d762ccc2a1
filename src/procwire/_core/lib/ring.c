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
#include "ring.h"

#include <string.h>

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
    rr->ring = r;
    rr->data = data;
    rr->capacity = r->capacity;
    pw_spinner_init(&rr->spin);
    rr->what = what;
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

void pw_ring_copy_out(const pw_ringref *rr, uint32_t pos, void *dst, uint64_t n)
{
    uint64_t off = pos & (rr->capacity - 1);
    uint64_t first = rr->capacity - off < n ? rr->capacity - off : n;
    memcpy(dst, rr->data + off, first);
    if (n > first)
        memcpy((uint8_t *)dst + first, rr->data, n - first);
}

void pw_ring_copy_out_large(const pw_ringref *rr, uint32_t pos, void *dst, uint64_t n)
{
    if (n >= PW_LARGE_COPY)
        PW_UNBLOCKED(pw_ring_copy_out(rr, pos, dst, n));
    else
        pw_ring_copy_out(rr, pos, dst, n);
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

/* ------------------------------------------------------------------ waits */

struct moved {
    _Atomic uint64_t *word;
    uint64_t seen;
};

static int word_moved(void *ctx)
{
    struct moved *m = ctx;
    return atomic_load(m->word) != m->seen;
}

/* Waits until *word (the head or the tail) moves away from `seen`: the other
 * side published. That side's published CPU decides the spin. */
static int wait_for_move(pw_ringref *rr, _Atomic uint64_t *word, uint64_t seen,
                         _Atomic uint32_t *seq, struct pw_waiters *sleepers, int64_t deadline)
{
    struct pw_ring *r = rr->ring;
    const _Atomic uint32_t *peer_cpu = word == &r->head ? &r->head_cpu : &r->tail_cpu;
    struct moved m = {word, seen};
    pw_wait w = {.done = word_moved, .ctx = &m, .waiters = sleepers, .futex = seq,
                 .mask = PW_FUTEX_ANY, .spin = &rr->spin, .peer_cpu = peer_cpu};
    return pw_wait_until(&w, deadline);
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

/* Locks one side, counting an owner's death: PW_OK, PW_TIMEOUT or an error. */
static int lock_side(pthread_mutex_t *m, _Atomic uint64_t *died, int64_t deadline)
{
    int rc = pw_mutex_lock(m, deadline, NULL);
    if (rc == PW_OWNER_DIED) {
        /* Nothing to repair: the dead process's last publish is the state. */
        atomic_fetch_add_explicit(died, 1, memory_order_relaxed);
        return PW_OK;
    }
    return rc;
}

/* Adds to a statistics counter only its side's lock holder writes. */
static inline void add_relaxed(_Atomic uint64_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline void store_total(_Atomic uint64_t *total, uint32_t count)
{
    atomic_store_explicit(total, pw_widen_count(atomic_load_explicit(total,
                                                                     memory_order_relaxed),
                                                count), memory_order_relaxed);
}

/* The producers' publishing store: the records before pos, count messages in
 * all, appear at once; then the advisory statistics. Tail lock held. */
static void publish_tail(struct pw_ring *r, uint32_t count, uint32_t pos, uint64_t bytes)
{
    atomic_store(&r->tail, pw_pack(count, pos));
    store_total(&r->total_in, count);
    add_relaxed(&r->bytes_in, bytes);
    pw_publish_cpu(&r->tail_cpu); /* for the consumers' spin policy */
}

/* The consumers' one: frees the records before pos. Head lock held. */
static void publish_head(struct pw_ring *r, uint32_t count, uint32_t pos, uint64_t bytes)
{
    atomic_store(&r->head, pw_pack(count, pos));
    store_total(&r->total_out, count);
    add_relaxed(&r->bytes_out, bytes);
    pw_publish_cpu(&r->head_cpu); /* for the producers' spin policy */
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
    for (;;) {
        int rc = lock_side(&r->tail_lock, &r->tail_owner_died, lock_deadline);
        if (rc)
            return rc;
        uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
        uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
        uint32_t pos = pw_pos(tail), count = pw_count(tail);
        uint64_t bytes = 0;
        size_t first = *done, i = first;
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
        if (i > first)
            publish_tail(r, count, pos, bytes);
        pw_mutex_unlock(&r->tail_lock);
        if (i > first)
            pw_waiters_notify_all(&r->consumers, &r->not_empty_seq);
        *done = i;
        if (i == n)
            return PW_OK;
        if (i == first) {
            /* No room: wait for a consumer to move the head. */
            rc = wait_for_move(rr, &r->head, head, &r->not_full_seq, &r->producers, deadline);
            if (rc < 0)
                return rc;
            /* Timed out: one last look, in case room appeared meanwhile. */
            if (rc == PW_TIMEOUT && atomic_load(&r->head) == head)
                return PW_TIMEOUT;
        }
    }
}

/* ------------------------------------------------------------------- take */

static int bad_record(const pw_ringref *rr, const char *why, uint64_t a, uint64_t b)
{
    return pw_fail(PW_ECORRUPT, "%s is corrupt: %s (%llu, %llu); no message was taken",
                   rr->what, why, (unsigned long long)a, (unsigned long long)b);
}

/*
 * Reads and checks the header of the record at head (tail: the published
 * tail word): PW_OK with its type and payload length, or PW_ECORRUPT. The
 * type is the caller's to check.
 */
static int record_at(const pw_ringref *rr, uint64_t head, uint64_t tail, uint32_t *type,
                     uint64_t *len)
{
    uint32_t used = pw_pos(tail) - pw_pos(head), hdr[2];
    if (used < PW_REC_HEADER || used > rr->capacity)
        return bad_record(rr, "message count and byte positions disagree", used,
                          pw_count(tail) - pw_count(head));
    pw_ring_copy_out(rr, pw_pos(head), hdr, sizeof hdr);
    if (pw_record_size(hdr[0]) > used)
        return bad_record(rr, "record longer than the published data", pw_record_size(hdr[0]),
                          used);
    *type = hdr[1];
    *len = hdr[0];
    return PW_OK;
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
    uint32_t type;
    uint64_t len;
    if (mark != (head | 1) || pw_count(head) == pw_count(tail) ||
        record_at(rr, head, tail, &type, &len) != PW_OK)
        return;
    publish_head(r, pw_count(head) + 1, pw_pos(head) + (uint32_t)pw_record_size(len), len);
}

/* Locks the consumers' side (lock_side, plus a dead reader's view dropped). */
static int lock_head(pw_ringref *rr, int64_t deadline)
{
    struct pw_ring *r = rr->ring;
    int rc = pw_mutex_lock(&r->head_lock, deadline, NULL);
    if (rc == PW_OWNER_DIED) {
        atomic_fetch_add_explicit(&r->head_owner_died, 1, memory_order_relaxed);
        drop_dead_view(rr);
        return PW_OK;
    }
    return rc;
}

int pw_ring_take(pw_ringref *rr, pw_take_fn fn, void *ctx, size_t max, int64_t deadline,
                 size_t *taken_out)
{
    struct pw_ring *r = rr->ring;
    const int64_t lock_deadline = lock_deadline_for(deadline);
    *taken_out = 0;
    for (;;) {
        int rc = lock_head(rr, lock_deadline);
        if (rc)
            return rc;
        uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
        uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
        uint32_t pos = pw_pos(head), count = pw_count(head);
        uint64_t bytes = 0;
        size_t taken = 0;
        int err = 0;
        while (taken < max && count != pw_count(tail)) {
            /* Everything read from the ring is checked before it is used: a
             * corrupt length must not send the copy outside the mapping. */
            uint32_t used = pw_pos(tail) - pos;
            uint32_t hdr[2];
            if (used < PW_REC_HEADER || used > rr->capacity) {
                err = bad_record(rr, "message count and byte positions disagree", used,
                                 pw_count(tail) - count);
                break;
            }
            pw_ring_copy_out(rr, pos, hdr, sizeof hdr);
            uint64_t len = hdr[0], need = pw_record_size(len);
            if (need > used) {
                err = bad_record(rr, "record longer than the published data", need, used);
                break;
            }
            int f = fn(ctx, rr, pos + PW_REC_HEADER, hdr[1], len);
            if (f < 0) {
                err = f;
                break;
            }
            pos += (uint32_t)need;
            count++;
            bytes += len;
            taken++;
            if (f > 0)
                break;
        }
        if (taken)
            publish_head(r, count, pos, bytes);
        pw_mutex_unlock(&r->head_lock);
        if (taken)
            pw_waiters_notify_all(&r->producers, &r->not_full_seq);
        *taken_out = taken;
        if (taken || err)
            return err;
        rc = wait_for_move(rr, &r->tail, tail, &r->not_empty_seq, &r->consumers, deadline);
        if (rc < 0)
            return rc;
        if (rc == PW_TIMEOUT && atomic_load(&r->tail) == tail)
            return PW_TIMEOUT;
    }
}

/* --------------------------------------------------------- loans and views */

/* Found no room (no message): unlocks the side's lock and waits for the other
 * side to move *word from seen. PW_OK to look again, PW_TIMEOUT, or an error. */
static int unlock_and_wait(pw_ringref *rr, pthread_mutex_t *lock, _Atomic uint64_t *word,
                           uint64_t seen, _Atomic uint32_t *seq, struct pw_waiters *sleepers,
                           int64_t deadline)
{
    pw_mutex_unlock(lock);
    int rc = wait_for_move(rr, word, seen, seq, sleepers, deadline);
    if (rc == PW_TIMEOUT && atomic_load(word) != seen)
        return PW_OK; /* timed out, but it moved meanwhile: one last look */
    return rc;
}

int pw_ring_reserve(pw_ringref *rr, uint64_t len, int64_t deadline, uint32_t *pos)
{
    struct pw_ring *r = rr->ring;
    const uint64_t need = pw_record_size(len);
    const int64_t lock_deadline = lock_deadline_for(deadline);
    for (;;) {
        int rc = lock_side(&r->tail_lock, &r->tail_owner_died, lock_deadline);
        if (rc)
            return rc;
        uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
        uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
        if (room_for(r, rr->capacity, head, pw_pos(tail), pw_count(tail), need)) {
            *pos = pw_pos(tail);
            return PW_OK; /* the tail lock stays held until publish or unreserve */
        }
        rc = unlock_and_wait(rr, &r->tail_lock, &r->head, head, &r->not_full_seq,
                             &r->producers, deadline);
        if (rc)
            return rc;
    }
}

void pw_ring_publish_reserved(pw_ringref *rr, uint32_t pos, uint32_t type, uint64_t len)
{
    struct pw_ring *r = rr->ring;
    uint32_t hdr[2] = {(uint32_t)len, type};
    pw_ring_copy_in(rr, pos, hdr, sizeof hdr);
    uint32_t count = pw_count(atomic_load_explicit(&r->tail, memory_order_relaxed)) + 1;
    publish_tail(r, count, pos + (uint32_t)pw_record_size(len), len);
    pw_mutex_unlock(&r->tail_lock);
    pw_waiters_notify_all(&r->consumers, &r->not_empty_seq);
}

void pw_ring_unreserve(pw_ringref *rr)
{
    pw_mutex_unlock(&rr->ring->tail_lock);
}

int pw_ring_peek(pw_ringref *rr, int64_t deadline, uint32_t *pos, uint32_t *type, uint64_t *len)
{
    struct pw_ring *r = rr->ring;
    const int64_t lock_deadline = lock_deadline_for(deadline);
    for (;;) {
        int rc = lock_head(rr, lock_deadline);
        if (rc)
            return rc;
        uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
        uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
        if (pw_count(head) != pw_count(tail)) {
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
        rc = unlock_and_wait(rr, &r->head_lock, &r->tail, tail, &r->not_empty_seq,
                             &r->consumers, deadline);
        if (rc)
            return rc;
    }
}

void pw_ring_consume_peeked(pw_ringref *rr, uint64_t len)
{
    struct pw_ring *r = rr->ring;
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    publish_head(r, pw_count(head) + 1, pw_pos(head) + (uint32_t)pw_record_size(len), len);
    atomic_store_explicit(&r->view_mark, 0, memory_order_relaxed);
    pw_mutex_unlock(&r->head_lock);
    pw_waiters_notify_all(&r->producers, &r->not_full_seq);
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
    uint64_t head = atomic_load(&r->head), tail = atomic_load(&r->tail);
    if (producer && (partial || publish)) {
        uint64_t len = partial ? partial_len : 0;
        uint32_t hdr[2] = {(uint32_t)len, PW_REC_BYTES};
        if (pw_record_size(len) > rr->capacity - (uint32_t)(pw_pos(tail) - pw_pos(head))) {
            pw_mutex_unlock(m);
            return pw_fail(PW_EINVAL, "no room for the record");
        }
        uint32_t pos = pw_pos(tail);
        pw_ring_copy_in(rr, pos, hdr, sizeof hdr);
        if (len)
            pw_ring_copy_in(rr, pos + PW_REC_HEADER, partial, len);
        if (publish)
            atomic_store(&r->tail, pw_pack(pw_count(tail) + 1,
                                           pos + (uint32_t)pw_record_size(len)));
    } else if (!producer && publish) {
        if (pw_count(head) == pw_count(tail)) {
            pw_mutex_unlock(m);
            return pw_fail(PW_EINVAL, "the ring is empty");
        }
        uint32_t hdr[2];
        pw_ring_copy_out(rr, pw_pos(head), hdr, sizeof hdr);
        atomic_store(&r->head, pw_pack(pw_count(head) + 1,
                                       pw_pos(head) + (uint32_t)pw_record_size(hdr[0])));
    }
    return PW_OK;
}
