"""The connection to one Redis database: redis-py's connection pool, retries,
signed payloads, the lease keeper and the registry of named objects.

One :class:`Engine` per (URL, authkey) per process. After ``fork`` the child
gets a fresh one (redis-py's pool notices the new pid and reconnects; the
keeper's leases belong to the parent and are forgotten).

Keys: every object ``NAME`` lives under ``procwire:NAME:...``; the hash
``procwire:objects`` maps each name to its kind, for ``procwire ls``.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import re
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from redis.backoff import NoBackoff
from redis.retry import Retry

import redis
from procwire.redis.errors import BadSignatureWarning, EngineError

T = TypeVar("T")

PREFIX = "procwire:"
REGISTRY = PREFIX + "objects"
# Longest wait of one blocking server command: Ctrl-C is delivered at once
# anyway (the socket read is interrupted), but slices bound how long a call
# can sit on a connection that died silently, and let waiters re-check leases.
SLICE = 2.0
SOCKET_TIMEOUT = SLICE + 8.0
DEFAULT_LEASE = 10.0
DEFAULT_RETRY_FOR = 10.0
SIG = 32  # bytes of the MAC in a signed payload
# A payload is b"S" + MAC(authkey, scope NUL data) + data with an authkey,
# b"U" + data without one; data is b"b" + raw bytes or b"p" + a pickle.
SIGNED, UNSIGNED = b"S", b"U"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$")


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"invalid Redis object name {name!r}: use 1-200 characters from "
                         "letters, digits, '_', '.', '-' (not starting with '.' or '-')")
    return name


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def check_url(url: str) -> str:
    if not isinstance(url, str):
        raise TypeError(f"a Redis URL must be a str, not {type(url).__name__}")
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss"):
        raise ValueError(f"not a Redis URL: {redact(url)!r}; use redis://host:port/db or "
                         "rediss://host:port/db (TLS)")
    return url


def _authkey(authkey: bytes | str | None) -> bytes | None:
    if authkey is None:
        env = os.environ.get("PROCWIRE_AUTHKEY")
        return env.encode() if env else None
    if isinstance(authkey, str):
        return authkey.encode()
    if isinstance(authkey, (bytes, bytearray)):
        return bytes(authkey)
    raise TypeError(f"authkey must be bytes or str, not {type(authkey).__name__}")


class Engine:
    def __init__(self, url: str, authkey: bytes | None) -> None:
        self.url = url
        self.display = redact(url)
        self.authkey = authkey
        self._mac_key = None if authkey is None else hashlib.blake2b(
            authkey, digest_size=32, person=b"procwire.redis").digest()
        self._macs: dict[str, tuple[Any, Any]] = {}
        self.pid = os.getpid()
        # No retries inside redis-py: a retried write could be applied twice.
        # Engine.call retries what is safe to retry.
        self.pool = redis.ConnectionPool.from_url(
            url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=5,
            socket_keepalive=True, retry=Retry(NoBackoff(), 0))
        self.client = redis.Redis(connection_pool=self.pool)
        self._scripts: dict[str, Script] = {}
        self.blmpop = True  # the server has BLMPOP (Redis 7); cleared when it has not
        self.keeper = Keeper(self)
        self.rejected = 0  # messages refused for a bad signature, in this process
        self._registered: set[tuple[str, str]] = set()
        self.closed = False

    # -- scripts and calls --------------------------------------------------------

    def script(self, source: str) -> Script:
        s = self._scripts.get(source)
        if s is None:
            s = self._scripts[source] = Script(self.client, source)
        return s

    def call(self, fn: Callable[[redis.Redis], T], *, deadline: float | None = None,
             idempotent: bool = True, what: str = "call") -> T:
        """Run ``fn(client)``; retry connection failures while Redis is away.

        Retries last until the call's deadline or ``retry_for`` seconds,
        whichever comes first, then raise :class:`EngineError` naming the URL.
        A non-idempotent call (a put) is retried only when it failed while
        connecting, when Redis cannot have applied it.
        """
        if self.closed:
            raise ValueError(f"the Redis context for {self.display} is closed")
        first_failure = None
        pause = 0.05
        while True:
            try:
                return fn(self.client)
            except redis.AuthenticationError as e:
                # (a ConnectionError subclass in redis-py: retrying cannot help)
                raise EngineError(f"Redis at {self.display} refused the credentials: {e}") from e
            except (redis.ConnectionError, redis.TimeoutError) as e:
                now = time.monotonic()
                if first_failure is None:
                    first_failure = now
                if not idempotent and not _while_connecting(e):
                    raise EngineError(
                        f"Redis at {self.display} failed during {what}: {e}; it may or may not "
                        "have been applied") from e
                limit = first_failure + retry_for()
                if deadline is not None:
                    limit = min(limit, deadline)
                if now + pause > limit:
                    raise EngineError(
                        f"Redis at {self.display} is unreachable ({e}); {what} gave up after "
                        f"{now - first_failure:.1f} s. Is redis-server running there, and "
                        "reachable from this machine?") from e
                time.sleep(pause)  # back-off before reconnecting, not a synchronisation
                pause = min(pause * 2, 1.0)
            except redis.ResponseError as e:
                if (isinstance(e, redis.exceptions.NoPermissionError)
                        or "NOPERM" in str(e) or "NOAUTH" in str(e)):
                    raise EngineError(f"Redis at {self.display}: {e} (check the ACL user's "
                                      "permissions on keys procwire:*)") from e
                raise

    # -- payloads -------------------------------------------------------------------
    #
    # The MAC is keyed BLAKE2b-256 (RFC 7693's keyed mode, which Python's hashlib
    # documents as a faster replacement for HMAC): four times cheaper than
    # HMAC-SHA256 on a short message here, and it is paid once per message on each
    # side. The key is derived from the authkey (any length); each scope (the key
    # of the list or stream) has its keyed state ready, copied per message.

    def _macs_of(self, scope: str) -> tuple[Any, Any]:
        """The keyed states for raw bytes and for pickles on ``scope`` (the kind
        byte is MACed as part of the state, so each message costs one update)."""
        m = self._macs.get(scope)
        if m is None:
            assert self._mac_key is not None
            states = []
            for kind in (b"b", b"p"):
                h = hashlib.blake2b(key=self._mac_key, digest_size=SIG)
                h.update(scope.encode() + b"\0" + kind)
                states.append(h)
            m = self._macs[scope] = (states[0], states[1])
        return m

    def dumps(self, obj: Any, scope: str) -> bytes:
        """``obj`` framed for Redis: raw bytes as they are, anything else pickled;
        signed under the authkey, or marked unsigned without one."""
        return self.dumps_many((obj,), scope)[0]

    def dumps_many(self, objs: Iterable[Any], scope: str) -> list[bytes]:
        """``[dumps(o, scope) for o in objs]``, with the lookups done once."""
        join, dumps = b"".join, pickle.dumps
        out: list[bytes] = []
        append = out.append
        if self._mac_key is None:
            for obj in objs:
                if type(obj) is bytes:
                    append(join((b"Ub", obj)))
                else:
                    append(join((b"Up", dumps(obj, protocol=5))))
            return out
        raw_state, pickle_state = self._macs_of(scope)
        raw_copy, pickle_copy = raw_state.copy, pickle_state.copy
        for obj in objs:
            if type(obj) is bytes:
                h = raw_copy()
                h.update(obj)
                append(join((b"S", h.digest(), b"b", obj)))
            else:
                body = dumps(obj, protocol=5)
                h = pickle_copy()
                h.update(body)
                append(join((b"S", h.digest(), b"p", body)))
        return out

    _BAD = object()

    def loads(self, blob: bytes, scope: str) -> Any:
        """The object, or Engine._BAD if it must be refused (counted, warned): with an
        authkey, a blob that is unsigned or whose signature does not verify; without
        one, a signed blob (its producer has a key this context lacks)."""
        return self.loads_many([blob], scope)[0]

    def loads_many(self, blobs: list[bytes], scope: str) -> list[Any]:
        """``[loads(b, scope) for b in blobs]``, with the lookups done once."""
        out: list[Any] = []
        append, unpickle = out.append, pickle.loads
        if self._mac_key is None:
            for blob in blobs:
                kind = blob[:2]
                if kind == b"Ub":
                    append(blob[2:])
                elif kind == b"Up":
                    append(unpickle(memoryview(blob)[2:]))
                else:
                    append(self._refuse(scope, "it is signed with an authkey and this context "
                                               "has none: give it the producers' authkey"))
            return out
        raw_state, pickle_state = self._macs_of(scope)
        raw_copy, pickle_copy = raw_state.copy, pickle_state.copy
        equal, body = hmac.compare_digest, 2 + SIG
        for blob in blobs:
            # (indexing bytes gives an int: no slice to allocate per message)
            if len(blob) >= body and blob[0] == 83:  # b"S"
                kind_byte = blob[1 + SIG]
                if kind_byte == 98:  # b"b"
                    h = raw_copy()
                    data = blob[body:]
                    h.update(data)
                    if equal(h.digest(), blob[1:1 + SIG]):
                        append(data)
                        continue
                elif kind_byte == 112:  # b"p"
                    h = pickle_copy()
                    view = memoryview(blob)[body:]
                    h.update(view)
                    if equal(h.digest(), blob[1:1 + SIG]):
                        append(unpickle(view))
                        continue
                append(self._refuse(scope, "its signature does not match this context's "
                                           "authkey"))
            else:
                append(self._refuse(scope, "it is not signed, and this context requires "
                                           "signatures (it has an authkey)"))
        return out

    def _refuse(self, scope: str, why: str) -> Any:
        self.rejected += 1
        warnings.warn(BadSignatureWarning(
            f"refused a message on {scope!r} at {self.display}: {why} (never unpickled)"),
            stacklevel=4)
        return Engine._BAD

    # -- registry -------------------------------------------------------------------

    def register(self, name: str, kind: str) -> None:
        """Record ``name`` as a ``kind``; a name already used by another kind is refused."""
        if (name, kind) in self._registered:
            return
        src = """
        local k = redis.call('HGET', KEYS[1], ARGV[1])
        if k and k ~= ARGV[2] then return k end
        if not k then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
        return ARGV[2]
        """
        got = self.call(lambda r: self.script(src)(keys=[REGISTRY], args=[name, kind]),
                        what=f"creating {kind} {name!r}")
        got = got.decode()
        if got != kind:
            raise ValueError(f"the name {name!r} at {self.display} is a {got}, not a {kind}; "
                             "choose another name")
        self._registered.add((name, kind))

    def unregister(self, name: str, keys: list[str]) -> None:
        self._registered = {x for x in self._registered if x[0] != name}

        def go(r: redis.Redis) -> None:
            pipe = r.pipeline()
            pipe.hdel(REGISTRY, name)
            if keys:
                pipe.delete(*keys)
            pipe.execute()
        self.call(go, what=f"unlinking {name!r}")

    # -- waiting on a channel ---------------------------------------------------------

    def wait_channel(self, channel: str, check: Callable[[], T | None],
                     deadline: float | None) -> T | None:
        """Return ``check()``'s first non-None value, re-checking on each message
        published on ``channel``; None at the deadline.

        The subscription is made before the first check, so a publish between
        the check and the wait is never missed. A lost connection re-subscribes
        (and re-checks) within the retry time.
        """
        while True:
            pubsub = None
            try:
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(channel)
                while True:
                    value = check()
                    if value is not None:
                        return value
                    remaining = SLICE if deadline is None else deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    pubsub.get_message(timeout=min(remaining, SLICE))
            except (redis.ConnectionError, redis.TimeoutError):
                # check() has its own retries; reaching here means the subscribe
                # or the wait lost its connection: go round with a new one.
                self.call(lambda r: r.ping(), deadline=deadline, what="waiting")
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        pass

    def publish(self, channel: str) -> None:
        self.call(lambda r: r.publish(channel, b"1"), what="publishing")

    def close(self) -> None:
        self.keeper.stop()
        self.closed = True
        self.pool.disconnect()


class Script:
    """A Lua script run by EVALSHA, loaded again when Redis answers NOSCRIPT (after
    a restart). redis-py's own Script does the same with more work per call (an
    import, a typing isinstance check, tuple copies): this runs on every put."""

    __slots__ = ("client", "sha", "source")

    def __init__(self, client: redis.Redis, source: str) -> None:
        self.client = client
        self.source = source
        # bytes: redis-py sends bytes as they are (a str or an int is converted
        # per call); keys given as bytes skip that too
        self.sha = hashlib.sha1(source.encode()).hexdigest().encode()

    def __call__(self, keys: list[Any], args: list[Any] | tuple[Any, ...] = ()) -> Any:
        numkeys = _NUMKEYS[len(keys)]
        try:
            return self.client.execute_command("EVALSHA", self.sha, numkeys, *keys, *args)
        except redis.exceptions.NoScriptError:
            self.client.execute_command("SCRIPT", "LOAD", self.source)
            return self.client.execute_command("EVALSHA", self.sha, numkeys, *keys, *args)


_NUMKEYS = [str(n).encode() for n in range(16)]


def _while_connecting(e: Exception) -> bool:
    # redis-py says "Error N connecting to host:port" when the connection
    # could not be made; then nothing was sent and a retry is safe.
    return "connecting to" in str(e) or isinstance(e.__cause__, ConnectionRefusedError)


_retry_for = DEFAULT_RETRY_FOR


def retry_for() -> float:
    return _retry_for


def set_retry_for(seconds: float) -> None:
    global _retry_for
    _retry_for = float(seconds)


class Keeper:
    """Renews this process's leases (lock holders, consumer heartbeats) every
    third of the shortest lease, on one daemon thread per engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.lock = threading.Lock()
        # id -> (kind, key, member, lease_ms, on_lost)
        self.leases: dict[int, tuple[str, str, str, int, Callable[[], None] | None]] = {}
        self.next_id = 0
        self.thread: threading.Thread | None = None
        self.wake = threading.Event()
        self.stopped = False

    def add(self, kind: str, key: str, member: str, lease: float,
            on_lost: Callable[[], None] | None = None) -> int:
        with self.lock:
            self.next_id += 1
            lid = self.next_id
            self.leases[lid] = (kind, key, member, max(1, int(lease * 1000)), on_lost)
            if self.thread is None or not self.thread.is_alive():
                self.stopped = False
                self.thread = threading.Thread(target=self._run, daemon=True,
                                               name=f"procwire-redis-keeper {self.engine.display}")
                self.thread.start()
            else:
                self.wake.set()
        return lid

    def remove(self, lid: int) -> None:
        with self.lock:
            self.leases.pop(lid, None)

    def stop(self) -> None:
        self.stopped = True
        self.wake.set()
        t = self.thread
        if t is not None and t is not threading.current_thread():
            t.join(SOCKET_TIMEOUT + 1)

    _RENEW = """
    -- KEYS[i]: a zset of holders or a heartbeat key; ARGV: kind, member, lease_ms triples
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local lost = {}
    for i = 1, #KEYS do
      local kind, member, ms = ARGV[3*i-2], ARGV[3*i-1], tonumber(ARGV[3*i])
      if kind == 'z' then
        if redis.call('ZADD', KEYS[i], 'XX', 'CH', now + ms, member) == 0
           and not redis.call('ZSCORE', KEYS[i], member) then
          lost[#lost + 1] = i
        end
      else
        redis.call('SET', KEYS[i], member, 'PX', ms)
      end
    end
    return lost
    """

    def _run(self) -> None:
        while not self.stopped:
            with self.lock:
                items = list(self.leases.items())
            period = min((x[1][3] for x in items), default=10_000) / 3000
            if items:
                keys, args = [], []
                for _, (kind, key, member, ms, _) in items:
                    keys.append(key)
                    args += [kind, member, ms]
                try:
                    lost = self.engine.script(self._RENEW)(keys=keys, args=args)
                except Exception:
                    lost = []
                for i in lost:
                    lid, (_, _, _, _, on_lost) = items[int(i) - 1]
                    with self.lock:
                        self.leases.pop(lid, None)
                    if on_lost is not None:
                        on_lost()
            self.wake.wait(max(period, 0.05))
            self.wake.clear()


_engines: dict[tuple[str, bytes | None], Engine] = {}
_engines_lock = threading.Lock()


def engine_for(url: str, authkey: bytes | None) -> Engine:
    key = (url, authkey)
    with _engines_lock:
        e = _engines.get(key)
        if e is None or e.closed:
            e = _engines[key] = Engine(url, authkey)
        return e


def close_all() -> None:
    with _engines_lock:
        engines = list(_engines.values())
        _engines.clear()
    for e in engines:
        e.close()


def _after_fork_in_child() -> None:
    # The parent's leases and threads are not the child's.
    global _engines_lock
    _engines_lock = threading.Lock()
    for e in list(_engines.values()):
        e.keeper = Keeper(e)
        e.pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


def new_name(kind: str) -> str:
    return f"{kind.lower()}-{uuid.uuid4().hex[:20]}"


def identity() -> str:
    """host:pid:random, unique per process (and per call)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

