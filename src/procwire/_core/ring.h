/*
 * ring.h -- the message ring's mechanics, for the Python types built on it
 * (the queues in ring.c; a pipe end is two rings).
 *
 * A pw_ringref is one process's view of a struct pw_ring in a mapping.
 */
#ifndef PROCWIRE_RING_H
#define PROCWIRE_RING_H

#include "core.h"

typedef struct {
    struct pw_ring *ring;
    uint8_t *data;      /* capacity bytes of records */
    uint64_t capacity;
    int64_t spin_ns;    /* adaptive spin before sleeping, per process */
    const char *what;   /* name for error messages */
    int spill;          /* the ring has a spill area (PW_RING_SPILL) and spill_fd */
    int spill_fd;       /* the segment's file, for pread/pwrite beyond the mapping */
} pw_ringref;

/* A spilled message's largest payload: a sanity bound on what a record may
 * claim (the memory and /dev/shm are the real limits). */
#define PW_SPILL_MAX_PAYLOAD (1ULL << 40)
#define PW_SPILL_CHUNK (1ULL << 20) /* the spill allocates pages this many at a time */

/* Packing of the head and tail words (see layout.h). */
static inline uint32_t pw_pos(uint64_t word) { return (uint32_t)word; }
static inline uint32_t pw_count(uint64_t word) { return (uint32_t)(word >> 32); }
static inline uint64_t pw_pack(uint32_t count, uint32_t pos)
{
    return ((uint64_t)count << 32) | pos;
}
static inline uint64_t pw_record_size(uint64_t payload) { return PW_REC_HEADER + ((payload + 7) & ~7ULL); }

/* Bytes of segment data needed for a ring of `capacity`: header + data. */
uint64_t pw_ring_segment_size(uint64_t capacity);

/* Largest payload one record can carry in a ring of this capacity. */
static inline uint64_t pw_ring_max_payload(uint64_t capacity) { return capacity - PW_REC_HEADER; }

/* Initialises a fresh ring (robust mutexes, empty). 0 or errno. */
int pw_ring_init(struct pw_ring *r, uint64_t capacity, uint32_t maxsize);

/*
 * Validates an attached ring's configuration against the bytes actually
 * mapped for its data. 0, or -1 with SegmentError set.
 */
int pw_ring_validate(const struct pw_ring *r, uint64_t data_bytes, const char *what);

/* A message being put: a record type and the byte ranges of its payload. */
#define PW_MSG_INLINE_PARTS 3
typedef struct {
    uint32_t type;
    uint64_t len;             /* total payload bytes */
    int nparts;
    const void **part;        /* -> part_inline, or PyMem_Malloc'd */
    uint64_t *part_len;
    const void *part_inline[PW_MSG_INLINE_PARTS];
    uint64_t part_len_inline[PW_MSG_INLINE_PARTS];
    uint64_t *oob_prefix;     /* PICKLE_OOB: nparts word + part lengths */
    Py_buffer *views;         /* buffers to release */
    int nviews;
    PyObject *keep;           /* a reference that keeps the bytes alive */
} pw_msg;

/* A record copied out of the ring. */
typedef struct {
    uint32_t type;
    PyObject *payload; /* bytes or bytearray; for PICKLE_OOB, a list [bytes, bytearray...] */
} pw_record;

/*
 * Puts msgs[*done..n) into the ring, as many per lock as fit, waiting for
 * room until the deadline. Returns 0 when all are in, 1 on timeout (some may
 * be in: *done says how many), -1 with an exception set.
 */
int pw_ring_put(pw_ringref *rr, pw_msg *msgs, Py_ssize_t n, Py_ssize_t *done, int64_t deadline);

/*
 * Takes up to `max` records (at least 1), waiting for the first until the
 * deadline. Returns the number taken (>= 1), 0 on timeout, -1 with an
 * exception set. out[] must hold `max` records.
 */
Py_ssize_t pw_ring_get(pw_ringref *rr, pw_record *out, Py_ssize_t max, int64_t deadline);

/*
 * Lower-level access for the pipe (pipe.c), which streams messages bigger
 * than the ring and copies payloads straight into their final buffer.
 *
 * pw_ring_take() takes the oldest record if there is one, without waiting
 * for data (it does wait for the head lock). `fn` is called under the head
 * lock with the record's position, type and payload length; it copies what
 * it needs with pw_ring_copy_out(payload_pos, ...). The record is consumed
 * whatever fn returns. Returns 1 if a record was taken (fn's result in
 * *fn_rc), 0 if the ring was empty, -1 with an exception set for a corrupt
 * ring (nothing taken). Producers asleep on a full ring are woken.
 */
typedef int (*pw_take_fn)(void *ctx, pw_ringref *rr, uint32_t payload_pos, uint32_t type,
                          uint64_t len);
int pw_ring_take(pw_ringref *rr, pw_take_fn fn, void *ctx, int *fn_rc);
void pw_ring_copy_out(const pw_ringref *rr, uint32_t pos, void *dst, uint64_t n);
/* Copies n bytes into the ring at pos (wrapping); for test hooks. */
void pw_ring_copy_in(pw_ringref *rr, uint32_t pos, const void *src, uint64_t n);

/* Copies bigger than this release the GIL: other threads keep running. */
#define PW_GIL_FREE_COPY 65536u

/*
 * For watcher threads (procwire._aio: fileno() and the async methods): sleeps
 * once while a side's position word still equals `token`, registered as a
 * sleeper of the wait queue the other side wakes after it publishes (side 0:
 * the tail, woken by puts; side 1: the head, woken by takes). Returns 0 (the
 * word changed, a wake-up or a slice ended: re-check), 1 when the deadline
 * passed, -1 with an exception set. pw_ring_kick() wakes every such sleeper
 * (and the ring's other sleepers, which re-check and sleep again).
 */
int pw_ring_wait_word(pw_ringref *rr, int side, uint64_t token, int64_t deadline);
void pw_ring_kick(pw_ringref *rr);

/* Messages in the ring now (a snapshot). */
uint32_t pw_ring_count(const pw_ringref *rr);
uint64_t pw_ring_used_bytes(const pw_ringref *rr);

#endif /* PROCWIRE_RING_H */
