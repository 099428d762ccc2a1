"""Queue benchmark: procwire.Queue vs multiprocessing.Queue, faster-fifo and pyzmq.

    pip install '.[bench]'
    python benchmarks/bench_queue.py                 # full run, 3 interleaved repeats
    python benchmarks/bench_queue.py --quick --json queue.json

The workloads live in procwire/bench/queues.py and are the same ones
`procwire bench` runs; this script only selects the queue suite.
"""
import sys

from procwire.cli import main

if __name__ == "__main__":
    main(["bench", "--suite", "queue", *sys.argv[1:]])
