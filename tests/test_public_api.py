import ast
from pathlib import Path

import avm

PACKAGE = Path(avm.__file__).resolve().parent


def test_all_is_sorted_and_each_name_exported_once():
    assert list(avm.__all__) == sorted(avm.__all__)
    assert len(set(avm.__all__)) == len(avm.__all__)
    for name in avm.__all__:
        assert hasattr(avm, name), name
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    imported = [alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names]
    assert sorted(imported) == sorted(set(imported)), "a name is imported twice"
    assert set(avm.__all__) <= set(imported)


def test_stable_names_exist():
    for name in ["compile", "Code", "Frame", "CompileError", "Effect", "Done", "Fault", "BudgetExceeded", "Stalled"]:
        assert name in avm.__all__


def test_lang_does_no_io():
    """avm/lang is sans-I/O: no trio, no sockets, no files, no threads."""
    banned = {"trio", "httpx", "lmdb", "socket", "asyncio", "threading", "subprocess", "os", "io", "pathlib"}
    for path in (PACKAGE / "lang").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [(node.module or "").split(".")[0]]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
                raise AssertionError(f"{path.name} calls open()")
            else:
                continue
            assert not set(names) & banned, f"{path.name} imports {names}"


def test_no_top_level_modules_named_after_stdlib():
    import sys

    # avm.io is fine (a subpackage); a top-level `io` beside `avm` would shadow the stdlib.
    for path in PACKAGE.parent.iterdir():
        if path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").exists()):
            assert path.stem not in sys.stdlib_module_names, path.name


def test_every_error_avm_raises_on_purpose_is_in_the_one_tree():
    import importlib
    import inspect
    import pkgutil

    import avm
    from avm.errors import AvmError

    internal = {"VMFault", "OutOfEnergy", "ProtocolError", "Truncated", "HTTPError", "Refused"}  # see avm.errors
    outside = []
    for module_info in pkgutil.walk_packages(avm.__path__, "avm."):
        if module_info.name.endswith("__main__"):
            continue
        module = importlib.import_module(module_info.name)
        for name, cls in vars(module).items():
            if (inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == module.__name__
                    and not name.startswith("_") and name not in internal and not issubclass(cls, AvmError)):
                outside.append(f"{module.__name__}.{name}")
    assert outside == []
    names = [line.split("── ")[1].split()[0] for line in avm.errors.__doc__.splitlines() if "── " in line]
    for name in names:  # the tree drawn in avm/errors.py names classes that exist
        assert any(hasattr(importlib.import_module(m), name) for m in
                   ("avm", "avm.errors", "avm.lang.code", "avm.conversation", "avm.tools.registry", "avm.journal.entry",
                    "avm.memory.values", "avm.kernel.settings", "avm.kernel.record", "avm.lang.frame", "avm.io.request",
                    "avm.io.client.backends", "avm.io.embedded.faults", "avm.io.embedded.replies", "avm.app.spec.model",
                    "avm.app.launcher", "avm.app.cli")), name
