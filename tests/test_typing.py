"""The public API is typed: strict mypy passes on code that uses it, and every public callable is annotated.

mypy runs once, as a subprocess, over the README's example (examples/embedding.py),
tests/typing_usage.py (a typed tour of the public surface) and a file of deliberate
mistakes that it must catch (so a surface that silently became Any fails the test).
Errors inside avm's own modules are not reported (``--follow-imports=silent``), as for
an installed package; what leaks out of them into the users' code is.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import avm

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ["examples/embedding.py", "tests/typing_usage.py"]

MISTAKES = '''
import avm

@avm.tool
def lookup(topic: str) -> str:
    return topic

not_a_tool: int = lookup
not_code: str = avm.compile("return")
not_results: dict[str, int] = avm.run_agents("return", [{"x": 1}])
not_an_error: int = avm.run_agents("return").errors
avm.run_agents("return", budget="lots")

async def main() -> None:
    async with avm.VM() as vm:
        handle = await vm.spawn("return")
        wrong: str = handle.energy_used
'''
EXPECTED_MISTAKES = {8, 9, 10, 11, 12, 17}  # the lines of MISTAKES that mypy must reject


def _work_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Where mypy keeps its cache (pytest's cache dir: a second run takes a fraction of the first).

    The file of mistakes lives there too, at a fixed path: mypy's cache remembers a module's
    errors with the path it had, so a file moved between runs would be reported where it was.
    """
    cache = getattr(request.config, "cache", None)
    return Path(cache.mkdir("mypy")) if cache is not None else tmp_path


def test_strict_mypy_passes_on_the_public_api_and_catches_misuse(request: pytest.FixtureRequest,
                                                                 tmp_path: Path) -> None:
    work = _work_dir(request, tmp_path)
    mistakes = work / "mistakes.py"
    mistakes.write_text(MISTAKES)
    env = dict(os.environ, MYPYPATH=str(ROOT))
    command = [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-error-summary",
               "--show-error-codes", "--cache-dir", str(work / "cache"), *CHECKED, str(mistakes)]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    report = proc.stdout + proc.stderr
    errors = [(Path(m.group(1)), int(m.group(2))) for line in report.splitlines()
              if (m := re.match(r"(.+?):(\d+): error:", line))]
    ours = [path for path, _ in errors if (ROOT / path).resolve() != mistakes.resolve()]
    assert not ours, f"mypy --strict found errors in the public API's use:\n{report}"
    caught = {line for _, line in errors}
    assert caught == EXPECTED_MISTAKES, f"mypy missed or invented errors ({elapsed:.1f} s):\n{report}"
    assert proc.returncode == 1


SPECIAL = {"__init__", "__aenter__", "__aexit__", "__enter__", "__exit__", "__call__", "__iter__", "__len__",
           "__contains__", "__getitem__"}


def _unannotated(fn: Any, where: str) -> list[str]:
    signature = inspect.signature(fn)
    missing = [f"{where}({p.name})" for p in signature.parameters.values()
               if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty]
    if signature.return_annotation is inspect.Signature.empty and fn.__name__ != "__init__":
        missing.append(f"{where} -> ?")
    return missing


def test_every_public_function_and_method_is_annotated() -> None:
    missing: list[str] = []
    for name in avm.__all__:
        obj = getattr(avm, name)
        if inspect.isfunction(obj):
            missing += _unannotated(obj, name)
        elif inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr not in SPECIAL:
                    continue
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                elif isinstance(member, property):
                    member = member.fget
                if inspect.isfunction(member) and member.__module__.startswith("avm"):
                    missing += _unannotated(member, f"{name}.{attr}")
    assert not missing, f"public callables without annotations: {', '.join(missing)}"


def test_the_package_ships_its_py_typed_marker() -> None:
    assert (Path(avm.__file__).parent / "py.typed").is_file()
    assert '"py.typed"' in (ROOT / "pyproject.toml").read_text()


def test_the_typed_usage_also_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from tests import typing_usage

    typing_usage.main()
    assert "Search the notes." in capsys.readouterr().out
