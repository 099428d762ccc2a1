/*
 * header.c -- the common header of every segment (layout.h): the table of
 * kinds, initialise, publish, validate -- and the one validator of each
 * kind's own header (pw_segment_validate).
 *
 * Naming, creating, mapping and unlinking segments is policy and lives in
 * procwire/_segment.py; this file only reads and writes the header bytes.
 */
#include "pw.h"
#include "ring.h"

#include <string.h>
#include <time.h>
#include <unistd.h>

const struct pw_kind_info pw_kinds[] = {
#define PW_KIND_ROW_(id, num, name, type) {num, name, sizeof(struct type)},
    PW_KINDS(PW_KIND_ROW_)
#undef PW_KIND_ROW_
    {0, NULL, 0},
};

const struct pw_kind_info *pw_kind_info(uint32_t kind)
{
    for (const struct pw_kind_info *k = pw_kinds; k->name; k++)
        if (k->kind == kind)
            return k;
    return NULL;
}

const char *pw_kind_name(uint32_t kind)
{
    const struct pw_kind_info *k = pw_kind_info(kind);
    return k ? k->name : "unknown";
}

void pw_header_init(struct pw_header *h, uint32_t kind, uint64_t total_size,
                    uint32_t header_size, uint64_t data_offset)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    atomic_store_explicit(&h->magic, 0, memory_order_relaxed);
    h->version = PW_LAYOUT_VERSION;
    h->kind = kind;
    h->total_size = total_size;
    h->creator_pid = (uint32_t)getpid();
    h->header_size = header_size;
    h->data_offset = data_offset;
    h->created_ns = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
    h->flags = 0;
    h->reserved = 0;
}

void pw_header_publish(struct pw_header *h)
{
    atomic_store_explicit(&h->magic, PW_MAGIC, memory_order_release);
}

int pw_header_validate(const void *base, uint64_t size, uint32_t kind, const char *what)
{
    const struct pw_header *h = base;
    if (size < sizeof *h)
        return pw_fail(PW_ECORRUPT, "%s is not a procwire segment: %llu bytes is shorter than "
                                "the %zu-byte header", what, (unsigned long long)size, sizeof *h);
    uint64_t magic = atomic_load_explicit((_Atomic uint64_t *)&h->magic, memory_order_acquire);
    if (magic == 0)
        return pw_fail(PW_ECORRUPT, "%s is not initialised: its creator has not finished "
                                "creating it, or died while doing so", what);
    if (magic == PW_MAGIC_LOST)
        return pw_fail(PW_ECORRUPT, "%s was truncated while in use (its file in the shared-memory "
                                "directory shrank under the processes using it): its contents "
                                "are lost. Remove it (`procwire rm`) and create it again", what);
    if (magic != PW_MAGIC) {
        return pw_fail(PW_ECORRUPT, "%s is not a procwire segment (bad magic number 0x%016llx)",
                       what, (unsigned long long)magic);
    }
    if (h->version != PW_LAYOUT_VERSION)
        return pw_fail(PW_ECORRUPT, "%s has layout version %u, but this procwire reads "
                                "version %u: use the same procwire version in every "
                                "process", what, h->version, PW_LAYOUT_VERSION);
    if (h->kind == PW_KIND_RETIRED_BARRIER)
        return pw_fail(PW_ECORRUPT, "%s is the native Barrier of an earlier procwire (kind %u), "
                                "which this procwire no longer reads (its Barrier is built on "
                                "a Condition): remove it and create it again", what, h->kind);
    if (!pw_kind_info(h->kind))
        return pw_fail(PW_ECORRUPT, "%s has an invalid object kind %u", what, h->kind);
    if (kind && h->kind != kind)
        return pw_fail(PW_ECORRUPT, "%s is a %s, not a %s", what, pw_kind_name(h->kind),
                                pw_kind_name(kind));
    if (h->total_size != size)
        return pw_fail(PW_ECORRUPT, "%s is truncated or corrupt: its header says %llu bytes "
                                "but %llu are mapped", what,
                                (unsigned long long)h->total_size, (unsigned long long)size);
    if (h->header_size > size - sizeof *h || h->data_offset > size ||
        h->data_offset < sizeof *h + h->header_size)
        return pw_fail(PW_ECORRUPT, "%s is corrupt: header size %u or data offset %llu does "
                                "not fit its %llu bytes", what, h->header_size,
                                (unsigned long long)h->data_offset, (unsigned long long)size);
    return 0;
}


