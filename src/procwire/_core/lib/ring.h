/*
 * ring.h -- the message ring's mechanics (ring.c), for the queues and the
 * pipe of the binding layer, and for tests/native. Plain C.
 *
 * A pw_ringref is one process's view of a struct pw_ring in a mapping.
 */
#ifndef PROCWIRE_RING_H
#define PROCWIRE_RING_H

#include "pw.h"

#include <string.h>

typedef struct {
    struct pw_ring *ring;
    uint8_t *data;      /* capacity bytes of records */
    uint64_t capacity;
    pw_spinner spin;    /* adaptive spin before sleeping, per process */
    const char *what;   /* name for error messages */
    /* The spill area (layout.h): set by pw_ring_set_spill, queues only. */
    int spill;          /* the ring has one and this process its descriptor */
    int spill_fd;       /* the segment's file: pwrite/pread beyond the mapping */
    /* While pw_ring_take hands a spilled record to its callback,
     * pw_ring_copy_out reads the spill at src_off + pos instead of the ring. */
    int src_spill;
    int src_err;        /* errno of a failed spill read (those bytes read as 0) */
    uint64_t src_off;
    /* Nonzero: waits for a lock or for the other side end with PW_CANCELLED
     * (the binding's close flag; NULL: never). */
    const int *cancel;
} pw_ringref;

/* A spilled message's largest payload (callbacks see 32-bit positions). */
#define PW_SPILL_MAX_PAYLOAD ((1ULL << 32) - 4096)
#define PW_SPILL_CHUNK (1ULL << 20) /* the spill allocates pages this many at a time */
/* With maxsize == 0, a put that finds the ring full (and the spill empty)
 * waits this long for a consumer to make room before it spills: a running
 * consumer keeps the queue on the ring, the fast path; a missing or stalled
 * one costs the first spilling put this once. */
#define PW_SPILL_GRACE_NS 10000000LL

/* Lets this view use the ring's spill area through fd: PW_OK, PW_ECORRUPT if
 * the ring has none (every queue has one). The descriptor stays the caller's,
 * open while in use. */
int pw_ring_set_spill(pw_ringref *rr, int fd);
/* Marks a fresh ring (pw_ring_init) as having a spill area from file offset
 * base (the segment's size) on. */
void pw_ring_init_spill(struct pw_ring *r, uint64_t base);

/* Packing of the head and tail words (see layout.h). */
static inline uint32_t pw_pos(uint64_t word) { return (uint32_t)word; }
static inline uint32_t pw_count(uint64_t word) { return (uint32_t)(word >> 32); }
static inline uint64_t pw_pack(uint32_t count, uint32_t pos)
{
    return ((uint64_t)count << 32) | pos;
}
static inline uint64_t pw_record_size(uint64_t payload) { return PW_REC_HEADER + ((payload + 7) & ~7ULL); }

/* 1 if capacity is one a ring can have (a power of two within the limits). */
static inline int pw_ring_capacity_ok(uint64_t cap)
{
    return cap >= PW_RING_MIN_CAPACITY && cap <= PW_RING_MAX_CAPACITY && !(cap & (cap - 1));
}

/* Bytes of a queue segment with a ring of `capacity`: headers + data. */
uint64_t pw_ring_segment_size(uint64_t capacity);
/* Where the data of a segment whose headers take hdr bytes starts. */
static inline uint64_t pw_ring_data_offset(uint64_t hdr)
{
    return (hdr + PW_RING_DATA_ALIGN - 1) & ~(uint64_t)(PW_RING_DATA_ALIGN - 1);
}

/* Largest payload one record can carry in a ring of this capacity. */
static inline uint64_t pw_ring_max_payload(uint64_t capacity) { return capacity - PW_REC_HEADER; }

/* Initialises a fresh ring (robust mutexes, empty). 0 or errno. */
int pw_ring_init(struct pw_ring *r, uint64_t capacity, uint32_t maxsize);

/* Validates an attached ring against the bytes mapped for its data:
 * PW_OK or PW_ECORRUPT. */
int pw_ring_validate(const struct pw_ring *r, uint64_t data_bytes, const char *what);

/* Sets up a view of ring r whose data starts at data. */
void pw_ringref_init(pw_ringref *rr, struct pw_ring *r, uint8_t *data, const char *what);

/* A message being put: a record type and the byte ranges of its payload. */
#define PW_MSG_INLINE_PARTS 3
typedef struct {
    uint32_t type;
    uint64_t len;             /* total payload bytes */
    int nparts;
    const void **part;        /* -> part_inline, or the caller's arrays */
    uint64_t *part_len;
    const void *part_inline[PW_MSG_INLINE_PARTS];
    uint64_t part_len_inline[PW_MSG_INLINE_PARTS];
} pw_msg;

/* A one-part message of `type` over [buf, buf+len). */
void pw_msg_single(pw_msg *m, uint32_t type, const void *buf, uint64_t len);

/* Copies of at least this many bytes run with the hooks' unblock (the GIL
 * released): other threads keep running. */
#define PW_LARGE_COPY 65536u

/*
 * Puts msgs[*done..n) into the ring, as many per lock as fit, waiting for
 * room until the deadline. PW_OK when all are in, PW_TIMEOUT (some may be in:
 * *done says how many), or an error.
 */
int pw_ring_put(pw_ringref *rr, const pw_msg *msgs, size_t n, size_t *done, int64_t deadline);

