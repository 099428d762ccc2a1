/*
 * pipe.c -- _core.PipeEnd, the native base class of procwire.pipe.Connection.
 *
 * A Pipe is two message rings in one segment (layout.h, struct pw_pipe).
 * Messages move through shared memory only; the kernel is involved in three
 * places, all off the hot path:
 *
 *  - Life of an end. Each end has a "life pipe" (a Unix socket pair): every
 *    handle of end e holds the WRITE side of end e's life pipe, and every
 *    handle of the other end holds its READ side. The kernel closes
 *    descriptors when a process exits or is killed, and duplicates them on
 *    fork and descriptor passing, so "the read side reports POLLHUP" means
 *    exactly "end e is closed in every process" -- multiprocessing's
 *    semantics, kill -9 included, with no process table to poll.
 *    `handles` in shared memory lets the last orderly close() set the
 *    closed flag at once, so send() needs no system call to notice it.
 *    Being sockets, the life pipes also carry descriptors from an end to
 *    the other (Connection.send_handle/recv_handle, in pipe.py): so they
 *    are only ever polled for POLLHUP here, never for POLLIN.
 *
 *  - Sleeping. A receiver waits with pw_wait_until (lib/wait.c): it spins a
 *    little on the ring's tail word, then registers in its end's `receivers`
 *    and sleeps in ppoll() on its end's eventfd and the peer's life pipe: a
 *    new message or the peer's death wakes it. A sender writes the eventfd only when someone sleeps there
 *    (or fileno() was handed out), so an awake receiver costs no syscall.
 *    A sender waiting for room sleeps on the ring's futex in 20 ms slices
 *    and checks the peer's life pipe between slices.
 *
 *  - fileno(): an epoll descriptor (made by pipe.py) watching the eventfd and
 *    the peer's life pipe, readable while a message waits or the peer is
 *    gone. Once it has been asked for, senders signal the eventfd on each
 *    message (at most one signal outstanding) and receivers drain it when the
 *    ring runs empty.
 *
 * A message longer than a quarter of the ring is streamed in pieces, which
 * the end's send_lock keeps together; the receiver copies each piece straight
 * into the final bytes object (or the caller's buffer).
 */
#include "core.h"

#include <structmember.h>

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PW_PIPE_SEND_SLICE_NS 20000000LL   /* blocked sender re-checks its peer     */
#define PW_PIPE_PEER_CHECK_NS 1000000LL    /* send() polls the life pipe this often */

typedef struct {
    PwObject base;            /* the mapping, its name, the guard against a concurrent close */
    int end;
    char readable, writable;  /* T_BOOL members */
    struct pw_pipe *pipe;
    struct pw_pipe_end *me, *peer;
    pw_ringref in, out;       /* in = ring[end], out = ring[1-end] */
    int ev_self, ev_peer;     /* eventfds: wake this end's / the peer's receivers */
    int life_peer, life_own;  /* read side of the peer's life pipe, write side of ours */
    int counted;              /* this object holds one of me->handles */
    int64_t last_check;       /* when send() last polled the peer's life pipe */
    PyObject *dumps, *loads;
    /* A streamed message whose receive was interrupted (timeout, signal):
     * the pieces already taken, kept so that the next receive on this handle
     * continues it. Valid only while the ring's head is still stash_head,
     * i.e. no other receiver took a record since. Touched under recv_lock. */
    PyObject *stash;
    uint64_t stash_got, stash_head; /* its length is the bytes object's */
    /* An open loan (of `out`: this end's send_lock held too) or view (of
     * `in`: its recv_lock held too), lease.c. */
    pw_lease lease;
} PipeEndObject;

/* -------------------------------------------------------------- helpers */

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

static void release_all(PwObject *o)
{
    PipeEndObject *self = (PipeEndObject *)o;
    Py_CLEAR(self->stash);
    if (!o->mapped) /* never opened (its descriptors are not ours), or released */
        return;
    close_fd(&self->ev_self);
    close_fd(&self->ev_peer);
    close_fd(&self->life_peer);
    close_fd(&self->life_own);
    self->pipe = NULL;
    self->me = self->peer = NULL;
    self->in.ring = self->out.ring = NULL;
    pw_object_unmap(o);
}

/* A closed end raises OSError("handle is closed"), as multiprocessing's. */
static const pw_object_ops pipe_ops = {release_all, "handle is closed"};

#define enter(self) pw_object_enter(&(self)->base)
#define leave(self) pw_object_leave(&(self)->base)
#define closed_error(self) pw_object_closed(&(self)->base)

/* 0 if this end may go that way (its `readable` or `writable`), else -1 with
 * OSError("connection is write-only") or ("... read-only"), as multiprocessing's. */
static int check_mode(int allowed, const char *message)
{
    if (allowed)
        return 0;
    PyErr_SetString(PyExc_OSError, message);
    return -1;
}

#define check_readable(self) check_mode((self)->readable, "connection is write-only")
#define check_writable(self) check_mode((self)->writable, "connection is read-only")

static void ev_write(int fd)
{
    uint64_t one = 1;
    if (fd >= 0) {
        ssize_t rc = write(fd, &one, sizeof one);
        (void)rc; /* EAGAIN: the counter is saturated, it is readable anyway */
    }
}

static void ev_drain(int fd)
{
    uint64_t v;
    ssize_t rc = read(fd, &v, sizeof v); /* non-blocking eventfd */
    (void)rc;
}

/* The peer end is known closed (flag only, no system call). */
static int peer_closed(PipeEndObject *self)
{
    return (atomic_load(&self->in.ring->closed_flags) & PW_RING_WRITER_CLOSED) != 0;
}

/* Marks end e closed in every process and wakes whoever waits on it. */
static void mark_end_closed(struct pw_pipe *p, int e)
{
    atomic_fetch_or(&p->ring[e].closed_flags, PW_RING_READER_CLOSED);
    atomic_fetch_or(&p->ring[1 - e].closed_flags, PW_RING_WRITER_CLOSED);
    /* Senders into ring e (the other end) may sleep on its not_full futex. */
    atomic_fetch_add(&p->ring[e].not_full_seq, 1);
    pw_futex_wake(&p->ring[e].not_full_seq, INT32_MAX, PW_FUTEX_ANY);
}

/* Polls the peer's life pipe now: 1 (and marks the peer closed) if every
 * handle of the peer end is gone, else 0. */
static int peer_hup(PipeEndObject *self)
{
    if (peer_closed(self))
        return 1;
    struct pollfd pfd = {.fd = self->life_peer, .events = 0}; /* POLLHUP only */
    if (poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLHUP | POLLERR))) {
        mark_end_closed(self->pipe, 1 - self->end);
        return 1;
    }
    return 0;
}

