"""Waiting on procwire objects from event loops and ``select``: ``fileno()`` and ``*_async``.

A queue's messages sit in shared memory and its producers may be any process,
related or not (attached by name), so there is no kernel object whose
readability follows the queue. procwire makes one per process, on demand:

* **A watcher thread per object and process, not per call.** ``fileno()``
  on a queue starts one daemon thread in the calling process, which sleeps in
  the queue's own futex wait (registered as a consumer sleeper, GIL
  released), so the next ``put`` from any process wakes it exactly as it
  wakes a blocked ``get``. It then makes an ``eventfd`` readable. Producers do
  nothing new: no descriptor of theirs is involved, so anonymous queues passed
  to children and named queues attached by unrelated processes work alike, and
  nothing appears in ``/dev/shm``.
* **Level-triggered from this process's view.** The descriptor stays readable
  while a message waits. When this process's ``get``, ``get_nowait`` or
  ``get_many`` (or ``get_async``) leaves the queue empty or finds it empty,
  the descriptor is drained at once, in that call, and the watcher goes back
  to sleep. One spurious wake-up remains, and is documented: when *another*
  process takes the last message, the descriptor stays readable until this
  process's next get finds the queue empty (``get_nowait`` raises
  ``queue.Empty`` and clears it). With several consumers, readiness is a hint
  anyway: another consumer may take the message first.
* **Async methods** wait with ``loop.add_reader`` on such a descriptor (one
  reader per loop and descriptor, shared by every coroutine waiting there), or,
  for waits on room in a bounded queue or a pipe, through a token watcher: the
  coroutine reads a position word, tries, and if it must wait, asks the
  watcher thread to call back once that word moves. Cancelling a coroutine
  removes its waiter; nothing is consumed by a cancelled ``get_async``.
* **A Pipe message that cannot fit the ring is sent from a thread.** It goes
  in pieces, and the sender must wait for the receiver to take the first ones
  before it can write the last: ``send_bytes`` would hold the loop (and
  deadlock a receiver in the same loop). ``send_async`` hands such a message
  to the end's sender thread (:class:`OrderedSender`: one per end and process,
  started when needed, gone when idle), and later ``send_async`` calls queue
  behind it, so that messages keep their order and the loop never waits for
  the end's send lock.

Costs: one thread and one eventfd per object and process that uses them;
while the watcher sleeps on an empty queue, the next put makes one futex
wake-up system call (as for any sleeping consumer); ``statistics()`` counts
the watcher among ``consumers_waiting`` while it sleeps.
"""
from __future__ import annotations

import collections
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: `import procwire` need not load asyncio
    import asyncio

__all__ = ["FlagWatcher", "OrderedSender", "Readiness", "TokenWatcher", "wait_readable"]

# Watchers of this process, so that a fork child (which has none of the
# threads) starts afresh.
_watchers: weakref.WeakSet[Any] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for w in list(_watchers):
        w._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _stop(thread: threading.Thread | None, kick: Callable[[], object]) -> None:
    """Wake a watcher thread (asleep in a native wait) until it has ended."""
    while thread is not None and thread.is_alive():
        try:
            kick()
        except (ValueError, OSError):
            pass  # closed already: its wait has returned or will
        thread.join(0.05)


