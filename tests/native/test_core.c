/*
 * test_core.c -- tests of procwire's lower layer (src/procwire/_core/lib),
 * in plain C: no Python, no interpreter, so it can run under any sanitizer.
 *
 *   gcc -std=c11 -D_GNU_SOURCE -I src/procwire/_core/lib tests/native/test_core.c \
 *       src/procwire/_core/lib/(every .c file) -pthread -o test_core && ./test_core
 *
 * tests/native/test_native.py builds and runs it as part of the suite;
 * .ci/run also runs it built with -fsanitize=address,undefined. Every wait
 * has a deadline and every child is reaped, so a failure fails, never hangs.
 */
#include "pw.h"
#include "ring.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static int failures;

#define CHECK(cond)                                                                \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "%s:%d: %s: CHECK(%s) failed (last error: %s)\n",      \
                    __FILE__, __LINE__, __func__, #cond, pw_last_error());         \
            failures++;                                                            \
            return;                                                                \
        }                                                                          \
    } while (0)

#define MS 1000000LL

/* Shared memory that survives fork, like a segment. */
static void *shared_map(size_t n)
{
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    memset(p, 0, n);
    return p;
}

/* A child that runs fn(arg) and exits 0, or is killed. */
static pid_t spawn(void (*fn)(void *), void *arg)
{
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        alarm(20); /* never outlive a failed parent */
        fn(arg);
        _exit(0);
    }
    return pid;
}

