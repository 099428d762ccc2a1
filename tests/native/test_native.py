"""Builds and runs the plain-C tests of the core's lower layer (tests/native/test_core.c).

The lower layer (src/procwire/_core/lib) has no Python in it, so it is tested as a C
program: ring put/take, deadlines and waits, the sleeper registry, a robust mutex handed
over after its holder is SIGKILLed, header validation. Built once as CI builds the
extension, and once with AddressSanitizer and UndefinedBehaviorSanitizer.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "src" / "procwire" / "_core" / "lib"
FLAGS = ["-std=c11", "-g", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror",
         "-D_GNU_SOURCE", "-fno-strict-aliasing", "-pthread"]
SANITIZE = ["-O1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
            "-fno-sanitize-recover=undefined"]


def _build(out: Path, extra: list[str]) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    sources = [str(ROOT / "tests" / "native" / "test_core.c"), *map(str, sorted(LIB.glob("*.c")))]
    built = subprocess.run([cc, *FLAGS, *extra, "-I", str(LIB), *sources, "-o", str(out)],
                           capture_output=True, text=True, timeout=120)
    if built.returncode and "sanitize" in built.stderr and extra is SANITIZE:
        pytest.skip(f"this compiler cannot build with sanitizers: {built.stderr[-300:]}")
    assert built.returncode == 0, built.stderr
    return out


@pytest.mark.parametrize("flags", [["-O2"], SANITIZE], ids=["O2", "asan-ubsan"])
def test_native_core(tmp_path: Path, flags: list[str]) -> None:
    exe = _build(tmp_path / "test_core", flags)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120,
                         env={"ASAN_OPTIONS": "detect_leaks=1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all tests passed" in run.stdout


# A native object whose __init__ never ran (made with __new__, as a subclass or a
# broken unpickler may) has no mapping and no name: every call says it is closed,
# naming its type. (Its name was passed to "%U" as None: a garbage message.)
_NEVER_INITIALISED = [("PipeEnd", "send", (1,)), ("PipeEnd", "recv_bytes", ()),
                      ("QueueBase", "get", ()), ("QueueBase", "put", (1,)),
                      ("Lock", "acquire", ()), ("Lock", "release", ()),
                      ("Semaphore", "acquire", ()), ("Event", "is_set", ()),
                      ("Event", "wait", (0,)), ("Condition", "_counters", ())]


@pytest.mark.parametrize(("type_name", "method", "args"), _NEVER_INITIALISED)
def test_a_native_object_whose_init_never_ran_says_it_is_closed(type_name, method, args):
    from procwire import _core
    cls = getattr(_core, type_name)
    obj = cls.__new__(cls)
    with pytest.raises(ValueError) as caught:
        getattr(obj, method)(*args)
    assert str(caught.value) == f"this procwire._core.{type_name} is closed"
