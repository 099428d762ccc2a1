"""A real redis-server for the Redis tests (Debian's package; no fake, no mock).

Test modules import the fixture: ``from pwredis import redis_server``. (A
second conftest.py would shadow the root one's module name.)

``redis_server`` starts ``redis-server`` on a free loopback port in a
temporary directory, with persistence off unless the test asks for
appendonly (``@pytest.mark.redis_appendonly``), and stops it afterwards, so
no server outlives its test. ``restart()`` stops and starts it on the same
port and directory (the data survives only with appendonly).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

REDIS_SERVER = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, appendonly: bool = False) -> None:
        if REDIS_SERVER is None:
            pytest.fail("redis-server is not installed: apt-get install redis-server "
                        "(.ci/run does it)")
        self.dir = tempfile.mkdtemp(prefix="procwire-redis-")
        self.port = _free_port()
        self.appendonly = appendonly
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.dir, "--save", "", "--daemonize", "no",
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "always", "--logfile", os.path.join(self.dir, "log")]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:  # the server is up when it answers PING
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                with open(os.path.join(self.dir, "log")) as f:
                    log = f.read()[-2000:]
                self.stop()
                pytest.fail(f"redis-server did not start on port {self.port}: {log}")
            time.sleep(0.02)  # waiting for an external server to listen: nothing to block on

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.proc = None

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis_server(request):
    server = RedisServer(appendonly=request.node.get_closest_marker("redis_appendonly")
                         is not None)
    yield server
    try:
        import procwire.redis._engine as engine
        engine.close_all()  # this process's connections, so the fd check passes
    except ImportError:
        pass
    server.cleanup()
