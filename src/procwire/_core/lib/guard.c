/*
 * guard.c -- survive the truncation of a named segment's file under us.
 */
#include "pw.h"
#include "guard.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------ SIGBUS guard
 *
 * A named segment is a file in a tmpfs that any process of its user can
 * truncate (`truncate -s 0 /dev/shm/procwire.x`). The kernel then takes the
 * pages away from every mapping, and the next access to them raises SIGBUS,
 * which kills the process. Nothing can forbid the truncation (seals exist
 * for memfds only), so each process registers its mappings of named segments
 * here, and a SIGBUS handler repairs a fault inside one of them:
 *
 *  - it gives the file its size back (ftruncate on a descriptor kept for this
 *    purpose, async-signal-safe), so that every process keeps sharing the
 *    same, now zeroed, pages, and marks the segment lost with a magic number
 *    that makes every later attach fail with a clear SegmentError;
 *  - if the file has its size but the page cannot be had (a full tmpfs), it
 *    maps a private zeroed page at the faulting address.
 *
 * Either way the faulting instruction is simply re-executed, on valid memory:
 * no longjmp, no interpreter state touched. A SIGBUS anywhere else goes to
 * the handler that was there before (faulthandler, a sanitizer, or the
 * default action, which still kills the process).
 */
#define GUARD_SLOTS 1024

struct guard_slot {
    _Atomic uintptr_t start;  /* 0 free, 1 being set up, else the mapping */
    _Atomic uintptr_t len;
    _Atomic int fd;           /* the segment's file, or -1 */
    _Atomic int lost;         /* a fault was repaired in it */
};

struct guard_chunk {
    struct guard_slot slot[GUARD_SLOTS];
    struct guard_chunk *_Atomic next;
};

static struct guard_chunk guard_first;
static struct sigaction guard_old;
static long guard_page;

static int guard_repair(struct guard_slot *g, uintptr_t addr)
{
    uintptr_t start = atomic_load(&g->start), len = atomic_load(&g->len);
    int fd = atomic_load(&g->fd);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && (uint64_t)st.st_size < len &&
        ftruncate(fd, (off_t)len) == 0) {
        atomic_store(&g->lost, 1);
        /* Claim the pages (the tmpfs may be full) before writing the mark. */
        if (fallocate(fd, 0, 0, (off_t)len) == 0 && len >= sizeof(struct pw_header))
            atomic_store(&((struct pw_header *)start)->magic, PW_MAGIC_LOST);
        return 1;
    }
    void *page = (void *)(addr & ~(uintptr_t)(guard_page - 1));
    if (mmap(page, (size_t)guard_page, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED) {
        atomic_store(&g->lost, 1);
        return 1;
    }
    return 0;
}

static void guard_handler(int sig, siginfo_t *si, void *uc)
{
    int saved = errno;
    if (si && si->si_code > 0) { /* a fault, not a kill() */
        uintptr_t a = (uintptr_t)si->si_addr;
        for (struct guard_chunk *c = &guard_first; c; c = atomic_load(&c->next)) {
            for (int i = 0; i < GUARD_SLOTS; i++) {
                struct guard_slot *g = &c->slot[i];
                uintptr_t s = atomic_load(&g->start);
                if (s > 1 && a >= s && a - s < atomic_load(&g->len) && guard_repair(g, a)) {
                    errno = saved;
                    return;
                }
            }
        }
    }
    /* Not ours: what was there before. */
    if ((guard_old.sa_flags & SA_SIGINFO) && guard_old.sa_sigaction) {
        guard_old.sa_sigaction(sig, si, uc);
    } else if (guard_old.sa_handler != SIG_DFL && guard_old.sa_handler != SIG_IGN) {
        guard_old.sa_handler(sig);
    } else {
        /* The default action: a fault recurs when we return; a kill() must
         * be delivered again once this handler has returned. */
        sigaction(sig, &guard_old, NULL);
        if (!si || si->si_code <= 0)
            raise(sig);
    }
    errno = saved;
}

/* Installs the handler, chaining to whatever is there now, unless it is
 * already ours (faulthandler or a user may have replaced it since). */
static int guard_install(void)
{
    struct sigaction cur, sa;
    if (sigaction(SIGBUS, NULL, &cur) < 0)
        return -1;
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == guard_handler)
        return 0;
    if (!guard_page)
        guard_page = sysconf(_SC_PAGESIZE);
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = guard_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    guard_old = cur;
    return sigaction(SIGBUS, &sa, NULL);
}

void *pw_guard_add(void *buf, size_t size, int fd)
{
    uintptr_t start = (uintptr_t)buf, len = (uintptr_t)size;
    if (guard_install() < 0) {
        pw_fail_errno(errno);
        return NULL;
    }
    struct guard_chunk *c = &guard_first;
    for (;;) {
        for (int i = 0; i < GUARD_SLOTS; i++) {
            struct guard_slot *g = &c->slot[i];
            uintptr_t expected = 0;
            if (atomic_compare_exchange_strong(&g->start, &expected, 1)) {
                atomic_store(&g->len, len);
                atomic_store(&g->fd, fd);
                atomic_store(&g->lost, 0);
                atomic_store(&g->start, start); /* now the handler sees it */
                return g;
            }
        }
        struct guard_chunk *next = atomic_load(&c->next);
        if (!next) {
            /* Never freed: the handler may walk it at any time. */
            void *m = mmap(NULL, sizeof *next, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (m == MAP_FAILED) {
                pw_fail_errno(errno);
                return NULL;
            }
            struct guard_chunk *fresh = m, *none = NULL;
            if (!atomic_compare_exchange_strong(&c->next, &none, fresh)) {
                munmap(m, sizeof *next);
                fresh = none;
            }
            next = fresh;
        }
        c = next;
    }
}

int pw_guard_remove(void *token)
{
    struct guard_slot *g = token;
    int lost = atomic_load(&g->lost);
    atomic_store(&g->start, 1);
    atomic_store(&g->fd, -1);
    atomic_store(&g->len, 0);
    atomic_store(&g->start, 0);
    return lost;
}

int pw_guard_lost(void *token)
{
    return atomic_load(&((struct guard_slot *)token)->lost);
}
