"""linux 文件类型 -- the seven file types, b c d - l s p.

The first letter of ``ls -l`` is the file's type:

    b  block device      c  character device    d  directory (目录)
    -  regular file (普通文件)    l  symbolic link (链接)
    s  socket (套接字)    p  named pipe, FIFO (管道)

Two of them are doors between processes: a FIFO (``p``) is a pipe with a
name in the file system, so unrelated processes can open it; a Unix socket
(``s``) is the name a server listens on. This lesson makes one of each in a
temporary directory (the two devices are borrowed from /dev), sends a line
through the FIFO from a child process, and removes everything after.
"""
from __future__ import annotations

import os
import socket
import stat
import tempfile

from procwire.lessons._common import exit_status, fork, say

MEANING = {
    "b": "block device",
    "c": "character device",
    "d": "directory (目录)",
    "-": "regular file (普通文件)",
    "l": "symbolic link (链接)",
    "s": "socket (套接字)",
    "p": "named pipe / FIFO (管道)",
}


def ls_line(path: str, shown_as: str) -> None:
    """Print a path the way ``ls -l`` starts its line: type and permissions."""
    mode = stat.filemode(os.lstat(path).st_mode)  # lstat: a link itself, not its target
    say(f"  {mode}  {shown_as:<16} {MEANING[mode[0]]}")


def first_block_device() -> str | None:
    for entry in sorted(os.scandir("/dev"), key=lambda e: e.name):
        if stat.S_ISBLK(entry.stat(follow_symlinks=False).st_mode):
            return entry.path
    return None


def fifo_exchange(fifo: str) -> None:
    """A child writes a line into the FIFO; we read it out."""

    def writer() -> int:
        with open(fifo, "w") as f:  # blocks until a reader opens the other end
            f.write("hello through the FIFO\n")
        return 0

    pid = fork(writer)
    with open(fifo) as f:  # blocks until the writer opens its end
        line = f.readline().strip()
    say(f"  read from {os.path.basename(fifo)} (written by child {pid}): {line!r}")
    exit_status(pid)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="procwire-filetypes-") as tmp:
        regular = os.path.join(tmp, "notes.txt")
        with open(regular, "w") as f:
            f.write("a regular file\n")
        link = os.path.join(tmp, "link-to-notes")
        os.symlink(regular, link)
        directory = os.path.join(tmp, "folder")
        os.mkdir(directory)
        fifo = os.path.join(tmp, "fifo")
        os.mkfifo(fifo)
        sock_path = os.path.join(tmp, "server.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(sock_path)  # binding a Unix socket creates the file

        say(f"In {tmp}:")
        try:
            block = first_block_device()
            if block is None:
                say("  b...   (no block device is visible in /dev here)")
            else:
                ls_line(block, block)
            ls_line("/dev/null", "/dev/null")
            for path in (directory, regular, link, sock_path, fifo):
                ls_line(path, os.path.basename(path))
            say("\nThe FIFO at work:")
            fifo_exchange(fifo)
        finally:
            server.close()
    say(f"\nRemoved {tmp} and everything in it: {not os.path.exists(tmp)}")


if __name__ == "__main__":
    main()
