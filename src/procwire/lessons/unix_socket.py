"""套接字 -- a Unix-domain socket exchange.

A socket is the most general of the lesson's channels: two-way, between
any two processes -- on one machine or, with TCP, across the network. A
Unix-domain socket (``AF_UNIX``) stays on this machine and is named by a
file of type ``s``. The server ``bind``s that name, ``listen``s and
``accept``s a connection; the client ``connect``s to the same name; then
both ``send`` and ``recv`` bytes.

A stream socket carries bytes, not messages: one ``recv`` may return part
of a ``send``, or two of them. Here each side marks the end of what it
says by shutting down its sending half, so the other reads until EOF.
"""
from __future__ import annotations

import os
import socket
import stat
import tempfile

from procwire.lessons._common import exit_status, fork, say


def read_all(conn: socket.socket) -> bytes:
    """Read until the other side shuts down its sending half (EOF)."""
    chunks = []
    while chunk := conn.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def client(path: str) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        conn.sendall("你好, server".encode())
        conn.shutdown(socket.SHUT_WR)  # "I have finished talking"
        reply = read_all(conn).decode()
    say(f"  client {os.getpid()}: the server answered {reply!r}")
    return 0


def serve_one(server: socket.socket) -> None:
    conn, _ = server.accept()  # blocks until a client connects
    with conn:
        request = read_all(conn).decode()
        say(f"  server {os.getpid()}: received {request!r}")
        conn.sendall(f"{request.upper()} -- got {len(request)} characters".encode())
        conn.shutdown(socket.SHUT_WR)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="procwire-socket-") as tmp:
        path = os.path.join(tmp, "server.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(path)  # creates the socket file
            server.listen(1)
            say(f"server {os.getpid()} listening on {path}")
            say(f"  its type, as ls -l shows it: {stat.filemode(os.stat(path).st_mode)}")
            pid = fork(lambda: client(path))
            serve_one(server)
            exit_status(pid)
        os.unlink(path)  # a socket file outlives its socket: remove it
    say(f"socket closed, file removed: {not os.path.exists(path)}")


if __name__ == "__main__":
    main()
