/*
 * floors.c -- what this machine itself costs, in plain C, with no Python and
 * no procwire: the floors under procwire's benchmark figures.
 *
 *   cc -O2 -o /tmp/floors benchmarks/floors/floors.c -lpthread && /tmp/floors
 *   /tmp/floors lock memcpy      # only the floors named
 *
 * Each floor runs `REPEATS` times and prints the median with the min-max.
 * The two-process floors pin one process to each of the first two CPUs
 * (sched_setaffinity), as `procwire bench`'s "pinned to CPUs 0 and 1" cases
 * do; the "one CPU" variants pin both to the first.
 *
 *   wake      futex wake-up latency: a ping-pong of two processes that sleep
 *             in FUTEX_WAIT and wake each other (half the round trip).
 *   pingpong  cache-line ping-pong: the same ping-pong by spinning on a shared
 *             word (half the round trip: one cache-line transfer each way).
 *   lock      a lock hammered by two processes, acquire+release pairs/s in all:
 *             glibc's robust process-shared error-checking mutex (procwire's
 *             Lock), a process-shared sem_t (multiprocessing's Lock), and a
 *             bare test-and-set spin lock (the hardware's ceiling).
 *   memcpy    GB/s of memcpy and memset over 1 MiB and 8 MiB buffers, hot
 *             (already faulted in), one process.
 *   xcopy     GB/s of one copy in and one copy out through shared memory
 *             across two CPUs: a writer copies each 1 or 8 MiB message into
 *             the next slot of a 64 MiB ring, the reader copies it out (the
 *             floor of a ring with two copies; procwire's Queue does this).
 *   fault     page-fault cost: first touch of a fresh 8 MiB mapping (private
 *             anonymous, and shared /dev/shm), ns per 4 KiB page and GB/s.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REPEATS 5

static int cpu_a = 0, cpu_b = 1;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void pin(int cpu)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    if (sched_setaffinity(0, sizeof s, &s) != 0) {
        perror("sched_setaffinity");
        exit(2);
    }
}

static void *shared_map(size_t n)
{
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    return p;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *what, const char *unit, double *v)
{
    qsort(v, REPEATS, sizeof *v, cmp_double);
    printf("%-58s %10.3f %-8s (%.3f-%.3f)\n", what, v[REPEATS / 2], unit, v[0],
           v[REPEATS - 1]);
    fflush(stdout);
}

static pid_t spawn(int cpu)
{
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0)
        pin(cpu);
    return pid;
}

static void reap(pid_t pid)
{
    int st;
    waitpid(pid, &st, 0);
}

static long futex(_Atomic uint32_t *w, int op, uint32_t v)
{
    return syscall(SYS_futex, (uint32_t *)w, op, v, NULL, NULL, 0);
}

/* ----------------------------------------------------- wake and pingpong */

struct turn {
    _Atomic uint32_t word __attribute__((aligned(64)));
};

/* Half a round trip in µs: the parent sets 1, the child answers 2. */
static double ping_pong(int child_cpu, int sleep, int trips)
{
    struct turn *t = shared_map(sizeof *t);
    atomic_store(&t->word, 0);
    pid_t pid = spawn(child_cpu);
    if (pid == 0) {
        for (int i = 0; i < trips; i++) {
            while (atomic_load(&t->word) != 1)
                if (sleep)
                    futex(&t->word, FUTEX_WAIT, 0);
            atomic_store(&t->word, 2);
            if (sleep)
                futex(&t->word, FUTEX_WAKE, 1);
        }
        _exit(0);
    }
    pin(cpu_a);
    double t0 = now();
    for (int i = 0; i < trips; i++) {
        atomic_store(&t->word, 1);
        if (sleep)
            futex(&t->word, FUTEX_WAKE, 1);
        while (atomic_load(&t->word) != 2)
            if (sleep)
                futex(&t->word, FUTEX_WAIT, 1);
        atomic_store(&t->word, 0);
    }
    double us = (now() - t0) / trips / 2 * 1e6;
    reap(pid);
    munmap(t, sizeof *t);
    return us;
}

