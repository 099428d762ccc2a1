"""A real redis-server for the Redis tests (Debian's package; no fake, no mock).

Test modules import the fixture: ``from pwredis import redis_server``. (A
second conftest.py would shadow the root one's module name.)

``redis_server`` starts ``redis-server`` on a free loopback port in a
temporary directory, with persistence off unless the test asks for
appendonly (``@pytest.mark.redis_appendonly``), and stops it afterwards, so
no server outlives its test. ``restart()`` stops and starts it on the same
port and directory (the data survives only with appendonly).

``RedisServer(args=[...], tls=True)`` starts one with extra options (ACL
users) or TLS only (certificates made by ``openssl`` in its directory: a CA,
and a server certificate for 127.0.0.1); use it as a context manager.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import pytest

REDIS_SERVER = shutil.which("redis-server")


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free_port() -> int:
    """A free port below the kernel's ephemeral range.

    A port the kernel hands out (bind to 0) is one it also gives to outgoing
    connections: while a test restarts its server, any connection on the
    machine (other suites run beside this one) could take that port as its
    local end, and the server could not listen on it again. Below the range
    only an explicit bind can take it.
    """
    low = min(_ephemeral_low(), 32768)
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, appendonly: bool = False, args: list[str] | None = None,
                 tls: bool = False) -> None:
        if REDIS_SERVER is None:
            pytest.fail("redis-server is not installed: apt-get install redis-server "
                        "(.ci/run does it)")
        self.dir = tempfile.mkdtemp(prefix="procwire-redis-")
        self.port = _free_port()
        self.appendonly = appendonly
        self.args = list(args or [])
        self.tls = tls
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        if tls:
            self._make_certificates()
            self.ca = os.path.join(self.dir, "ca.pem")
            self.url = f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.ca}"
            self.args += ["--port", "0", "--tls-port", str(self.port),
                          "--tls-cert-file", os.path.join(self.dir, "server.pem"),
                          "--tls-key-file", os.path.join(self.dir, "server.key"),
                          "--tls-ca-cert-file", self.ca, "--tls-auth-clients", "no"]
        self.start()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            import procwire.redis._engine as engine
            engine.close_all()
        except ImportError:
            pass
        self.cleanup()

    def _make_certificates(self) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            self.cleanup()
            pytest.skip("the TLS test makes its certificates with openssl, not installed")

        def run(*args: str) -> None:
            subprocess.run([openssl, *args], cwd=self.dir, check=True, capture_output=True,
                           timeout=60)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=procwire test CA")
        run("req", *ec, "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")
        with open(os.path.join(self.dir, "san.ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1\n")
        run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext")

    def _answers_ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw:
            s = raw
            if self.tls:
                ctx = ssl.create_default_context(cafile=self.ca)
                s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            s.sendall(b"PING\r\n")
            # NOAUTH: up, with the default user switched off (an ACL test)
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))

    def start(self) -> None:
        port = [] if self.tls else ["--port", str(self.port)]
        args = [REDIS_SERVER, *port, "--bind", "127.0.0.1",
                "--dir", self.dir, "--save", "", "--daemonize", "no",
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "always", "--logfile", os.path.join(self.dir, "log"),
                *self.args]
        log = os.path.join(self.dir, "log")
        ready = "Ready to accept connections"
        try:
            with open(log) as f:
                readies = f.read().count(ready)  # a restart appends to the same log
        except FileNotFoundError:
            readies = 0
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:  # the server is up when it answers PING and says it is ready
            try:
                # (its own log: a PONG alone could come from another server on
                # this port, if this one failed to listen)
                if self._answers_ping() and self.proc.poll() is None:
                    with open(log) as f:
                        if f.read().count(ready) > readies:
                            return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                with open(log) as f:
                    tail = f.read()[-2000:]
                self.stop()
                pytest.fail(f"redis-server did not start on port {self.port}: {tail}")
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
