/*
 * layout.h -- the byte layout of every procwire shared-memory segment.
 *
 * A segment is one mapping, created by procwire and shared by every process
 * that uses the object. It is untrusted input for everyone who attaches:
 * nothing below is used before pw_header_validate() has checked it.
 *
 *   offset 0    struct pw_header        64 bytes, common to every object kind
 *   offset 64   kind-specific header    e.g. struct pw_ring for a queue
 *   data_offset kind-specific data      e.g. the ring's bytes (page aligned)
 *
 * All integers are native-endian: segments never leave the machine.
 * Bump PW_LAYOUT_VERSION whenever any byte of this file changes meaning.
 */
#ifndef PROCWIRE_LAYOUT_H
#define PROCWIRE_LAYOUT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define PW_MAGIC 0x3145524957435250ULL /* "PRCWIRE1" read as little-endian */
#define PW_LAYOUT_VERSION 5u /* 2: struct pw_waiters replaces the sleeper counts;
                                3: pw_lock holder_proc/holder_hold, pw_cond
                                wake and state; 4: pw_ring view_mark, pw_lock's
                                holder words on the mutex's cache line, pw_ring
                                tail_cpu and head_cpu;
                                5: pw_ring spill area (PW_RING_SPILL) */
#define PW_CACHELINE 64

/*
 * What a segment holds: THE table of kinds. Each row gives the kind's name
 * (enum PW_KIND_<ID>, Python's _core.KIND_<ID>), its number (part of the
 * layout: never reuse one), its lower-case name (`procwire ls`, messages) and
 * the struct at offset 64 (its header_size is that struct's size). The enum,
 * the names, the header sizes, the Python constants and the inspection code
 * are all generated from it.
 */
#define PW_KINDS(X)                                                            \
    X(QUEUE, 1, "queue", pw_ring)                                              \
    X(PIPE, 2, "pipe", pw_pipe)                                                \
    X(VALUE, 3, "value", pw_shared)                                            \
    X(ARRAY, 4, "array", pw_shared)                                            \
    X(LOCK, 5, "lock", pw_lock)                                                \
    X(RLOCK, 6, "rlock", pw_lock)                                              \
    X(SEMAPHORE, 7, "semaphore", pw_sem)                                       \
    X(CONDITION, 8, "condition", pw_cond)                                      \
    X(EVENT, 9, "event", pw_event)
/* Retired kind numbers, never to be reused: 10, the native Barrier (the
 * Barrier is Python over a Condition now). A segment of a retired kind fails
 * pw_header_validate() with a message that names it. */
#define PW_KIND_RETIRED_BARRIER 10

enum pw_kind {
#define PW_KIND_ENUM_(id, num, name, type) PW_KIND_##id = num,
    PW_KINDS(PW_KIND_ENUM_)
#undef PW_KIND_ENUM_
    PW_KIND_MAX_ = 64
};

/*
 * The common header. The creator fills every field, then publishes the
 * segment with one release store of `magic`: an attacher that reads the right
 * magic (acquire) sees every other field initialised.
 */
struct pw_header {
    _Atomic uint64_t magic;   /*  0: PW_MAGIC once initialised, 0 before      */
    uint32_t version;         /*  8: PW_LAYOUT_VERSION                         */
    uint32_t kind;            /* 12: enum pw_kind                              */
    uint64_t total_size;      /* 16: bytes in the whole segment                */
    uint32_t creator_pid;     /* 24: pid of the creating process               */
    uint32_t header_size;     /* 28: sizeof the kind-specific header           */
    uint64_t data_offset;     /* 32: where the kind-specific data starts       */
    uint64_t created_ns;      /* 40: CLOCK_REALTIME at creation, nanoseconds   */
    uint64_t flags;           /* 48: kind-specific flags                       */
    uint64_t reserved;        /* 56 */
};

