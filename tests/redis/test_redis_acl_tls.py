"""Redis with an ACL user and password, and Redis over TLS, as README documents
them: the objects and the Pool work with the ACL README gives, credentials
that are refused or lack permissions raise EngineError without showing the
password, and a rediss:// URL with the CA's certificate works end to end."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pwredis import RedisServer

import procwire.redis
from procwire.redis import EngineError

JOIN = 60
KEY = b"acl key"
HERE = os.path.dirname(os.path.abspath(__file__))
# README's ACL, verbatim; the default user is switched off
# (one argv word per ACL rule: redis-server quotes a word that has spaces)
ACL = ["--user", *["default", "off"],
       "--user", *["pw", "on", ">s3cret", "~procwire:*", "&procwire:*", "+@all", "-@admin",
                   "-@dangerous"],
       "--user", *["other", "on", ">0ther", "~elsewhere:*", "+@all"]]


def _exercise(ctx):
    """Every kind of call the context makes: scripts, blocking reads, streams,
    pub/sub, keyspace scans, and a Pool with a local worker."""
    from pw_tasks import square
    q = ctx.Queue(name="q", maxsize=10)
    q.put_many(range(5))
    assert q.get_many(timeout=JOIN) == list(range(5))
    jq = ctx.JoinableQueue(name="jq")
    jq.put("job")
    assert jq.get(timeout=JOIN) == "job"
    jq.task_done()
    assert jq.join(timeout=JOIN)
    lock = ctx.Lock(name="lock")
    with lock:
        assert lock.locked()
    ev = ctx.Event(name="ev")
    ev.set()
    assert ev.wait(JOIN)
    v = ctx.Value("i", 3, name="v")
    assert v.value == 3
    with ctx.Pool(1, name="pool") as pool:
        assert pool.map(square, range(10)) == [x * x for x in range(10)]
        pool.close()
        pool.join(JOIN)
    q.unlink()


def test_acl_user_with_readme_permissions_runs_everything():
    with RedisServer(args=ACL) as server:
        url = server.url.replace("redis://", "redis://pw:s3cret@")
        _exercise(procwire.redis.get_context(url, authkey=KEY))
        out = subprocess.run([sys.executable, "-m", "procwire", "ls", url, "--json"],
                             capture_output=True, text=True, timeout=JOIN,
                             env=dict(os.environ, PROCWIRE_AUTHKEY=KEY.decode()))
        assert out.returncode == 0, out.stderr
        assert '"pool"' in out.stdout and "s3cret" not in out.stdout


def test_acl_refused_credentials_and_missing_permissions_raise_engine_error():
    with RedisServer(args=ACL) as server:
        wrong = server.url.replace("redis://", "redis://pw:wrong-password@")
        with pytest.raises(EngineError, match="refused the credentials") as info:
            procwire.redis.get_context(wrong, authkey=KEY).Queue(name="q")
        assert "wrong-password" not in str(info.value)
        nobody = server.url  # the default user is off
        with pytest.raises(EngineError, match=r"NOAUTH|refused"):
            procwire.redis.get_context(nobody, authkey=KEY).Queue(name="q")
        # a user whose keys are elsewhere: NOPERM, with what to check
        other = server.url.replace("redis://", "redis://other:0ther@")
        with pytest.raises(EngineError, match="permissions on keys procwire") as info:
            procwire.redis.get_context(other, authkey=KEY).Queue(name="q")
        assert "0ther" not in str(info.value)


def test_tls_rediss_url_with_the_ca_certificate():
    with RedisServer(tls=True, args=ACL) as server:
        url = server.url.replace("rediss://", "rediss://pw:s3cret@")
        _exercise(procwire.redis.get_context(url, authkey=KEY))
        # the remote worker program over TLS too
        env = dict(os.environ, PROCWIRE_AUTHKEY=KEY.decode())
        worker = subprocess.Popen(
            [sys.executable, "-m", "procwire", "worker", url, "--pool", "remote",
             "--processes", "1", "--path", HERE], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            from pw_tasks import square
            ctx = procwire.redis.get_context(url, authkey=KEY)
            with ctx.Pool(0, name="remote") as pool:
                assert pool.map(square, range(20), chunksize=1) == [x * x for x in range(20)]
        finally:
            worker.terminate()
            _out, err = worker.communicate(timeout=JOIN)
        assert worker.returncode == 0, err
        # without the CA, the server's certificate is not trusted: a clear error
        plain = url.split("?")[0]
        with pytest.raises(EngineError, match=r"127\.0\.0\.1"):
            procwire.redis.get_context(plain, authkey=KEY, retry_for=1.0).Queue(name="x")
