"""进程池 -- a pool of worker processes.

Starting a process costs time and memory. When there are many small jobs,
start a few processes once -- a pool -- and hand them the jobs: each worker
takes a job, returns the result, and takes the next. ``Pool(n)`` starts n
workers; ``apply_async`` gives one job and calls back with its result;
``map`` splits a list across the workers and returns the results *in
order*. ``close()`` says "no more jobs" and ``join()`` waits until the
workers have finished and exited.
"""
from __future__ import annotations

import os
from multiprocessing import Pool

from procwire.lessons._common import say


def square(n: int) -> tuple[int, int]:
    """The job: return the result, and which worker did it."""
    return n * n, os.getpid()


def main() -> None:
    pool = Pool(processes=2)
    try:
        say(f"parent {os.getpid()} started a pool of 2 workers")

        say("\napply_async: one job at a time, results handed to a callback")
        results: list[int] = []
        pending = [pool.apply_async(square, (n,), callback=lambda r: results.append(r[0]))
                   for n in (5, 6)]
        for job in pending:
            job.wait(timeout=10)
        say(f"  callback got {sorted(results)}")

        say("\nmap: a list of jobs spread over the workers, results in order")
        answers = pool.map(square, range(8))
        for n, (value, worker) in enumerate(answers):
            say(f"  square({n}) = {value:2}  (worker {worker})")
        workers = sorted({worker for _, worker in answers})
        say(f"  {len(answers)} jobs, done by worker(s) {workers}")
    finally:
        pool.close()  # no more jobs
        pool.join()  # wait for the workers to finish and exit
    say("\npool closed and joined: the workers have exited")


if __name__ == "__main__":
    main()