/*
 * A wait queue's sleepers (wait.c). 192 bytes, 64-byte aligned.
 *
 * Each thread asleep on the queue's futex (or eventfd) holds one slot: a
 * 64-bit identity of its process, written with one CAS when it goes to sleep
 * and cleared with one CAS when it wakes. "Is anyone asleep?" (the wakers'
 * fast path) is the OR of the slots: two cache lines that only sleepers
 * write. A process killed while asleep leaves its slot set; any process that
 * finds a slot set but wakes nobody, and every statistics() call, checks the
 * slots' processes and frees the slots of dead ones (one CAS each), so a dead
 * sleeper is never counted for long and never costs a wake-up forever.
 *
 * Identity: bits 63..54 low 10 bits of the pid namespace's inode number,
 * bits 53..32 the pid (tgid, < 2^22), bits 31..0 the process's start time
 * (clock ticks after boot, /proc/<pid>/stat field 22) mod 2^32; 0 = free.
 * The start time tells a reused pid apart; a slot written from another pid
 * namespace is never judged.
 *
 * More than PW_WAIT_SLOTS sleepers at once: the extra ones are not counted
 * and poll (wait.c: PW_WAIT_POLL_NS), taking a slot as soon as one frees.
 */
#define PW_WAIT_SLOTS 16
struct pw_waiters {
    _Atomic uint64_t slot[PW_WAIT_SLOTS]; /*   0: sleeper identities, 0 = free   */
    _Atomic uint64_t wakes;               /* 128: wake system calls made         */
    _Atomic uint64_t reaped;              /* 136: slots of dead sleepers freed   */
    _Atomic int64_t last_reconcile_ns;    /* 144: CLOCK_MONOTONIC of the last
                                                  reconciliation by a waker      */
    uint64_t reserved[5];                 /* 152..191                            */
};

/*
 * A message ring (Queue, SimpleQueue, JoinableQueue, one direction of a Pipe).
 *
 * Two-lock design: producers serialise on tail_lock, consumers on head_lock,
 * so a producer and a consumer never contend. Each side publishes with ONE
 * 64-bit release store of its position word, which packs
 *
 *     bits 63..32  message count (mod 2^32)
 *     bits 31..0   byte position (mod 2^32; capacity is a power of two <= 2^30)
 *
 * so a record and the count that includes it become visible together. A
 * process killed at any instruction either published its record or did not:
 * the robust mutex hands the lock to the next process, and the ring needs no
 * repair (see ring.c).
 *
 * Data: `capacity` bytes of records, each 8-byte aligned:
 *     u32 length   payload bytes (not counting this 8-byte record header)
 *     u32 type     enum pw_record_type
 *     payload, then zero padding to a multiple of 8
 * A record may wrap around the end of the data area; its 8-byte header never
 * does (positions and capacity are multiples of 8).
 */
enum pw_record_type {
    PW_REC_BYTES = 1,      /* payload is a bytes object's contents              */
    PW_REC_BYTEARRAY = 2,  /* payload is a bytearray's contents                 */
    PW_REC_PICKLE = 3,     /* payload is one pickle                             */
    PW_REC_PICKLE_OOB = 4, /* u32 nparts, u32 0, u64 len[nparts], then the parts:
                              a protocol-5 pickle and its out-of-band buffers    */
    PW_REC_STREAM_FIRST = 5, /* Pipe only: first piece of a message bigger than a
                                piece: u64 total length, then the first bytes    */
    PW_REC_STREAM_MORE = 6,  /* Pipe only: the next bytes of the message the last
                                STREAM_FIRST began; the pieces add up to its total */
    PW_REC_MAX_ = 7
};

#define PW_REC_HEADER 8u
#define PW_RING_MIN_CAPACITY 4096u
#define PW_RING_MAX_CAPACITY (1u << 30)

struct pw_ring {
    /* -- configuration, immutable after creation (64 bytes) -- */
    uint64_t capacity;        /* data bytes, power of two                       */
    uint32_t maxsize;         /* max messages, 0 = no count limit               */
    uint32_t ring_flags;      /* PW_RING_SPILL                                  */
    uint64_t spill_base;      /* PW_RING_SPILL: file offset of spill offset 0
                                 (the segment's total_size)                     */
    uint64_t reserved0[5];