static void floor_wake(void)
{
    double v[REPEATS];
    for (int r = 0; r < REPEATS; r++)
        v[r] = ping_pong(cpu_b, 1, 20000);
    report("futex wake-up, other CPU (half round trip)", "us", v);
    for (int r = 0; r < REPEATS; r++)
        v[r] = ping_pong(cpu_a, 1, 20000);
    report("futex wake-up, same CPU (half round trip)", "us", v);
}

static void floor_pingpong(void)
{
    double v[REPEATS];
    for (int r = 0; r < REPEATS; r++)
        v[r] = ping_pong(cpu_b, 0, 1000000) * 1000;
    report("cache-line transfer, spinning, other CPU (half trip)", "ns", v);
}

/* ------------------------------------------------------------------ lock */

enum { ROBUST, SEMAPHORE, SPIN };

struct lockbox {
    pthread_mutex_t m __attribute__((aligned(64)));
    sem_t sem __attribute__((aligned(64)));
    _Atomic uint32_t spin __attribute__((aligned(64)));
    _Atomic uint32_t ready __attribute__((aligned(64)));
};

static void hammer(struct lockbox *b, int kind, long pairs)
{
    atomic_fetch_add(&b->ready, 1);
    while (atomic_load(&b->ready) < 2)
        ;
    for (long i = 0; i < pairs; i++) {
        switch (kind) {
        case ROBUST:
            if (pthread_mutex_lock(&b->m) != 0)
                abort();
            pthread_mutex_unlock(&b->m);
            break;
        case SEMAPHORE:
            while (sem_wait(&b->sem) != 0)
                ;
            sem_post(&b->sem);
            break;
        default:
            while (atomic_exchange_explicit(&b->spin, 1, memory_order_acquire))
                while (atomic_load_explicit(&b->spin, memory_order_relaxed))
                    __builtin_ia32_pause();
            atomic_store_explicit(&b->spin, 0, memory_order_release);
        }
    }
}

/* A shared lockbox with a robust, process-shared, error-checking mutex (as
 * procwire's Lock) and a process-shared semaphore (as multiprocessing's). */
static struct lockbox *new_lockbox(void)
{
    struct lockbox *b = shared_map(sizeof *b);
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK);
    pthread_mutex_init(&b->m, &a);
    sem_init(&b->sem, 1, 1);
    return b;
}

/* Pairs per second in all, two processes (on cpu_a and child_cpu). */
static double contended(int kind, int child_cpu, long pairs)
{
    struct lockbox *b = new_lockbox();
    pid_t pid = spawn(child_cpu);
    if (pid == 0) {
        hammer(b, kind, pairs);
        _exit(0);
    }
    pin(cpu_a);
    double t0 = now();
    hammer(b, kind, pairs);
    reap(pid);
    double rate = 2.0 * pairs / (now() - t0);
    munmap(b, sizeof *b);
    return rate;
}

static void floor_lock(void)
{
    static const char *names[] = {"glibc robust pshared errorcheck mutex",
                                  "pshared sem_t (multiprocessing's Lock)",
                                  "test-and-set spin lock"};
    double v[REPEATS];
    for (int kind = ROBUST; kind <= SPIN; kind++) {
        char what[120];
        for (int r = 0; r < REPEATS; r++)
            v[r] = contended(kind, cpu_b, 2000000) / 1e6;
        snprintf(what, sizeof what, "lock contended, CPUs apart: %s", names[kind]);
        report(what, "M pairs/s", v);
        if (kind == SPIN)
            break; /* two spinners on one CPU only measure the time slice */
        for (int r = 0; r < REPEATS; r++)
            v[r] = contended(kind, cpu_a, 2000000) / 1e6;
        snprintf(what, sizeof what, "lock contended, one CPU: %s", names[kind]);
        report(what, "M pairs/s", v);
    }
    /* One process alone: the uncontended pair. */
    struct lockbox *b = new_lockbox();
    for (int kind = ROBUST; kind <= SEMAPHORE; kind++) {
        for (int r = 0; r < REPEATS; r++) {
            long n = 5000000;
            atomic_store(&b->ready, 1);
            double t0 = now();
            hammer(b, kind, n);
            v[r] = (now() - t0) / n * 1e9;
        }
        char what[120];
        snprintf(what, sizeof what, "lock uncontended pair: %s", names[kind]);
        report(what, "ns", v);
    }
    munmap(b, sizeof *b);
}

