"""``avm inspect STORE AGENT``: one agent's journal, entry by entry.

AGENT is ``RUN/ID`` (a run id, or a unique prefix of one, and the agent's
number) or just ``ID`` when one run of the store has an agent of that number
(the newest such run otherwise). Each entry shows its sequence number, kind,
energy after it, what was asked (the effect's operands) and what came back.
A broken chain is reported with the first broken link, exit code 1.
"""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console

from avm.store_report import (
    _cli_error,
    _energy,
    _one_line,
    _open_store,
    _resolve_run,
    _say,
    _short,
    print_table,
)

SHOWN_CHARS = 70


def _pick(found: dict[str, Any], agent: str, where: str) -> str:
    """The journal key ``run/000000007`` that ``agent`` names."""
    run, sep, ident = agent.rpartition("/")
    if not ident.isdigit():
        raise _cli_error(f"agent {agent!r}: expected ID or RUN/ID (an agent's number, as avm inspect lists)")
    number = int(ident)
    runs = sorted({key.split("/", 1)[0] for key in found})
    if not runs:
        raise _cli_error(f"{where}: no journals (run with a store: avm run SPEC --store DIR)")
    if sep:
        run = _resolve_run(run, runs, where)
    else:
        having = [r for r in runs if f"{r}/{number:09d}" in found]
        if not having:
            raise _cli_error(f"agent {number}: no journal in {where}")
        run = having[-1]
    key = f"{run}/{number:09d}"
    if key not in found:
        raise _cli_error(f"agent {number}: no journal in run {run} of {where}")
    return key


def _shown(store: Any, ref: Any) -> str:
    from avm.errors import StoreError

    if ref is None:
        return ""
    try:
        return _short(store.get_value(ref), SHOWN_CHARS, quote=True)
    except StoreError as exc:
        return f"<damaged: {_one_line(str(exc))[:SHOWN_CHARS]}>"


def load_journal(path: str | os.PathLike[str], agent: str) -> dict[str, Any]:
    """One agent's journal as a JSON-ready dict (the entries that could be read, and the problem if any)."""
    from avm.journal.entry import JournalError
    from avm.journal.reader import check_journal, journals, read_journal

    where = os.fspath(path)
    store = _open_store(where)
    try:
        found = journals(store)
        key = _pick(found, agent, where)
        problem = None
        try:
            chain = check_journal(store, found[key], who=f"journal {key}")
        except JournalError as exc:
            problem = str(exc)
            try:
                chain = read_journal(store, found[key], who=f"journal {key}")
            except JournalError:
                chain = []
        entries = [{"seq": e.seq, "kind": e.kind, "energy": e.energy / 1000, "ref": ref.hex(),
                    "request": _shown(store, e.request), "result": _shown(store, e.result)} for ref, e in chain]
    finally:
        store.close()
    return {"store": where, "journal": key, "head": found[key].hex(), "entries": entries, "problem": problem}


def print_journal(report: dict[str, Any], console: Console) -> None:
    _say(console, f"journal {report['journal']} in {report['store']}: {len(report['entries'])} entries, "
                  f"head {report['head'][:16]}")
    rows = [[str(e["seq"]), e["kind"], _energy(e["energy"]), e["request"], e["result"]] for e in report["entries"]]
    print_table(console, "", ["seq", "kind", "energy", "request", "result"], rows, right=(0, 2))
    if report["problem"]:
        _say(console, f"problem: {report['problem']}")
