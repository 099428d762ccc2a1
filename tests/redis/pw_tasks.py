"""Task functions for the Redis Pool tests: importable by the pool's worker
processes and by `procwire worker --path tests/redis` (as spawn requires)."""
import os
import time


def square(x):
    return x * x


def boom(x):
    raise ValueError(f"boom {x}")


def whoami(_):
    return os.getpid()


def nap(seconds):
    time.sleep(seconds)
    return seconds


def tagged(x, seconds=0.0):
    """(x, pid): a chaos test's evidence of who ran which task."""
    if seconds:
        time.sleep(seconds)
    return (x, os.getpid())


def write_file_and_block(path, seconds):
    """Announce 'started' in a file, then take `seconds` (a task to kill mid-run)."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return os.getpid()


def tagged_slow(x):
    return tagged(x, 0.02)


def boom_if_odd(x):
    if x % 2:
        raise ValueError(f"boom {x}")
    return x