/* ---------------------------------------------------------------- memcpy */

static void floor_memcpy(void)
{
    static const size_t sizes[] = {1 << 20, 8 << 20};
    double v[REPEATS];
    for (int k = 0; k < 2; k++) {
        size_t n = sizes[k];
        char *src = malloc(n), *dst = malloc(n);
        memset(src, 1, n);
        memset(dst, 2, n);
        int iters = (int)((1u << 30) / n);
        for (int r = 0; r < REPEATS; r++) {
            double t0 = now();
            for (int i = 0; i < iters; i++) {
                memcpy(dst, src, n);
                __asm__ __volatile__("" ::"r"(dst) : "memory");
            }
            v[r] = (double)n * iters / (now() - t0) / 1e9;
        }
        char what[80];
        snprintf(what, sizeof what, "memcpy %zu MiB, hot, one CPU", n >> 20);
        report(what, "GB/s", v);
        for (int r = 0; r < REPEATS; r++) {
            double t0 = now();
            for (int i = 0; i < iters; i++) {
                memset(dst, i, n);
                __asm__ __volatile__("" ::"r"(dst) : "memory");
            }
            v[r] = (double)n * iters / (now() - t0) / 1e9;
        }
        snprintf(what, sizeof what, "memset %zu MiB, hot, one CPU", n >> 20);
        report(what, "GB/s", v);
        free(src);
        free(dst);
    }
}

/* ----------------------------------------------------------------- xcopy */

#define RING_BYTES (64u << 20) /* as procwire bench's large-message Queue */
#define MAX_SLOTS 64

struct slots {
    struct {
        _Atomic uint32_t full __attribute__((aligned(64)));
    } slot[MAX_SLOTS];
};

/* GB/s: msgs messages of n bytes through a 64 MiB ring of n-byte slots: this
 * process copies each message into the next slot (memcpy in), the child on
 * the other CPU copies it out (memcpy out). */
static double cross_copy(size_t n, int msgs)
{
    int nslots = (int)(RING_BYTES / n);
    if (nslots > MAX_SLOTS)
        nslots = MAX_SLOTS;
    struct slots *s = shared_map(sizeof *s);
    char *ring = shared_map((size_t)nslots * n);
    memset(ring, 0, (size_t)nslots * n); /* faulted in, as a ring in use is */
    pid_t pid = spawn(cpu_b);
    if (pid == 0) {
        char *out = malloc(n);
        memset(out, 0, n);
        memcpy(out, ring, n); /* the child's own page tables for the ring, */
        for (int k = 1; k < nslots; k++) /* before the clock starts */
            out[0] ^= ring[(size_t)k * n];
        for (int i = 0; i < msgs; i++) {
            int k = i % nslots;
            while (!atomic_load_explicit(&s->slot[k].full, memory_order_acquire))
                __builtin_ia32_pause();
            memcpy(out, ring + (size_t)k * n, n);
            atomic_store_explicit(&s->slot[k].full, 0, memory_order_release);
        }
        _exit(0);
    }
    pin(cpu_a);
    char *in = malloc(n);
    memset(in, 7, n);
    double t0 = now();
    for (int i = 0; i < msgs; i++) {
        int k = i % nslots;
        while (atomic_load_explicit(&s->slot[k].full, memory_order_acquire))
            __builtin_ia32_pause();
        memcpy(ring + (size_t)k * n, in, n);
        atomic_store_explicit(&s->slot[k].full, 1, memory_order_release);
    }
    reap(pid);
    double gbs = (double)n * msgs / (now() - t0) / 1e9;
    free(in);
    munmap(ring, (size_t)nslots * n);
    munmap(s, sizeof *s);
    return gbs;
}

