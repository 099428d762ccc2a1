"""Builds the one native module, procwire._core, from src/procwire/_core: lib/*.c (the
plain-C lower layer, also built without Python by tests/native) and bind/*.c (the CPython
types over it).

PROCWIRE_SANITIZE=1 builds it with AddressSanitizer and UndefinedBehaviorSanitizer;
the interpreter then needs libasan preloaded (see .ci/run).
"""
import glob
import os

from setuptools import Extension, setup

sanitize = os.environ.get("PROCWIRE_SANITIZE") == "1"
cflags = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
          "-Wno-missing-field-initializers", "-D_GNU_SOURCE", "-fno-strict-aliasing"]
ldflags = ["-pthread"]
if sanitize:
    cflags += ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
               "-fno-sanitize-recover=undefined"]
    ldflags += ["-fsanitize=address,undefined"]

sources = sorted(glob.glob("src/procwire/_core/lib/*.c") + glob.glob("src/procwire/_core/bind/*.c"))
core = Extension(
    "procwire._core",
    sources=sources,
    depends=glob.glob("src/procwire/_core/*/*.h"),
    extra_compile_args=cflags,
    extra_link_args=ldflags,
)

setup(ext_modules=[core])
