"""进程池 -- a pool of worker processes.

Starting a process costs time and memory. When there are many small jobs,
start a few processes once -- a pool -- and hand them the jobs: each worker
takes a job, returns the result, and takes the next. ``Pool(n)`` starts n
workers; ``apply_async`` gives one job and calls back with its result;
``map`` splits a list across the workers and returns the results *in
order*. ``close()`` says "no more jobs" and ``join()`` waits until the
workers have finished and exited.

``procwire.Pool`` has the same API as ``multiprocessing.Pool``, and one more
promise: a worker that dies (here: killed with SIGKILL in the middle of a
map) costs only the job it held. The pool starts a new worker, re-runs that
job (``retries=1``) and the map completes. Without retries, that one job
fails with ``procwire.WorkerLost`` and nothing else does.
"""
from __future__ import annotations

import os
import signal
import time

from procwire import Pool, WorkerLost
from procwire.lessons._common import say


def square(n: int) -> tuple[int, int]:
    """The job: return the result, and which worker did it."""
    return n * n, os.getpid()


def slow_square(n: int) -> tuple[int, int]:
    time.sleep(0.02)
    return n * n, os.getpid()


def crash(n: int) -> int:
    os.kill(os.getpid(), signal.SIGKILL)  # the worker dies in the middle of this job
    return n


def main() -> None:
    pool = Pool(processes=2, retries=1)
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

        say("\na worker killed with SIGKILL while a map of 40 jobs runs")
        got = []
        for n, (value, worker) in enumerate(pool.imap(slow_square, range(40))):
            got.append(value)
            if n == 5:
                os.kill(worker, signal.SIGKILL)  # it is busy with its next job by now
                say(f"  killed worker {worker} after 6 results")
        ok = got == [n * n for n in range(40)]
        stats = pool.statistics()
        say(f"  the map completed: {len(got)} results, all correct: {ok}")
        say(f"  worker deaths {stats.worker_deaths}, jobs failed {stats.tasks_failed}, "
            f"workers now {stats.workers} (started {stats.workers_started} in all)")
    finally:
        pool.close()  # no more jobs
        pool.join()  # wait for the workers to finish and exit
    say("\npool closed and joined: the workers have exited")

    say("\nwithout retries, only the job the dead worker held fails")
    with Pool(processes=2) as pool:
        doomed = pool.apply_async(crash, (1,))
        fine = pool.map(square, range(4))
        try:
            doomed.get(timeout=10)
        except WorkerLost as e:
            say(f"  crash(1) -> WorkerLost: worker {e.pid} was killed by {e.signal}")
        say(f"  the other jobs: {[value for value, _ in fine]}")


if __name__ == "__main__":
    main()
