"""`avm inspect STORE`: what an on-disk AVM store holds, and how its agents ended.

    avm inspect STORE [--run RUN] [--state STATE] [--limit N] [--json]

STORE is the directory of an LMDB-backed `ContentStore`. The report shows:

- the store: its tiers (objects, bytes, raw bytes, compression ratio), the
  unique objects and bytes, the dedup ratio when it is known, the names bound
  (per prefix), pins and zstd dictionaries;
- per run: the agents the VM recorded (``VMSettings.record_agents`` binds
  ``agents/<run id>/<agent id>`` to a summary map), how many ended in each
  state, the energy they used and the agents that used the most, and the
  run's own summary map when something bound ``runs/<run id>``;
- a table of the agents (newest run first, then by id), filtered by
  ``--run`` (a run id or a unique prefix of one) and ``--state``, and cut to
  ``--limit`` rows (0: all).

``--json`` prints the same data as one JSON object instead.

**Opening without changing anything.** `ContentStore` has no read-only mode,
so the store is opened as usual but with zero-byte hot and warm budgets: every
read goes straight to LMDB and nothing is cached, trained or queued. No write
transaction ever commits a change (the store is new only if its directory is
empty, and an empty directory is refused here before opening), so ``data.mdb``
is left byte for byte as it was; only LMDB's ``lock.mdb`` reader table is
touched, as by any reader. A store that a running ``avm run`` has open in
another process can be inspected (LMDB allows readers next to its one
writer); the report shows what that writer has committed so far.

The dedup ratio needs the bytes callers put, duplicates included, which the
store does not persist: it is shown only when a run's summary map reports
one (key ``dedup_ratio``), else as unknown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["add_inspect_parser", "inspect_store", "load_report", "print_table"]

AGENTS_PREFIX = b"agents/"
RUNS_PREFIX = b"runs/"
TOP_PER_RUN = 5  # agents listed per run as the biggest energy users
SHORT_CHARS = 60  # a value or error is cut to this many characters in the agents table
_LMDB_FILES = frozenset({"data.mdb", "lock.mdb"})
UNREADABLE = "unreadable"  # the state shown for an agent whose record cannot be read
_RECORD_FIELDS = ("id", "name", "parent", "program", "state", "value", "error", "energy_used", "budget")


def _cli_error(message: str) -> Exception:
    from avm.app.cli import CliError  # imported here: avm.app.cli imports this module

    return CliError(message)


# --- reading the store ------------------------------------------------------------------


def _open_store(path: str | os.PathLike[str]) -> Any:
    """The store at ``path``, opened for reading only (see the module docstring)."""
    from avm.errors import StoreError
    from avm.memory.store import ContentStore

    where = os.fspath(path)
    if not os.path.exists(where):
        raise _cli_error(f"{where}: no such directory")
    if not os.path.isdir(where):
        raise _cli_error(f"{where}: not a directory (an AVM store is a directory holding data.mdb)")
    try:
        entries = sorted(os.listdir(where))
    except OSError as exc:
        raise _cli_error(f"{where}: cannot list the directory: {exc.strerror}") from None
    if not entries:
        raise _cli_error(f"{where}: an empty directory, not an AVM store")
    foreign = [e for e in entries if e not in _LMDB_FILES]
    if foreign or "data.mdb" not in entries:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        what = f"it holds {shown}" if foreign else "no data.mdb"
        raise _cli_error(f"{where}: not an AVM store ({what})")
    try:
        return ContentStore(where, hot_bytes=0, warm_bytes=0)
    except StoreError as exc:
        raise _cli_error(_one_line(str(exc))) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True, slots=True)
class _Agent:
    run: str
    id: int
    record: dict[str, Any]

    @property
    def state(self) -> str:
        return str(self.record.get("state") or "unknown")

    @property
    def energy_used(self) -> float:
        return _number(self.record.get("energy_used"))


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return 0.0
    return float(value)


def _split_agent_name(name: bytes) -> tuple[str, int] | None:
    parts = name[len(AGENTS_PREFIX):].split(b"/")
    if len(parts) != 2 or not parts[0] or not parts[1].isdigit():
        return None
    return parts[0].decode("utf-8", "replace"), int(parts[1])


def _read_value(store: Any, ref: Any) -> tuple[bool, Any, str | None]:
    """(True, value, None), or (False, None, why) with why starting "damaged" for an object that is
    corrupt, missing or cannot be read (LMDB finding a damaged page: MDB_CORRUPTED)."""
    from avm.errors import StoreError
    from avm.memory.values import ValueFormatError

    try:
        return True, store.get_value(ref), None
    except ValueFormatError as exc:  # intact bytes that are not a value
        return False, None, f"not a value: {_one_line(str(exc))}"
    except StoreError as exc:  # CorruptObject, NotFound, a failed read
        return False, None, f"damaged: {_one_line(str(exc))}"


def _names_by_prefix(names: Iterable[bytes]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in names:
        head, sep, _ = name.partition(b"/")
        key = head.decode("utf-8", "replace") if sep else "(no prefix)"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _resolve_run(run: str, runs: Sequence[str], where: str) -> str:
    if run in runs:
        return run
    matches = [r for r in runs if r.startswith(run)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise _cli_error(f"--run {run!r}: ambiguous in {where} (matches {', '.join(matches[:5])}"
                         f"{', ...' if len(matches) > 5 else ''})")
    known = ", ".join(runs[:5]) + (", ..." if len(runs) > 5 else "") if runs else "none recorded"
    raise _cli_error(f"--run {run!r}: no such run in {where} (runs: {known})")


def _check_state(state: str) -> str:
    from avm.scheduler.states import AgentState

    wanted = state.strip().lower()
    values = [s.value for s in AgentState] + [UNREADABLE]
    if wanted not in values:
        raise _cli_error(f"--state {state!r}: not an agent state (one of {', '.join(values)})")
    return wanted


def load_report(path: str | os.PathLike[str], *, run: str | None = None, state: str | None = None,
                limit: int = 20) -> dict[str, Any]:
    """Everything `inspect_store` shows, as one JSON-ready dict (user errors raise `avm.app.cli.CliError`)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise _cli_error(f"--limit {limit!r}: must be a whole number >= 0 (0 shows every agent)")
    wanted_state = _check_state(state) if state is not None else None
    where = os.fspath(path)
    from avm.errors import StoreError

    store = _open_store(where)
    try:
        try:
            return _report(store, where, run, wanted_state, limit)
        except StoreError as exc:
            raise _cli_error(f"{where}: {_one_line(str(exc))}") from None
    finally:
        store.close()


