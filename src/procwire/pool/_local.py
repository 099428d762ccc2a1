"""The local transport: worker processes on this machine, and the ledger of who holds what.

Design (why it is crash-safe and fast):

* **One pipe per worker, nothing shared between workers.** Each worker has its
  own duplex ``procwire.Pipe``: tasks go down it in batches, results come back
  up it in batches. No lock is shared by two workers, so a worker killed at any
  instruction can only lose what it held itself.
* **A ledger of leases.** Every task (a chunk, for maps) has an id. Sending it
  to a worker leases it to that worker; the lease ends when its result comes
  back. When a worker dies, the tasks it still holds fail with
  :class:`procwire.WorkerLost` -- or are re-run, up to ``retries`` times -- and
  nothing else is touched. Tasks sent to a worker that died before it was
  ready never ran and are simply sent elsewhere.
* **Death is noticed by the kernel, not by polling.** One manager thread waits
  in ``epoll`` on every worker's ``Process.sentinel``, every pipe's
  ``fileno()`` and an eventfd that other threads use to wake it. When a
  sentinel fires, the manager first reads everything the dead worker managed
  to send (a result whose send completed is never lost, and a half-sent one is
  dropped by the pipe), then settles the remaining leases. Both happen in the
  same thread, in that order, so a task can never end twice.
* **Batches sized by measured task time.** The manager keeps a moving average
  of how long a task takes and sends batches of about ``BATCH_SECONDS`` of
  work, one or two batches in flight per worker (two only for short tasks, so
  long tasks never queue behind each other while a worker is idle).
* **The manager never blocks on a worker.** A batch that fits in a quarter of
  the pipe's ring is written into it without waiting; a larger one is written
  only to a worker that is idle and ready (so it is reading), and is otherwise
  held until then.
* **Ctrl-C never splits a submission.** Taking a batch off the backlog,
  recording it in a worker's ledger and writing it down the worker's pipe
  happen in the submitting thread, and a KeyboardInterrupt between two of
  them would leave a task leased but never sent (its result would never come,
  and ``join()`` would wait for it for ever) or taken and never sent. So a
  submission holds SIGINT's Python handler back (:class:`_CtrlCHeld`) and
  runs it right after: the interrupted call raises KeyboardInterrupt with its
  tasks submitted. The held stretch never waits for a worker (see above), so
  Ctrl-C comes at most one batch's pickling late.
"""
from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stub; see _CtrlCHeld
import atexit
import collections
import itertools
import multiprocessing
import os
import pickle
import select
import signal
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from procwire.errors import WorkerLost
from procwire.pool import _worker
from procwire.pool._worker import BAD_BATCH, INIT_FAILED, READY, RESULTS
from procwire.pool.results import BrokenPool, PoolStatistics, PoolTerminated

RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"  # multiprocessing.pool's states
BATCH_SECONDS = 0.004
READ_AHEAD_SECONDS = 0.02  # imap's default read-ahead: this much work per worker,
READ_AHEAD_BYTES = 16 << 20  # at most this much pickled arguments per worker,
READ_AHEAD_MIN, READ_AHEAD_MAX = 128, 8192  # and this many tasks per worker
MAX_BATCH = 4096
INIT_FAILURE_LIMIT = 3  # consecutive workers that fail to start before the pool is broken
PIPE_CAPACITY = 1 << 20
_PROTOCOL = pickle.HIGHEST_PROTOCOL

_SIGINT = int(signal.SIGINT)
_live_cores: weakref.WeakSet[LocalCore] = weakref.WeakSet()


@atexit.register
def _terminate_all() -> None:
    # Like multiprocessing.Pool's finaliser: a pool still running at exit is
    # terminated, so the interpreter never waits on workers or leaves them
    # behind. An executor first finishes the work it was given, as
    # concurrent.futures does at exit.
    for core in list(_live_cores):
        try:
            if core.finish_at_exit:
                core.close()
                core.join()
            else:
                core.terminate()
        except Exception:
            pass


class _CtrlCHeld:
    """``with _ctrl_c_held:`` SIGINT's Python handler runs when the block ends, not inside it.

    Signal handlers run only in the main thread, between bytecodes: in another
    thread, or when SIGINT is ignored or left to the system, this does nothing.
    Nested blocks (a callback that submits) hold it once, for the outermost.
    One instance serves every thread; only the main thread touches its state.
    """

    def __init__(self) -> None:
        self.main = threading.main_thread().ident  # where handlers run (ident: cheaper)
        self.blocks: list[bool] = []   # the main thread's open blocks: holding or not
        self.previous: Any = None      # the handler put back at the end
        self.pending: tuple[int, Any] | None = None

    def __enter__(self) -> None:
        if threading.get_ident() != self.main:
            return
        blocks = self.blocks
        if blocks:
            blocks.append(False)   # the outermost block holds
            return
        # _signal, not signal: signal's enum conversions cost 3 us a call, these 0.2.
        previous = _signal.getsignal(_SIGINT)
        holding = callable(previous)   # SIG_IGN, SIG_DFL: no KeyboardInterrupt to hold
        if holding:
            self.previous = previous
            _signal.signal(_SIGINT, self._record)
        blocks.append(holding)

    def _record(self, signum: int, frame: Any) -> None:
        self.pending = (signum, frame)

    def _after_fork_in_child(self) -> None:
        # A thread forked while the main thread held Ctrl-C: the child's only
        # thread would never leave that block; give it its handler back.
        self.main = threading.get_ident()
        holding, self.blocks, self.pending = any(self.blocks), [], None
        if holding:
            _signal.signal(_SIGINT, self.previous)
        self.previous = None

    def __exit__(self, *exc: object) -> None:
        if threading.get_ident() != self.main or not self.blocks.pop():
            return
        previous, self.previous = self.previous, None
        try:
            _signal.signal(_SIGINT, previous)
        except BaseException:
            # signal.signal runs pending handlers first: one that raised left
            # SIGINT on _record, which would swallow every later Ctrl-C.
            _signal.signal(_SIGINT, previous)
            raise
        pending, self.pending = self.pending, None
        if pending is not None:
            previous(*pending)  # Python's default handler raises KeyboardInterrupt here


