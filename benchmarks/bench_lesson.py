"""The lesson's table, measured: pipe, queue, shared memory, socket and signals,
the standard library against procwire.

    python benchmarks/bench_lesson.py                 # full run, 3 interleaved repeats
    python benchmarks/bench_lesson.py --quick --json lesson.json --plot lesson.png

The workloads live in procwire/bench/lesson.py (the queue cells reuse
procwire/bench/queues.py) and are the same ones `procwire bench` runs; this
script only selects the lesson suite.
"""
import sys

from procwire.cli import main

if __name__ == "__main__":
    main(["bench", "--suite", "lesson", *sys.argv[1:]])