static PyObject *raise_broken(void)
{
    /* PyErr_SetObject takes its own reference to the arguments. */
    PyObject *args = Py_BuildValue("(is)", EPIPE, "the other end of the pipe is closed");
    if (args) {
        PyErr_SetObject(PyExc_BrokenPipeError, args);
        Py_DECREF(args);
    }
    return NULL;
}

/* Takes one of this end's locks (send_lock, recv_lock), counting a holder
 * that died: PW_OK, PW_TIMEOUT, PW_CANCELLED (closed meanwhile) or an error. */
static int lock_end(PipeEndObject *self, pthread_mutex_t *m, _Atomic uint64_t *died,
                    int64_t deadline)
{
    int rc = pw_mutex_lock(m, deadline, &self->base.guard.closed);
    if (rc == PW_OWNER_DIED) {
        atomic_fetch_add(died, 1);
        return PW_OK;
    }
    return rc;
}

#define NO_MESSAGE "no message arrived"

static PyObject *raise_timeout(const char *what)
{
    PyErr_Format(PyExc_TimeoutError, "%s before the timeout", what);
    return NULL;
}

/* Raises what a lock's or the ring's status means here. NULL. */
static PyObject *raise_status(PipeEndObject *self, int rc, const char *timed_out)
{
    if (rc == PW_TIMEOUT)
        return raise_timeout(timed_out);
    return rc == PW_CANCELLED ? closed_error(self) : pw_raise(rc);
}

/* Tells the peer's receivers a message is there: only if one sleeps, or if
 * fileno() was asked for on the peer end (then at most one signal pending). */
static inline void signal_peer(PipeEndObject *self)
{
    struct pw_pipe_end *pe = self->peer;
    if (pw_waiters_any(&pe->receivers)) {
        ev_write(self->ev_peer);
        pw_waiters_woke_unknown(&pe->receivers); /* issue 9 #15: reaps killed receivers */
    }
    else if (atomic_load_explicit(&pe->fd_interest, memory_order_relaxed) &&
             atomic_exchange(&pe->fd_signaled, 1) == 0)
        ev_write(self->ev_peer);
}

static int ring_nonempty(PipeEndObject *self)
{
    return pw_ring_count(&self->in) != 0;
}

/*
 * After a receive: keep the eventfd's readability in step with the ring for
 * fileno() users and other sleepers. Drain first, re-check after: a message
 * published between the two is seen by the re-check.
 */
static void resync_after_take(PipeEndObject *self)
{
    struct pw_pipe_end *me = self->me;
    if (atomic_load_explicit(&me->fd_interest, memory_order_relaxed)) {
        if (!ring_nonempty(self) && !peer_closed(self)) {
            atomic_store(&me->fd_signaled, 0);
            ev_drain(self->ev_self);
        }
        if ((ring_nonempty(self) || peer_closed(self)) &&
            atomic_exchange(&me->fd_signaled, 1) == 0)
            ev_write(self->ev_self);
    } else if (pw_waiters_any(&me->receivers) && ring_nonempty(self)) {
        ev_write(self->ev_self); /* another receiver sleeps and there is more */
    }
}

struct data_wait {
    PipeEndObject *self;
    uint64_t tail; /* the ring's tail word when the receiver found it empty */
};

static int data_arrived(void *ctx)
{
    struct data_wait *d = ctx;
    return atomic_load(&d->self->in.ring->tail) != d->tail || peer_closed(d->self);
}

/* One slice of sleep in ppoll() on this end's eventfd and the peer's life
 * pipe (pw_wait's `sleep`; runs with the GIL released). */
static int sleep_in_ppoll(void *ctx, uint32_t unused, int64_t until)
{
    PipeEndObject *self = ((struct data_wait *)ctx)->self;
    struct pollfd pfd[2] = {{.fd = self->ev_self, .events = POLLIN},
                            {.fd = self->life_peer, .events = 0}}; /* HUP */
    int64_t left = until - pw_now_ns();
    if (left < 0)
        left = 0;
    struct timespec ts = {.tv_sec = left / 1000000000LL, .tv_nsec = left % 1000000000LL};
    int n;
    PW_UNBLOCKED(n = ppoll(pfd, 2, &ts, NULL));
    if (n < 0)
        return errno == EINTR ? PW_OK : pw_fail_errno(errno);
    if (n == 0)
        return PW_TIMEOUT;
    if (pfd[1].revents & (POLLHUP | POLLERR))
        mark_end_closed(self->pipe, 1 - self->end);
    if (pfd[0].revents & POLLIN) {
        /* Ours to drain: the caller re-checks the ring next, and
         * resync_after_take() re-signals for anyone else. */
        atomic_store(&self->me->fd_signaled, 0);
        ev_drain(self->ev_self);
    }
    return PW_OK;
}

/* What await_data() found. */
enum { WAIT_AGAIN, WAIT_TIMEOUT, WAIT_ERROR, WAIT_ENDED };

/*
 * The one wait of a receiver (receive, poll, view_or_copy) that found the
 * ring empty with its tail at `tail`. With `eof`, a closed peer first ends
 * it: EOFError once nothing is left (the peer published everything before
 * closing, so a non-empty ring gets one last look). Otherwise it waits until
 * the tail moves, the peer's end is gone, this handle is closed, or the
 * deadline passes. Returns WAIT_AGAIN (re-check the ring), WAIT_TIMEOUT (the
 * deadline passed and the tail did not move), WAIT_ERROR (the wait raised:
 * a signal's exception, Ctrl-C) or WAIT_ENDED (EOFError, or the closed
 * handle's error, set).
 */
static int await_data(PipeEndObject *self, uint64_t tail, int64_t deadline, int eof)
{
    if (eof && peer_closed(self)) {
        if (pw_ring_count(&self->in))
            return WAIT_AGAIN;
        PyErr_SetString(PyExc_EOFError, "the other end of the pipe is closed");
        return WAIT_ENDED;
    }
    struct data_wait d = {self, tail};
    pw_wait w = {.done = data_arrived, .ctx = &d, .waiters = &self->me->receivers,
                 .spin = &self->in.spin, .peer_cpu = &self->in.ring->tail_cpu,
                 .cancel = &self->base.guard.closed, .sleep = sleep_in_ppoll,
                 .slice = PW_WAIT_LONG_SLICE_NS};
    int rc = pw_wait_until(&w, deadline);
    if (rc != PW_OK && rc != PW_CANCELLED && rc != PW_TIMEOUT) {
        pw_raise_int(rc);
        return WAIT_ERROR;
    }
    if (self->base.guard.closed) { /* close() from another thread of ours */
        closed_error(self);
        return WAIT_ENDED;
    }
    return rc == PW_TIMEOUT && atomic_load(&self->in.ring->tail) == tail ? WAIT_TIMEOUT
                                                                        : WAIT_AGAIN;
}