/*
 * Takes records, oldest first. `fn` is called under the head lock for each
 * with the record's payload position, type and length; it copies what it
 * needs with pw_ring_copy_out and returns 0 (consumed: take the next, up to
 * max), 1 (consumed: stop), or a negative status (not consumed: stop).
 * Waits for the first record until the deadline. Returns PW_OK with
 * *taken >= 1, PW_TIMEOUT with *taken == 0, or an error -- which may follow
 * records already taken (*taken > 0: deliver those; the error recurs on the
 * next call). Producers asleep on a full ring are woken. PW_CANCELLED once
 * *rr->cancel is set (pw_ring_put too; pw_ring_kick wakes the sleepers).
 */
typedef int (*pw_take_fn)(void *ctx, const pw_ringref *rr, uint32_t payload_pos, uint32_t type,
                          uint64_t len);
int pw_ring_take(pw_ringref *rr, pw_take_fn fn, void *ctx, size_t max, int64_t deadline,
                 size_t *taken);

/*
 * Zero-copy messages (the binding's loans and views).
 *
 * pw_ring_reserve() takes the producers' lock and waits, as a put does,
 * until a record of `len` payload bytes fits: PW_OK with the lock HELD and
 * *pos the record's position (its payload at pos + PW_REC_HEADER, wrapping
 * as any record's may), PW_TIMEOUT, or an error. The caller writes the
 * payload; then pw_ring_publish_reserved() writes the header and publishes
 * the record with the one tail store (a producer killed before it published
 * nothing), or pw_ring_unreserve() gives the room back.
 *
 * pw_ring_peek() takes the consumers' lock and waits for a message: PW_OK
 * with the lock HELD and the checked record's position, type (the caller's
 * to check) and length, PW_TIMEOUT, or an error. The record stays in place
 * until pw_ring_consume_peeked() frees it or pw_ring_unpeek() leaves it for
 * the next reader. A reader killed in between frees it: the next reader
 * takes the lock over and drops the record (layout.h, view_mark).
 * PW_SPILLED (no lock held): the oldest message is in the spill area, which
 * has no view: take it with pw_ring_take. pw_ring_reserve waits while the
 * spill holds messages (a loan must not overtake them).
 */
int pw_ring_reserve(pw_ringref *rr, uint64_t len, int64_t deadline, uint32_t *pos);
void pw_ring_publish_reserved(pw_ringref *rr, uint32_t pos, uint32_t type, uint64_t len);
void pw_ring_unreserve(pw_ringref *rr);
int pw_ring_peek(pw_ringref *rr, int64_t deadline, uint32_t *pos, uint32_t *type, uint64_t *len);
void pw_ring_consume_peeked(pw_ringref *rr, uint64_t len);
void pw_ring_unpeek(pw_ringref *rr);

/* PW_ECORRUPT: "<what> is corrupt: <why> (a, b); no message was taken". */
int pw_ring_bad_record(const pw_ringref *rr, const char *why, uint64_t a, uint64_t b);

/* Copies between the ring (at pos, wrapping) and ordinary memory. */
void pw_ring_copy_out(const pw_ringref *rr, uint32_t pos, void *dst, uint64_t n);
void pw_ring_copy_in(pw_ringref *rr, uint32_t pos, const void *src, uint64_t n);
/* From the ring itself (never the spill). */
static inline void pw_ring_read(const pw_ringref *rr, uint32_t pos, void *dst, uint64_t n)
{
    uint64_t off = pos & (rr->capacity - 1);
    uint64_t first = rr->capacity - off < n ? rr->capacity - off : n;
    memcpy(dst, rr->data + off, first);
    if (n > first)
        memcpy((uint8_t *)dst + first, rr->data, n - first);
}
/* pw_ring_copy_out with the hooks' unblock around it if it is large; the
 * common small copy from the ring inline (the hot path of every get). */
void pw_ring_copy_out_slow(const pw_ringref *rr, uint32_t pos, void *dst, uint64_t n);
static inline void pw_ring_copy_out_large(const pw_ringref *rr, uint32_t pos, void *dst,
                                          uint64_t n)
{
    if (__builtin_expect(n < PW_LARGE_COPY && !rr->src_spill, 1))
        pw_ring_read(rr, pos, dst, n);
    else
        pw_ring_copy_out_slow(rr, pos, dst, n);
}

/* Messages / bytes in the ring now (a snapshot). */
uint32_t pw_ring_count(const pw_ringref *rr);
uint64_t pw_ring_used_bytes(const pw_ringref *rr);

/*
 * For watcher threads (procwire._aio: fileno() and the async methods): sleeps
 * (never spins) while a side's position word still equals `token`,
 * registered as a sleeper of the wait queue the other side wakes after it
 * publishes (side 0: the tail, woken by puts; side 1: the head, woken by
 * takes). Returns PW_OK once the word moved or any wake-up came (re-check),
 * PW_TIMEOUT, or an error. pw_ring_kick() wakes every such sleeper (and the
 * ring's other sleepers, which re-check and sleep again).
 */
int pw_ring_wait_word(pw_ringref *rr, int side, uint64_t token, int64_t deadline);
void pw_ring_kick(pw_ringref *rr);

/* Test hook (bind/testing.c, tests/native): takes a side's lock and keeps it
 * ("head" or "tail"); with `partial` writes half a record beyond the tail,
 * with `publish` moves the side's position by one message as a process
 * killed right after its publishing store would. */
int pw_ring_debug_hold(pw_ringref *rr, int tail, const void *partial, uint64_t partial_len,
                       int publish);

#endif /* PROCWIRE_RING_H */