    /* -- producer side: only producers write these lines -- */
    pthread_mutex_t tail_lock;           /* robust, process-shared          */
    char pad1[PW_CACHELINE - sizeof(pthread_mutex_t) % PW_CACHELINE];
    _Atomic uint64_t tail;               /* (count << 32) | pos, published  */
    _Atomic uint64_t total_in;           /* lifetime statistics (advisory)  */
    _Atomic uint64_t bytes_in;
    _Atomic uint64_t tail_owner_died;
    _Atomic uint32_t tail_cpu;           /* CPU + 1 the last producer ran on, 0 =
                                            unknown (advisory: waiters' spin policy) */
    uint32_t reserved1a;
    _Atomic uint64_t ov_tail;            /* spill: end of the spilled records   */
    _Atomic uint64_t ov_tail_intent;     /* spill: PW_INTENT_VALID | count before
                                            a publish that spills (see below)   */
    _Atomic uint64_t ov_tail_intent_end; /* spill: ov_tail once it is published */

    /* -- consumer side: only consumers write these lines -- */
    pthread_mutex_t head_lock;
    char pad2[PW_CACHELINE - sizeof(pthread_mutex_t) % PW_CACHELINE];
    _Atomic uint64_t head;
    _Atomic uint64_t total_out;
    _Atomic uint64_t bytes_out;
    _Atomic uint64_t head_owner_died;
    _Atomic uint64_t view_mark;          /* head | 1 while a reader holds the
                                            record at head in place (a view,
                                            Queue.get(copy=False)), 0 otherwise:
                                            if that reader dies, the next one
                                            drops the record                  */
    _Atomic uint32_t head_cpu;           /* CPU + 1 the last consumer ran on, 0 = unknown */
    uint32_t reserved2a;
    _Atomic uint64_t ov_head;            /* spill: the oldest spilled record    */
    _Atomic uint64_t ov_head_intent;     /* spill: PW_INTENT_VALID | count before
                                            a take of spilled records           */

    /* -- futex words. A sleeper registers in its struct pw_waiters, reads the
     *    seq, re-checks its condition, then sleeps on the seq. A waker that
     *    changed the condition and finds a sleeper bumps the seq and wakes
     *    them all. -- */
    _Atomic uint32_t not_empty_seq;
    uint32_t reserved5;                  /* layout 1: consumers_sleeping      */
    _Atomic uint32_t not_full_seq;
    uint32_t reserved6;                  /* layout 1: producers_sleeping      */
    _Atomic uint32_t tasks_done;         /* JoinableQueue: task_done() count (mod 2^32) */
    uint32_t reserved7;                  /* layout 1: joiners_sleeping        */
    _Atomic uint32_t closed_flags;       /* Pipe: PW_RING_*_CLOSED bits below */
    uint32_t reserved3;
    _Atomic uint64_t ov_punched;         /* spill: pages below it are freed
                                            (consumers, head lock held)        */
    _Atomic uint64_t ov_reserved;        /* spill: end of the pages allocated
                                            (producers, tail lock held)        */
    _Atomic uint64_t ov_head_intent_end; /* spill: ov_head once a take's publish
                                            is done (consumers, head lock held) */
    uint64_t reserved4[1];

    /* -- sleepers, one wait queue per futex word above -- */
    struct pw_waiters consumers;         /* asleep on not_empty_seq (get)     */
    struct pw_waiters producers;         /* asleep on not_full_seq (put)      */
    struct pw_waiters joiners;           /* asleep on tasks_done (join)       */
};

#define PW_RING_DATA_ALIGN 4096u