/* ----------------------------------------------------------------- send */

/* A sender found no room in `out` for a slice: PW_OK to wait another, or
 * PW_ERAISED with the closed handle's error or BrokenPipeError set. */
static int still_sending(PipeEndObject *self)
{
    if (self->base.guard.closed) {
        closed_error(self);
        return PW_ERAISED;
    }
    if (peer_hup(self)) {
        raise_broken();
        return PW_ERAISED;
    }
    return PW_OK;
}

/* Puts one record, waiting for room in slices while the peer lives.
 * 0 done, -1 exception (BrokenPipeError if the peer went away). */
static int put_record(PipeEndObject *self, pw_msg *m)
{
    int rc;
    do {
        size_t done = 0;
        rc = pw_ring_put(&self->out, m, 1, &done, pw_now_ns() + PW_PIPE_SEND_SLICE_NS);
        if (rc == PW_OK) {
            signal_peer(self);
            return 0;
        }
        if (rc > 0) /* the slice passed, or a close() */
            rc = still_sending(self);
    } while (rc == PW_OK);
    return pw_raise_int(rc);
}

/* Sends len bytes from buf as one message, streamed in pieces if longer
 * than a quarter of the ring. None, or NULL with an exception. */
static PyObject *send_buffer(PipeEndObject *self, const char *buf, uint64_t len)
{
    int64_t now = pw_now_ns();
    int gone = peer_closed(self);
    if (!gone && now - self->last_check > PW_PIPE_PEER_CHECK_NS) {
        self->last_check = now;
        gone = peer_hup(self);
    }
    if (gone)
        return raise_broken();
    /* A sender that died mid-message: the receiver drops its pieces when
     * this message begins. */
    int lr = lock_end(self, &self->me->send_lock, &self->me->send_owner_died, PW_FOREVER);
    if (lr != PW_OK)
        return raise_status(self, lr, "");
    pw_msg m;
    uint64_t piece = self->out.capacity / 4;
    int rc;
    if (len <= piece) {
        pw_msg_single(&m, PW_REC_BYTES, buf, len);
        rc = put_record(self, &m);
    } else {
        piece -= 16;
        uint64_t total = len, sent = piece;
        pw_msg_single(&m, PW_REC_STREAM_FIRST, &total, 8);
        m.nparts = 2;
        m.part[1] = buf;
        m.part_len[1] = piece;
        m.len = 8 + piece;
        rc = put_record(self, &m);
        while (rc == 0 && sent < len) {
            uint64_t n = len - sent < piece ? len - sent : piece;
            pw_msg_single(&m, PW_REC_STREAM_MORE, buf + sent, n);
            rc = put_record(self, &m);
            sent += n;
        }
    }
    pw_mutex_unlock(&self->me->send_lock);
    return rc ? NULL : Py_NewRef(Py_None);
}

/* Sends [offset, offset + size) of a bytes-like object's bytes as one
 * message (absent offset: 0; absent or None size: to its end), checked as
 * multiprocessing's send_bytes checks them. Entered, on a writable end. */
static PyObject *send_object(PipeEndObject *self, PyObject *obj, PyObject *offset_arg,
                             PyObject *size_arg)
{
    if (PyBytes_CheckExact(obj) && !offset_arg && !size_arg) /* the common call: no view */
        return send_buffer(self, PyBytes_AS_STRING(obj), (uint64_t)PyBytes_GET_SIZE(obj));
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = view.len, offset = 0, size;
    if (pw_index_arg(offset_arg, 0, 0, "offset is negative", &offset) < 0)
        goto release;
    if (n < offset) {
        PyErr_SetString(PyExc_ValueError, "buffer length < offset");
        goto release;
    }
    size = n - offset;
    if (pw_index_arg(size_arg, 1, 0, "size is negative", &size) < 0)
        goto release;
    if (offset + size > n) {
        PyErr_SetString(PyExc_ValueError, "buffer length < offset + size");
        goto release;
    }
    result = send_buffer(self, (const char *)view.buf + offset, (uint64_t)size);
release:
    PyBuffer_Release(&view);
    return result;
}

static const char *const send_bytes_names[] = {"buf", "offset", "size"};

static PyObject *PipeEnd_send_bytes(PipeEndObject *self, PyObject *const *args,
                                    Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a[3] = {nargs ? args[0] : NULL, NULL, NULL};
    if ((nargs != 1 || kwnames) && /* send_bytes(buf), the common call, parses nothing */
        pw_parse_args("send_bytes", args, nargs, kwnames, send_bytes_names, 3, 1, a) < 0)
        return NULL;
    if (enter(self) < 0)
        return NULL;
    PyObject *result = check_writable(self) < 0 ? NULL : send_object(self, a[0], a[1], a[2]);
    leave(self);
    return result;
}

/*
 * The pickle of a bytes object shorter than 256 bytes, exactly as
 * pickle.dumps(obj, 5) (and procwire._pickle.dumps) makes it: PROTO 5,
 * FRAME <n + 4>, SHORT_BINBYTES <n>, the bytes, MEMOIZE, STOP. Made here, it
 * spares send() a call into Python (a third of a small message's cost), and
 * recv() recognises it (pickled_bytes).
 */
#define SHORT_BYTES_HEAD 13
#define SHORT_BYTES_PICKLE(n) ((n) + SHORT_BYTES_HEAD + 2)

/* The 13 bytes before the n bytes themselves. */
static void short_bytes_head(unsigned char *out, size_t n)
{
    uint64_t frame = n + 4;
    out[0] = 0x80;
    out[1] = 5;
    out[2] = 0x95;
    for (int i = 0; i < 8; i++)
        out[3 + i] = (unsigned char)(frame >> (8 * i)); /* little-endian, as pickle's */
    out[11] = 'C';
    out[12] = (unsigned char)n;
}

static size_t pickle_short_bytes(unsigned char *out, const char *data, size_t n)
{
    short_bytes_head(out, n);
    memcpy(out + SHORT_BYTES_HEAD, data, n);
    out[SHORT_BYTES_HEAD + n] = 0x94;
    out[SHORT_BYTES_HEAD + n + 1] = '.';
    return SHORT_BYTES_PICKLE(n);
}

