"""Read-only inspection of a Redis database's procwire objects (``procwire ls``)."""
from __future__ import annotations

from typing import Any

from procwire.redis._engine import PREFIX, REGISTRY, Engine


def _ints(h: dict[bytes, bytes], *fields: str) -> dict[str, int]:
    out = {}
    for f in fields:
        v = h.get(f.encode())
        if v is not None:
            try:
                out[f] = int(v)
            except ValueError:
                pass
    return out


def scan(engine: Engine) -> list[dict[str, Any]]:
    """Every registered object: name, kind and its counters. Nothing is modified."""
    reg = engine.call(lambda r: r.hgetall(REGISTRY), what="listing objects")
    rows = []
    for raw_name, raw_kind in sorted(reg.items()):
        name, kind = raw_name.decode(), raw_kind.decode()
        k = f"{PREFIX}{name}:"
        rows.append({"name": name, "kind": kind, "counters": _counters(engine, kind, k)})
    return rows


def _counters(engine: Engine, kind: str, k: str) -> dict[str, Any]:
    r = engine.client
    if kind in ("Queue", "SimpleQueue"):
        n = r.llen(k + "q")
        s = r.hgetall(k + "stats")
        c = {"messages": n, **_ints(s, "put", "rejected")}
        c["got"] = c.get("put", 0) - n
        return c
    if kind == "JoinableQueue":
        try:
            pend = r.xpending(k + "s", "g")["pending"]
        except Exception:  # noqa: BLE001 - no group yet
            pend = 0
        n = r.xlen(k + "s")
        s = r.hgetall(k + "stats")
        return {"messages": n - pend, "pending": pend,
                **_ints(s, "unfinished", "put", "done", "redelivered", "dead", "rejected")}
    if kind in ("Lock", "RLock", "Semaphore", "BoundedSemaphore"):
        m = r.hgetall(k + "m")
        c = {"holders": r.zcard(k + "holders"),
             **_ints(m, "value", "acquires", "releases", "fence", "owner_deaths")}
        if m.get(b"owner_died"):
            c["owner_died"] = True
        return c
    if kind == "Event":
        return {"set": bool(r.exists(k + "flag"))}
    if kind == "Barrier":
        return _ints(r.hgetall(k + "b"), "count", "generation", "broken")
    if kind == "Condition":
        return {"waiters": r.llen(k + "waiters")}
    if kind in ("Value", "Array"):
        return {"bytes": r.strlen(k + "v")}
    if kind == "Pool":
        from procwire.redis._worker import Keys
        from procwire.redis.pool import pool_statistics
        return pool_statistics(engine, Keys(k[len(PREFIX):-1]))
    return {}