/*
 * The spill area (queues only, ring_flags & PW_RING_SPILL): what does not fit
 * the ring -- a message larger than it, or, with maxsize == 0, a message that
 * finds it full -- is appended to a log in the segment's own file, beyond the
 * mapped part (file offset spill_base + ov_tail), written and read with
 * pwrite/pread and never mapped. The ring's count words count every message,
 * ring and spill alike (qsize, join and the totals stay exact); the ring's
 * byte positions count ring records only. Rules:
 *   - the spill is used while it is not empty (ov_head != ov_tail), so every
 *     ring record precedes every spilled one: a consumer takes from the ring
 *     while pos(head) != pos(tail), then from the spill at ov_head;
 *   - a spilled record is 16 bytes, u64 length, u32 type, u32 count (the
 *     message's number, mod 2^32, checked by the consumer), then the payload
 *     padded to 8 bytes;
 *   - a side that moves ov_tail/ov_head with its position word first stores
 *     the intent (the new offset, then PW_INTENT_VALID | its count before the
 *     publish), publishes the position word, then the offset, then clears the
 *     intent. The next holder of that side's lock finishes a dead process's
 *     intent: published (the count moved) -> the offset takes the intent's
 *     end; not published -> dropped. A record written but never published is
 *     overwritten by the next spill;
 *   - consumers free the pages below ov_head (hole punching, ov_punched), so
 *     the memory held is what is queued plus at most a page and the
 *     allocation ahead of ov_tail (ov_reserved, PW_SPILL_CHUNK at a time).
 *     The file's apparent size grows with the bytes ever spilled.
 */
#define PW_RING_SPILL 1u
#define PW_INTENT_VALID (1ULL << 63)
#define PW_SPILL_HEADER 16u

/* pw_ring.closed_flags, for a Pipe's rings. Set once, never cleared. */
#define PW_RING_READER_CLOSED 1u /* the receiving end is closed in every process */
#define PW_RING_WRITER_CLOSED 2u /* the sending end is closed in every process   */

/*
 * A Pipe: two message rings in one segment. Ring e carries messages TO end e:
 * end e receives from ring e and sends into ring 1-e. With duplex=False only
 * ring 0 is used (end 0 receives, end 1 sends) and ring 1 has the minimum
 * capacity.
 *
 *   offset 0               struct pw_header           (kind PW_KIND_PIPE)
 *   offset 64              struct pw_pipe             (header_size bytes)
 *   data_offset            ring 0 data, capacity[0] bytes (page aligned)
 *   data_offset+capacity[0] ring 1 data, capacity[1] bytes
 *
 * Record payloads are always the message's bytes (PW_REC_BYTES): send(obj)
 * is send_bytes(pickle), as in multiprocessing, so recv_bytes() after send()
 * returns the pickle. A message longer than a quarter of its ring is streamed
 * as one PW_REC_STREAM_FIRST record and PW_REC_STREAM_MORE records; the end's
 * send_lock keeps the pieces of one message together, and a receiver drops
 * the pieces of a message whose sender died or was interrupted (a new message
 * begins, or MORE pieces arrive with no FIRST before them).
 *
 * Whether an end is open is the kernel's business, not shared memory's: each
 * end comes with file descriptors whose life the kernel tracks across fork,
 * descriptor passing and kill -9 (see pipe.c). `handles` only lets an orderly
 * close() by the last holder mark the end closed at once, without a system
 * call on every send.
 */
struct pw_pipe_end {
    /* -- 64 bytes of counters -- */
    _Atomic uint32_t handles;         /*  0: Connection objects of this end alive in all
                                             processes, counted at open/fork/pickle and
                                             at close(); processes that die never
                                             decrement it                              */
    uint32_t reserved0;               /*  4: layout 1: readers_waiting (now `receivers`) */
    _Atomic uint32_t fd_interest;     /*  8: 1 once fileno() was called on this end:
                                             senders signal its eventfd on every message */
    _Atomic uint32_t fd_signaled;     /* 12: the eventfd was signaled and not drained  */
    _Atomic uint64_t send_owner_died; /* 16: send_lock taken over from a dead process  */
    _Atomic uint64_t recv_owner_died; /* 24: recv_lock taken over from a dead process  */
    _Atomic uint64_t partial_dropped; /* 32: streamed messages dropped incomplete      */
    _Atomic uint64_t streamed;        /* 40: messages this end received as streams     */
    uint64_t reserved[2];             /* 48 */
    /* -- robust process-shared mutexes, one cache line each -- */
    pthread_mutex_t send_lock;        /* held while this end sends one whole message   */
    char pad1[PW_CACHELINE - sizeof(pthread_mutex_t) % PW_CACHELINE];
    pthread_mutex_t recv_lock;        /* held while this end receives one whole message */
    char pad2[PW_CACHELINE - sizeof(pthread_mutex_t) % PW_CACHELINE];
    struct pw_waiters receivers;      /* threads asleep in recv()/poll() on this end:
                                         senders must signal its eventfd             */
};