class Readiness:
    """An eventfd a watcher thread keeps readable while ``ready()`` holds.

    ``token()`` reads the word the other side moves, ``ready()`` says whether
    the condition holds, ``wait_change(token)`` sleeps (natively, GIL
    released) until the word moves or a wake-up comes, and ``kick()`` wakes
    that sleep so the watcher can stop.
    """

    def __init__(self, what: str, token: Callable[[], int], ready: Callable[[], bool],
                 wait_change: Callable[[int], object], kick: Callable[[], object]) -> None:
        self._token, self._ready, self._wait_change, self._kick = token, ready, wait_change, kick
        self.fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._lock = threading.Lock()
        self._signaled = False
        self._rearm = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = threading.Thread(
            target=self._run, name=f"procwire fileno watcher: {what}", daemon=True)
        _watchers.add(self)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop:
                token = self._token()
                # Checked under the lock that recheck() takes: a get that
                # empties the queue either sees our signal and drains it, or
                # runs before and we see the queue empty.
                with self._lock:
                    armed = self._ready()
                    if armed and not self._signaled:
                        # Flag first: whoever sees the descriptor readable
                        # (the write lets other threads run) sees the flag.
                        self._signaled = True
                        os.eventfd_write(self.fd, 1)
                if armed:
                    # Until a get in this process finds the condition gone.
                    self._rearm.wait()
                    self._rearm.clear()
                else:
                    self._wait_change(token)
        except (ValueError, OSError):
            pass  # the object was closed under us: nothing left to watch

    def recheck(self) -> None:
        """After a get in this process: drain the descriptor if nothing waits any more."""
        if self._signaled and not self._ready():
            with self._lock:
                if self._signaled and not self._ready():
                    try:
                        os.eventfd_read(self.fd)
                    except BlockingIOError:
                        pass
                    self._signaled = False
                    self._rearm.set()

    def close(self) -> None:
        """Stop the watcher and close the descriptor. Idempotent."""
        self._stop = True
        self._rearm.set()
        thread, self._thread = self._thread, None
        _stop(thread, self._kick)
        if self.fd >= 0:
            _forget_fd(self.fd)
            os.close(self.fd)
            self.fd = -1

    def _forget_after_fork(self) -> None:
        # The thread did not follow us into the child; the descriptor did.
        self._thread = None
        self._stop = True
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class TokenWatcher:
    """Calls back once a position word moves: the waits of ``put_async``/``send_async``.

    One thread per object and process, started on first use; it sleeps in a
    ``threading.Condition`` while nobody waits and in the object's native wait
    (GIL released) while someone does.
    """

    def __init__(self, what: str, token: Callable[[], int],
                 wait_change: Callable[[int], object], kick: Callable[[], object]) -> None:
        self._what, self._token, self._wait_change, self._kick = what, token, wait_change, kick
        self._cond = threading.Condition(threading.Lock())
        self._requests: dict[object, tuple[int, Callable[[], object]]] = {}
        self._stop = False
        self._thread: threading.Thread | None = None
        _watchers.add(self)

    def request(self, key: object, token: int, callback: Callable[[], object]) -> None:
        """Call ``callback()`` (from the watcher thread) once the word is no longer ``token``."""
        with self._cond:
            if self._stop:
                raise ValueError(f"{self._what} is closed")
            self._requests[key] = (token, callback)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"procwire async watcher: {self._what}", daemon=True)
                self._thread.start()
            self._cond.notify()

    def cancel(self, key: object) -> None:
        with self._cond:
            self._requests.pop(key, None)

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._requests and not self._stop:
                        self._cond.wait()
                    if self._stop:
                        return
                    current = self._token()
                    fire = [k for k, (t, _) in self._requests.items() if t != current]
                    callbacks = [self._requests.pop(k)[1] for k in fire]
                    pending = bool(self._requests)
                for cb in callbacks:
                    cb()
                if pending and not callbacks:
                    self._wait_change(current)
        except (ValueError, OSError):
            # Closed under us: wake every waiter, whose retry raises the error.
            with self._cond:
                callbacks = [cb for _, cb in self._requests.values()]
                self._requests.clear()
            for cb in callbacks:
                cb()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        _stop(thread, self._kick)

    def _forget_after_fork(self) -> None:
        self._thread = None
        self._requests.clear()
        self._cond = threading.Condition(threading.Lock())

    async def wait_moved(self, token: int, timeout: float | None) -> bool:
        """Wait until the word is no longer ``token``; False if ``timeout`` passed first."""
        import asyncio

        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(_resolve, fut)

        key = object()
        self.request(key, token, wake)
        try:
            if timeout is None:
                await fut
            else:
                await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self.cancel(key)


class FlagWatcher:
    """Calls back once a blocking ``wait(slice)`` returns True: ``Event.wait_async``.

    One thread per object and process, alive only while a coroutine waits:
    it sleeps in the object's native ``wait`` (futex, GIL released), so
    ``set()`` from any process wakes it at once; the slices only let it notice
    that the last waiter was cancelled (it then exits) or that the object was
    closed.
    """

    SLICE = 0.1

    def __init__(self, what: str, wait: Callable[[float], bool]) -> None:
        self._what, self._wait = what, wait
        self._lock = threading.Lock()
        self._waiters: dict[object, Callable[[bool], object]] = {}
        self._thread: threading.Thread | None = None
        self._stop = False
        _watchers.add(self)

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stop or not self._waiters:
                    self._thread = None
                    return
            try:
                fired = self._wait(self.SLICE)
            except (ValueError, OSError):
                fired = True  # closed: every waiter's retry raises the error
            if fired:
                with self._lock:
                    callbacks = list(self._waiters.values())
                    self._waiters.clear()
                for cb in callbacks:
                    cb(True)

    async def wait(self, timeout: float | None) -> bool:
        """True once the flag is seen set, False if ``timeout`` passed first."""
        import asyncio

        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        key = object()
        with self._lock:
            if self._stop:
                raise ValueError(f"{self._what} is closed")
            self._waiters[key] = lambda _: loop.call_soon_threadsafe(_resolve, fut)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"procwire async watcher: {self._what}", daemon=True)
                self._thread.start()
        try:
            if timeout is None:
                await fut
            else:
                await asyncio.wait_for(fut, max(0.0, timeout))
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters.pop(key, None)

    def close(self) -> None:
        with self._lock:
            self._stop = True
            thread = self._thread
        if thread is not None:
            thread.join()

    def _forget_after_fork(self) -> None:
        self._thread = None
        self._waiters.clear()
        self._lock = threading.Lock()


