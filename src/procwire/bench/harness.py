"""Run benchmark cases in fresh interpreters and summarise them."""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable


@dataclass(frozen=True)
class Case:
    """One measurement: ``workload(**params)`` run by ``impl``.

    ``group`` names the row of the comparison (e.g. "64 B bytes 1→1"),
    ``impl`` the column (procwire, multiprocessing, a peer). ``higher_is_better``
    tells how ratios read: throughput up, latency down.
    """

    group: str
    impl: str
    workload: str  # "module:function"
    params: dict[str, Any]
    unit: str
    higher_is_better: bool = True


@dataclass
class Result:
    case: Case
    samples: list[float] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self.case), "samples": self.samples, "median": self.median,
                "extra": self.extra, "error": self.error}


def run_case(case: Case, timeout: float = 300) -> tuple[float, dict[str, Any]]:
    """Run one case in a new interpreter; returns (value, extra figures)."""
    spec = json.dumps({"workload": case.workload, "params": case.params})
    proc = subprocess.run([sys.executable, "-m", "procwire.bench._child", spec],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{case.group} / {case.impl}: {tail}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(out.pop("value")), out


def run_suite(cases: Iterable[Case], repeats: int = 3,
              progress: Callable[[Case], None] | None = None) -> list[Result]:
    """Run every case `repeats` times, interleaved: the whole suite once, then again."""
    cases = list(cases)
    results = [Result(c) for c in cases]
    for _ in range(repeats):
        for res in results:
            if res.error is None:
                try:
                    value, extra = run_case(res.case)
                    res.samples.append(value)
                    res.extra.append(extra)
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                    res.error = str(exc)
            if progress:
                progress(res.case)
    return results


def ratio(result: Result, baseline: Result | None) -> float | None:
    """How many times better `result` is than `baseline` (>1 = better)."""
    if baseline is None or not result.median or not baseline.median:
        return None
    if result.case.higher_is_better:
        return result.median / baseline.median
    return baseline.median / result.median


def machine() -> dict[str, Any]:
    """The machine the figures come from: CPU, cores, kernel, Python, versions."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for dist in ("procwire", "numpy", "faster-fifo", "pyzmq", "loky"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "versions": versions}


def write_json(path: str, results: list[Result], meta: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump({"machine": machine(), **meta, "results": [r.to_json() for r in results]},
                  f, indent=2)