def _report(store: Any, where: str, run: str | None, state: str | None, limit: int) -> dict[str, Any]:
    stats = store.statistics()
    all_names = store.names()
    agents: list[_Agent] = []
    unreadable: list[str] = []
    summaries: dict[str, Any] = {}
    damaged = 0
    damage: str | None = None  # the first damaged object's problem, named in the report
    for name, ref in all_names.items():
        if name.startswith(AGENTS_PREFIX):
            key = _split_agent_name(name)
            if key is None:
                unreadable.append(name.decode("utf-8", "replace"))
                continue
            ok, record, why = _read_value(store, ref)
            if not ok or not isinstance(record, dict):
                # Counted and listed as an agent of its run, never dropped: the run had it.
                unreadable.append(name.decode("utf-8", "replace"))
                if why and why.startswith("damaged"):
                    damaged += 1
                    damage = damage or why.removeprefix("damaged: ")
                why = why or f"not a map: {type(record).__name__}"
                record = {"state": UNREADABLE, "error": f"record unreadable ({why})"}
            agents.append(_Agent(key[0], key[1], record))
        elif name.startswith(RUNS_PREFIX):
            run_id = name[len(RUNS_PREFIX):].decode("utf-8", "replace")
            ok, summary, why = _read_value(store, ref)
            if not ok:
                unreadable.append(name.decode("utf-8", "replace"))
                if why and why.startswith("damaged"):
                    damaged += 1
                    damage = damage or why.removeprefix("damaged: ")
                continue
            summaries[run_id] = summary

    runs = sorted({a.run for a in agents} | set(summaries), reverse=True)  # run ids start with a timestamp
    if run is not None:
        run = _resolve_run(run, runs, where)
        runs = [run]
    by_run: dict[str, list[_Agent]] = {r: [] for r in runs}
    for agent in agents:
        if agent.run in by_run:
            by_run[agent.run].append(agent)
    for members in by_run.values():
        members.sort(key=lambda a: a.id)

    run_reports = [_run_report(r, by_run[r], summaries.get(r)) for r in runs]
    matching = [a for r in runs for a in by_run[r] if state is None or a.state == state]
    shown = matching if limit == 0 else matching[:limit]

    dedup, dedup_source = None, None
    for r in runs:  # the newest run that reports one
        summary = summaries.get(r)
        value = summary.get("dedup_ratio") if isinstance(summary, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            dedup, dedup_source = value, f"run {r}"
            break
    if dedup is None and stats.logical_bytes:  # never after a fresh open, but harmless
        dedup, dedup_source = stats.dedup_ratio, "store"
    return {
        "store": where,
        "tiers": [{"name": t.name, "enabled": t.enabled, "objects": t.objects, "bytes": t.bytes,
                   "raw_bytes": t.raw_bytes, "compression_ratio": round(t.compression_ratio, 4)}
                  for t in stats.tiers()],
        "unique_objects": stats.unique_objects,
        "unique_bytes": stats.unique_bytes,
        "physical_bytes": stats.physical_bytes,
        "compression_ratio": round(stats.compression_ratio, 4),
        "dedup_ratio": dedup,
        "dedup_ratio_source": dedup_source,
        "names": len(all_names),
        "names_by_prefix": _names_by_prefix(all_names),
        "pinned_objects": stats.pinned_objects,
        "dictionaries": stats.dictionaries,
        "runs": run_reports,
        "filters": {"run": run, "state": state, "limit": limit},
        "agents_matching": len(matching),
        "agents_left_out": len(matching) - len(shown),  # past --limit (0 lists every one)
        "agents": [_agent_json(a) for a in shown],
        "unreadable_names": unreadable,
        "damaged_objects": damaged,
        "first_damage": damage,
    }


def _run_report(run: str, agents: list[_Agent], summary: Any) -> dict[str, Any]:
    by_state: dict[str, int] = {}
    for agent in agents:
        by_state[agent.state] = by_state.get(agent.state, 0) + 1
    top = sorted(agents, key=lambda a: (-a.energy_used, a.id))[:TOP_PER_RUN]
    # A child's budget comes out of its parent's and its energy counts in its parent's energy_used,
    # so the run's totals add up the agents the host spawned (no parent) only.
    roots = [a for a in agents if a.record.get("parent") is None]
    return {
        "run": run,
        "agents": len(agents),
        "by_state": dict(sorted(by_state.items(), key=lambda kv: (-kv[1], kv[0]))),
        "energy_used": round(sum(a.energy_used for a in roots), 3),
        "energy_budget": round(sum(_number(a.record.get("budget")) for a in roots), 3),
        "top_agents": [{"id": a.id, "name": _jsonable(a.record.get("name")), "state": a.state,
                        "energy_used": a.energy_used} for a in top],
        "summary": _jsonable(summary),
    }


def _agent_json(agent: _Agent) -> dict[str, Any]:
    out: dict[str, Any] = {"run": agent.run}
    for key in _RECORD_FIELDS:
        out[key] = _jsonable(agent.record.get(key))
    out["id"] = agent.id
    out["state"] = agent.state
    return out


def _jsonable(value: Any) -> Any:
    """A stored value as plain JSON types (refs and bytes as tagged text)."""
    from avm.memory.ref import Ref

    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Ref):
        return "ref:" + value.hex()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes:" + bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return repr(value)