_ctrl_c_held = _CtrlCHeld()
os.register_at_fork(after_in_child=_ctrl_c_held._after_fork_in_child)


class Span:
    """Consecutive tasks of one job with one function: the unit of the backlog and the ledger.

    Task ``k`` (``lo <= k < hi``) has argument ``items[k]`` and is the job's
    task number ``base + k``. Cutting a span shares ``items``: a map of a
    million tasks is one list, leased in pieces, never copied per task.
    """

    __slots__ = ("attempts", "base", "flat", "func", "hi", "items", "job", "kind", "lo", "solo",
                 "started")

    def __init__(self, job: Any, kind: int, func: Any, items: list[Any], *, base: int = 0,
                 flat: bool = False) -> None:
        self.job = job
        self.kind = kind
        self.func = func
        self.items = items
        self.lo = 0
        self.hi = len(items)
        self.base = base
        self.flat = flat  # one item per task (chunksize 1): its value is the item's result
        self.attempts = 0  # times sent to a worker that died after starting it
        self.solo = False  # re-sent alone after its batch could not be unpickled
        # job._start (a Future's set_running_or_notify_cancel) still to be called?
        self.started = getattr(job, "_start", None) is None

    def __len__(self) -> int:
        return self.hi - self.lo

    def part(self, lo: int, hi: int) -> Span:
        """Tasks ``lo:hi`` of this span (absolute positions in ``items``), as a new span."""
        s = Span.__new__(Span)
        s.job, s.kind, s.func, s.items, s.base, s.flat = (self.job, self.kind, self.func,
                                                          self.items, self.base, self.flat)
        s.attempts, s.solo, s.started = self.attempts, self.solo, self.started
        s.lo, s.hi = lo, hi
        return s

    def wire(self) -> tuple[int, Any, bool, list[Any]]:
        items = self.items
        if self.lo or self.hi != len(items):
            items = items[self.lo:self.hi]
        return (self.kind, self.func, self.flat, items)

    def release(self) -> None:
        # Results and arguments are not kept alive by a finished span.
        self.job = self.func = None
        self.items = []


class Lease:
    """One batch sent to a worker: its spans, in order, and how many outcomes came back."""

    __slots__ = ("count", "got", "seq", "si", "so", "spans")

    def __init__(self, spans: list[Span], count: int, seq: int) -> None:
        self.spans = spans
        self.count = count  # tasks in the batch
        self.seq = seq  # the worker's stream position of its first task
        self.got = 0  # outcomes received (a prefix of the batch)
        self.si = 0  # where the next outcome goes: spans[si], task lo + so
        self.so = 0

    def remaining(self) -> list[Span]:
        """The tasks whose outcomes have not come back, as spans."""
        out = []
        for i in range(self.si, len(self.spans)):
            s = self.spans[i]
            lo = s.lo + self.so if i == self.si else s.lo
            if lo < s.hi:
                out.append(s.part(lo, s.hi))
        return out


class _Worker:
    __slots__ = (
        "conn",
        "eof",
        "held",
        "inflight",
        "init_error",
        "leases",
        "number",
        "pid",
        "process",
        "progress",
        "quota",
        "reading",
        "ready",
        "sent",
        "sentinel",
        "stopping",
        "unwritable",
    )

    def __init__(self, process: Any, conn: Any, progress: Any, quota: int | None,
                 number: int) -> None:
        self.process = process
        self.conn = conn
        self.progress = progress  # shared: how many tasks the worker has started
        self.sent = 0  # tasks sent to it so far
        self.pid: int = process.pid
        self.sentinel: int = process.sentinel
        self.leases: collections.deque[Lease] = collections.deque()  # in the order sent
        self.inflight = 0  # batches sent whose last result message has not arrived
        self.quota = quota  # tasks it may still be sent (maxtasksperchild)
        self.ready = False
        self.eof = False  # its pipe reported end-of-file: everything it sent was read
        self.unwritable = False  # a send to it failed: it is dying
        self.held: Batch | None = None  # a large batch waiting for it to be idle
        self.stopping = False
        self.init_error: BaseException | None = None
        self.number = number
        # Held while reading its pipe and settling what was read, so that the
        # messages of one worker are settled one at a time, in order.
        self.reading = threading.Lock()

    def holding(self) -> int:
        """Tasks leased to it whose outcomes have not come back."""
        return sum(lease.count - lease.got for lease in self.leases)


# A batch on the wire: its message, and the out-of-band buffers that follow it.
Batch = tuple[bytes, list[memoryview]]