static PyObject *PipeEnd_send(PipeEndObject *self, PyObject *obj)
{
    if (enter(self) < 0)
        return NULL;
    PyObject *result = NULL, *data;
    if (check_writable(self) < 0) {
        /* error set */
    } else if (PyBytes_CheckExact(obj) && PyBytes_GET_SIZE(obj) < 256) {
        unsigned char rec[SHORT_BYTES_PICKLE(255)];
        size_t len = pickle_short_bytes(rec, PyBytes_AS_STRING(obj), PyBytes_GET_SIZE(obj));
        result = send_buffer(self, (const char *)rec, len);
    } else if ((data = PyObject_CallOneArg(self->dumps, obj))) {
        result = send_object(self, data, NULL, NULL);
        Py_DECREF(data);
    }
    leave(self);
    return result;
}

/* ----------------------------------------------------------------- recv */

enum take_status {
    TAKE_DONE = 0,     /* a whole message is in ctx                        */
    TAKE_PARTIAL = 1,  /* a streamed message continues                     */
    TAKE_SKIPPED = 2,  /* a piece of a message we are not receiving        */
    TAKE_TOO_LONG = 3, /* longer than maxlength: dropped                   */
    TAKE_ERROR = -1    /* exception set (the record is consumed)           */
};

typedef struct {
    PipeEndObject *self;
    uint64_t maxlength;  /* UINT64_MAX: none */
    char *into;          /* recv_bytes_into: destination, or NULL */
    uint64_t into_cap;
    PyObject *bytes;     /* the message, when not received into `into`   */
    char *dst;           /* where the message's bytes go                  */
    uint64_t length;     /* length of the message (also of a refused one)  */
    uint64_t got;        /* bytes of it received so far                    */
    int in_stream;       /* a streamed message is in progress              */
    int status;          /* enum take_status of the last record taken      */
} recv_ctx;

static void ctx_drop(recv_ctx *c)
{
    if (c->in_stream)
        atomic_fetch_add(&c->self->me->partial_dropped, 1);
    Py_CLEAR(c->bytes);
    c->dst = NULL;
    c->in_stream = 0;
    c->got = 0;
}

/* Sets up the destination for a message of `len` bytes. */
static int ctx_begin(recv_ctx *c, uint64_t len)
{
    c->length = len;
    if (len > c->maxlength)
        return TAKE_TOO_LONG;
    if (c->into && len <= c->into_cap) {
        c->dst = c->into;
        return 0;
    }
    if (len > PY_SSIZE_T_MAX) {
        PyErr_NoMemory();
        return TAKE_ERROR;
    }
    c->bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
    if (!c->bytes)
        return TAKE_ERROR;
    c->dst = PyBytes_AS_STRING(c->bytes);
    return 0;
}

static int take_piece(recv_ctx *c, const pw_ringref *rr, uint32_t pos, uint32_t type,
                      uint64_t len)
{
    if (type == PW_REC_BYTES || type == PW_REC_STREAM_FIRST) {
        ctx_drop(c); /* a message begins: the pieces of an unfinished one are dropped */
        uint64_t total = len;
        if (type == PW_REC_STREAM_FIRST) {
            if (len < 8) {
                pw_segment_error("%s is corrupt: a stream record of %llu bytes", rr->what,
                                 (unsigned long long)len);
                return TAKE_ERROR;
            }
            pw_ring_copy_out(rr, pos, &total, 8);
            pos += 8;
            len -= 8;
            if (len > total) {
                pw_segment_error("%s is corrupt: a %llu-byte piece of a %llu-byte message",
                                 rr->what, (unsigned long long)len, (unsigned long long)total);
                return TAKE_ERROR;
            }
        }
        int rc = ctx_begin(c, total);
        if (rc != 0)
            return rc; /* a stream's MORE pieces will be skipped */
        c->in_stream = 1;
    } else if (type != PW_REC_STREAM_MORE) {
        ctx_drop(c);
        pw_segment_error("%s is corrupt: unknown record type %u", rr->what, type);
        return TAKE_ERROR;
    } else if (!c->in_stream) {
        return TAKE_SKIPPED;
    } else if (len > c->length - c->got) {
        ctx_drop(c);
        pw_segment_error("%s is corrupt: stream pieces exceed their message", rr->what);
        return TAKE_ERROR;
    }
    pw_ring_copy_out_large(rr, pos, c->dst + c->got, len);
    c->got += len;
    if (c->got < c->length)
        return TAKE_PARTIAL;
    c->in_stream = 0;
    if (type == PW_REC_STREAM_MORE)
        atomic_fetch_add(&c->self->me->streamed, 1);
    return TAKE_DONE;
}

/* pw_ring_take's callback: one record at a time, consumed whatever becomes
 * of it (its take status goes to ctx). */
static int take_cb(void *ctx, const pw_ringref *rr, uint32_t pos, uint32_t type, uint64_t len)
{
    recv_ctx *c = ctx;
    c->status = take_piece(c, rr, pos, type, len);
    return 1;
}

/*
 * A receive interrupted mid-stream (timeout, signal) keeps what it took, so
 * that the pipe is left as if the call had not been made: the next receive
 * continues the message. Called under recv_lock.
 */
static void stash_partial(PipeEndObject *self, recv_ctx *c)
{
    if (!c->in_stream)
        return;
    if (!c->bytes) { /* the pieces went into recv_bytes_into's buffer: copy them out */
        c->bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)c->length);
        if (!c->bytes) {
            PyErr_Clear(); /* out of memory: the message is dropped, and counted */
            return;
        }
        memcpy(PyBytes_AS_STRING(c->bytes), c->dst, (size_t)c->got);
    }
    Py_XSETREF(self->stash, c->bytes);
    self->stash_got = c->got;
    self->stash_head = atomic_load(&self->in.ring->head);
    c->bytes = NULL; /* the stash's now: neither freed nor counted as dropped */
    c->in_stream = 0;
}

/* Under recv_lock: continue a stashed message if no other receiver took a
 * record since. 1 resumed, 0 nothing to resume, -1 exception (too long). */
static int resume_stash(PipeEndObject *self, recv_ctx *c)
{
    PyObject *b = self->stash;
    if (!b)
        return 0;
    self->stash = NULL;
    if (atomic_load(&self->in.ring->head) != self->stash_head) {
        /* Another handle of this end received meanwhile and skipped the
         * rest of the message. */
        atomic_fetch_add(&self->me->partial_dropped, 1);
        Py_DECREF(b);
        return 0;
    }
    c->length = (uint64_t)PyBytes_GET_SIZE(b);
    if (c->length > c->maxlength) {
        /* Dropped like any message over maxlength: its remaining pieces
         * are skipped by the next receive. */
        Py_DECREF(b);
        PyErr_SetString(PyExc_OSError, "bad message length");
        return -1;
    }
    c->bytes = b;
    c->dst = PyBytes_AS_STRING(b);
    c->got = self->stash_got;
    c->in_stream = 1;
    return 1;
}

