"""What a user's type checker sees (issue 11 #5), checked with mypy --strict.

* Every ```python example in README.md, extracted as written, passes
  ``mypy --strict``.
* ``usage.py`` reveals the types its ``# R:`` comments say and is reported
  exactly where its ``# E:`` comments say (and nowhere else): Queue[T] is
  generic, the primitives, Connection, Value/Array and contexts are typed,
  misuse is caught.
* ``_core.pyi`` matches the built native module (mypy's stubtest).
* ``procwire/__init__.py``'s TYPE_CHECKING imports cover every lazy export.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import procwire

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
README = ROOT / "README.md"
USAGE = HERE / "usage.py"
ALLOWLIST = HERE / "stubtest-allowlist.txt"

# mypy is slow to start cold (typeshed): one run checks the README's examples
# and usage.py together; the tests below read its report.
MYPY_TIMEOUT = 600


def _readme_examples() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


def _mypy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MYPY_FORCE_COLOR="0", NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "mypy", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=MYPY_TIMEOUT)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[int, str, str]]]:
    """mypy --strict over the README's examples and usage.py:
    {file name: [(line, "error"|"note", message), ...]}."""
    work = tmp_path_factory.mktemp("typing")
    examples = _readme_examples()
    assert len(examples) >= 5, "README.md's python examples were not found"
    files = []
    for i, code in enumerate(examples):
        f = work / f"readme_example_{i}.py"
        f.write_text(code)
        files.append(f.name)
    (work / "usage.py").write_text(USAGE.read_text())
    files.append("usage.py")
    # Not the user's config: --strict alone, each file its own module.
    done = _mypy("--strict", "--config-file", os.devnull, "--no-color-output",
                 "--show-error-codes", "--hide-error-context", "--no-error-summary",
                 "--cache-dir", str(work / ".mypy_cache"), *files, cwd=work)
    assert done.returncode in (0, 1), done.stderr + done.stdout
    found: dict[str, list[tuple[int, str, str]]] = {f: [] for f in files}
    for line in done.stdout.splitlines():
        m = re.match(r"^(\S+?\.py):(\d+): (error|note): (.*)$", line)
        assert m, f"unexpected mypy output: {line!r}"
        found[m.group(1)].append((int(m.group(2)), m.group(3), m.group(4)))
    return found


def test_every_readme_example_passes_mypy_strict(report):
    bad = {f: msgs for f, msgs in report.items() if f.startswith("readme_") and msgs}
    examples = _readme_examples()
    assert not bad, "\n\n".join(
        f"README example {f} (starting {examples[int(f[15:-3])].splitlines()[0]!r}):\n"
        + "\n".join(f"  line {n}: {kind}: {msg}" for n, kind, msg in msgs)
        for f, msgs in bad.items())


def _expectations() -> tuple[dict[int, str], dict[int, str]]:
    reveals, errors = {}, {}
    for n, line in enumerate(USAGE.read_text().splitlines(), 1):
        if line.startswith("#"):
            continue
        if m := re.search(r"# R: (.+)$", line):
            reveals[n] = m.group(1).strip()
        elif m := re.search(r"# E: ([a-z-]+)$", line):
            errors[n] = m.group(1)
    return reveals, errors


def test_usage_reveals_the_documented_types(report):
    reveals, _ = _expectations()
    assert len(reveals) > 40
    seen = {}
    for n, kind, msg in report["usage.py"]:
        if kind == "note" and msg.startswith("Revealed type is "):
            seen[n] = msg[len("Revealed type is "):].strip('"')
    wrong = {n: (want, seen.get(n)) for n, want in reveals.items() if seen.get(n) != want}
    assert not wrong, "\n".join(f"usage.py:{n}: expected {w!r}, mypy says {g!r}"
                                for n, (w, g) in sorted(wrong.items()))
    assert set(seen) == set(reveals), "a reveal_type() without its # R: comment"


def test_usage_errors_are_exactly_the_expected_ones(report):
    _, errors = _expectations()
    assert len(errors) > 8
    got = {}
    for n, kind, msg in report["usage.py"]:
        if kind == "error":
            code = re.search(r"\[([a-z-]+)\]$", msg)
            got.setdefault(n, set()).add(code.group(1) if code else msg)
    missing = {n: c for n, c in errors.items() if c not in got.get(n, set())}
    unexpected = {n: c for n, c in got.items() if errors.get(n) not in c}
    assert not missing, f"misuse mypy no longer reports: {missing}"
    assert not unexpected, "errors on lines that should be clean: " + "\n".join(
        f"usage.py:{n}: {m}" for n, kind, m in report["usage.py"]
        if kind == "error" and n in unexpected)


def test_core_stub_matches_the_native_module(tmp_path):
    # stubtest imports procwire._core and compares every name, signature
    # (the C text signatures), property and class with _core.pyi.
    done = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "procwire._core", "--allowlist", str(ALLOWLIST),
         "--ignore-unused-allowlist", "--mypy-config-file", os.devnull],
        cwd=tmp_path, capture_output=True, text=True, timeout=MYPY_TIMEOUT,
        env=dict(os.environ, MYPY_CACHE_DIR=str(tmp_path / ".mypy_cache")))
    assert done.returncode == 0, done.stdout + done.stderr


def test_core_stub_has_no_name_the_module_lacks_and_types_every_public_name():
    import procwire._core as core
    stub = ast.parse((Path(procwire.__file__).parent / "_core.pyi").read_text())
    stubbed = set()
    for node in stub.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            stubbed.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            stubbed.add(node.target.id)
    runtime = {n for n in dir(core) if not n.startswith("__")}
    assert runtime <= stubbed, f"native names missing from _core.pyi: {runtime - stubbed}"
    private_helpers = {n for n in stubbed - runtime if n.startswith("_") and n[1].isupper()}
    assert stubbed - runtime == private_helpers, stubbed - runtime - private_helpers


def test_type_checking_imports_cover_every_lazy_export():
    tree = ast.parse(Path(procwire.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Name)
                and node.test.id == "TYPE_CHECKING"):
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom):
                    for alias in stmt.names:
                        # "X as X": an explicit re-export under mypy --strict
                        assert alias.asname == alias.name, ast.unparse(stmt)
                        imported.add(alias.name)
    expected = set(procwire._EXPORTS) | set(procwire._SUBMODULES)
    assert imported == expected, (f"missing: {expected - imported}, "
                                  f"not exported: {imported - expected}")
