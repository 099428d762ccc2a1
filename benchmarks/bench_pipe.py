"""Pipe benchmark: procwire.Pipe vs multiprocessing.Pipe, a raw os.pipe and pyzmq PAIR (ipc://).

    pip install '.[bench]'
    python benchmarks/bench_pipe.py                 # full run, 3 interleaved repeats
    python benchmarks/bench_pipe.py --quick --json pipe.json

The workloads live in procwire/bench/pipe.py and are the same ones
`procwire bench --suite pipe` runs; this script only selects the pipe suite.
"""
import sys

from procwire.cli import main

if __name__ == "__main__":
    main(["bench", "--suite", "pipe", *sys.argv[1:]])
