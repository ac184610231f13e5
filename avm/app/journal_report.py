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

from avm.app.store_report import (
    _cli_error,
    _energy,
    _one_line,
    _open_store,
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
        matches = [r for r in runs if r == run] or [r for r in runs if r.startswith(run)]
        if len(matches) != 1:
            raise _cli_error(f"agent {agent!r}: {'more than one run starts with' if matches else 'no run'} {run!r} "
                             f"in {where} (runs: {', '.join(runs[-5:])})")
        run = matches[0]
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
    from avm.errors import Erased, StoreError

    if ref is None:
        return ""
    try:
        return _short(store.get_value(ref), SHOWN_CHARS, quote=True)
    except Erased:
        return "<erased>"
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
                    "request": _shown(store, e.request), "result": _shown(store, e.result),
                    "request_ref": e.request.hex() if e.request else None,
                    "result_ref": e.result.hex() if e.result else None} for ref, e in chain]
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


# --- avm replay ---------------------------------------------------------------------------------


def replay_store(path: str | os.PathLike[str], agent: str | None, *, every: bool = False,
                 as_json: bool = False) -> int:
    """``avm replay STORE AGENT`` (or ``--all``): print one line per journal replayed; the exit code
    (0: every one reproduced its journal; 1: a difference, an erased input or a broken journal)."""
    import json

    from avm.journal.reader import journals
    from avm.journal.replay import replay_journal

    if (agent is None) == (not every):
        raise _cli_error("avm replay: name an AGENT (ID or RUN/ID), or --all")
    where = os.fspath(path)
    store = _open_store(where)
    try:
        found = journals(store)
        keys = sorted(found) if every else [_pick(found, agent, where)]  # type: ignore[arg-type]
        if not keys:
            raise _cli_error(f"{where}: no journals (run with a store: avm run SPEC --store DIR)")
        reports = [replay_journal(store, key, found[key]) for key in keys]
    finally:
        store.close()
    bad = [r for r in reports if not r.ok]
    if as_json:
        print(json.dumps({"store": where, "journals": len(reports), "reproduced": len(reports) - len(bad),
                          "mismatches": [{"journal": r.journal, "problem": r.problem, "erased": r.erased}
                                         for r in bad]}))
    else:
        for report in reports if not every else bad:
            print(report.line())
        if every:
            print(f"{len(reports) - len(bad):,} of {len(reports):,} journals reproduced" +
                  (f"; {len(bad):,} did not (above)" if bad else ""))
    return 1 if bad else 0


def _cmd_replay(args: Any) -> int:
    return replay_store(args.store, args.agent, every=args.all, as_json=args.json)


def add_replay_parser(subparsers: Any) -> Any:
    p = subparsers.add_parser(
        "replay", help="re-run an agent from its journal (no network, no tools) and check it reproduces it",
        description="Run an agent's program again from its start, feeding it the results its journal holds "
                    "(no LLM, no tools, no network), and check that it asks for the same effects in the same "
                    "order, that its snapshots are the same frames, that it ends the same way, and that the "
                    "rebuilt entries hash to the journal's head. A difference names the first differing entry "
                    "and the program line. Exit code 0: reproduced; 1: not (or an erased input, or a broken "
                    "journal); 2: the store cannot be read.")
    p.add_argument("store", metavar="STORE", help="the store's directory")
    p.add_argument("agent", metavar="AGENT", nargs="?", help="ID, or RUN/ID (a run id or a unique prefix of it)")
    p.add_argument("--all", action="store_true", help="replay every journal of the store")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.set_defaults(fn=_cmd_replay, func=_cmd_replay)
    return p


# --- avm erase ----------------------------------------------------------------------------------


def erase_object(path: str | os.PathLike[str], ref_text: str, reason: str = "") -> int:
    """``avm erase STORE REF``: replace an object's content with a tombstone; exit code 0."""
    from avm.errors import Erased, NotFound, StoreError
    from avm.journal.entry import JournalError, decode_entry
    from avm.memory.ref import Ref

    try:
        ref = Ref(ref_text.strip().lower())
    except (TypeError, ValueError):
        raise _cli_error(f"{ref_text!r}: not a ref (64 hex characters)") from None
    where = os.fspath(path)
    store = _open_store(where)
    try:
        try:
            data = store.get(ref, promote=False)
        except NotFound:
            raise _cli_error(f"{where}: no object {ref.hex()}") from None
        except Erased:
            print(f"{ref.hex()} was erased already")
            return 0
        except StoreError as exc:
            data = b""  # damaged: erasing it is still what was asked
            del exc
        try:
            decode_entry(data)
        except JournalError:
            pass
        else:
            raise _cli_error(f"{ref.hex()} is a journal entry: erase the values it names (avm inspect STORE AGENT "
                             f"shows them), so its agent's hash chain can still be followed")
        store.erase(ref, reason)
    finally:
        store.close()
    print(f"erased {ref.hex()}: reading it now raises Erased; journals that name it still verify, and replay of an "
          f"agent that read it stops with 'erased input'")
    return 0


def _cmd_erase(args: Any) -> int:
    return erase_object(args.store, args.ref, args.reason or "")


def add_erase_parser(subparsers: Any) -> Any:
    p = subparsers.add_parser(
        "erase", help="replace an object's content with a tombstone (an erasure request for personal data)",
        description="Replace the content of one object of an AVM store with a tombstone, in the file at once: "
                    "reading it then raises Erased, while its ref stays, so every journal's hash chain still "
                    "verifies and a replay that needs it stops with an 'erased input' outcome. Exit code 0: "
                    "erased (or erased already); 2: no such object, or the store cannot be opened.")
    p.add_argument("store", metavar="STORE", help="the store's directory")
    p.add_argument("ref", metavar="REF", help="the object's ref (64 hex characters; avm inspect STORE AGENT shows "
                                              "a journal's)")
    p.add_argument("--reason", metavar="TEXT", help="kept in the tombstone (at most 200 bytes)")
    p.set_defaults(fn=_cmd_erase, func=_cmd_erase)
    return p