# --- printing ----------------------------------------------------------------------------


def print_table(console: Console, title: str, headers: Sequence[str], rows: Sequence[Sequence[str]],
                right: Iterable[int] = ()) -> None:
    """A table: a rich one on a terminal, plain aligned columns otherwise (pipes, files)."""
    right = set(right)
    if console.is_terminal:
        table = Table(title=title, title_justify="left", header_style="bold")
        for i, header in enumerate(headers):
            table.add_column(header, justify="right" if i in right else "left", overflow="fold")
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))
        console.print(table)
        return
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(out).rstrip()

    if title:
        console.out(title, highlight=False)
    console.out(line(headers), highlight=False)
    for row in rows:
        console.out(line(row), highlight=False)


def _say(console: Console, text: str = "") -> None:
    if console.is_terminal:
        console.print(Text(text))
    else:
        console.out(text, highlight=False)


def _bytes(n: int) -> str:
    if n < 1024:
        return f"{n:,} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024  # type: ignore[assignment]
        if n < 1024 or unit == "TiB":
            return f"{n:,.1f} {unit}"
    raise AssertionError("unreachable")


def _energy(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "?"
    text = f"{x:,.3f}".rstrip("0").rstrip(".")
    return text or "0"


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _short(value: Any, limit: int = SHORT_CHARS, *, quote: bool = False) -> str:
    """One line of at most ``limit`` characters; ``quote``: text values in quotes (as in a list)."""
    from avm.lang.values import render

    try:
        text = render([value])[1:-1] if quote or not isinstance(value, str) else value
    except Exception:  # a value render refuses (too big, too deep): its type will do
        text = f"<{type(value).__name__}>"
    text = _printable(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _agent_row(agent: Mapping[str, Any], with_run: bool) -> list[str]:
    if agent["state"] == "done":
        outcome = _short(agent["value"], quote=True)
    else:
        outcome = _short(agent["error"]) if agent["error"] else ""
    budget = agent["budget"]
    energy = _energy(agent["energy_used"]) + ("" if budget is None else f" / {_energy(budget)}")
    name = agent["name"]
    row = [str(agent["id"]), "" if name is None else _printable(str(name)), agent["state"], energy, outcome]
    return ([agent["run"]] if with_run else []) + row


def _summary_value(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:,.6g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return _short(value, 100, quote=True)


def _print_summaries(runs: Sequence[Mapping[str, Any]], console: Console) -> None:
    """The newest run's summary map as a table; the others are only named (``--run`` shows one)."""
    with_summary = [r for r in runs if r["summary"] is not None]
    if not with_summary:
        return
    newest = with_summary[0]
    summary = newest["summary"]
    _say(console)
    if isinstance(summary, dict):
        rows = [[_printable(str(k)), _summary_value(v)] for k, v in summary.items()]
        print_table(console, f"run {newest['run']} summary (runs/{newest['run']})", ["key", "value"], rows)
    else:
        _say(console, f"run {newest['run']} summary: {_short(summary, 200, quote=True)}")
    others = [r["run"] for r in with_summary[1:]]
    if others:
        _say(console, f"{len(others)} older run(s) with a summary: {', '.join(others[:5])}"
                      f"{', ...' if len(others) > 5 else ''} (--run RUN shows one)")


def _print_report(report: Mapping[str, Any], console: Console) -> None:
    _say(console, f"AVM store {report['store']}")
    tiers = [[t["name"] + ("" if t["enabled"] else " (off)"), f"{t['objects']:,}", _bytes(t["bytes"]),
              _bytes(t["raw_bytes"]), f"{t['compression_ratio']:.2f}x"] for t in report["tiers"]]
    print_table(console, "", ["tier", "objects", "bytes", "raw bytes", "compression"], tiers, right=(1, 2, 3, 4))
    dedup = report["dedup_ratio"]
    if isinstance(dedup, (int, float)):
        dedup_text = f"{dedup:.2f}x (reported by {report['dedup_ratio_source']})"
    else:
        dedup_text = "unknown (the store does not keep the bytes put before deduplication)"
    prefixes = ", ".join(f"{k} {v:,}" for k, v in report["names_by_prefix"].items())
    _say(console, f"unique: {report['unique_objects']:,} objects, {_bytes(report['unique_bytes'])} "
                  f"({_bytes(report['physical_bytes'])} stored, compression {report['compression_ratio']:.2f}x)")
    _say(console, f"dedup ratio: {dedup_text}")
    _say(console, f"names: {report['names']:,}" + (f" ({prefixes})" if prefixes else "")
         + f"; pinned objects: {report['pinned_objects']:,}; dictionaries: {report['dictionaries']}")
    _say(console, "(hot and warm are caches of the process that has the store open: empty when read from here)")

    runs = report["runs"]
    _say(console)
    if not runs:
        _say(console, "no runs recorded (run the VM with VMSettings(record_agents=True) to record its agents)")
    else:
        rows = []
        for r in runs:
            states = ", ".join(f"{s} {n:,}" for s, n in r["by_state"].items()) or "-"
            top = ", ".join(f"#{a['id']}{' ' + _printable(str(a['name'])) if a['name'] is not None else ''}: "
                            f"{_energy(a['energy_used'])}" for a in r["top_agents"]) or "-"
            energy = _energy(r["energy_used"]) + (f" / {_energy(r['energy_budget'])}" if r["energy_budget"] else "")
            rows.append([r["run"], f"{r['agents']:,}", states, energy, top])
        print_table(console, f"runs ({len(runs)}, newest first)",
                    ["run", "agents", "by state", "energy used / budget", f"top {TOP_PER_RUN} by energy"],
                    rows, right=(1,))
        _print_summaries(runs, console)

    agents = report["agents"]
    filters = report["filters"]
    what = [f"run {filters['run']}" if filters["run"] else "", f"state {filters['state']}" if filters["state"] else ""]
    what_text = ", ".join(w for w in what if w)
    title = f"agents: {len(agents):,} of {report['agents_matching']:,}" + (f" ({what_text})" if what_text else "")
    if len(agents) < report["agents_matching"]:
        title += " (--limit 0 shows all)"
    _say(console)
    if agents:
        with_run = len(report["runs"]) > 1
        headers = (["run"] if with_run else []) + ["id", "name", "state", "energy used / budget", "value or error"]
        offset = 1 if with_run else 0
        print_table(console, title, headers, [_agent_row(a, with_run) for a in agents],
                    right=(offset, offset + 3))
    else:
        _say(console, title)
    if report["unreadable_names"]:
        _say(console, f"{len(report['unreadable_names'])} agent or run names could not be read: "
                      + ", ".join(report["unreadable_names"][:5]))
    if report["damaged_objects"]:
        _say(console, f"{report['damaged_objects']} of them are damaged (corrupt, missing or unreadable objects; "
                      f"first: {report['first_damage']}); avm verify {report['store']} checks every object")


def inspect_store(path: str | os.PathLike[str], *, run: str | None = None, state: str | None = None,
                  limit: int = 20, as_json: bool = False, console: Console | None = None,
                  isolated: bool = False) -> int:
    """Print the report of the store at ``path``; the exit code (0, or 1 if records are damaged).

    User errors (no such directory, not a store, an unknown run or state, a
    negative limit) raise `avm.app.cli.CliError`, which the launcher prints as one
    line with exit code 2. ``isolated``: read the store in a child process
    (as ``avm inspect`` does), so that a damaged file that kills its reader
    is a `CliError` too (see `avm.app.store_check`).
    """
    if isolated:
        from avm.app.store_check import in_child

        report = in_child("report", path, run=run, state=state, limit=limit)
    else:
        report = load_report(path, run=run, state=state, limit=limit)
    if console is None:
        console = Console()
    if as_json:
        console.out(json.dumps(report), highlight=False)
    else:
        _print_report(report, console)
    return 1 if report["damaged_objects"] else 0


# --- the launcher's subcommands ----------------------------------------------------------------


def _cmd_inspect(args: argparse.Namespace) -> int:
    if args.agent is not None:
        from avm.app.journal_report import print_journal
        from avm.app.store_check import in_child

        report = in_child("journal", args.store, agent=args.agent)
        if args.json:
            Console().out(json.dumps(report), highlight=False)
        else:
            print_journal(report, Console())
        return 1 if report["problem"] else 0
    return inspect_store(args.store, run=args.run, state=args.state, limit=args.limit, as_json=args.json,
                         isolated=True)


def add_inspect_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``avm inspect`` on an argparse subparsers object; the new parser."""
    p = subparsers.add_parser(
        "inspect", help="show what an AVM store holds: tiers, objects, runs and their agents",
        description="Show an on-disk AVM store without changing it: its tiers, objects and names, then per run "
                    "the agents the VM recorded (VMSettings.record_agents), by state and energy, and a table "
                    "of the agents.")
    p.add_argument("store", metavar="STORE", help="the store's directory")
    p.add_argument("agent", metavar="AGENT", nargs="?",
                   help="show this agent's journal instead: ID, or RUN/ID (a run id or a unique prefix of it)")
    p.add_argument("--run", metavar="RUN", help="only this run (its id, or a unique prefix of it)")
    p.add_argument("--state", metavar="STATE", help="only agents that ended in this state (done, failed, ...)")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="agents listed at most (default 20; 0: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.set_defaults(fn=_cmd_inspect, func=_cmd_inspect)
    return p  # type: ignore[no-any-return]