#define PW_PIPE_DUPLEX 1u

struct pw_pipe {
    uint32_t pipe_flags;              /*  0: PW_PIPE_DUPLEX                            */
    uint32_t reserved0;               /*  4 */
    uint64_t capacity[2];             /*  8: data bytes of ring 0 and ring 1           */
    uint64_t reserved1[5];            /* 24 */
    struct pw_pipe_end end[2];        /* 64 */
    struct pw_ring ring[2];
};
/* ------------------------------------------------------------------------
 * Synchronisation primitives and shared values (procwire.sync, procwire.shared)
 *
 * Every struct below sits at offset 64 of its own segment (after pw_header),
 * except struct pw_lock, which is also embedded in a Value/Array (the lock
 * get_lock() returns) and in a Condition (its default RLock). None of these
 * segments has a data area but Value/Array: data_offset == total_size.
 * ------------------------------------------------------------------------ */

/*
 * A robust lock: Lock, RLock, and the lock embedded in Value/Array/Condition.
 * 320 bytes. The mutex is a glibc robust, process-shared, error-checking
 * mutex (see mutex.c): the kernel releases it, marked owner-died, when its
 * holder dies. Its lock word holds the holder's thread id.
 */
struct pw_lock {
    pthread_mutex_t mutex;          /*  0: 40 bytes on x86-64 glibc              */
    /* What the holder writes on every acquire and release shares the mutex's
     * cache line (on x86-64): a contended lock moves one line between CPUs
     * per hand-over, not two. */
    _Atomic uint32_t depth;         /* 40: RLock recursion depth (holder writes) */
    uint32_t recursive;             /* 44: 1 for an RLock, 0 for a Lock          */
    _Atomic uint64_t holder_proc;   /* 48: random id of the holder's process, 0
                                           when free (holder writes): tids alone
                                           repeat across PID namespaces          */
    _Atomic uint64_t holder_hold;   /* 56: serial of the current hold, unique in
                                           the holder's process (holder writes)  */
    /* -- written on owner deaths and waits only -- */
    _Atomic uint32_t inconsistent   /* 64: 1 from an owner-died acquire until    */
        __attribute__((aligned(PW_CACHELINE))); /*  make_consistent()           */
    uint32_t reserved0;             /* 68: layout 1: waiters (now `sleepers`)    */
    _Atomic uint64_t owner_deaths;  /* 72: acquires that found the holder dead   */
    _Atomic uint64_t contended;     /* 80: acquires that had to wait             */
    uint64_t reserved[5];           /* 88..127                                   */
    struct pw_waiters sleepers;     /* 128: threads blocked in acquire (statistics
                                            only: the mutex does its own wakes)  */
};
_Static_assert(sizeof(pthread_mutex_t) <= PW_CACHELINE, "mutex fits one line");

/* Semaphore and BoundedSemaphore. 64 bytes. */
struct pw_sem {
    _Atomic uint32_t value;         /*  0: futex word, the count (<= INT32_MAX)  */
    uint32_t reserved0;             /*  4: layout 1: waiters (now `sleepers`)    */
    uint32_t maxvalue;              /*  8: the limit: the initial value for a
                                           BoundedSemaphore, else 2^31-1         */
    uint32_t bounded;               /* 12: 1 for a BoundedSemaphore              */
    _Atomic uint64_t acquires;      /* 16: statistics (advisory)                 */
    _Atomic uint64_t releases;      /* 24 */
    uint64_t reserved[4];           /* 32..63 */
    struct pw_waiters sleepers;     /* 64: threads asleep in acquire             */
};

/*
 * Event. 64 bytes. `state` is the futex word: bit 0 is the flag, bits 31..1
 * count set() calls that changed it (mod 2^31), so a waiter woken by a set()
 * that was cleared again before it ran still returns True.
 */
