"""Runs one benchmark workload in this fresh interpreter and prints its result as JSON.

Invoked by harness.run_case as ``python -m procwire.bench._child SPEC``.
"""
from __future__ import annotations

import importlib
import json
import sys


def main() -> None:
    spec = json.loads(sys.argv[1])
    module, func = spec["workload"].split(":")
    result = getattr(importlib.import_module(module), func)(**spec["params"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
