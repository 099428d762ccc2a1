"""Floors: what this machine itself costs, measured in plain C (no Python, no procwire).

    python benchmarks/bench_floors.py               # every floor, about 20 s
    python benchmarks/bench_floors.py lock xcopy    # only those named

Compiles benchmarks/floors/floors.c with the system's C compiler into a
temporary directory and runs it; see that file for what each floor measures
(futex wake-up, cache-line transfer, contended locks, memcpy/memset, one copy
in and one out across CPUs, page faults). These are the limits the README's
performance section quotes next to procwire's figures.
"""
import os
import shutil
import subprocess
import sys
import tempfile

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "floors", "floors.c")

if __name__ == "__main__":
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        sys.exit("bench_floors: no C compiler (set CC)")
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "floors")
        subprocess.run([cc, "-O2", "-o", exe, SOURCE, "-lpthread"], check=True)
        sys.exit(subprocess.run([exe, *sys.argv[1:]]).returncode)