struct pw_event {
    _Atomic uint32_t state;         /*  0 */
    uint32_t reserved0;             /*  4: layout 1: waiters (now `sleepers`)    */
    _Atomic uint64_t sets;          /*  8: statistics                            */
    uint64_t reserved[6];           /* 16..63 */
    struct pw_waiters sleepers;     /* 64: threads asleep in wait                */
};

/* Where a Condition's (or a Value's/Array's) lock lives. */
enum pw_lock_mode {
    PW_LOCKMODE_NONE = 0,      /* no lock (RawValue, RawArray, lock=False)              */
    PW_LOCKMODE_EMBEDDED = 1,  /* the pw_lock inside this segment (an RLock)            */
    PW_LOCKMODE_NAMED = 2,     /* a named procwire Lock/RLock: lock_name says which     */
    PW_LOCKMODE_EXTERNAL = 3   /* an anonymous lock passed by the creator; reachable
                                  only through pickling, not by attaching by name       */
};
#define PW_LOCK_NAME_MAX 256

/*
 * Condition. 896 bytes. Waiters sleep on `seq`. A waiter registered in
 * `sleepers` slot i (wait.c) has its notify state in state[i]:
 *     PW_COND_WAITING (1)   set by _prepare_wait() (lock held)
 *     PW_COND_NOTIFIED (2)  set by notify(n) (lock held) by one compare-and-swap
 *                           from WAITING, then seq is bumped
 *     0                     set by the waiter as it leaves: one exchange, so
 *                           a timeout and a notify never both claim it
 * A state counts only while its `sleepers` slot is taken: a killed waiter's
 * slot is reaped like any sleeper's and its state is then ignored (and
 * overwritten by the slot's next waiter), so it never stays "waiting" and
 * never absorbs a later notify. notify(n) marks at most n WAITING states,
 * skipping those of dead processes when it has a choice; it wakes exactly the
 * marked waiters (FUTEX_WAKE_BITSET, bit i for slot i).
 *
 * Waiters beyond the PW_WAIT_SLOTS slots (no slot) use `wake` instead, two
 * counts changed together by compare-and-swap:
 *     bits 63..32  waiting, not yet notified
 *     bits 31..0   notifications granted and not yet taken
 * notify(n) moves what is left of n, up to the first count, to the second; a
 * slotless waiter takes one grant only if seq moved since it began waiting; a
 * slotless waiter that times out leaves the first count if no notify came
 * since it began, else it takes a grant if one is left. (A killed slotless
 * waiter stays in these counts: only ever more than 16 waiters at once.)
 */
struct pw_cond {
    _Atomic uint32_t seq;           /*   0: futex word                           */
    uint32_t reserved0;             /*   4: layout 1: waiters (now `sleepers`)    */
    uint32_t lock_mode;             /*   8: enum pw_lock_mode                     */
    uint32_t lock_name_len;         /*  12 */
    _Atomic uint64_t notifies;      /*  16: statistics                            */
    _Atomic uint64_t wake;          /*  24: slotless waiters: (waiting << 32) |
                                            granted, see above                    */
    uint64_t reserved[4];           /*  32..63 */
    char lock_name[PW_LOCK_NAME_MAX]; /* 64: not NUL-terminated                   */
    struct pw_lock lock;            /* 320: the default RLock                     */
    struct pw_waiters sleepers;     /* 640: threads in wait(), from _prepare_wait()
                                            to the end of _sleep()                */
    _Atomic uint32_t state[PW_WAIT_SLOTS]; /* 832: notify state of the waiter in
                                            sleepers.slot[i], see above           */
};
#define PW_COND_WAITING 1u
#define PW_COND_NOTIFIED 2u

/*
 * Value and Array (and their Raw forms). The elements start at data_offset
 * (64-byte aligned), `length` elements of `elem_size` bytes; a Value has
 * length 1. ctypes reads and writes them in place.
 */
