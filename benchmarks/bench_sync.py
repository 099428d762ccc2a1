"""Sync benchmark: procwire's Lock, Event and Value vs multiprocessing, with a
bare threading floor.

    python benchmarks/bench_sync.py                 # full run, 3 interleaved repeats
    python benchmarks/bench_sync.py --quick --json sync.json

The workloads live in procwire/bench/sync.py and are the same ones
`procwire bench --suite sync` runs; this script only selects the sync suite.
"""
import sys

from procwire.cli import main

if __name__ == "__main__":
    main(["bench", "--suite", "sync", *sys.argv[1:]])