class OrderedSender:
    """Sends an object's messages from a thread, in order: ``send_async``'s long messages.

    ``await send(data)`` queues ``data`` for ``send_bytes`` in a thread of this
    object (started when needed, ended when nothing is queued) and returns once
    it is sent; the send's exception is raised in the coroutine. Cancelled
    before its turn, a message is not sent; cancelled once its sending began, it
    is still sent whole (pieces already written cannot be recalled).
    """

    def __init__(self, what: str, send_bytes: Callable[[bytes], object]) -> None:
        self._what, self._send_bytes = what, send_bytes
        self._lock = threading.Lock()
        self._queue: collections.deque[_Outgoing] = collections.deque()
        self._thread: threading.Thread | None = None
        self._closed = False
        _watchers.add(self)

    @property
    def busy(self) -> bool:
        """True while a message is queued or being sent: later ones must queue behind it."""
        return self._thread is not None

    async def send(self, data: bytes) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        item = _Outgoing(data, loop, loop.create_future())
        with self._lock:
            if self._closed:
                raise OSError("handle is closed")
            self._queue.append(item)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"procwire async sender: {self._what}", daemon=True)
                self._thread.start()
        try:
            await item.fut
        except asyncio.CancelledError:
            with self._lock:
                if item in self._queue:
                    self._queue.remove(item)   # not begun: nothing sent
            raise

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._thread = None
                    return
                item = self._queue.popleft()
            error: BaseException | None = None
            try:
                self._send_bytes(item.data)
            except BaseException as e:  # the coroutine's to raise
                error = e
            item.settle(error)

    def close(self) -> None:
        """After the object's close: wait for a send in progress to fail, fail the queued ones."""
        with self._lock:
            self._closed = True
            thread = self._thread
            queued = list(self._queue)
            self._queue.clear()
        for item in queued:
            item.settle(OSError("handle is closed"))
        if thread is not None and thread is not threading.current_thread():
            thread.join()  # its send_bytes sees the close within one of its waits' slices

    def _forget_after_fork(self) -> None:
        self._thread = None
        self._queue.clear()
        self._lock = threading.Lock()


class _Outgoing:
    __slots__ = ("data", "fut", "loop")

    def __init__(self, data: bytes, loop: asyncio.AbstractEventLoop,
                 fut: asyncio.Future[None]) -> None:
        self.data, self.loop, self.fut = data, loop, fut

    def settle(self, error: BaseException | None) -> None:
        try:
            self.loop.call_soon_threadsafe(_settle, self.fut, error)
        except RuntimeError:
            pass  # the loop is closed: nobody awaits it


def _settle(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


def _resolve(fut: asyncio.Future[None]) -> None:
    _settle(fut, None)


# ------------------------------------------------------------- add_reader

# Per descriptor and loop, the futures of the coroutines waiting there: one
# reader callback serves them all (add_reader keeps one callback per fd).
_readers: dict[tuple[int, asyncio.AbstractEventLoop], set[asyncio.Future[None]]] = {}


def _forget_fd(fd: int) -> None:
    """A descriptor is about to close: wake its waiters (their retry raises) and drop it."""
    for key in [k for k in _readers if k[0] == fd]:
        loop = key[1]
        futures = _readers.pop(key)
        try:
            loop.call_soon_threadsafe(_drop_reader, loop, fd, futures)
        except RuntimeError:
            pass  # that loop is closed


def _drop_reader(loop: asyncio.AbstractEventLoop, fd: int,
                 futures: set[asyncio.Future[None]]) -> None:
    loop.remove_reader(fd)
    for fut in futures:
        _resolve(fut)


def _on_readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    # Level-triggered: stop watching until someone waits again, else the loop
    # would call us on every iteration while the waiters run.
    futures = _readers.pop((fd, loop), set())
    loop.remove_reader(fd)
    for fut in futures:
        _resolve(fut)


async def wait_readable(fd: int, deadline: float | None) -> bool:
    """Wait until ``fd`` is readable; False once ``deadline`` (monotonic) passes."""
    import asyncio

    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    key = (fd, loop)
    waiters = _readers.get(key)
    if waiters is None:
        waiters = _readers[key] = set()
        loop.add_reader(fd, _on_readable, loop, fd)
    waiters.add(fut)
    try:
        if deadline is None:
            await fut
        else:
            await asyncio.wait_for(fut, max(0.0, deadline - time.monotonic()))
        return True
    except TimeoutError:
        return False
    finally:
        waiters = _readers.get(key)
        if waiters is not None:
            waiters.discard(fut)
            if not waiters:
                del _readers[key]
                loop.remove_reader(fd)


async def recv_async(conn: Any, timeout: float | None) -> Any:
    """``conn.recv()`` once ``conn.poll()`` says a message (or the peer's end) is there.

    For connections whose ``fileno()`` is readable exactly then: procwire's
    Pipe ends and the socket connections of procwire.connection.
    """
    deadline = deadline_of(timeout)
    fd = conn.fileno()
    while not conn.poll(0):
        if not await wait_readable(fd, deadline) and not conn.poll(0):
            raise TimeoutError("no message arrived before the timeout")
    return conn.recv()


def deadline_of(timeout: float | None) -> float | None:
    """A monotonic deadline, with multiprocessing's rule that a negative timeout is 0."""
    if timeout is None:
        return None
    return time.monotonic() + max(0.0, float(timeout))


def left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
