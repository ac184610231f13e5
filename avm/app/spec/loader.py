"""Reading a spec file into a `RunSpec`, checking everything before any agent runs."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
import tomllib
import types
import typing
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avm.errors import AvmError, CompileError
from avm.lang.compiler import IDENT, compile_source
from avm.lang.values import is_value
from avm.scheduler.states import PRIORITIES
from avm.scheduler.supervision import MODES
from avm.app.spec.model import (
    _GROUP_NAME,
    AUTO_INPUTS,
    DEFAULT_BUDGET,
    MAX_COUNT,
    AgentGroup,
    Program,
    RunSpec,
    SpecError,
    _check_url,
    _positive,
)
from avm.tools.registry import Tool

__all__ = ["load_spec"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")
_TOML_AT = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$", re.DOTALL)
_TOML_AT_END = " (at end of document)"
_TOP_KEYS = ("agents", "budget", "description", "llm", "model", "store", "tools", "vm")
_GROUP_KEYS = ("budget", "count", "inputs", "priority", "program", "programs", "restart", "system", "system_text",
               "tools")
_VM_KEYS_ELSEWHERE = {"model": "the top-level key model", "default_budget": "the top-level key budget"}

# --- loading a spec file ---------------------------------------------------------------------


def load_spec(path: str | Path) -> RunSpec:
    """Read and check a spec file (see the module docstring); `SpecError` names any mistake."""
    path = Path(path)
    file = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(file, "", f"cannot read the spec: {_os_error(exc)}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError(file, f"line {line}", "not UTF-8 text") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(file, *_toml_error(str(exc), text)) from None
    return _Loader(path).spec(doc)


def _toml_error(message: str, text: str) -> tuple[str, str]:
    match = _TOML_AT.match(message)
    if match:
        what, line, column = match.groups()
        where = f"line {line}, column {column}"
    elif message.endswith(_TOML_AT_END):
        what = message[: -len(_TOML_AT_END)]
        where = f"line {text.count(chr(10)) + (0 if text.endswith(chr(10)) else 1)} (end of file)"
    else:
        what, where = message, ""
    return where, f"TOML: {what[:1].lower()}{what[1:]}"


def _os_error(exc: OSError) -> str:
    reason = exc.strerror or type(exc).__name__
    return reason[:1].lower() + reason[1:]


def _key(*parts: str | int) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            shown = part if _BARE_KEY.match(part) else json.dumps(part)
            out += f".{shown}" if out else shown
    return out


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if value is None:
        return "null"
    return "a date/time" if type(value).__module__ == "datetime" else type(value).__name__


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, (str, int, float, bool)) else ""
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{_kind(value)} ({text})" if text else _kind(value)


class _Loader:
    """Checks one parsed spec file and builds its RunSpec."""

    def __init__(self, path: Path):
        self.file = str(path)
        self.base = path.parent
        self.programs: dict[Path, Program] = {}

    def fail(self, where: str, message: str) -> SpecError:
        return SpecError(self.file, where, message)

    def path(self, value: str) -> Path:
        return self.base / value

    # -- generic checks --

    def keys(self, table: dict[str, Any], allowed: Sequence[str], *prefix: str | int) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(_key(*prefix, key), f"unknown key (allowed: {', '.join(allowed)})")

    def want(self, value: Any, kind: type | tuple[type, ...], what: str, where: str) -> Any:
        ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _as_tuple(kind))
        if not ok:
            raise self.fail(where, f"must be {what}, not {_shown(value)}")
        return value

    def text(self, value: Any, where: str, *, empty: bool = False) -> str:
        self.want(value, str, "a string", where)
        if not empty and not value.strip():
            raise self.fail(where, "must not be empty")
        return value

    def budget(self, value: Any, where: str) -> float:
        self.want(value, (int, float), "a number", where)
        if not _positive(value):
            raise self.fail(where, f"must be a positive number of energy units, not {value!r}")
        return float(value)

    def read(self, value: Any, where: str, what: str) -> tuple[Path, str]:
        path = self.path(self.text(value, where))
        try:
            return path, path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise self.fail(where, f"no {what} file {path}") from None
        except UnicodeDecodeError:
            raise self.fail(where, f"{path} is not UTF-8 text") from None
        except OSError as exc:
            raise self.fail(where, f"cannot read {path}: {_os_error(exc)}") from None

    def program(self, value: Any, where: str) -> Program:
        path = self.path(self.text(value, where))
        known = self.programs.get(path)
        if known is not None:
            return known
        _, source = self.read(value, where, "program")
        try:
            code = compile_source(source)
        except CompileError as exc:
            raise self.fail(where, f"{path}:{exc.line}:{exc.column}: {exc.message}") from None
        program = self.programs[path] = Program(code, str(path))
        return program

    # -- the spec --

    def spec(self, doc: dict[str, Any]) -> RunSpec:
        self.keys(doc, _TOP_KEYS)
        description = self.text(doc.get("description", ""), "description", empty=True)
        tools = self.tools(doc.get("tools", []))
        llm = _check_url(self.file, "llm", doc["llm"]) if "llm" in doc else None
        model = self.text(doc["model"], "model") if "model" in doc else None
        store = str(self.path(self.text(doc["store"], "store"))) if "store" in doc else None
        budget = self.budget(doc["budget"], "budget") if "budget" in doc else DEFAULT_BUDGET
        settings = self.vm_settings(doc.get("vm", {}))
        if "agents" not in doc:
            raise self.fail("agents", "missing: a spec needs at least one [agents.NAME] table")
        agents = self.want(doc["agents"], dict, "a table of groups, [agents.NAME]", "agents")
        if not agents:
            raise self.fail("agents", "no groups: add an [agents.NAME] table")
        available = _available_tools(tools)
        groups = tuple(self.group(name, table, budget, available) for name, table in agents.items())
        for name in sorted({n for g in groups for n in g.tools} - {t.name for t in tools}):
            tools += (available[name],)  # a demo tool granted without being listed
        return RunSpec(self.file, groups, tools, llm, model, store, budget, settings, description)

    def tools(self, value: Any) -> tuple[Tool, ...]:
        self.want(value, list, "an array of import paths", "tools")
        found: dict[str, int] = {}
        out: list[Tool] = []
        for i, item in enumerate(value):
            where = _key("tools", i)
            t = self.tool(self.text(item, where), where)
            if t.name in found:
                raise self.fail(where, f"a second tool named {t.name!r} (tools[{found[t.name]}] is one already)")
            found[t.name] = i
            out.append(t)
        return tuple(out)

    def tool(self, spec: str, where: str) -> Tool:
        module_name, attribute = _split_import_path(spec)
        if module_name is None:
            raise self.fail(where, f"{spec!r} is not an import path (write \"package.module:function\" "
                                   f"or \"file.py:function\")")
        try:
            if module_name.endswith(".py"):
                module = self.import_file(self.path(module_name))
            else:
                module = self.import_module(module_name)
        except FileNotFoundError:
            raise self.fail(where, f"no tool module {self.path(module_name)}") from None
        except ModuleNotFoundError as exc:
            raise self.fail(where, f"cannot import {module_name!r}: {exc}") from None
        except Exception as exc:  # whatever the module raised while it was imported
            raise self.fail(where, f"importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
        obj: Any = module
        for part in attribute.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise self.fail(where, f"{module_name!r} has no {attribute!r}") from None
        if not isinstance(obj, Tool):
            raise self.fail(where, f"{spec} is {_article(type(obj).__name__)}, not an avm tool "
                                   f"(decorate the function with @avm.tool)")
        return obj

    def import_module(self, name: str) -> types.ModuleType:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            top = name.split(".")[0]
            if exc.name not in (name, top) and not name.startswith(f"{exc.name}."):
                raise  # the module was found, and something it imports is missing
        base = str(self.base.resolve())
        sys.path.insert(0, base)
        try:
            importlib.invalidate_caches()
            return importlib.import_module(name)
        finally:
            try:
                sys.path.remove(base)
            except ValueError:  # pragma: no cover - the module took it out itself
                pass

    def import_file(self, path: Path) -> types.ModuleType:
        resolved = path.resolve()
        if not resolved.is_file():
            raise FileNotFoundError(str(path))
        stem = re.sub(r"\W", "_", resolved.stem)
        name = f"avm_spec_tools_{stem}_{zlib.crc32(str(resolved).encode()):08x}"
        module = sys.modules.get(name)
        if module is not None:
            return module
        loader_spec = importlib.util.spec_from_file_location(name, resolved)
        assert loader_spec is not None and loader_spec.loader is not None
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        try:
            loader_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module

    def vm_settings(self, table: Any) -> dict[str, Any]:
        from avm.runtime import VMError, VMSettings

        self.want(table, dict, "a table", "vm")
        hints = typing.get_type_hints(VMSettings)
        allowed = sorted(n for n in hints if n not in _VM_KEYS_ELSEWHERE and not n.startswith("_"))
        settings: dict[str, Any] = {}
        for name, value in table.items():
            where = _key("vm", name)
            if name in _VM_KEYS_ELSEWHERE:
                raise self.fail(where, f"set by {_VM_KEYS_ELSEWHERE[name]}, not in [vm]")
            if name not in hints:
                raise self.fail(where, f"unknown VM setting (allowed: {', '.join(allowed)})")
            settings[name] = self.setting(value, hints[name], where)
        if "llm_server" in settings:
            from avm.io.embedded.faults import LLMServerError, ServerSettings

            try:
                ServerSettings.from_mapping(settings["llm_server"])
            except (LLMServerError, TypeError, ValueError) as exc:
                raise self.fail("vm.llm_server", str(exc)) from None
        if "gateway" in settings:
            from avm.io.gateway_settings import GatewaySettings

            try:
                GatewaySettings.from_mapping(settings["gateway"])
            except (AvmError, TypeError, ValueError) as exc:
                raise self.fail("vm.gateway", str(exc)) from None
        try:
            VMSettings(**settings)
        except (VMError, TypeError, ValueError) as exc:
            raise self.fail("vm", str(exc)) from None
        return settings

    def setting(self, value: Any, hint: Any, where: str) -> Any:
        options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        optional = type(None) in options
        if optional and value is False and bool not in options:
            return None  # TOML has no null: false stands for None
        for option in options:
            base = typing.get_origin(option) or option
            if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value) if isinstance(value, int) and int not in options else value
            if base is int and isinstance(value, int) and not isinstance(value, bool):
                return value
            if base in (str, bool, dict) and isinstance(value, base):
                return value
        names = {float: "a number", int: "an integer", str: "a string", bool: "a boolean", dict: "a table"}
        wanted = " or ".join(names.get(typing.get_origin(o) or o, str(o)) for o in options if o is not type(None))
        if optional:
            wanted += " (or false for none)"
        raise self.fail(where, f"must be {wanted}, not {_shown(value)}")

    # -- a group --

    def group(self, name: str, table: Any, default_budget: float, available: dict[str, Tool]) -> AgentGroup:
        at = ("agents", name)
        if not _GROUP_NAME.match(name):
            raise self.fail(_key(*at), "a group name is letters, digits, _ and - (it prefixes the agents' names)")
        self.want(table, dict, "a table", _key(*at))
        self.keys(table, _GROUP_KEYS, *at)
        if "program" not in table:
            raise self.fail(_key(*at, "program"), "missing: the program file the group's agents run")
        program = self.program(table["program"], _key(*at, "program"))
        system = system_path = None
        if "system" in table and "system_text" in table:
            raise self.fail(_key(*at, "system_text"), "give system (a file) or system_text, not both")
        if "system" in table:
            path, system = self.read(table["system"], _key(*at, "system"), "system prompt")
            system_path = str(path)
        elif "system_text" in table:
            system = self.text(table["system_text"], _key(*at, "system_text"))
        grant = self.grant(table.get("tools", []), available, at)
        programs = self.group_programs(table.get("programs", {}), at)
        inputs = self.inputs(table["inputs"], at, programs) if "inputs" in table else ()
        if "count" in table:
            where = _key(*at, "count")
            count = self.want(table["count"], int, "an integer", where)
            if not 1 <= count <= MAX_COUNT:
                raise self.fail(where, f"must be between 1 and {MAX_COUNT:,}, not {count}")
            if inputs and count != len(inputs):
                raise self.fail(where, f"is {count} but inputs has {len(inputs)} entries (leave count out "
                                       f"to run one agent per input)")
        else:
            count = len(inputs) or 1
        budget = self.budget(table["budget"], _key(*at, "budget")) if "budget" in table else default_budget
        priority = self.choice(table.get("priority", "normal"), tuple(PRIORITIES), _key(*at, "priority"))
        restart = self.choice(table.get("restart", "never"), MODES, _key(*at, "restart"))
        return AgentGroup(name, program, count, system, system_path, grant, inputs, budget, priority, restart,
                          programs)

    def choice(self, value: Any, allowed: Sequence[str], where: str) -> str:
        self.want(value, str, f"one of {', '.join(allowed)}", where)
        if value not in allowed:
            raise self.fail(where, f"must be one of {', '.join(allowed)}, not {value!r}")
        return value

    def grant(self, value: Any, available: dict[str, Tool], at: tuple[str, ...]) -> tuple[str, ...]:
        self.want(value, list, "an array of tool names", _key(*at, "tools"))
        names: list[str] = []
        for i, item in enumerate(value):
            where = _key(*at, "tools", i)
            self.text(item, where)
            if item not in available:
                raise self.fail(where, f"{item!r} is not a registered tool (registered: "
                                       f"{', '.join(sorted(available))}; register more in the top-level tools)")
            if item in names:
                raise self.fail(where, f"{item!r} is granted twice")
            names.append(item)
        return tuple(names)

    def group_programs(self, value: Any, at: tuple[str, ...]) -> dict[str, Program]:
        self.want(value, dict, "a table of name = program file", _key(*at, "programs"))
        out: dict[str, Program] = {}
        for key, item in value.items():
            where = _key(*at, "programs", key)
            if not IDENT.match(key):
                raise self.fail(where, "the name must be a variable name (letters, digits, _): the program is "
                                       "given to each agent as an input of that name")
            if key in AUTO_INPUTS:
                raise self.fail(where, f"{key!r} is an input every agent gets already; choose another name")
            out[key] = self.program(item, where)
        return out

    def inputs(self, value: Any, at: tuple[str, ...], programs: dict[str, Program]) -> tuple[dict[str, Any], ...]:
        where = _key(*at, "inputs")
        if isinstance(value, str):
            items = self.jsonl(value, where, programs)
        else:
            self.want(value, list, "a JSONL file name or an array of tables", where)
            items = []
            for i, item in enumerate(value):
                self.want(item, dict, "a table", _key(*at, "inputs", i))
                problem = _input_problem(item, programs)
                if problem:
                    raise self.fail(_key(*at, "inputs", i, problem[0]), problem[1])
                items.append(item)
        if not items:
            raise self.fail(where, "no inputs (leave inputs out for agents without inputs)")
        return tuple(items)

    def jsonl(self, value: str, where: str, programs: dict[str, Program]) -> list[dict[str, Any]]:
        path, text = self.read(value, where, "inputs")
        items = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise self.fail(where, f"{path}:{number}: not JSON ({exc.msg} at column {exc.colno})") from None
            except ValueError as exc:  # pragma: no cover - json raises JSONDecodeError for bad text
                raise self.fail(where, f"{path}:{number}: not JSON ({exc})") from None
            if not isinstance(item, dict):
                raise self.fail(where, f"{path}:{number}: a line must be a JSON object, not {_json_kind(item)}")
            problem = _input_problem(item, programs)
            if problem:
                raise self.fail(where, f"{path}:{number}: {problem[0]}: {problem[1]}")
            items.append(item)
        return items


def _input_problem(item: dict[str, Any], programs: dict[str, Program]) -> tuple[str, str] | None:
    """(key, what is wrong) for the first input an agent cannot take, or None."""
    for key, value in item.items():
        if key in programs:
            return key, f"clashes with the program input programs.{key}"
        if not is_value(value):
            if _kind(value) == "a date/time":
                return key, "a date/time is not a value an agent can hold (write it as a string)"
            return key, "nested too deeply to be a value an agent can hold (100 levels at most)"
    return None


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _article(noun: str) -> str:
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"


def _split_import_path(spec: str) -> tuple[str | None, str]:
    """(module or file, attribute) of ``pkg.mod:attr``, ``pkg.mod.attr`` or ``file.py:attr``."""
    if ":" in spec:
        module, _, attribute = spec.rpartition(":")
    else:
        module, _, attribute = spec.rpartition(".")
    ok_attr = all(part.isidentifier() for part in attribute.split("."))
    ok_module = module.endswith(".py") or all(part.isidentifier() for part in module.split("."))
    if not module or not attribute or not ok_attr or not ok_module:
        return None, ""
    return module, attribute


def _available_tools(registered: tuple[Tool, ...]) -> dict[str, Tool]:
    """Tools a group may be granted: the registered ones, and the demo tools not shadowed by one."""
    from avm.demo.tools import TOOLS

    available = {t.name: t for t in TOOLS}
    available.update((t.name, t) for t in registered)
    return available