/* A stashed message is still ahead of everything else in the ring. */
static int stash_pending(PipeEndObject *self)
{
    return self->stash && atomic_load(&self->in.ring->head) == self->stash_head;
}

/* Under recv_lock: takes records into c until a message is whole. 0, 1 on
 * timeout, or -1 with an exception set (EOFError when the peer is gone). */
static int take_message(PipeEndObject *self, recv_ctx *c, int64_t deadline)
{
    for (;;) {
        uint64_t tail = atomic_load(&self->in.ring->tail);
        size_t taken;
        int rc = pw_ring_take(&self->in, take_cb, c, 1, 0, &taken);
        if (rc < 0)
            return pw_raise_int(rc);
        if (taken && c->status != TAKE_PARTIAL && c->status != TAKE_SKIPPED) {
            if (c->status == TAKE_TOO_LONG)
                PyErr_SetString(PyExc_OSError, "bad message length");
            return c->status == TAKE_DONE ? 0 : -1;
        }
        if (taken)
            continue;
        rc = await_data(self, tail, deadline, 1);
        if (rc != WAIT_AGAIN) {
            if (rc != WAIT_ENDED)
                stash_partial(self, c); /* a timeout or a signal: Ctrl-C loses nothing either */
            return rc == WAIT_TIMEOUT ? 1 : -1;
        }
    }
}

/* Receives one message into c: take_message() under this end's recv_lock,
 * continuing a stashed message first. */
static int receive(PipeEndObject *self, recv_ctx *c, int64_t deadline)
{
    struct pw_pipe_end *me = self->me;
    int lr = lock_end(self, &me->recv_lock, &me->recv_owner_died, deadline);
    if (lr == PW_TIMEOUT)
        return 1;
    if (lr != PW_OK) {
        raise_status(self, lr, "");
        return -1;
    }
    int resumed = resume_stash(self, c);
    int result = resumed < 0 ? -1 : take_message(self, c, deadline);
    pw_mutex_unlock(&me->recv_lock);
    if (result != 0)
        ctx_drop(c);
    else if (resumed && c->into && c->bytes && c->length <= c->into_cap) {
        /* recv_bytes_into finishing a message begun by an interrupted call:
         * the pieces were gathered in a bytes object; copy them into place. */
        memcpy(c->into, PyBytes_AS_STRING(c->bytes), (size_t)c->length);
        Py_CLEAR(c->bytes);
    }
    resync_after_take(self);
    return result;
}

/* receive() as recv_bytes and recv_bytes_into make it: entered, on a
 * readable end, TimeoutError when the deadline passes. 0 with the message in
 * c, or -1 with an exception. */
static int receive_entered(PipeEndObject *self, recv_ctx *c, int64_t deadline)
{
    if (enter(self) < 0)
        return -1;
    int rc = check_readable(self) < 0 ? -1 : receive(self, c, deadline);
    leave(self);
    if (rc == 1)
        raise_timeout(NO_MESSAGE);
    return rc == 0 ? 0 : -1;
}

static const char *const recv_bytes_names[] = {"maxlength", "timeout", "copy"};

static PyObject *PipeEnd_recv_bytes(PipeEndObject *self, PyObject *const *args,
                                    Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a[3];
    int64_t deadline = PW_FOREVER;
    recv_ctx c = {.self = self, .maxlength = UINT64_MAX};
    if (nargs || kwnames) { /* recv_bytes(), the common call, parses nothing */
        Py_ssize_t m = -1;
        int in_place;
        if (pw_parse_args("recv_bytes", args, nargs, kwnames, recv_bytes_names, 3, 0, a) < 0)
            return NULL;
        PyObject *view = pw_view_instead((PyObject *)self, a[2], "_recv_view",
                                         a[0] ? a[0] : Py_None, a[1], &in_place);
        if (in_place)
            return view;
        if (pw_deadline_from(1, a[1], &deadline) < 0 ||
            pw_index_arg(a[0], 1, 0, "negative maxlength", &m) < 0)
            return NULL;
        if (m >= 0)
            c.maxlength = (uint64_t)m;
    }
    return receive_entered(self, &c, deadline) < 0 ? NULL : c.bytes;
}

/*
 * A message that is the pickle of a bytes object, as Pipe.send makes it:
 * pickle_short_bytes()'s form, or (64 KiB and more) PROTO 5, BINBYTES8 <n>,
 * the n bytes, MEMOIZE, STOP. Returns the bytes object, made without an
 * unpickler -- a large one unwrapped in place (stealing *msg) rather than
 * copied into a second buffer by pickle.loads -- or NULL without an error
 * when the message is anything else.
 */
static PyObject *pickled_bytes(PyObject **msg)
{
    PyObject *b = *msg;
    Py_ssize_t size = PyBytes_GET_SIZE(b);
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(b);
    if (size < SHORT_BYTES_PICKLE(0) || p[size - 2] != 0x94 || p[size - 1] != '.')
        return NULL;
    if (size <= SHORT_BYTES_PICKLE(255)) {
        size_t n = (size_t)size - SHORT_BYTES_PICKLE(0);
        unsigned char expected[SHORT_BYTES_HEAD];
        short_bytes_head(expected, n);
        if (memcmp(p, expected, SHORT_BYTES_HEAD) != 0)
            return NULL;
        return PyBytes_FromStringAndSize((const char *)p + SHORT_BYTES_HEAD, (Py_ssize_t)n);
    }
    uint64_t len;
    memcpy(&len, p + 3, 8);
    if (size < 65536 + 13 || Py_REFCNT(b) != 1 || p[0] != 0x80 || p[1] != 5 || p[2] != 0x8e ||
        len != (uint64_t)(size - 13))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    memmove(p, p + 11, (size_t)len);
    Py_END_ALLOW_THREADS
    if (_PyBytes_Resize(msg, (Py_ssize_t)len) < 0)
        return NULL; /* *msg is gone and an error is set */
    PyObject *result = *msg;
    *msg = NULL;
    return result;
}

static PyObject *PipeEnd_recv(PipeEndObject *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    int64_t deadline;
    recv_ctx c = {.self = self, .maxlength = UINT64_MAX};
    if (pw_parse_deadline("recv", args, nargs, kwnames, 0, &deadline) < 0 ||
        receive_entered(self, &c, deadline) < 0)
        return NULL;
    PyObject *result = pickled_bytes(&c.bytes);
    if (!result && !PyErr_Occurred())
        result = PyObject_CallOneArg(self->loads, c.bytes);
    Py_XDECREF(c.bytes);
    return result;
}

/* _recv_bytes_into(buf, timeout) -> int bytes written at the start of buf
 * (pipe.py slices it at the offset), or the whole message as bytes when it
 * does not fit (pipe.py raises BufferTooShort). */