#define PW_TYPECODE_MAX 16
struct pw_shared {
    struct pw_lock lock;            /*   0: used when lock_mode is EMBEDDED        */
    char typecode[PW_TYPECODE_MAX]; /* 320: ctypes _type_ code ("i", "d", ...),
                                            NUL-padded; "" for a custom ctypes type */
    uint64_t elem_size;             /* 336 */
    uint64_t length;                /* 344 */
    uint32_t lock_mode;             /* 352: enum pw_lock_mode                      */
    uint32_t lock_name_len;         /* 356 */
    uint64_t reserved[3];           /* 360..383 */
    char lock_name[PW_LOCK_NAME_MAX]; /* 384..639 */
};
#define PW_SHARED_DATA_OFFSET 704u  /* 64 + 640, a multiple of 64 */

/* ------------------------------------------------------------------------
 * The layout, checked at compile time: every shared struct's size and the
 * offsets other code (or another procwire build) relies on. A change here is
 * a PW_LAYOUT_VERSION bump.
 * ------------------------------------------------------------------------ */
#define PW_ASSERT_AT(type, field, offset)                                      \
    _Static_assert(offsetof(struct type, field) == (offset), #type "." #field " at " #offset);
#define PW_ASSERT_SIZE(type, size)                                             \
    _Static_assert(sizeof(struct type) == (size), #type " is " #size " bytes");

/* The checked offsets, X(struct, field, offset): a row per struct, the ring's
 * and the lock's a row per cache line. */
#define PW_LAYOUT_OFFSETS(X)                                                   \
    X(pw_header, magic, 0) X(pw_header, kind, 12) X(pw_header, data_offset, 32) \
    X(pw_waiters, wakes, 128) X(pw_waiters, last_reconcile_ns, 144)            \
    X(pw_ring, tail_lock, 64)                                                  \
    X(pw_ring, tail, 128) X(pw_ring, tail_cpu, 160)                            \
    X(pw_ring, head_lock, 192)                                                 \
    X(pw_ring, head, 256) X(pw_ring, view_mark, 288) X(pw_ring, head_cpu, 296) \
    X(pw_ring, not_empty_seq, 320) X(pw_ring, tasks_done, 336)                 \
    X(pw_ring, closed_flags, 344)                                              \
    X(pw_ring, consumers, 384) X(pw_ring, producers, 576) X(pw_ring, joiners, 768) \
    X(pw_pipe_end, send_lock, 64) X(pw_pipe_end, recv_lock, 128)              \
    X(pw_pipe_end, receivers, 192)                                             \
    X(pw_pipe, end, 64) X(pw_pipe, ring, 832)                                  \
    X(pw_lock, depth, 40) X(pw_lock, holder_proc, 48) X(pw_lock, holder_hold, 56) \
    X(pw_lock, inconsistent, 64)                                               \
    X(pw_lock, sleepers, 128)                                                  \
    X(pw_sem, sleepers, 64)                                                    \
    X(pw_event, sleepers, 64)                                                  \
    X(pw_cond, lock, 320) X(pw_cond, sleepers, 640) X(pw_cond, state, 832)     \
    X(pw_shared, typecode, 320) X(pw_shared, lock_name, 384)
/* ... and every shared struct's size. */
#define PW_LAYOUT_SIZES(X)                                                     \
    X(pw_header, 64) X(pw_waiters, 192) X(pw_ring, 960) X(pw_pipe_end, 384)    \
    X(pw_pipe, 2752) X(pw_lock, 320) X(pw_sem, 256) X(pw_event, 256)           \
    X(pw_cond, 896) X(pw_shared, 640)

#if defined(__x86_64__) /* the byte layout above: x86-64 glibc's 40-byte mutex */
PW_LAYOUT_OFFSETS(PW_ASSERT_AT)
#endif
PW_LAYOUT_SIZES(PW_ASSERT_SIZE)
_Static_assert(PW_SHARED_DATA_OFFSET == sizeof(struct pw_header) + sizeof(struct pw_shared),
               "a Value's data follows its headers");
/* Every kind's header keeps the data cache-line aligned. */
#define PW_KIND_ALIGNED_(id, num, name, type)                                  \
    _Static_assert(sizeof(struct type) % PW_CACHELINE == 0, #type " is whole cache lines");
PW_KINDS(PW_KIND_ALIGNED_)
#undef PW_KIND_ALIGNED_

#endif /* PROCWIRE_LAYOUT_H */