class _Epoll:
    """The manager's epoll set: each descriptor with the data it stands for."""

    def __init__(self) -> None:
        self._ep = select.epoll()
        self._data: dict[int, Any] = {}

    def register(self, fd: int, data: Any) -> None:
        self._ep.register(fd, select.EPOLLIN)
        self._data[fd] = data

    def unregister(self, fd: int) -> None:
        if self._data.pop(fd, _MISSING) is not _MISSING:
            self._ep.unregister(fd)

    def select(self) -> list[Any]:
        while True:
            try:
                ready = self._ep.poll()
                break
            except InterruptedError:
                continue
        data = self._data
        return [data[fd] for fd, _ in ready if fd in data]

    def close(self) -> None:
        self._ep.close()
        self._data.clear()


_MISSING = object()


def _detach(error: BaseException) -> BaseException:
    """An exception raised in the pool's own frames, without them.

    Its traceback would keep the manager's frames -- and through them the
    workers' Process objects and descriptors -- alive as long as the result.
    """
    error.__traceback__ = None
    error.__context__ = None
    return error


def _copy_error(error: BaseException) -> BaseException:
    # One instance per task: a shared one would collect every get()'s traceback.
    copy = type(error)(*error.args)
    copy.__cause__ = error.__cause__
    return copy


def _report_callback_error() -> None:
    # A callback that raises must not take the manager thread down with it.
    print("Exception in a procwire pool callback:", file=sys.stderr)
    traceback.print_exc()


def _deliver_one(job: Any, index: int, ok: bool, payload: Any) -> None:
    """Hand one outbox entry to its job: ``payload`` is a run of values from task
    ``index`` on when ``ok``, else the error of task ``index``."""
    try:
        if not ok:
            job._set(index, (False, payload))
        elif (set_span := getattr(job, "_set_span", None)) is not None:
            set_span(index, payload)
        else:
            for k, value in enumerate(payload):
                job._set(index + k, (True, value))
    except Exception:
        _report_callback_error()