static const char *const recv_into_names[] = {"buf", "timeout"};

static PyObject *PipeEnd_recv_bytes_into(PipeEndObject *self, PyObject *const *args,
                                         Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *a[2];
    int64_t deadline;
    Py_buffer view;
    if (pw_parse_args("recv_bytes_into", args, nargs, kwnames, recv_into_names, 2, 1, a) < 0 ||
        pw_deadline_from(1, a[1], &deadline) < 0 ||
        PyObject_GetBuffer(a[0], &view, PyBUF_WRITABLE) < 0)
        return NULL;
    recv_ctx c = {.self = self, .maxlength = UINT64_MAX, .into = view.buf,
                  .into_cap = (uint64_t)view.len};
    PyObject *result = NULL;
    if (receive_entered(self, &c, deadline) == 0)
        result = c.bytes ? c.bytes : PyLong_FromUnsignedLongLong(c.length);
    PyBuffer_Release(&view);
    return result;
}

/* ----------------------------------------------------------------- poll */

static PyObject *PipeEnd_poll(PipeEndObject *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    int64_t deadline = 0; /* poll(): look once; poll(None): forever, as mp */
    if ((nargs || kwnames) &&
        pw_parse_deadline_args("poll", args, nargs, kwnames, 0, &deadline) < 0)
        return NULL;
    if (enter(self) < 0)
        return NULL;
    PyObject *result = NULL;
    if (check_readable(self) == 0) {
        for (;;) {
            uint64_t tail = atomic_load(&self->in.ring->tail);
            if (pw_ring_count(&self->in) || peer_closed(self) || stash_pending(self)) {
                result = Py_NewRef(Py_True);
                break;
            }
            int rc = await_data(self, tail, deadline, 0);
            if (rc == WAIT_TIMEOUT)
                result = PyBool_FromLong(pw_ring_count(&self->in) || peer_hup(self));
            if (rc != WAIT_AGAIN)
                break;
        }
        if (result == Py_True)
            resync_after_take(self);
    }
    leave(self);
    return result;
}

/* ---------------------------------------------------- loans and views */

/* _loan_begin(nbytes, block, timeout) -> the payload's offset in the segment
 * buffer, or -1 (lease.c). Returns with this end's send_lock held (a loan's
 * record must not land between a streamed message's pieces) and the ring's
 * producers' lock. Waits for room in slices while the peer lives. */
static PyObject *PipeEnd_loan_begin(PipeEndObject *self, PyObject *const *args,
                                    Py_ssize_t nargs, PyObject *kwnames)
{
    uint64_t n;
    int64_t deadline;
    if (pw_loan_args(&self->base, &self->lease, args, nargs, kwnames, &n, &deadline) < 0 ||
        enter(self) < 0)
        return NULL;
    uint64_t limit = pw_ring_max_payload(self->out.capacity); /* in place: the ring's */
    int rc = check_writable(self) < 0 ? PW_ERAISED : PW_OK;
    if (rc == PW_OK && n > limit)
        rc = pw_too_large(self->base.name, &self->out, n, limit);
    if (rc == PW_OK)
        rc = still_sending(self);
    if (rc == PW_OK)
        rc = lock_end(self, &self->me->send_lock, &self->me->send_owner_died, deadline);
    uint32_t pos;
    while (rc == PW_OK) {
        int64_t slice = pw_now_ns() + PW_PIPE_SEND_SLICE_NS;
        rc = pw_ring_reserve(&self->out, n, slice < deadline ? slice : deadline, &pos);
        if (rc == PW_OK) {
            PyObject *r = pw_loan_opened(&self->base, &self->lease, &self->out, pos, n);
            if (!r) { /* no loan open: nothing held */
                pw_mutex_unlock(&self->me->send_lock);
                leave(self);
            }
            return r;
        }
        if (rc == PW_TIMEOUT && pw_now_ns() < deadline)
            rc = still_sending(self);
        if (rc != PW_OK)
            pw_mutex_unlock(&self->me->send_lock);
    }
    raise_status(self, rc, "no room for the loan");
    leave(self);
    return NULL;
}

/* _loan_commit(nbytes, written): publishes the open loan (lease.c) and wakes
 * the peer's receivers. */
static PyObject *PipeEnd_loan_commit(PipeEndObject *self, PyObject *const *args,
                                     Py_ssize_t nargs)
{
    if (pw_loan_commit(&self->base, &self->lease, args, nargs) < 0)
        return NULL;
    pw_mutex_unlock(&self->me->send_lock);
    signal_peer(self);
    leave(self);
    Py_RETURN_NONE;
}

/* The next message in place, this end's recv_lock held: a view of it (the
 * ring's consumers' lock held too), or, for a streamed message or one that
 * wraps around the ring's end, the message copied (type, -1, length, bytes)
 * with no lock held. */
static PyObject *view_or_copy(PipeEndObject *self, int64_t deadline, int *held)
{
    *held = 0;
    for (;;) {
        uint64_t tail = atomic_load(&self->in.ring->tail);
        int rc = lock_end(self, &self->me->recv_lock, &self->me->recv_owner_died, deadline);
        if (rc)
            return raise_status(self, rc, NO_MESSAGE);
        uint32_t pos, type = 0;
        uint64_t len;
        rc = stash_pending(self) ? PW_OK : pw_ring_peek(&self->in, 0, &pos, &type, &len);
        if (rc == PW_OK && type == PW_REC_BYTES) {
            PyObject *r = pw_view_opened(&self->base, &self->lease, &self->in, pos, type, len,
                                         held);
            if (!*held) {
                pw_mutex_unlock(&self->me->recv_lock);
                resync_after_take(self);
            }
            return r;
        }
        if (rc == PW_OK && type) /* streamed: not one record */
            pw_ring_unpeek(&self->in);
        pw_mutex_unlock(&self->me->recv_lock);
        if (rc == PW_OK) { /* received as recv_bytes() does, copied */
            recv_ctx c = {.self = self, .maxlength = UINT64_MAX};
            rc = receive(self, &c, deadline);
            if (rc == 0)
                return Py_BuildValue("(InKN)", (unsigned)PW_REC_BYTES, (Py_ssize_t)-1,
                                     (unsigned long long)c.length, c.bytes);
            return rc == 1 ? raise_timeout(NO_MESSAGE) : NULL;
        }
        if (rc != PW_TIMEOUT)
            return raise_status(self, rc, NO_MESSAGE);
        rc = await_data(self, tail, deadline, 1);
        if (rc == WAIT_TIMEOUT)
            return raise_timeout(NO_MESSAGE);
        if (rc != WAIT_AGAIN)
            return NULL;
    }
}

