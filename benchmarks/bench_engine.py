"""Engine benchmark: procwire's Redis context against raw redis-py, same patterns.

    pip install '.[redis,bench]'          # and Debian's redis-server
    python benchmarks/bench_engine.py                 # full run, 3 interleaved repeats
    python benchmarks/bench_engine.py --quick --json engine.json

Each case starts its own redis-server on a free loopback port (or uses
PROCWIRE_BENCH_REDIS=redis://...). The workloads live in
procwire/bench/engine.py and are the ones `procwire bench --suite engine` runs.
"""
import sys

from procwire.cli import main

if __name__ == "__main__":
    main(["bench", "--suite", "engine", *sys.argv[1:]])