class LocalCore:
    """Worker processes, their pipes, the backlog, the ledger and the manager thread."""

    finish_at_exit = False  # at interpreter exit: finish the work (True) or terminate

    def __init__(self, processes: int, initializer: Callable[..., Any] | None,
                 initargs: tuple[Any, ...],
                 maxtasks: int | None, context: Any, retries: int, *,
                 name: str = "ProcwirePoolWorker") -> None:
        self._ctx = context if context is not None else multiprocessing.get_context()
        self._processes = processes
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._maxtasks = maxtasks
        self._retries = retries
        self._name = name
        self._lock = threading.RLock()
        self._backlog: collections.deque[Span] = collections.deque()
        self._workers: dict[int, _Worker] = {}  # by sentinel
        self._numbers = itertools.count(1)
        self._state = RUN
        self._stopping = False  # close(): stop messages sent
        self._feeders: set[_Feeder] = set()
        self._broken: BaseException | None = None
        self._init_failures = 0
        self._avg: float | None = None  # moving average of seconds per task
        self._avg_bytes: float | None = None  # and of bytes sent per task
        self._queued = self._done = self._failed = self._retried = 0
        self._deaths = self._started = 0
        self._sel = _Epoll()
        self._wakefd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sel.register(self._wakefd, None)
        self._thread: threading.Thread | None = None
        self._refresh_events: list[threading.Event] = []
        self._manager_outbox: list[Any] = []
        self._replace: list[tuple[_Worker, int | None]] = []
        try:
            for _ in range(processes):
                self._spawn()
        except BaseException:
            self._abort_start()
            raise
        self._thread = threading.Thread(target=self._run, name="procwire-pool-manager",
                                        daemon=True)
        self._thread.start()
        _live_cores.add(self)

    # ------------------------------------------------------------------ workers

    def _spawn(self) -> None:
        from procwire.pipe import Pipe
        from procwire.shared import RawValue

        parent, child = Pipe(duplex=True, capacity=PIPE_CAPACITY)
        progress = RawValue("q", 0)
        number = next(self._numbers)
        try:
            process = self._ctx.Process(
                target=_worker.worker_main, name=f"{self._name}-{number}",
                args=(child, progress, self._initializer, self._initargs, self._maxtasks),
                daemon=True)
            _worker.parent_ends.add(parent)
            process.start()
        except BaseException:
            _worker.parent_ends.discard(parent)
            parent.close()
            child.close()
            raise
        child.close()
        w = _Worker(process, parent, progress, self._maxtasks, number)
        self._workers[w.sentinel] = w
        self._started += 1
        self._sel.register(w.sentinel, ("exit", w))
        self._sel.register(parent.fileno(), ("pipe", w))

    def _abort_start(self) -> None:
        for w in list(self._workers.values()):
            w.process.kill()
            w.process.join()
            self._forget(w)
        self._sel.close()
        os.close(self._wakefd)
        self._wakefd = -1

    def _forget(self, w: _Worker) -> None:
        self._workers.pop(w.sentinel, None)
        for fd in (w.sentinel, None if w.conn.closed else w.conn.fileno()):
            if fd is not None:
                try:
                    self._sel.unregister(fd)
                except (KeyError, ValueError):
                    pass
        _worker.parent_ends.discard(w.conn)
        w.conn.close()
        # Not process.close(): callers may still hold the Process (``_pool``);
        # dropping our reference releases its sentinel.

    @property
    def processes(self) -> list[Any]:
        """The live workers' Process objects (multiprocessing.Pool's ``_pool``)."""
        with self._lock:
            return [w.process for w in self._workers.values()]

    # --------------------------------------------------------------- submitting


    def check_broken(self) -> None:
        if self._broken is not None:
            raise _copy_error(self._broken)

    def check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")
        if self._broken is not None:
            raise _copy_error(self._broken)

    def submit(self, span: Span, *, check: bool = True) -> None:
        # Backlog, ledger and pipe change together: Ctrl-C waits (see _CtrlCHeld).
        with _ctrl_c_held, self._lock:
            if check:
                self.check_running()
            elif self._state == TERMINATE or self._broken is not None:
                error = self._broken or PoolTerminated("the pool was terminated")
                outcomes = self._failures([span], error)
                self._done += len(outcomes)
                self._failed += len(outcomes)
                for outcome in outcomes:
                    _deliver_one(*outcome)
                return
            self._backlog.append(span)
            self._queued += len(span)
            self._dispatch()

    def add_feeder(self, job: Any, func: Any, iterable: Iterable[Any], chunksize: int, kind: int,
                   prefetch: int | None) -> None:
        # A feeder registered but never started would hold close() up for ever.
        with _ctrl_c_held:
            with self._lock:
                self.check_running()
                feeder = _Feeder(self, job, func, iter(iterable), chunksize, kind, prefetch)
                self._feeders.add(feeder)
            feeder.start()

    def read_ahead(self) -> int:
        """How many tasks imap's feeder may read ahead of the consumer, by default.

        About ``READ_AHEAD_SECONDS`` of work per worker (at the measured time
        per task), so that tiny tasks travel in large batches; but no more than
        ``READ_AHEAD_BYTES`` of pickled arguments per worker, nor fewer than
        ``READ_AHEAD_MIN`` or more than ``READ_AHEAD_MAX`` tasks per worker.
        Until tasks have run, the minimum.
        """
        n = max(1, self._processes)
        avg, size = self._avg, self._avg_bytes
        if not avg or size is None:
            return READ_AHEAD_MIN * n
        tasks = min(READ_AHEAD_SECONDS / avg, READ_AHEAD_BYTES / max(size, 1.0))
        return n * max(READ_AHEAD_MIN, min(READ_AHEAD_MAX, int(tasks)))

    def _feeder_done(self, feeder: _Feeder) -> None:
        with self._lock:
            self._feeders.discard(feeder)
        self._wake()

    # -------------------------------------------------------------- dispatching

    def _dispatch(self) -> None:
        """Send batches to workers that can take one. Caller holds the lock."""
        backlog = self._backlog
        if not backlog or self._state == TERMINATE or self._broken is not None:
            return
        avg = self._avg
        short = avg is not None and avg < BATCH_SECONDS / 2
        per_batch = min(MAX_BATCH, max(1, int(BATCH_SECONDS / avg))) if avg else 1
        workers = self._workers.values()
        n_workers = max(1, len(self._workers))
        while backlog:
            # A second batch in flight keeps a worker busy across the round
            # trip. For long tasks only while there is more work than workers:
            # at the tail, a task must not wait behind another one while some
            # worker is idle.
            depth = 2 if short or self._queued > n_workers else 1
            best = None
            for w in workers:
                if (w.inflight < depth and w.held is None and not w.stopping
                        and w.quota != 0 and not w.eof and not w.unwritable
                        and (best is None or w.inflight < best.inflight)):
                    best = w
                    if w.inflight == 0:
                        break
            if best is None:
                return
            n = min(per_batch, -(-self._queued // (n_workers * depth)))
            if best.quota is not None:
                n = min(n, best.quota)
            self._send_batch(best, n)

    def _send_batch(self, w: _Worker, n: int) -> None:
        backlog = self._backlog
        spans: list[Span] = []
        count = 0
        while backlog and count < n:
            s = backlog[0]
            if not s.started:  # an executor's future: one task per span
                s.started = True
                if not s.job._start(s.base + s.lo):
                    backlog.popleft()  # a cancelled future
                    self._queued -= len(s)
                    continue
            if s.solo and spans:
                break
            take = min(len(s), n - count)
            if take == len(s):
                backlog.popleft()
                part = s
            else:
                part = s.part(s.lo, s.lo + take)
                s.lo += take
            self._queued -= take
            spans.append(part)
            count += take
            if s.solo:
                break
        if not spans:
            return
        data = self._pickle_batch(spans)
        if data is None:
            return
        count = sum(map(len, spans))
        w.leases.append(Lease(spans, count, w.sent))
        w.sent += count
        w.inflight += 1
        if w.quota is not None:
            w.quota -= count
        size = len(data[0]) + sum(r.nbytes for r in data[1])
        per = size / count
        self._avg_bytes = per if self._avg_bytes is None else 0.7 * self._avg_bytes + 0.3 * per
        if size > PIPE_CAPACITY // 4 and (w.inflight > 1 or not w.ready):
            w.held = data  # sent by _release_held once the worker reads
            return
        self._write(w, data)

    @staticmethod
    def _dump_batch(spans: list[Span]) -> Batch:
        raws: list[memoryview] = []
        body, sizes = _worker.dumps_oob([s.wire() for s in spans], raws)
        return pickle.dumps((sum(map(len, spans)), sizes), _PROTOCOL) + body, raws

    def _pickle_batch(self, spans: list[Span]) -> Batch | None:
        try:
            return self._dump_batch(spans)
        except Exception:
            pass
        # Find the tasks that cannot be pickled; they fail, the others go.
        good: list[Span] = []
        failed: list[Any] = []
        for s in spans:
            try:
                pickle.dumps(s.wire(), _PROTOCOL)
                good.append(s)
                continue
            except Exception:
                pass
            for k in range(s.lo, s.hi):
                one = s.part(k, k + 1)
                try:
                    pickle.dumps(one.wire(), _PROTOCOL)
                    good.append(one)
                except Exception as e:
                    failed.append((s.job, s.base + k, False, _detach(e)))
        if failed:
            self._deliver_later(failed)
        spans[:] = good
        if not good:
            return None
        return self._dump_batch(good)

    def _write(self, w: _Worker, data: Batch) -> None:
        try:
            w.conn.send_bytes(data[0])
            for raw in data[1]:  # out-of-band buffers, straight from the arguments' memory
                w.conn.send_bytes(raw)
        except (OSError, EOFError, ValueError):
            # The worker is dead or dying: its sentinel will settle the leases
            # (after the manager has read whatever it sent before it died).
            w.unwritable = True

    def _release_held(self, w: _Worker) -> None:
        if w.held is not None and w.inflight == 1 and w.ready:
            data, w.held = w.held, None
            self._write(w, data)

    # ------------------------------------------------------------ completing

    def _deliver_later(self, outcomes: list[Any]) -> None:
        """Settle failures now in a submitting thread, after the lock in the manager."""
        self._done += len(outcomes)
        self._failed += len(outcomes)
        if threading.current_thread() is self._thread:
            self._manager_outbox.extend(outcomes)
        else:
            for outcome in outcomes:
                _deliver_one(*outcome)

    @staticmethod
    def _failures(spans: Iterable[Span], error: BaseException) -> list[Any]:
        """One outcome per task of `spans`, each with its own copy of `error`."""
        outcomes = []
        for s in spans:
            for k in range(s.lo, s.hi):
                outcomes.append((s.job, s.base + k, False, _copy_error(error)))
            s.release()
        return outcomes

    # ------------------------------------------------------------ the manager

    def _wake(self) -> None:
        # Under the lock: the manager closes the fd under it when it ends, and a
        # closed descriptor's number may already belong to something else.
        with self._lock:
            if self._wakefd >= 0:
                os.eventfd_write(self._wakefd, 1)

    def _run(self) -> None:
        sel = self._sel
        try:
            while True:
                events = sel.select()
                exits = []
                for data in events:
                    if data is None:
                        try:
                            os.eventfd_read(self._wakefd)
                        except BlockingIOError:
                            pass
                        continue
                    kind, w = data
                    if kind == "pipe":
                        self._drain(w)
                    else:
                        exits.append(w)
                for w in exits:
                    self._reap(w)
                self._flush_outbox()
                if self._replace:
                    self._replace_workers()
                    self._flush_outbox()
                if self._step():
                    break
        except BaseException as e:
            # A bug here must not leave get() waiting: fail everything, stop the
            # workers, and let the thread's excepthook report it.
            with self._lock:
                self._state = TERMINATE
                error = PoolTerminated(f"the pool's manager thread failed: {e!r}")
                error.__cause__ = e
                self._fail_all(error)
                self._kill_all()
            raise
        finally:
            self._flush_outbox()
            self._shutdown_manager()

    def _flush_outbox(self) -> None:
        if self._manager_outbox:
            with self._lock:  # each entry goes once
                outbox, self._manager_outbox = self._manager_outbox, []
            for outcome in outbox:
                _deliver_one(*outcome)

    def _drain(self, w: _Worker) -> None:
        conn = w.conn
        with w.reading:
            while not w.eof:
                try:
                    if not conn.poll(0):
                        return
                    data = conn.recv_bytes()
                except (EOFError, OSError):
                    w.eof = True
                    with self._lock:
                        try:
                            self._sel.unregister(conn.fileno())
                        except (KeyError, ValueError, OSError):
                            pass
                    return
                self._handle(w, data)

    def _handle(self, w: _Worker, data: bytes) -> None:
        """Settle one message from `w`. Caller holds ``w.reading``."""
        message = pickle.loads(data)
        tag = message[0]
        buffers: list[list[bytearray]] = []
        if tag == RESULTS and message[5]:
            try:
                buffers = [_worker.recv_buffers(w.conn, sizes) for _, _, sizes in message[5]]
            except (EOFError, OSError):
                return  # it died sending them: the message is dropped, as a half-sent one
        with self._lock:
            if tag in (RESULTS, BAD_BATCH):
                self._retire(w)
                if not w.leases:
                    return  # its tasks already failed (terminate(), a broken pool)
            if tag == RESULTS:
                _, first, seconds, values, errors, nested = message
                self._settle(w, first, values, errors, nested, buffers)
                lease = w.leases[0] if w.leases else None
                if seconds is not None and lease is not None and lease.count:
                    per = seconds / lease.count
                    self._avg = per if self._avg is None else 0.7 * self._avg + 0.3 * per
                self._retire(w)
            elif tag == READY:
                w.ready = True
                self._init_failures = 0
                self._release_held(w)
                self._dispatch()
            elif tag == INIT_FAILED:
                try:
                    w.init_error = pickle.loads(message[1])
                except Exception as e:
                    w.init_error = e
            elif tag == BAD_BATCH:
                _, first, _count, payload = message
                self._skip(w, first)
                try:
                    error = pickle.loads(payload)
                except Exception as e:
                    error = _detach(e)
                lease = w.leases[0]
                spans = lease.remaining()
                if lease.count == 1 and spans[0].solo:
                    self._done += 1
                    self._failed += 1
                    self._manager_outbox.append((spans[0].job, spans[0].base + spans[0].lo,
                                                 False, error))
                else:
                    # Sent again one by one: the culprit fails alone.
                    singles = [s.part(k, k + 1) for s in spans for k in range(s.lo, s.hi)]
                    for one in reversed(singles):
                        one.solo = True
                        self._backlog.appendleft(one)
                    self._queued += len(singles)
                lease.got = lease.count
                self._retire(w)

    def _retire(self, w: _Worker) -> None:
        """Leases whose every outcome came back end; their worker can take more. Lock held."""
        retired = False
        while w.leases and w.leases[0].got == w.leases[0].count:
            lease = w.leases.popleft()
            w.inflight -= 1
            for s in lease.spans:
                s.release()
            retired = True
        if retired:
            self._release_held(w)
            self._dispatch()

    def _skip(self, w: _Worker, first: int) -> None:
        """Outcomes before stream position `first` that never reached the ledger fail. Lock held.

        A reader interrupted between taking a message and settling it (an
        exception in the reading thread) would lose one: the tasks it covered
        ran, but their results are gone. The check keeps every later result
        going to its own task.
        """
        while w.leases:
            lease = w.leases[0]
            missing = min(first - (lease.seq + lease.got), lease.count - lease.got)
            if missing <= 0:
                return
            error = RuntimeError("the task ran, but its result was lost: an exception "
                                 "interrupted the thread reading it from the worker")
            spans = lease.remaining()
            lost: list[Span] = []
            for s in spans:
                take = min(len(s), missing - sum(map(len, lost)))
                if take <= 0:
                    break
                lost.append(s.part(s.lo, s.lo + take))
            outcomes = self._failures(lost, error)
            self._settle_positions(lease, missing)
            self._done += len(outcomes)
            self._failed += len(outcomes)
            self._manager_outbox.extend(outcomes)
            self._retire(w)

    @staticmethod
    def _settle_positions(lease: Lease, k: int) -> None:
        si, so = lease.si, lease.so
        left = k
        while left:
            s = lease.spans[si]
            take = min(left, len(s) - so)
            left -= take
            so += take
            if so == len(s):
                si, so = si + 1, 0
        lease.si, lease.so, lease.got = si, so, lease.got + k

    def _settle(self, w: _Worker, first: int, values: list[Any],
                errors: list[tuple[int, bytes]], nested: list[tuple[int, bytes, list[int]]],
                buffers: list[list[bytearray]]) -> None:
        """The outcomes of tasks ``first...`` of `w`'s stream go to the outbox. Lock held.

        Everything is worked out first and committed at the end, by
        attribute stores and one list extension: an exception raised in
        between leaves the ledger as it was, and ``first`` of the next message
        shows the gap.
        """
        self._skip(w, first)
        if not w.leases:
            return
        bad: dict[int, BaseException] = {}
        loads_with: list[list[bytearray] | None] = [*buffers] or [None] * len(nested)
        for (i, payload, _), bufs in zip(nested, loads_with, strict=True):
            try:
                values[i] = pickle.loads(payload, buffers=bufs)
            except Exception as e:
                e.add_note("(raised while the pool's parent unpickled this task's result)")
                bad[i] = _detach(e)
        for i, payload in errors:
            try:
                bad[i] = pickle.loads(payload)
            except Exception as e:
                e.add_note("(raised while the pool's parent unpickled this task's error)")
                bad[i] = _detach(e)
        k = len(values)
        lease = w.leases[0]
        spans = lease.spans
        si, so = lease.si, lease.so
        out: list[Any] = []
        i = 0
        while i < k:
            s = spans[si]
            lo = s.lo + so
            take = min(k - i, s.hi - lo)
            index = s.base + lo
            run = values if take == k else values[i:i + take]
            if bad and any(i <= b < i + take for b in bad):
                # Split the run around the failures, in order.
                start = 0
                for j in range(take):
                    error = bad.get(i + j)
                    if error is not None:
                        if j > start:
                            out.append((s.job, index + start, True, run[start:j]))
                        out.append((s.job, index + j, False, error))
                        start = j + 1
                if start < take:
                    out.append((s.job, index + start, True, run[start:]))
            else:
                out.append((s.job, index, True, run))
            i += take
            so += take
            if lo + take == s.hi:
                si, so = si + 1, 0
        lease.si, lease.so, lease.got = si, so, lease.got + k
        self._done += k
        self._failed += len(bad)
        self._manager_outbox.extend(out)

    def _reap(self, w: _Worker) -> None:
        self._drain(w)  # everything it sent before it died comes first
        w.process.join()
        exitcode = w.process.exitcode
        outbox = self._manager_outbox
        with self._lock:
            leases = list(w.leases)
            w.leases.clear()
            self._forget(w)
            if self._state == TERMINATE:
                return
            if not w.ready:
                # It never ran anything: its tasks go elsewhere, untouched.
                requeue = [s for lease in leases for s in lease.remaining()]
                for s in reversed(requeue):
                    self._backlog.appendleft(s)
                    self._queued += len(s)
                self._deaths += 1
                if w.init_error is not None or exitcode not in (-signal.SIGKILL,
                                                                 -signal.SIGTERM):
                    self._init_failures += 1
                    if self._init_failures >= INIT_FAILURE_LIMIT:
                        self._break(w, exitcode)
                        return
            elif any(lease.got < lease.count for lease in leases) or (
                    w.quota != 0 and not w.stopping):
                self._deaths += 1
                # Tasks it never started go elsewhere untouched; the ones it
                # started (running, or done with the result unsent) are lost.
                started = w.progress.value
                lost: list[Span] = []
                unstarted: list[Span] = []
                for lease in leases:
                    # Task j of the lease is number lease.seq + j of the worker's stream.
                    cut = started - lease.seq  # tasks of this lease it started
                    j = lease.got
                    for s in lease.remaining():
                        if j + len(s) <= cut:
                            lost.append(s)
                        elif j >= cut:
                            unstarted.append(s)
                        else:
                            lost.append(s.part(s.lo, s.lo + cut - j))
                            unstarted.append(s.part(s.lo + cut - j, s.hi))
                        j += len(s)
                retry: list[Span] = []
                for s in lost:
                    s.attempts += 1
                    if s.attempts <= self._retries:
                        self._retried += len(s)
                        retry.append(s)
                    else:
                        for k in range(s.lo, s.hi):
                            self._done += 1
                            self._failed += 1
                            outbox.append((s.job, s.base + k, False,
                                           WorkerLost(w.pid, exitcode, s.attempts)))
                        s.release()
                for s in reversed(retry + unstarted):
                    self._backlog.appendleft(s)
                    self._queued += len(s)
            # The replacement is started after the outcomes above are
            # delivered: a fork can take milliseconds, WorkerLost should not wait.
            self._replace.append((w, exitcode))
            self._dispatch()

    def _replace_workers(self) -> None:
        """Start a new worker for each one that ended, while there is work for it."""
        with self._lock:
            pending, self._replace = self._replace, []
            for w, exitcode in pending:
                busy = (self._backlog or self._feeders
                        or any(x.leases for x in self._workers.values()))
                if self._stopping or self._broken is not None or not (
                        self._state == RUN or busy):
                    continue
                try:
                    self._spawn()
                except Exception as e:
                    self._init_failures += 1
                    w.init_error = e
                    if self._init_failures >= INIT_FAILURE_LIMIT or not self._workers:
                        self._break(w, exitcode)
                        return
            self._dispatch()

    def _break(self, w: _Worker, exitcode: int | None) -> None:
        """Workers cannot start: fail everything, refuse new work. Lock held."""
        if w.init_error is not None:
            error = BrokenPool(f"the pool's workers keep failing to start: the initializer "
                               f"raised {type(w.init_error).__name__}: {w.init_error} "
                               f"({self._init_failures} times in a row)")
            error.__cause__ = w.init_error
        else:
            error = BrokenPool(f"the pool's workers keep dying before they are ready "
                               f"(last: pid {w.pid}, exit code {exitcode}, "
                               f"{self._init_failures} times in a row)")
        self._broken = error
        self._fail_all(error)

    def _fail_all(self, error: BaseException) -> None:
        """Every queued and leased task fails with `error`. Lock held."""
        outbox = self._manager_outbox if threading.current_thread() is self._thread else None
        spans = list(self._backlog)
        self._backlog.clear()
        self._queued = 0
        for w in self._workers.values():
            for lease in w.leases:
                spans += lease.remaining()
            w.leases.clear()
        for feeder in list(self._feeders):
            feeder.stop()
        outcomes = self._failures(spans, error)
        self._done += len(outcomes)
        self._failed += len(outcomes)
        if outbox is not None:
            outbox.extend(outcomes)
        else:
            for outcome in outcomes:
                _deliver_one(*outcome)

    def _step(self) -> bool:
        """State changes after each wake-up; True when the manager's work is over."""
        with self._lock:
            waiting, self._refresh_events = self._refresh_events, []
            try:
                return self._step_locked()
            finally:
                for event in waiting:
                    event.set()

    def _step_locked(self) -> bool:
        if self._state == TERMINATE:
            self._kill_all()
            return True
        if self._broken is not None and self._state == RUN:
            # Keep running to answer; workers are stopped.
            self._stop_workers()
            return False
        if self._state == CLOSE or self._broken is not None:
            busy = (self._backlog or self._feeders
                    or any(w.leases for w in self._workers.values()))
            if not busy:
                self._stop_workers()
                if not self._workers:
                    return True
        return False

    def _stop_workers(self) -> None:
        self._stopping = True
        for w in self._workers.values():
            if not w.stopping:
                w.stopping = True
                if not w.eof and not w.unwritable:
                    self._write(w, (b"", []))

    def _kill_all(self) -> None:
        workers = list(self._workers.values())
        for w in workers:
            try:
                w.process.terminate()
            except Exception:
                pass
        for w in workers:
            w.process.join(1.0)
            if w.process.exitcode is None:
                w.process.kill()
                w.process.join()
            self._forget(w)

    def _shutdown_manager(self) -> None:
        with self._lock:
            for w in list(self._workers.values()):
                self._forget(w)
            self._sel.close()
            os.close(self._wakefd)
            self._wakefd = -1
        _live_cores.discard(self)

    # ------------------------------------------------------------ life cycle

    @property
    def state(self) -> str:
        return self._state

    def close(self) -> None:
        with self._lock:
            if self._state == RUN:
                self._state = CLOSE
                # close() then join() then read the results is multiprocessing's
                # idiom: a feeder waiting for its consumer would wait forever.
                for feeder in self._feeders:
                    feeder.unbound()
                self._wake()

    def terminate(self, wait: bool = True) -> None:
        with self._lock:
            if self._state != TERMINATE:
                self._state = TERMINATE
                self._fail_all(PoolTerminated("the pool was terminated before this task finished"))
                self._wake()
        if wait:
            self.join()

    def join(self, timeout: float | None = None) -> bool:
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def refresh(self, timeout: float = 5.0) -> None:
        """Wait until the manager has gone once round its loop (handling pending exits)."""
        done = threading.Event()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                return
            self._refresh_events.append(done)
        self._wake()
        done.wait(timeout)

    def holder_of(self, job: Any) -> int | None:
        """The pid of a worker holding a task of `job` whose outcome has not come back."""
        with self._lock:
            for w in self._workers.values():
                for lease in w.leases:
                    if any(s.job is job for s in lease.remaining()):
                        return w.pid
        return None

    def statistics(self) -> PoolStatistics:
        with self._lock:
            return PoolStatistics(
                workers=len(self._workers), tasks_queued=self._queued,
                tasks_running=sum(w.holding() for w in self._workers.values()),
                tasks_done=self._done, tasks_failed=self._failed, tasks_retried=self._retried,
                worker_deaths=self._deaths, workers_started=self._started)


class _Feeder(threading.Thread):
    """Reads a lazy iterable for imap, at most `prefetch` tasks ahead of the consumer.

    The consumer counts the items it is handed (``job._handed``); it calls
    ``job._on_consume`` only when that count reaches ``job._wake_at``, which
    the feeder sets when it waits for room: one call per refill, not per item.
    """

    def __init__(self, core: LocalCore, job: Any, func: Any, iterator: Any, chunksize: int,
                 kind: int, prefetch: int | None) -> None:
        super().__init__(name="procwire-pool-feeder", daemon=True)
        self._core = core
        self._job = weakref.ref(job)
        self._func = func
        self._iterator = iterator
        self._chunksize = chunksize
        self._kind = kind
        self._prefetch = prefetch  # None: LocalCore.read_ahead(), adapted as tasks run
        self._cond = threading.Condition(threading.Lock())
        self._submitted = 0  # tasks submitted so far
        self._stopped = False
        job._on_consume = self._consumed

    def _consumed(self) -> None:
        with self._cond:
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def unbound(self) -> None:
        """Read the rest of the iterable without waiting for the consumer."""
        with self._cond:
            self._prefetch = 1 << 62
            self._cond.notify()

    def _room(self) -> int:
        """Tasks that may be submitted now; waits while there is no room. Lock held."""
        while not self._stopped:
            job = self._job()
            if job is None:
                return 0  # nobody will ever read the results
            limit = self._prefetch if self._prefetch is not None else self._core.read_ahead()
            ahead: int = self._submitted - job._handed
            if ahead <= limit // 2:
                return limit - ahead
            # Woken when the consumer has taken enough that half is left ahead
            # (it checks `_wake_at` after each item; re-checked here, under the
            # lock _consumed takes, so the wake-up cannot be missed).
            job._wake_at = wake_at = self._submitted - limit // 2
            if job._handed < wake_at:
                del job
                self._cond.wait(0.5)
        return 0

    def _read(self, room: int) -> tuple[list[Any], Any]:
        """Up to `room` tasks' arguments, and StopIteration or the iterable's error, if any."""
        items: list[Any] = []
        chunksize = self._chunksize
        deadline = time.monotonic() + 0.001
        piece = 64
        try:
            while len(items) < room:
                want = min(piece, room - len(items))
                if chunksize == 1:
                    before = len(items)
                    # extend keeps the items read before the iterable raises
                    items.extend(itertools.islice(self._iterator, want))
                    if len(items) - before < want:
                        return items, StopIteration
                else:
                    for _ in range(want):
                        chunk = list(itertools.islice(self._iterator, chunksize))
                        if not chunk:
                            return items, StopIteration
                        items.append(chunk)
                if time.monotonic() > deadline:
                    break  # a slow iterable: let the first items start
                piece *= 2
        except Exception as e:
            return items, e
        return items, None

    def run(self) -> None:
        core, kind = self._core, self._kind
        try:
            while True:
                with self._cond:
                    room = min(self._room(), 1 << 16)
                if not room:
                    return
                items, error = self._read(room)
                job = self._job()
                if job is None:
                    return
                index = self._submitted
                if items:
                    with self._cond:
                        self._submitted += len(items)
                    core.submit(Span(job, kind, self._func, items, base=index,
                                     flat=self._chunksize == 1), check=False)
                if error is StopIteration:
                    job._set_length(self._submitted)
                    return
                if error is not None:
                    with self._cond:
                        self._submitted += 1
                    job._set(self._submitted - 1, (False, error))
                    job._set_length(self._submitted)
                    return
                del job
        finally:
            core._feeder_done(self)