/* _view_begin(timeout) -> (type, offset, length, copied): see view_or_copy. */
static PyObject *PipeEnd_view_begin(PipeEndObject *self, PyObject *const *args,
                                    Py_ssize_t nargs, PyObject *kwnames)
{
    int64_t deadline;
    if (pw_parse_deadline("recv_bytes", args, nargs, kwnames, 0, &deadline) < 0 ||
        pw_view_free(&self->base, &self->lease) < 0 ||
        enter(self) < 0)
        return NULL;
    int held = 0;
    PyObject *r = check_readable(self) < 0 ? NULL : view_or_copy(self, deadline, &held);
    if (!held) /* no view open: nothing held */
        leave(self);
    return r;
}

/* _end_lease(view): ends the open view or loan (lease.c) and the receive or
 * send lock it holds. */
static PyObject *PipeEnd_end_lease(PipeEndObject *self, PyObject *view)
{
    int v = PyObject_IsTrue(view);
    if (v < 0)
        return NULL;
    if (pw_lease_end(&self->lease, v)) {
        pw_mutex_unlock(v ? &self->me->recv_lock : &self->me->send_lock);
        if (v)
            resync_after_take(self);
        leave(self);
    }
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------ lifecycle */

/* Bytes of a pipe segment: headers, ring 0 of `capacity` bytes, and ring 1
 * as large if duplex, else the smallest ring (unused). */
static uint64_t pipe_segment_size(uint64_t capacity, int duplex)
{
    uint64_t off = pw_ring_data_offset(sizeof(struct pw_header) + sizeof(struct pw_pipe));
    return off + capacity + (duplex ? capacity : PW_RING_MIN_CAPACITY);
}

/* Lays out a new pipe in the `size` bytes at h and publishes its header:
 * PW_OK, or a status (PW_ERAISED: ValueError for a bad capacity or size). */
static int create_pipe(struct pw_header *h, uint64_t size, uint64_t capacity, int duplex)
{
    struct pw_pipe *p = (struct pw_pipe *)(h + 1);
    uint64_t cap1 = duplex ? capacity : PW_RING_MIN_CAPACITY;
    if (pw_check_capacity(capacity) < 0)
        return PW_ERAISED;
    if (size != pipe_segment_size(capacity, duplex)) {
        PyErr_Format(PyExc_ValueError, "buffer is %llu bytes, a pipe needs %llu",
                     (unsigned long long)size,
                     (unsigned long long)pipe_segment_size(capacity, duplex));
        return PW_ERAISED;
    }
    pw_header_init(h, PW_KIND_PIPE, size, sizeof *p, size - capacity - cap1);
    memset(p, 0, sizeof *p);
    p->pipe_flags = duplex ? PW_PIPE_DUPLEX : 0;
    p->capacity[0] = capacity;
    p->capacity[1] = cap1;
    int rc = pw_ring_init(&p->ring[0], capacity, 0);
    if (!rc)
        rc = pw_ring_init(&p->ring[1], cap1, 0);
    for (int e = 0; e < 2 && !rc; e++) {
        rc = pw_mutex_init(&p->end[e].send_lock);
        if (!rc)
            rc = pw_mutex_init(&p->end[e].recv_lock);
    }
    if (rc)
        return pw_fail_errno(rc);
    pw_header_publish(h);
    return PW_OK;
}

static int PipeEnd_init(PipeEndObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "create", "end", "capacity", "duplex", "fds",
                             "count", "name", "dumps", "loads", NULL};
    PyObject *buffer, *name, *dumps, *loads;
    int create = 0, end = 0, duplex = 1, count = 1;
    unsigned long long capacity = 0;
    int fds[4];
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O$piKp(iiii)pUOO:PipeEnd", kwlist, &buffer,
                                     &create, &end, &capacity, &duplex, &fds[0], &fds[1],
                                     &fds[2], &fds[3], &count, &name, &dumps, &loads))
        return -1;
    if (end != 0 && end != 1) {
        PyErr_Format(PyExc_ValueError, "end must be 0 or 1, not %d", end);
        return -1;
    }
    const char *what = pw_ring_object_map(&self->base, &pipe_ops, buffer, name);
    if (!what)
        return -1; /* also when called twice */
    struct pw_header *h = self->base.view.buf;
    struct pw_pipe *p = (struct pw_pipe *)(h + 1);
    uint64_t size = (uint64_t)self->base.view.len;
    int rc = create ? create_pipe(h, size, capacity, duplex)
                    : pw_segment_validate(h, size, PW_KIND_PIPE, what);
    if (rc) {
        pw_raise(rc);
        pw_object_unmap(&self->base); /* the descriptors stay the caller's */
        return -1;
    }
    Py_XSETREF(self->dumps, Py_NewRef(dumps));
    Py_XSETREF(self->loads, Py_NewRef(loads));
    duplex = (p->pipe_flags & PW_PIPE_DUPLEX) != 0;
    self->pipe = p;
    self->end = end;
    self->me = &p->end[end];
    self->peer = &p->end[1 - end];
    self->readable = duplex || end == 0;
    self->writable = duplex || end == 1;
    uint8_t *data = (uint8_t *)h + h->data_offset;
    uint8_t *ring_data[2] = {data, data + p->capacity[0]};
    pw_ringref_init(&self->in, &p->ring[end], ring_data[end], what);
    pw_ringref_init(&self->out, &p->ring[1 - end], ring_data[1 - end], what);
    self->in.cancel = self->out.cancel = &self->base.guard.closed;
    self->ev_self = fds[0];
    self->ev_peer = fds[1];
    self->life_peer = fds[2];
    self->life_own = fds[3];
    self->counted = 1;
    if (count)
        atomic_fetch_add(&self->me->handles, 1);
    return 0;
}

/* Drops this object's handle; the last one marks the end closed at once. */
static void drop_handle(PipeEndObject *self)
{
    if (!self->counted || !self->base.mapped)
        return;
    self->counted = 0;
    if (atomic_fetch_sub(&self->me->handles, 1) == 1) {
        mark_end_closed(self->pipe, self->end);
        ev_write(self->ev_peer); /* the peer's sleeping receivers */
    }
}

static PyObject *PipeEnd_close(PipeEndObject *self, PyObject *unused)
{
    if (self->base.guard.closed || !self->base.mapped)
        Py_RETURN_NONE;
    drop_handle(self);
    if (!pw_object_close(&self->base)) {
        /* Our own threads blocked in recv() wake, see `closed` and raise. */
        ev_write(self->ev_self);
        close_fd(&self->life_own);
    }
    Py_RETURN_NONE;
}