static int reap(pid_t pid)
{
    int status;
    for (int i = 0; i < 2000; i++) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        usleep(5000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
}

/* ----------------------------------------------------------------- a queue */

struct queue {
    struct pw_header *h;
    pw_ringref rr;
    size_t size;
};

static void queue_make(struct queue *q, uint64_t capacity, uint32_t maxsize)
{
    q->size = pw_ring_segment_size(capacity);
    q->h = shared_map(q->size);
    struct pw_ring *r = (struct pw_ring *)(q->h + 1);
    pw_header_init(q->h, PW_KIND_QUEUE, q->size, sizeof *r, q->size - capacity);
    if (pw_ring_init(r, capacity, maxsize) != 0)
        exit(2);
    pw_header_publish(q->h);
    pw_ringref_init(&q->rr, r, (uint8_t *)q->h + q->h->data_offset, "the test queue");
}

static void queue_free(struct queue *q) { munmap(q->h, q->size); }

struct got {
    char buf[256][64];
    uint64_t len[256];
    uint32_t type[256];
    size_t n;
};

static int collect(void *ctx, const pw_ringref *rr, uint32_t pos, uint32_t type, uint64_t len)
{
    struct got *g = ctx;
    if (len > sizeof g->buf[0])
        return pw_fail(PW_EINVAL, "record of %llu bytes", (unsigned long long)len);
    pw_ring_copy_out(rr, pos, g->buf[g->n], len);
    g->len[g->n] = len;
    g->type[g->n++] = type;
    return 0;
}

static int put_str(struct queue *q, const char *s, int64_t deadline)
{
    pw_msg m;
    pw_msg_single(&m, PW_REC_BYTES, s, strlen(s));
    size_t done = 0;
    return pw_ring_put(&q->rr, &m, 1, &done, deadline);
}

static void test_ring_put_take_in_order(void)
{
    struct queue q;
    queue_make(&q, PW_RING_MIN_CAPACITY, 0);
    /* Enough rounds to wrap the 4 KiB ring many times. */
    for (int round = 0; round < 200; round++) {
        char msg[3][64];
        pw_msg m[3];
        for (int i = 0; i < 3; i++) {
            snprintf(msg[i], sizeof msg[i], "round %d message %d%.*s", round, i, round % 17,
                     "xxxxxxxxxxxxxxxxx");
            pw_msg_single(&m[i], PW_REC_BYTES, msg[i], strlen(msg[i]));
        }
        size_t done = 0;
        CHECK(pw_ring_put(&q.rr, m, 3, &done, 0) == PW_OK && done == 3);
        CHECK(pw_ring_count(&q.rr) == 3);
        struct got g = {0};
        size_t taken;
        CHECK(pw_ring_take(&q.rr, collect, &g, 8, 0, &taken) == PW_OK && taken == 3);
        for (int i = 0; i < 3; i++)
            CHECK(g.len[i] == strlen(msg[i]) && !memcmp(g.buf[i], msg[i], g.len[i]) &&
                  g.type[i] == PW_REC_BYTES);
    }
    CHECK(atomic_load(&q.rr.ring->total_in) == 600 && atomic_load(&q.rr.ring->total_out) == 600);
    queue_free(&q);
}

static void test_ring_full_and_empty_time_out(void)
{
    struct queue q;
    queue_make(&q, PW_RING_MIN_CAPACITY, 2);
    CHECK(put_str(&q, "a", 0) == PW_OK);
    CHECK(put_str(&q, "b", 0) == PW_OK);
    int64_t t0 = pw_now_ns();
    CHECK(put_str(&q, "c", pw_now_ns() + 30 * MS) == PW_TIMEOUT); /* maxsize 2 */
    int64_t waited = pw_now_ns() - t0;
    CHECK(waited >= 30 * MS && waited < 2000 * MS);
    struct got g = {0};
    size_t taken;
    CHECK(pw_ring_take(&q.rr, collect, &g, 8, 0, &taken) == PW_OK && taken == 2);
    t0 = pw_now_ns();
    CHECK(pw_ring_take(&q.rr, collect, &g, 8, pw_now_ns() + 30 * MS, &taken) == PW_TIMEOUT &&
          taken == 0);
    CHECK(pw_now_ns() - t0 >= 30 * MS);
    queue_free(&q);
}

static void test_ring_rejects_a_corrupt_record(void)
{
    struct queue q;
    queue_make(&q, PW_RING_MIN_CAPACITY, 0);
    CHECK(put_str(&q, "hello", 0) == PW_OK);
    uint32_t bogus = 1u << 20; /* a length beyond what was published */
    pw_ring_copy_in(&q.rr, pw_pos(atomic_load(&q.rr.ring->head)), &bogus, sizeof bogus);
    struct got g = {0};
    size_t taken;
    CHECK(pw_ring_take(&q.rr, collect, &g, 8, 0, &taken) == PW_ECORRUPT && taken == 0);
    CHECK(strstr(pw_last_error(), "the test queue is corrupt") != NULL);
    CHECK(pw_ring_count(&q.rr) == 1); /* nothing was taken */
    queue_free(&q);
}

#define CROSS_N 20000

static void producer(void *arg)
{
    struct queue *q = arg;
    for (int i = 0; i < CROSS_N; i++) {
        char s[32];
        snprintf(s, sizeof s, "%d", i);
        if (put_str(q, s, pw_now_ns() + 10000 * MS) != PW_OK)
            _exit(3);
    }
}

static void test_ring_across_processes(void)
{
    struct queue q;
    queue_make(&q, PW_RING_MIN_CAPACITY, 0); /* small: the producer waits for room */
    pid_t pid = spawn(producer, &q);
    int next = 0;
    while (next < CROSS_N) {
        struct got g = {0};
        size_t taken;
        int rc = pw_ring_take(&q.rr, collect, &g, 256, pw_now_ns() + 10000 * MS, &taken);
        CHECK(rc == PW_OK && taken > 0);
        for (size_t i = 0; i < taken; i++, next++) {
            g.buf[i][g.len[i]] = 0;
            CHECK(atoi(g.buf[i]) == next);
        }
    }
    int status = reap(pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    queue_free(&q);
}

/* ------------------------------------------------------------------ waits */

static int never(void *ctx) { return 0; }

static int flag_set(void *ctx) { return atomic_load((_Atomic uint32_t *)ctx) != 0; }

struct waitable {
    _Atomic uint32_t seq;
    _Atomic uint32_t flag;
    struct pw_waiters waiters __attribute__((aligned(64)));
};

static void test_wait_times_out_at_its_deadline(void)
{
    struct waitable *w = shared_map(sizeof *w);
    pw_spinner sp;
    pw_spinner_init(&sp);
    pw_wait wt = {.done = never, .waiters = &w->waiters, .futex = &w->seq,
                  .mask = PW_FUTEX_ANY, .spin = &sp};
    int64_t t0 = pw_now_ns();
    CHECK(pw_wait_until(&wt, t0 + 50 * MS) == PW_TIMEOUT);
    int64_t waited = pw_now_ns() - t0;
    CHECK(waited >= 50 * MS && waited < 2000 * MS);
    CHECK(pw_waiters_live(&w->waiters, 1) == 0); /* it left the registry */
    CHECK(pw_wait_until(&wt, 0) == PW_TIMEOUT);   /* a passed deadline: one look */
    int cancel = 1;
    wt.cancel = &cancel;
    CHECK(pw_wait_until(&wt, PW_FOREVER) == PW_CANCELLED);
    munmap(w, sizeof *w);
}

static void setter(void *arg)
{
    struct waitable *w = arg;
    usleep(50000);
    atomic_store(&w->flag, 1);
    pw_waiters_notify_all(&w->waiters, &w->seq);
}

static void test_wait_is_woken_by_another_process(void)
{
    struct waitable *w = shared_map(sizeof *w);
    pid_t pid = spawn(setter, w);
    pw_wait wt = {.done = flag_set, .ctx = &w->flag, .waiters = &w->waiters, .futex = &w->seq,
                  .mask = PW_FUTEX_ANY};
    int64_t t0 = pw_now_ns();
    CHECK(pw_wait_until(&wt, t0 + 10000 * MS) == PW_OK);
    CHECK(pw_now_ns() - t0 < 5000 * MS);
    CHECK(atomic_load(&w->waiters.wakes) == 1); /* it slept, and was woken by a system call */
    CHECK(WIFEXITED(reap(pid)));
    munmap(w, sizeof *w);
}

static void sleeper(void *arg)
{
    struct waitable *w = arg;
    pw_wait wt = {.done = never, .waiters = &w->waiters, .futex = &w->seq,
                  .mask = PW_FUTEX_ANY};
    pw_wait_until(&wt, PW_FOREVER);
}

static void test_a_killed_sleeper_is_reaped(void)
{
    struct waitable *w = shared_map(sizeof *w);
    pid_t pid = spawn(sleeper, w);
    int64_t t0 = pw_now_ns();
    while (!pw_waiters_any(&w->waiters) && pw_now_ns() - t0 < 5000 * MS)
        usleep(1000);
    CHECK(pw_waiters_live(&w->waiters, 1) == 1); /* alive: counted */
    kill(pid, SIGKILL);
    reap(pid);
    CHECK(pw_waiters_any(&w->waiters)); /* its slot is still taken ... */
    CHECK(pw_waiters_live(&w->waiters, 1) == 0); /* ... until reaped */
    CHECK(!pw_waiters_any(&w->waiters) && atomic_load(&w->waiters.reaped) == 1);
    munmap(w, sizeof *w);
}

static void test_spin_policy_follows_the_peer(void)
{
    cpu_set_t all, one;
    CHECK(sched_getaffinity(0, sizeof all, &all) == 0);
    if (CPU_COUNT(&all) < 2) {
        printf("(spin policy test skipped: one CPU)\n");
        return;
    }
    _Atomic uint32_t peer = 0;
    CHECK(pw_spin_budget(&peer) == PW_SPIN_MAX_NS); /* may run on several CPUs: spin */
    int cpu = 0;
    while (!CPU_ISSET(cpu, &all))
        cpu++;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    CHECK(sched_setaffinity(0, sizeof one, &one) == 0);
    usleep(150000); /* the budget re-reads the affinity every 100 ms */
    int me = sched_getcpu();
    int ok = me == cpu;
    int none = (int)pw_spin_budget(NULL), unknown = (int)pw_spin_budget(&peer);
    atomic_store(&peer, (uint32_t)me + 1);
    int same = (int)pw_spin_budget(&peer);
    atomic_store(&peer, (uint32_t)me + 2);
    int other = (int)pw_spin_budget(&peer);
    pw_publish_cpu(&peer);
    uint32_t published = atomic_load(&peer);
    sched_setaffinity(0, sizeof all, &all);
    usleep(150000);
    CHECK(ok && none == 0 && unknown == 0 && same == 0 && other == PW_SPIN_MAX_NS);
    CHECK(published == (uint32_t)me + 1);
}

/* ------------------------------------------------------------ robust mutex */

struct locked {
    pthread_mutex_t m;
    _Atomic uint32_t held;
};

static void hold_forever(void *arg)
{
    struct locked *l = arg;
    if (pw_mutex_lock(&l->m, PW_FOREVER, NULL) != PW_OK)
        _exit(3);
    atomic_store(&l->held, 1);
    pause();
}

static void test_mutex_owner_died_handover(void)
{
    struct locked *l = shared_map(sizeof *l);
    CHECK(pw_mutex_init(&l->m) == 0);
    CHECK(pw_mutex_check(&l->m, "the test lock") == PW_OK);
    pid_t pid = spawn(hold_forever, l);
    int64_t t0 = pw_now_ns();
    while (!atomic_load(&l->held) && pw_now_ns() - t0 < 5000 * MS)
        usleep(1000);
    CHECK(pw_mutex_holder(&l->m) != 0);
    CHECK(pw_mutex_trylock(&l->m) == PW_TIMEOUT);
    CHECK(pw_mutex_lock(&l->m, pw_now_ns() + 20 * MS, NULL) == PW_TIMEOUT);
    kill(pid, SIGKILL);
    reap(pid);
    /* The kernel hands the lock over, marked: the new owner repairs. */
    CHECK(pw_mutex_lock(&l->m, pw_now_ns() + 5000 * MS, NULL) == PW_OWNER_DIED);
    CHECK(pw_mutex_lock(&l->m, 0, NULL) == PW_EDEADLK); /* error-checking */
    pw_mutex_unlock(&l->m);
    CHECK(pw_mutex_lock(&l->m, 0, NULL) == PW_OK); /* consistent again */
    pw_mutex_unlock(&l->m);
    /* A scribbled kind is refused before glibc sees it. */
    l->m.__data.__kind ^= 0x40;
    CHECK(pw_mutex_trylock(&l->m) == PW_ECORRUPT);
    CHECK(strstr(pw_last_error(), "a shared object is corrupt") != NULL);
    munmap(l, sizeof *l);
}

/* --------------------------------------------------------------- headers */

static void test_header_validation(void)
{
    struct queue q;
    queue_make(&q, PW_RING_MIN_CAPACITY, 0);
    struct pw_header *h = q.h;
    CHECK(pw_header_validate_kind(h, q.size, PW_KIND_QUEUE, "q") == PW_OK);
    CHECK(pw_ring_validate(q.rr.ring, q.size - h->data_offset, "q") == PW_OK);
    CHECK(pw_header_validate(h, 10, 0, "q") == PW_ECORRUPT);
    CHECK(strstr(pw_last_error(), "shorter than the 64-byte header"));
    CHECK(pw_header_validate(h, q.size - 8, 0, "q") == PW_ECORRUPT);
    CHECK(strstr(pw_last_error(), "truncated or corrupt"));
    CHECK(pw_header_validate(h, q.size, PW_KIND_PIPE, "q") == PW_ECORRUPT);
    CHECK(strstr(pw_last_error(), "q is a queue, not a pipe"));
    h->version++;
    CHECK(pw_header_validate(h, q.size, 0, "q") == PW_ECORRUPT);
    CHECK(strstr(pw_last_error(), "layout version"));
    h->version--;
    h->header_size -= 8;
    CHECK(pw_header_validate_kind(h, q.size, 0, "q") == PW_ECORRUPT);
    CHECK(strstr(pw_last_error(), "its queue header is"));
    h->header_size += 8;
    q.rr.ring->capacity = 3000;
    CHECK(pw_ring_validate(q.rr.ring, q.size - h->data_offset, "q") == PW_ECORRUPT);
    q.rr.ring->capacity = PW_RING_MIN_CAPACITY;
    h->kind = PW_KIND_RETIRED_BARRIER; /* never reused: refused by name */
    CHECK(pw_header_validate(h, q.size, 0, "q") == PW_ECORRUPT);
    CHECK(strstr(pw_last_error(), "native Barrier of an earlier procwire"));
    h->kind = 11;
    CHECK(pw_header_validate(h, q.size, 0, "q") == PW_ECORRUPT);
    CHECK(strstr(pw_last_error(), "invalid object kind 11"));
    h->kind = PW_KIND_QUEUE;
    atomic_store(&h->magic, 0);
    CHECK(pw_header_validate(h, q.size, 0, "q") == PW_ECORRUPT);
    CHECK(strstr(pw_last_error(), "not initialised"));
    atomic_store(&h->magic, 0x1234);
    CHECK(pw_header_validate(h, q.size, 0, "q") == PW_ECORRUPT);
    CHECK(strstr(pw_last_error(), "bad magic number 0x0000000000001234"));
    queue_free(&q);
}

/* A segment of `kind` with a kind header of `header_size` bytes, zeroed. */
static struct pw_header *segment_make(uint32_t kind, size_t size, size_t header_size,
                                      uint64_t data_offset)
{
    struct pw_header *h = calloc(1, size);
    pw_header_init(h, kind, size, (uint32_t)header_size, data_offset);
    return h;
}

static void test_kind_headers_are_validated(void)
{
    size_t size = sizeof(struct pw_header) + sizeof(struct pw_sem);
    struct pw_header *h = segment_make(PW_KIND_SEMAPHORE, size, sizeof(struct pw_sem), size);
    struct pw_sem *sem = (struct pw_sem *)(h + 1);
    atomic_store(&sem->value, 2);
    sem->maxvalue = 2;
    sem->bounded = 1;
    pw_header_publish(h);
    CHECK(pw_segment_validate(h, size, PW_KIND_SEMAPHORE, "s") == PW_OK);
    atomic_store(&sem->value, 3); /* above a bounded semaphore's ceiling */
    CHECK(pw_segment_validate(h, size, 0, "s") == PW_ECORRUPT);
    CHECK(strstr(pw_last_error(), "s is corrupt: value 3, maxvalue 2"));
    free(h);

    size = PW_SHARED_DATA_OFFSET + 8;
    h = segment_make(PW_KIND_VALUE, size, sizeof(struct pw_shared), PW_SHARED_DATA_OFFSET);
    struct pw_shared *v = (struct pw_shared *)(h + 1);
    v->elem_size = 8;
    v->length = 1;
    v->typecode[0] = 'q';
    v->lock_mode = PW_LOCKMODE_EMBEDDED;
    CHECK(pw_lock_init(&v->lock, 1) == 0);
    pw_header_publish(h);
    CHECK(pw_segment_validate(h, size, PW_KIND_VALUE, "v") == PW_OK);
    v->length = 2; /* 16 bytes of elements in 8 */
    CHECK(pw_segment_validate(h, size, PW_KIND_VALUE, "v") == PW_ECORRUPT);
    CHECK(strstr(pw_last_error(), "does not match its size"));
    v->length = 1;
    v->lock.mutex.__data.__kind ^= 0x40; /* the embedded lock's mutex, scribbled */
    CHECK(pw_segment_validate(h, size, PW_KIND_VALUE, "v") == PW_ECORRUPT);
    free(h);
}

static void test_kinds_table(void)
{
    int n = 0;
    for (const struct pw_kind_info *k = pw_kinds; k->name; k++, n++) {
        CHECK(pw_kind_info(k->kind) == k && !strcmp(pw_kind_name(k->kind), k->name));
        CHECK(k->header_size >= 64 && k->header_size % 64 == 0);
    }
    CHECK(n == 9);
    CHECK(pw_kind_info(PW_KIND_QUEUE)->header_size == sizeof(struct pw_ring));
    CHECK(!strcmp(pw_kind_name(0), "unknown") && pw_kind_info(63) == NULL);
    CHECK(pw_kind_info(PW_KIND_RETIRED_BARRIER) == NULL);
}

int main(void)
{
    test_kinds_table();
    test_kind_headers_are_validated();
    test_header_validation();
    test_ring_put_take_in_order();
    test_ring_full_and_empty_time_out();
    test_ring_rejects_a_corrupt_record();
    test_ring_across_processes();
    test_wait_times_out_at_its_deadline();
    test_wait_is_woken_by_another_process();
    test_a_killed_sleeper_is_reaped();
    test_spin_policy_follows_the_peer();
    test_mutex_owner_died_handover();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("native core: all tests passed\n");
    return 0;
}
