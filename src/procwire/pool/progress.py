"""A progress bar for ``imap``/``imap_unordered`` (and any iterable), drawn with rich."""
from __future__ import annotations

import time
from typing import Any, Iterable, Iterator

__all__ = ["progress"]


def progress(results: Iterable[Any], total: int | None = None, *, description: str = "tasks",
             pool: Any = None, console: Any = None, transient: bool = False) -> Iterator[Any]:
    """Yield from ``results`` while drawing a progress bar.

    ``total`` is the number of items expected (``len(iterable)``), if known.
    With ``pool=`` (a procwire Pool or ProcessPoolExecutor), the bar also shows
    the pool's live worker count, worker deaths and retries::

        for r in progress(pool.imap_unordered(f, items), total=len(items), pool=pool):
            ...
    """
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), TimeRemainingColumn()]
    if pool is not None:
        columns.append(TextColumn("{task.fields[pool]}"))
    clock = time.monotonic
    with Progress(*columns, console=console, transient=transient) as bar:
        task = bar.add_task(description, total=total, pool="")
        pending, last = 0, 0.0

        def refresh() -> None:
            nonlocal pending, last
            if pool is not None:
                s = pool.statistics()
                bar.update(task, pool=f"workers {s.workers} · deaths {s.worker_deaths}"
                                      f" · retried {s.tasks_retried}")
            bar.update(task, advance=pending)
            pending, last = 0, clock()

        try:
            for item in results:
                pending += 1
                # the bar redraws ~10 times a second; updating it per item would
                # cost more than a small task
                if clock() - last > 0.1:
                    refresh()
                yield item
        finally:
            refresh()