static void floor_xcopy(void)
{
    double v[REPEATS];
    for (int r = 0; r < REPEATS; r++)
        v[r] = cross_copy(1 << 20, 4000);
    report("copy in + copy out across CPUs, 1 MiB messages", "GB/s", v);
    for (int r = 0; r < REPEATS; r++)
        v[r] = cross_copy(8 << 20, 500);
    report("copy in + copy out across CPUs, 8 MiB messages", "GB/s", v);
}

/* ----------------------------------------------------------------- fault */

static double first_touch(int shared_file, double *gbs)
{
    size_t n = 8 << 20;
    char *p;
    int fd = -1;
    if (shared_file) {
        char name[64];
        snprintf(name, sizeof name, "/dev/shm/floors-%d", (int)getpid());
        fd = open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
        unlink(name);
        if (fd < 0 || ftruncate(fd, (off_t)n) != 0) {
            perror("shm");
            exit(2);
        }
        p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    } else {
        p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        madvise(p, n, MADV_NOHUGEPAGE); /* what a malloc'd buffer usually gets */
    }
    double t0 = now();
    for (size_t i = 0; i < n; i += 4096)
        p[i] = 1;
    double dt = now() - t0;
    *gbs = n / dt / 1e9;
    munmap(p, n);
    if (fd >= 0)
        close(fd);
    return dt / (n / 4096) * 1e9;
}

static void floor_fault(void)
{
    double v[REPEATS], g[REPEATS];
    for (int shared_file = 0; shared_file < 2; shared_file++) {
        for (int r = 0; r < REPEATS; r++)
            v[r] = first_touch(shared_file, &g[r]);
        report(shared_file ? "page fault, first touch of /dev/shm (per 4 KiB page)"
                           : "page fault, first touch of anonymous memory (per 4 KiB page)",
               "ns", v);
        report(shared_file ? "  = bandwidth of faulting in 8 MiB of /dev/shm"
                           : "  = bandwidth of faulting in 8 MiB of anonymous memory",
               "GB/s", g);
    }
}

/* ------------------------------------------------------------------ main */

static const struct {
    const char *name;
    void (*run)(void);
} floors[] = {
    {"wake", floor_wake},     {"pingpong", floor_pingpong}, {"lock", floor_lock},
    {"memcpy", floor_memcpy}, {"xcopy", floor_xcopy},       {"fault", floor_fault},
};

int main(int argc, char **argv)
{
    cpu_set_t s;
    if (sched_getaffinity(0, sizeof s, &s) == 0 && CPU_COUNT(&s) >= 2) {
        int seen = 0;
        for (int c = 0; c < CPU_SETSIZE && seen < 2; c++)
            if (CPU_ISSET(c, &s))
                *(seen++ ? &cpu_b : &cpu_a) = c;
    } else {
        fprintf(stderr, "floors: needs two CPUs\n");
        return 2;
    }
    double l[3];
    if (getloadavg(l, 3) > 0)
        printf("load average %.2f %.2f %.2f; CPUs %d and %d; medians of %d runs (min-max)\n",
               l[0], l[1], l[2], cpu_a, cpu_b, REPEATS);
    int n = sizeof floors / sizeof floors[0];
    for (int i = 0; i < n; i++) {
        int wanted = argc < 2;
        for (int a = 1; a < argc; a++)
            wanted |= strcmp(argv[a], floors[i].name) == 0;
        if (wanted)
            floors[i].run();
    }
    return 0;
}
