"""套接字 -- a Unix-domain socket exchange, with procwire.connection.

A socket is the most general of the lesson's channels: two-way, between
any two processes -- on one machine or, with TCP, across the network. A
Unix-domain socket (``AF_UNIX``) stays on this machine and is named by a
file of type ``s``. The server ``bind``s that name, ``listen``s and
``accept``s a connection; the client ``connect``s to the same name; then
both send and receive.

``procwire.connection``'s ``Listener`` and ``Client`` (the twins of
``multiprocessing.connection``'s) make those calls: ``Listener(path)`` binds
and listens, ``accept()`` accepts, ``Client(path)`` connects. A stream socket
carries bytes, not messages -- one ``recv`` may return part of a ``send``, or
two of them -- so the connection they return puts each message's length in
front of it: ``send()`` and ``recv()`` keep message boundaries (and pickle
Python objects).

With an ``authkey`` both sides first prove that they know the key (an HMAC
challenge, multiprocessing's). Two procwire ends that then find themselves on
one machine, run by one user, move to a shared-memory pipe: the same API,
no system call per message. Across machines it stays a socket.
"""
from __future__ import annotations

import os
import stat
import tempfile

from procwire.connection import Client, Connection, Listener
from procwire.lessons._common import exit_status, fork, say

TIMEOUT = 30  # seconds: a bound for a lost peer, not a pace


def kind(conn: object) -> str:
    return "a shared-memory pipe" if isinstance(conn, Connection) else "the Unix socket"


def client(path: str, authkey: bytes | None) -> int:
    with Client(path, authkey=authkey, timeout=TIMEOUT) as conn:
        conn.send("你好, server")
        reply = conn.recv()
        say(f"  client {os.getpid()}: the server answered {reply!r} (over {kind(conn)})")
    return 0


def serve_one(listener: Listener) -> None:
    with listener.accept(timeout=TIMEOUT) as conn:  # blocks until a client connects
        request = conn.recv()
        say(f"  server {os.getpid()}: received {request!r} (over {kind(conn)})")
        conn.send(f"{request.upper()} -- got {len(request)} characters")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="procwire-socket-") as tmp:
        path = os.path.join(tmp, "server.sock")
        for authkey in (None, b"the lesson's key"):
            with Listener(path, authkey=authkey) as listener:  # bind + listen: the file appears
                say(f"server {os.getpid()} listening on {path}"
                    + (" with an authkey" if authkey else ""))
                say(f"  its type, as ls -l shows it: {stat.filemode(os.stat(path).st_mode)}")
                pid = fork(lambda: client(path, authkey))
                serve_one(listener)
                exit_status(pid)
            # close() removed the socket file: it would outlive its socket otherwise.
            say(f"socket closed, file removed: {not os.path.exists(path)}")


if __name__ == "__main__":
    main()