int pw_header_validate_kind(const void *base, uint64_t size, uint32_t kind, const char *what)
{
    int rc = pw_header_validate(base, size, kind, what);
    if (rc)
        return rc;
    const struct pw_header *h = base;
    const struct pw_kind_info *k = pw_kind_info(h->kind); /* known: validated */
    if (h->header_size != k->header_size)
        return pw_fail(PW_ECORRUPT, "%s is corrupt: its %s header is %u bytes, expected %zu",
                       what, k->name, h->header_size, k->header_size);
    return PW_OK;
}

/* What a Value's or Array's header must satisfy: elements that fill the data
 * area exactly, a known lock mode, a NUL-terminated type code. */
static int shared_validate(const struct pw_header *h, uint64_t size, const char *what)
{
    const struct pw_shared *s = (const struct pw_shared *)(h + 1);
    uint64_t nbytes = s->elem_size * s->length;
    if (h->data_offset != PW_SHARED_DATA_OFFSET || s->elem_size == 0 ||
        s->length > (((uint64_t)1 << 46) / s->elem_size) ||
        PW_SHARED_DATA_OFFSET + (nbytes ? nbytes : 1) != size ||
        s->lock_mode > PW_LOCKMODE_EXTERNAL || s->lock_name_len > PW_LOCK_NAME_MAX ||
        memchr(s->typecode, 0, PW_TYPECODE_MAX) == NULL)
        return pw_fail(PW_ECORRUPT, "%s is corrupt: its value/array header does not match its "
                       "size", what);
    return s->lock_mode == PW_LOCKMODE_EMBEDDED ? pw_mutex_check(&s->lock.mutex, what) : PW_OK;
}

int pw_segment_validate(const void *base, uint64_t size, uint32_t kind, const char *what)
{
    int rc = pw_header_validate_kind(base, size, kind, what);
    if (rc)
        return rc;
    const struct pw_header *h = base;
    const void *p = h + 1;
    switch (h->kind) {
    case PW_KIND_QUEUE: {
        const struct pw_ring *r = p;
        if ((r->ring_flags & ~PW_RING_SPILL) ||
            ((r->ring_flags & PW_RING_SPILL) && r->spill_base != size))
            return pw_fail(PW_ECORRUPT, "%s is corrupt: ring flags %u, spill area at %llu "
                           "(mapping %llu bytes)", what, r->ring_flags,
                           (unsigned long long)r->spill_base, (unsigned long long)size);
        return pw_ring_validate(r, size - h->data_offset, what);
    }
    case PW_KIND_LOCK:
    case PW_KIND_RLOCK:
        return pw_mutex_check(&((const struct pw_lock *)p)->mutex, what);
    case PW_KIND_SEMAPHORE: {
        const struct pw_sem *s = p;
        uint32_t value = atomic_load((_Atomic uint32_t *)&s->value);
        if (s->maxvalue > INT32_MAX || s->bounded > 1 || value > s->maxvalue)
            return pw_fail(PW_ECORRUPT, "%s is corrupt: value %u, maxvalue %u", what, value,
                           s->maxvalue);
        return PW_OK;
    }
    case PW_KIND_CONDITION: {
        const struct pw_cond *c = p;
        if (c->lock_mode > PW_LOCKMODE_EXTERNAL || c->lock_name_len > PW_LOCK_NAME_MAX)
            return pw_fail(PW_ECORRUPT, "%s is corrupt: lock mode %u, lock name length %u",
                           what, c->lock_mode, c->lock_name_len);
        return pw_mutex_check(&c->lock.mutex, what);
    }
    case PW_KIND_VALUE:
    case PW_KIND_ARRAY:
        return shared_validate(h, size, what);
    case PW_KIND_PIPE: { /* its two rings' data fill the segment, one after the other */
        const struct pw_pipe *pp = p;
        if (h->data_offset != pw_ring_data_offset(sizeof *h + sizeof *pp) ||
            pp->capacity[0] != pp->ring[0].capacity || pp->capacity[1] != pp->ring[1].capacity ||
            pp->capacity[0] > size || pp->capacity[1] > size ||
            h->data_offset + pp->capacity[0] + pp->capacity[1] != size)
            return pw_fail(PW_ECORRUPT, "%s is corrupt: ring capacities do not fit the segment",
                           what);
        rc = pw_ring_validate(&pp->ring[0], pp->capacity[0], what);
        return rc ? rc : pw_ring_validate(&pp->ring[1], pp->capacity[1], what);
    }
    default: /* an event has nothing more to check */
        return PW_OK;
    }
}
