"""Process pool benchmark: procwire.Pool vs multiprocessing.Pool, ProcessPoolExecutor and loky.

    pip install '.[bench]'
    python benchmarks/bench_pool.py                 # full run, 3 interleaved repeats
    python benchmarks/bench_pool.py --quick --json pool.json

The workloads live in procwire/bench/pool.py and are the same ones
`procwire bench --suite pool` runs; this script only selects the pool suite.
"""
import sys

from procwire.cli import main

if __name__ == "__main__":
    main(["bench", "--suite", "pool", *sys.argv[1:]])
