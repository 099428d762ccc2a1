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
"""
from __future__ import annotations

import atexit
import collections
import io
import itertools
import multiprocessing
import os
import pickle
import selectors
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
from procwire.pool._worker import APPLY, BAD_BATCH, INIT_FAILED, PICKLED, PLAIN, READY, RESULTS
from procwire.pool.results import BrokenPool, PoolStatistics, PoolTerminated

RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"  # multiprocessing.pool's states
BATCH_SECONDS = 0.004
MAX_BATCH = 4096
INIT_FAILURE_LIMIT = 3  # consecutive workers that fail to start before the pool is broken
PIPE_CAPACITY = 1 << 20
_PROTOCOL = pickle.HIGHEST_PROTOCOL

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


class Task:
    """One unit of work: an apply call, or one chunk of a map."""

    __slots__ = (
        "attempts",
        "data",
        "func",
        "index",
        "job",
        "kind",
        "seq",
        "solo",
        "started",
        "tid",
    )

    def __init__(self, tid: int, job: Any, index: int, kind: int, func: Any, data: Any) -> None:
        self.tid = tid
        self.job = job
        self.index = index
        self.kind = kind
        self.func = func
        self.data = data
        self.attempts = 0  # times sent to a worker that was ready
        self.solo = False  # re-sent alone after its batch could not be unpickled
        # job._start (a Future's set_running_or_notify_cancel) still to be called?
        self.started = getattr(job, "_start", None) is None
        self.seq = 0  # its place in the stream of tasks sent to its current worker


class _Worker:
    __slots__ = (
        "conn",
        "eof",
        "held",
        "inflight",
        "init_error",
        "leased",
        "number",
        "pid",
        "process",
        "progress",
        "quota",
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
        self.leased: dict[int, Task] = {}
        self.inflight = 0  # batches sent whose last result message has not arrived
        self.quota = quota  # tasks it may still be sent (maxtasksperchild)
        self.ready = False
        self.eof = False  # its pipe reported end-of-file: everything it sent was read
        self.unwritable = False  # a send to it failed: it is dying
        self.held: bytes | memoryview | None = None  # a large batch waiting for it to be idle
        self.stopping = False
        self.init_error: BaseException | None = None
        self.number = number


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


def _set_run(job: Any, run: list[tuple[int, tuple[bool, Any]]]) -> None:
    """Deliver outcomes of one job, several at once where the job can take them."""
    set_many = getattr(job, "_set_many", None) if len(run) > 1 else None
    try:
        if set_many is not None:
            set_many(run)
            return
    except Exception:
        _report_callback_error()
        return
    for index, outcome in run:
        try:
            job._set(index, outcome)
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
        self._backlog: collections.deque[Task] = collections.deque()
        self._workers: dict[int, _Worker] = {}  # by sentinel
        self._tids = itertools.count()
        self._numbers = itertools.count(1)
        self._state = RUN
        self._stopping = False  # close(): stop messages sent
        self._feeders: set[_Feeder] = set()
        self._broken: BaseException | None = None
        self._init_failures = 0
        self._avg: float | None = None  # moving average of seconds per task
        self._queued = self._done = self._failed = self._retried = 0
        self._deaths = self._started = 0
        self._sel = selectors.EpollSelector()
        self._wakefd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sel.register(self._wakefd, selectors.EVENT_READ, None)
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
        self._sel.register(w.sentinel, selectors.EVENT_READ, ("exit", w))
        self._sel.register(parent.fileno(), selectors.EVENT_READ, ("pipe", w))

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

    def new_task(self, job: Any, index: int, kind: int, func: Any, data: Any) -> Task:
        return Task(next(self._tids), job, index, kind, func, data)

    def check_broken(self) -> None:
        if self._broken is not None:
            raise _copy_error(self._broken)

    def check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")
        if self._broken is not None:
            raise _copy_error(self._broken)

    def submit(self, tasks: Iterable[Task], *, check: bool = True) -> None:
        with self._lock:
            if check:
                self.check_running()
            elif self._state == TERMINATE or self._broken is not None:
                failed = list(tasks)
                error = self._broken or PoolTerminated("the pool was terminated")
                self._deliver([(t, False, _copy_error(error)) for t in failed])
                return
            before = len(self._backlog)
            self._backlog.extend(tasks)
            self._queued += len(self._backlog) - before
            self._dispatch()

    def add_feeder(self, job: Any, func: Any, iterable: Iterable[Any], chunksize: int, kind: int,
                   prefetch: int) -> None:
        with self._lock:
            self.check_running()
            feeder = _Feeder(self, job, func, iter(iterable), chunksize, kind, prefetch)
            self._feeders.add(feeder)
        feeder.start()

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
            depth = 2 if short or len(backlog) > n_workers else 1
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
            n = min(per_batch, -(-len(backlog) // (n_workers * depth)))
            if best.quota is not None:
                n = min(n, best.quota)
            self._send_batch(best, n)

    def _send_batch(self, w: _Worker, n: int) -> None:
        backlog = self._backlog
        tasks: list[Task] = []
        failed: list[tuple[Task, bool, Any]] = []
        while backlog and len(tasks) < n:
            t = backlog.popleft()
            self._queued -= 1
            if not t.started:
                t.started = True
                if not t.job._start(t.index):
                    continue  # a cancelled future
            if t.solo and tasks:
                backlog.appendleft(t)
                self._queued += 1
                break
            tasks.append(t)
            if t.solo:
                break
        if not tasks:
            return
        data = self._pickle_batch(tasks, failed)
        if failed:
            self._deliver_later(failed)
        if data is None:
            return
        for t in tasks:
            w.leased[t.tid] = t
            t.seq = w.sent
            w.sent += 1
        w.inflight += 1
        if w.quota is not None:
            w.quota -= len(tasks)
        if len(data) > PIPE_CAPACITY // 4 and (w.inflight > 1 or not w.ready):
            w.held = data  # sent by _release_held once the worker reads
            return
        self._write(w, data)

    def _pickle_batch(self, tasks: list[Task], failed: list[Any]) -> memoryview | None:
        buf = io.BytesIO()
        pickler = pickle.Pickler(buf, _PROTOCOL)
        try:
            pickler.dump([t.tid for t in tasks])
            pickler.dump([(t.kind, t.func, t.data) for t in tasks])
            return buf.getbuffer()
        except Exception:
            pass
        # Find the tasks that cannot be pickled; they fail, the others go.
        good = []
        for t in tasks:
            try:
                pickle.dumps((t.kind, t.func, t.data), _PROTOCOL)
                good.append(t)
            except Exception as e:
                failed.append((t, False, _detach(e)))
        tasks[:] = good
        if not good:
            return None
        buf = io.BytesIO()
        pickler = pickle.Pickler(buf, _PROTOCOL)
        pickler.dump([t.tid for t in good])
        pickler.dump([(t.kind, t.func, t.data) for t in good])
        return buf.getbuffer()

    def _write(self, w: _Worker, data: Any) -> None:
        try:
            w.conn.send_bytes(data)
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
        """Settle outcomes: now in a submitting thread, after the lock in the manager."""
        for _, ok, _ in outcomes:
            self._count(ok)
        if threading.current_thread() is self._thread:
            self._manager_outbox.extend(outcomes)
        else:
            for t, ok, value in outcomes:
                self._set(t, ok, value)

    def _count(self, ok: bool) -> None:
        self._done += 1
        if not ok:
            self._failed += 1

    def _deliver(self, outcomes: list[Any]) -> None:
        for t, ok, value in outcomes:
            self._count(ok)
            self._set(t, ok, value)

    @staticmethod
    def _set(t: Task, ok: bool, value: Any) -> None:
        job = t.job
        t.job = t.func = t.data = None  # results and arguments are not kept alive
        try:
            job._set(t.index, (ok, value))
        except Exception:
            _report_callback_error()

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
                for key, _ in events:
                    if key.data is None:
                        try:
                            os.eventfd_read(self._wakefd)
                        except BlockingIOError:
                            pass
                        continue
                    kind, w = key.data
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
        outbox = self._manager_outbox
        if outbox:
            self._manager_outbox = []
            # Consecutive outcomes of one map or imap (a batch's results) go to
            # it in one call: one lock round and one wake-up of its reader
            # instead of one per task.
            job: Any = None
            run: list[tuple[int, tuple[bool, Any]]] = []
            for t, ok, value in outbox:
                if t.job is not job:
                    if run:
                        _set_run(job, run)
                        run = []
                    job = t.job
                run.append((t.index, (ok, value)))
                t.job = t.func = t.data = None
            if run:
                _set_run(job, run)

    def _drain(self, w: _Worker) -> None:
        conn = w.conn
        while not w.eof:
            try:
                if not conn.poll(0):
                    return
                data = conn.recv_bytes()
            except (EOFError, OSError):
                w.eof = True
                try:
                    self._sel.unregister(conn.fileno())
                except (KeyError, ValueError, OSError):
                    pass
                return
            self._handle(w, data)

    def _handle(self, w: _Worker, data: bytes) -> None:
        message = pickle.loads(data)
        tag = message[0]
        outbox = self._manager_outbox
        with self._lock:
            if tag == RESULTS:
                _, batch_done, seconds, results = message
                leased = w.leased
                done = failed = 0
                for tid, status, payload in results:
                    t = leased.pop(tid, None)
                    if t is None:
                        continue
                    if status == PLAIN:
                        outbox.append((t, True, payload))
                        done += 1
                        continue
                    try:
                        value = pickle.loads(payload)
                        ok = status == PICKLED
                    except Exception as e:
                        e.add_note("(raised while the pool's parent unpickled this task's result)")
                        ok, value = False, _detach(e)
                    done += 1
                    failed += not ok
                    outbox.append((t, ok, value))
                self._done += done
                self._failed += failed
                if batch_done:
                    w.inflight -= 1
                    n = len(results)
                    if n and seconds > 0:
                        per = seconds / n
                        self._avg = per if self._avg is None else 0.7 * self._avg + 0.3 * per
                    self._release_held(w)
                    self._dispatch()
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
                _, tids, payload = message
                w.inflight -= 1
                try:
                    error = pickle.loads(payload)
                except Exception as e:
                    error = _detach(e)
                tasks = [w.leased.pop(tid) for tid in tids if tid in w.leased]
                if len(tasks) == 1 and tasks[0].solo:
                    self._count(False)
                    outbox.append((tasks[0], False, error))
                else:
                    for t in reversed(tasks):
                        t.solo = True
                        self._backlog.appendleft(t)
                        self._queued += 1
                self._release_held(w)
                self._dispatch()

    def _reap(self, w: _Worker) -> None:
        self._drain(w)  # everything it sent before it died comes first
        w.process.join()
        exitcode = w.process.exitcode
        outbox = self._manager_outbox
        with self._lock:
            lost = sorted(w.leased.values(), key=lambda t: t.tid)
            w.leased.clear()
            self._forget(w)
            if self._state == TERMINATE:
                return
            if not w.ready:
                # It never ran anything: its tasks go elsewhere, untouched.
                for t in reversed(lost):
                    self._backlog.appendleft(t)
                    self._queued += 1
                self._deaths += 1
                if w.init_error is not None or exitcode not in (-signal.SIGKILL,
                                                                 -signal.SIGTERM):
                    self._init_failures += 1
                    if self._init_failures >= INIT_FAILURE_LIMIT:
                        self._break(w, exitcode)
                        return
            elif lost or (w.quota != 0 and not w.stopping):
                self._deaths += 1
                # Tasks it never started go elsewhere untouched; the ones it
                # started (running, or done with the result unsent) are lost.
                started = w.progress.value
                unstarted = [t for t in lost if t.seq >= started]
                lost = [t for t in lost if t.seq < started]
                for t in reversed(unstarted):
                    self._backlog.appendleft(t)
                    self._queued += 1
                for t in reversed(lost):
                    t.attempts += 1
                    if t.attempts <= self._retries:
                        self._retried += 1
                        self._backlog.appendleft(t)
                        self._queued += 1
                    else:
                        self._count(False)
                        outbox.append((t, False, WorkerLost(w.pid, exitcode, t.attempts)))
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
                        or any(x.leased for x in self._workers.values()))
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
        outcomes = []
        while self._backlog:
            outcomes.append((self._backlog.popleft(), False, _copy_error(error)))
        self._queued = 0
        for w in self._workers.values():
            for t in w.leased.values():
                outcomes.append((t, False, _copy_error(error)))
            w.leased.clear()
        for feeder in list(self._feeders):
            feeder.stop()
        self._done += len(outcomes)
        self._failed += len(outcomes)
        if outbox is not None:
            outbox.extend(outcomes)
        else:
            for t, ok, value in outcomes:
                self._set(t, ok, value)

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
                    or any(w.leased for w in self._workers.values()))
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
                    self._write(w, b"")

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

    def statistics(self) -> PoolStatistics:
        with self._lock:
            return PoolStatistics(
                workers=len(self._workers), tasks_queued=self._queued,
                tasks_running=sum(len(w.leased) for w in self._workers.values()),
                tasks_done=self._done, tasks_failed=self._failed, tasks_retried=self._retried,
                worker_deaths=self._deaths, workers_started=self._started)


class _Feeder(threading.Thread):
    """Reads a lazy iterable for imap, at most `prefetch` chunks ahead of the consumer."""

    def __init__(self, core: LocalCore, job: Any, func: Any, iterator: Any, chunksize: int,
                 kind: int, prefetch: int) -> None:
        super().__init__(name="procwire-pool-feeder", daemon=True)
        self._core = core
        self._job = weakref.ref(job)
        self._func = func
        self._iterator = iterator
        self._chunksize = chunksize
        self._kind = kind
        self._prefetch = prefetch
        self._cond = threading.Condition(threading.Lock())
        self._ahead = 0  # chunks submitted but not yet handed to the consumer
        self._stopped = False
        job._on_consume = self._consumed

    def _consumed(self) -> None:
        with self._cond:
            self._ahead -= 1
            if self._ahead <= self._prefetch // 2:
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

    def run(self) -> None:
        core, chunksize, kind = self._core, self._chunksize, self._kind
        index = 0
        try:
            while True:
                with self._cond:
                    while self._ahead >= self._prefetch and not self._stopped:
                        self._cond.wait(0.5)
                        if self._job() is None:
                            return  # nobody will ever read the results
                    if self._stopped:
                        return
                    room = min(self._prefetch - self._ahead, 1024)
                job = self._job()
                if job is None:
                    return
                tasks: list[Task] = []
                error: Any = None
                deadline = time.monotonic() + 0.001
                for _ in range(room):
                    if tasks and time.monotonic() > deadline:
                        break  # a slow iterable: let the first items start
                    try:
                        if kind == APPLY:
                            chunk = next(self._iterator)
                        else:
                            chunk = list(itertools.islice(self._iterator, chunksize))
                            if not chunk:
                                raise StopIteration
                    except StopIteration:
                        error = StopIteration
                        break
                    except Exception as e:
                        error = e
                        break
                    tasks.append(core.new_task(job, index, kind, self._func,
                                               (chunk, {}) if kind == APPLY else chunk))
                    index += 1
                with self._cond:
                    self._ahead += len(tasks)
                if tasks:
                    core.submit(tasks, check=False)
                if error is StopIteration:
                    job._set_length(index)
                    return
                if error is not None:
                    with self._cond:
                        self._ahead += 1
                    job._set(index, (False, error))
                    job._set_length(index + 1)
                    return
                del job
        finally:
            core._feeder_done(self)
