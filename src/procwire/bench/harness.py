"""Run benchmark cases in fresh interpreters and summarise them."""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

#: A figure whose repeats spread wider than this, (max - min) / median, is
#: flagged: on a quiet machine repeats agree within some tens of percent
#: (BENCHMARKING.md); wider means something else was running, or the figure
#: flips between modes (e.g. both processes on one CPU or on two).
WIDE_SPREAD = 0.5
#: The machine counts as busy when, during the run, other processes used more
#: than this share of all CPUs, or the hypervisor stole more than STEAL_BUSY,
#: or the 1-minute load average before the run was above LOAD_BUSY per CPU.
#: The load average is the weaker sign: it still counts a bench run that just
#: ended (up to two runnable processes for a minute), hence a whole CPU each.
OTHERS_BUSY = 0.25
STEAL_BUSY = 0.10
LOAD_BUSY = 1.0


def round_trips(send: Callable[[Any], object], recv: Callable[[], object], msg: Any,
                count: int) -> list[int]:
    """Nanoseconds each of `count` ``send(msg); recv()`` round trips took."""
    clock = time.perf_counter_ns
    times = []
    for _ in range(count):
        t = clock()
        send(msg)
        recv()
        times.append(clock() - t)
    return times


def latency(times_ns: Iterable[float], scale: float = 1.0) -> dict[str, Any]:
    """A latency workload's result: the median of ``times_ns`` (nanoseconds,
    each multiplied by `scale`) in µs as the value, with p10 and p99."""
    us = sorted(t * scale / 1e3 for t in times_ns)
    def q(f: float) -> float:
        return us[int(f * (len(us) - 1))]
    return {"value": statistics.median(us), "p10": q(0.10), "p99": q(0.99)}


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

    @property
    def spread(self) -> tuple[float, float] | None:
        """(min, max) of the repeats; None with fewer than two."""
        if len(self.samples) < 2:
            return None
        return min(self.samples), max(self.samples)

    @property
    def relative_spread(self) -> float | None:
        """(max - min) / median of the repeats; None with fewer than two."""
        spread, median = self.spread, self.median
        if spread is None or not median:
            return None
        return (spread[1] - spread[0]) / median

    def to_json(self) -> dict[str, Any]:
        spread = self.spread
        return {**asdict(self.case), "samples": self.samples, "median": self.median,
                "repeats": len(self.samples),
                "min": spread[0] if spread else None, "max": spread[1] if spread else None,
                "relative_spread": self.relative_spread,
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


def ratio_range(result: Result, baseline: Result | None) -> tuple[float, float] | None:
    """The lowest and highest ratio any pairing of the two sides' repeats gives.

    None unless both sides have at least two repeats. A ratio whose range
    straddles 1 does not tell which side is faster on this run.
    """
    if baseline is None or result.spread is None or baseline.spread is None:
        return None
    (r_lo, r_hi), (b_lo, b_hi) = result.spread, baseline.spread
    if min(r_lo, b_lo) <= 0:
        return None
    if result.case.higher_is_better:
        return r_lo / b_hi, r_hi / b_lo
    return b_lo / r_hi, b_hi / r_lo


def wide_spreads(results: Iterable[Result], threshold: float = WIDE_SPREAD) -> list[Result]:
    """The results whose repeats spread wider than `threshold` (see WIDE_SPREAD)."""
    return [r for r in results
            if r.relative_spread is not None and r.relative_spread > threshold]


def spread_warnings(results: list[Result], threshold: float = WIDE_SPREAD, show: int = 4,
                    fmt: Callable[[float, str], str] = lambda v, unit: f"{v:.3g} {unit}",
                    ) -> list[str]:
    """Warnings about the repeats: too few to show a spread, or a wide one.

    `fmt(value, unit)` formats a figure for the message.
    """
    measured = [r for r in results if r.samples]
    if not measured:
        return []
    if all(len(r.samples) < 2 for r in measured):
        return ["one run per figure: no spread measured. Single runs on a shared or small "
                "machine have swung from 0.7× to 17× between runs; use --repeats 3 (or more) "
                "for a median and its min–max."]
    wide = sorted(wide_spreads(measured, threshold),
                  key=lambda r: r.relative_spread or 0, reverse=True)
    if not wide:
        return []
    def span(r: Result) -> str:
        lo, hi = r.spread or (0.0, 0.0)  # a wide spread is a spread: never the default
        return (f"{r.case.group} / {r.case.impl} from {fmt(lo, r.case.unit)} "
                f"to {fmt(hi, r.case.unit)}")

    worst = "; ".join(span(r) for r in wide[:show])
    more = f" and {len(wide) - show} more" if len(wide) > show else ""
    return [f"wide spread: {len(wide)} of {len(measured)} figures vary by more than "
            f"{threshold:.0%} of their median between repeats (widest: {worst}{more}). "
            "Their ratios are not reliable; re-run on a quiet machine, with more --repeats."]


@dataclass(frozen=True)
class LoadSample:
    """What the machine was doing at one instant (see load_sample)."""

    loadavg1: float
    cpu_ticks: tuple[int, int, int]  # busy, steal, total (all CPUs, /proc/stat)
    own_cpu_s: float                 # CPU seconds of this process and its reaped children


def load_sample() -> LoadSample:
    """The 1-minute load average, the CPU counters and our own CPU time, now."""
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = 0.0
    busy = steal = total = 0
    try:
        with open("/proc/stat") as f:
            # cpu  user nice system idle iowait irq softirq steal guest guest_nice
            fields = [int(x) for x in f.readline().split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        busy = user + nice + system + irq + softirq
        total = sum(fields)
    except (OSError, ValueError):
        pass
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        own += ru.ru_utime + ru.ru_stime
    return LoadSample(load1, (busy, steal, total), own)


def machine_load(before: LoadSample, after: LoadSample, cpus: int | None = None,
                 ticks_per_s: int | None = None) -> dict[str, Any]:
    """How busy the machine was around a run, from two samples.

    ``others``: the share of all CPUs' time used by processes other than this
    one and its children (the bench's own interpreters and their peers are
    reaped, so their CPU time is in RUSAGE_CHILDREN); ``steal``: the share the
    hypervisor gave to other guests. None where /proc/stat was unreadable.
    """
    cpus = cpus or os.cpu_count() or 1
    hz = ticks_per_s or os.sysconf("SC_CLK_TCK")
    busy = after.cpu_ticks[0] - before.cpu_ticks[0]
    steal = after.cpu_ticks[1] - before.cpu_ticks[1]
    total = after.cpu_ticks[2] - before.cpu_ticks[2]
    own = (after.own_cpu_s - before.own_cpu_s) * hz
    others = max(0.0, (busy - own) / total) if total > 0 else None
    return {"cpus": cpus, "load1_before": before.loadavg1, "load1_after": after.loadavg1,
            "others": others, "steal": steal / total if total > 0 else None}


def busy_warnings(load: dict[str, Any]) -> list[str]:
    """Warnings when the machine was busy around the run (see machine_load)."""
    why = []
    cpus = load["cpus"]
    if load["load1_before"] > LOAD_BUSY * cpus:
        why.append(f"load average {load['load1_before']:.1f} on {cpus} CPUs before the run")
    if load.get("others") is not None and load["others"] > OTHERS_BUSY:
        why.append(f"other processes used {load['others']:.0%} of the CPUs during it")
    if load.get("steal") is not None and load["steal"] > STEAL_BUSY:
        why.append(f"the hypervisor took {load['steal']:.0%} of the CPU time (steal)")
    if not why:
        return []
    return ["machine busy: " + "; ".join(why) + ". Every figure here needs the CPUs to "
            "itself (a wake-up across busy CPUs costs tens of µs more): these figures "
            "are not comparable with a quiet run."]


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
    return {"cpu": cpu, "cores": os.cpu_count(), "host": platform.node(),
            "kernel": platform.release(),
            "python": platform.python_version(), "versions": versions}


def write_json(path: str, results: list[Result], meta: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump({"machine": machine(), **meta, "results": [r.to_json() for r in results]},
                  f, indent=2)