#define PIPE_OBJECTS(X) X(dumps) X(loads)
PW_RING_GC(PipeEnd, PipeEndObject, PIPE_OBJECTS)

static void PipeEnd_dealloc(PipeEndObject *self)
{
    PyObject_GC_UnTrack(self);
    drop_handle(self);
    release_all(&self->base);
    pw_object_dealloc(&self->base);
    PipeEnd_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The calls below never let the GIL go while they use the mapping, so a
 * check that the handle is open stands for enter/leave. */
#define check_open(self) pw_object_check_open(&(self)->base)

/* Another holder of this end comes to exist (a fork child, a pickle). */
static PyObject *PipeEnd_add_handle(PipeEndObject *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    atomic_fetch_add(&self->me->handles, 1);
    Py_RETURN_NONE;
}

/* _signal_fd(): fileno() made its epoll descriptor over this end's eventfd
 * (pipe.py). From now on senders signal that eventfd on each message. Brings
 * it in step with the ring: readable now if a message already waits, and not
 * readable from a stale count (a sender may have signalled a receiver that
 * then found its message without sleeping). */
static PyObject *PipeEnd_signal_fd(PipeEndObject *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    atomic_store(&self->me->fd_interest, 1);
    resync_after_take(self);
    Py_RETURN_NONE;
}

/* _send_room() -> (token, free bytes, capacity) of the ring this end sends
 * into, for send_async (procwire._aio): token is its head word, which
 * _wait_change(1, token, timeout) sleeps on (GIL released) until a receiver
 * takes a record. */
static PyObject *PipeEnd_send_room(PipeEndObject *self, PyObject *unused)
{
    if (check_open(self) < 0 || check_writable(self) < 0)
        return NULL;
    uint64_t head = atomic_load(&self->out.ring->head);
    return Py_BuildValue("(KKK)", (unsigned long long)head,
                         (unsigned long long)(self->out.capacity - pw_ring_used_bytes(&self->out)),
                         (unsigned long long)self->out.capacity);
}

/* _wait_change(1, token, timeout), _kick(): lease.c's watcher calls on the
 * ring this end sends into (send_async waits there for room). */
static PyObject *PipeEnd_wait_change(PipeEndObject *self, PyObject *const *args,
                                     Py_ssize_t nargs, PyObject *kwnames)
{
    return check_writable(self) < 0 ? NULL
                                    : pw_watch_wait(&self->base, &self->out, args, nargs, kwnames);
}

static PyObject *PipeEnd_kick(PipeEndObject *self, PyObject *unused)
{
    return check_writable(self) < 0 ? NULL : pw_watch_kick(&self->base, &self->out);
}

static PyObject *PipeEnd_fds(PipeEndObject *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    return Py_BuildValue("(iiii)", self->ev_self, self->ev_peer, self->life_peer, self->life_own);
}

/* _statistics() -> dict: this end's live counters, read by inspect.c's one
 * reader (the figures `_core.inspect` gives under "end0"/"end1"); dead
 * receivers' slots are freed first, so that they are not counted. */
static PyObject *PipeEnd_statistics(PipeEndObject *self, PyObject *unused)
{
    if (enter(self) < 0)
        return NULL;
    PyObject *d = pw_pipe_end_counters(self->pipe, self->end, 1);
    leave(self);
    return d;
}

static PyObject *PipeEnd_segment_size(PyObject *cls, PyObject *args)
{
    unsigned long long cap;
    int duplex;
    if (!PyArg_ParseTuple(args, "Kp", &cap, &duplex))
        return NULL;
    return PyLong_FromUnsignedLongLong(pipe_segment_size(cap, duplex));
}

static PyMemberDef PipeEnd_members[] = {
    {"readable", T_BOOL, offsetof(PipeEndObject, readable), READONLY,
     "True if the connection can receive."},
    {"writable", T_BOOL, offsetof(PipeEndObject, writable), READONLY,
     "True if the connection can send."},
    {"_end", T_INT, offsetof(PipeEndObject, end), READONLY, NULL},
    {NULL},
};

static PyMethodDef PipeEnd_methods[] = {
    PW_ONEARG("send", PipeEnd_send, "obj",
              "Send a picklable object; the other end gets it from recv()."),
    PW_KWARGS("send_bytes", PipeEnd_send_bytes, "buf, offset=0, size=None",
              "Send bytes from a bytes-like object as one message."),
    PW_KWARGS("recv", PipeEnd_recv, "*, timeout=None",
              "Return the next object sent with send(). Blocks until one arrives; EOFError "
              "when the other end is closed and nothing is left."),
    PW_KWARGS("recv_bytes", PipeEnd_recv_bytes, "maxlength=None, *, timeout=None, copy=True",
              "Return the next message as bytes. OSError('bad message length') (the message "
              "is dropped) if longer than maxlength. copy=False: a procwire.View of the "
              "message in place instead."),
    {"_recv_bytes_into", (PyCFunction)(void (*)(void))PipeEnd_recv_bytes_into,
     METH_FASTCALL | METH_KEYWORDS, NULL},
    PW_LEASE_METHODS(PipeEnd),
    PW_KWARGS("poll", PipeEnd_poll, "timeout=0.0",
              "Whether there is anything to read, waiting up to timeout seconds (None: "
              "forever). True also when the other end is closed (recv raises EOFError)."),
    {"_close", (PyCFunction)PipeEnd_close, METH_NOARGS, NULL},
    {"_add_handle", (PyCFunction)PipeEnd_add_handle, METH_NOARGS, NULL},
    {"_signal_fd", (PyCFunction)PipeEnd_signal_fd, METH_NOARGS, NULL},
    {"_fds", (PyCFunction)PipeEnd_fds, METH_NOARGS, NULL},
    {"_send_room", (PyCFunction)PipeEnd_send_room, METH_NOARGS, NULL},
    PW_WATCH_METHODS(PipeEnd),
    {"_statistics", (PyCFunction)PipeEnd_statistics, METH_NOARGS, NULL},
    {"_segment_size", (PyCFunction)PipeEnd_segment_size, METH_VARARGS | METH_STATIC, NULL},
    PW_END_METHODS,
};

static PyGetSetDef PipeEnd_getset[] = {
    {"closed", (getter)pw_object_get_closed, NULL, "True if the connection is closed.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PW_RING_TYPE(PipeEnd, PipeEndObject, "PipeEnd", PyType_GenericNew,
             "One end of a shared-memory pipe (see procwire.pipe.Connection).");

int pw_pipe_register(PyObject *module)
{
    PipeEndType.tp_members = PipeEnd_members; /* PW_RING_TYPE sets methods and getset */
    return pw_add_type(module, &PipeEndType, "PipeEnd");
}
