"""Reading a store in a child process, and ``avm verify STORE``.

    avm verify STORE [--json]

LMDB maps ``data.mdb`` and trusts what it finds there. Most damage becomes a
clear error (a short file is refused before mapping, see
`avm.memory.lmdb_meta`; a blob that fails its digest is `CorruptObject`), but
a page that lies about itself can still end the reading process: a zeroed
page trips LMDB's ``Assertion 'IS_LEAF(mp)'`` (SIGABRT), a page number past
the end of the file is a SIGBUS or SIGSEGV. No Python code can catch those.
So ``avm inspect`` and ``avm verify`` read the store in a child process
(``python -m avm.app.store_check``) that prints its result as one JSON document;
the parent prints the report. A child killed by a signal becomes one line
naming the file (exit code 2), never a dead ``avm``.

``avm verify`` reads every committed object and checks its digest, the
store's counters, and that every name, pin and dictionary refers to an
object that is there (`ContentStore.verify`). Exit code 0: nothing wrong;
1: problems found (listed); 2: the store could not be read at all.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from typing import Any

__all__ = ["add_verify_parser", "in_child", "verify_report", "verify_store"]

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2
SHOWN = 5  # problems of one kind listed by name


def _cli_error(message: str) -> Exception:
    from avm.app.cli import CliError  # imported here: avm.app.cli imports this module

    return CliError(message)


# --- the child process ---------------------------------------------------------------------------


def _package_root() -> str:
    import avm

    return os.path.dirname(os.path.dirname(os.path.abspath(avm.__file__)))


def in_child(command: str, path: str | os.PathLike[str], **options: Any) -> Any:
    """Run ``command`` ("report" or "verify") on the store at ``path`` in a child process; its result.

    User errors and damage the child reports raise `avm.app.cli.CliError` with its one line; a child that
    dies (a signal from LMDB, an unexpected error) raises `CliError` naming the data file.
    """
    where = os.fspath(path)
    env = dict(os.environ)  # the child imports this very avm, wherever it was imported from
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "avm.app.store_check", command, where, json.dumps(options)]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=env, check=False)
    stderr = proc.stderr.decode("utf-8", "replace").strip()
    if proc.returncode == 0:
        return json.loads(proc.stdout)
    if proc.returncode == EXIT_USAGE and stderr:
        raise _cli_error(stderr.splitlines()[-1])
    data_file = os.path.join(where, "data.mdb")
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        said = [line.strip() for line in stderr.splitlines() if "Assertion" in line or "mdb" in line.lower()]
        detail = f" ({said[-1]})" if said else ""
        raise _cli_error(f"{data_file} is damaged: reading it killed the process that checked it with "
                         f"{name}{detail}; nothing was changed")
    last = stderr.splitlines()[-1] if stderr else "no message"
    raise _cli_error(f"{data_file}: the check failed (exit code {proc.returncode}): {last}")


def _child_main(argv: list[str]) -> int:
    from avm.app.cli import CliError

    command, path, options = argv[0], argv[1], json.loads(argv[2])
    try:
        if command == "report":
            from avm.app.store_report import load_report

            result = load_report(path, **options)
        elif command == "verify":
            result = verify_report(path)
        elif command == "journal":
            from avm.app.journal_report import load_journal

            result = load_journal(path, **options)
        else:
            raise CliError(f"unknown store check {command!r}")
    except CliError as exc:
        print(f"{exc}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(json.dumps(result))
    return EXIT_OK


# --- verify --------------------------------------------------------------------------------------------


def verify_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What `ContentStore.verify` finds in the store at ``path``, as one JSON-ready dict (in this process)."""
    from avm.errors import StoreError
    from avm.journal.reader import check_journals
    from avm.app.store_report import _one_line, _open_store

    where = os.fspath(path)
    store = _open_store(where)
    try:
        check = store.verify()
        journals, entries, broken = check_journals(store)
    except StoreError as exc:
        raise _cli_error(f"{where}: {_one_line(str(exc))}") from None
    finally:
        store.close()
    return {
        "store": where, "ok": check.ok and not broken, "journals": journals, "journal_entries": entries,
        "broken_journals": broken, "objects": check.objects, "bytes": check.bytes,
        "recorded_objects": check.recorded_objects, "recorded_bytes": check.recorded_bytes,
        "corrupt": [k.hex() for k in check.corrupt], "bad_keys": [k.hex() for k in check.bad_keys],
        "dangling_names": [n.decode("utf-8", "replace") for n in check.dangling_names],
        "dangling_pins": [r.hex() for r in check.dangling_pins],
        "missing_dictionaries": [r.hex() for r in check.missing_dictionaries], "erased": check.erased,
    }


def _listed(items: list[str]) -> str:
    return ", ".join(items[:SHOWN]) + (f", ... ({len(items) - SHOWN} more)" if len(items) > SHOWN else "")


def verify_store(path: str | os.PathLike[str], *, as_json: bool = False, isolated: bool = True) -> int:
    """Print what ``avm verify`` finds; the exit code (0 nothing wrong, 1 problems found)."""
    report = in_child("verify", path) if isolated else verify_report(path)
    if as_json:
        print(json.dumps(report))
        return EXIT_OK if report["ok"] else EXIT_PROBLEMS
    print(f"AVM store {report['store']}: {report['objects']:,} objects ({report['bytes']:,} bytes) read and checked; "
          f"{report['journals']:,} journals ({report['journal_entries']:,} entries) followed link by link"
          + (f"; {report['erased']:,} erased on request" if report.get("erased") else ""))
    problems = []
    if (report["objects"], report["bytes"]) != (report["recorded_objects"], report["recorded_bytes"]):
        problems.append(f"the counters say {report['recorded_objects']:,} objects of {report['recorded_bytes']:,} "
                        f"bytes, the store holds {report['objects']:,} of {report['bytes']:,}")
    for key, what in (("corrupt", "corrupt objects (digest mismatch)"), ("bad_keys", "keys that are not refs"),
                      ("dangling_names", "names bound to a missing object"),
                      ("dangling_pins", "pins of a missing object"),
                      ("missing_dictionaries", "dictionaries missing")):
        if report[key]:
            problems.append(f"{len(report[key]):,} {what}: {_listed(report[key])}")
    problems += [f"broken journal: {problem}" for problem in report["broken_journals"]]
    for problem in problems:
        print(f"problem: {problem}")
    print("no problems found" if not problems else f"{len(problems)} kind(s) of problem found")
    return EXIT_OK if not problems else EXIT_PROBLEMS


def _cmd_verify(args: argparse.Namespace) -> int:
    return verify_store(args.store, as_json=args.json)


def add_verify_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``avm verify`` on an argparse subparsers object; the new parser."""
    p = subparsers.add_parser(
        "verify", help="read every object of an AVM store and check it",
        description="Read every object of an on-disk AVM store in a child process and check its digest, the "
                    "store's counters, that every name, pin and dictionary refers to an object that is there, and "
                    "every agent's journal: each hash chain from its head to its first entry, and every value an "
                    "entry names (a broken chain is named by its first broken link). "
                    "Nothing is changed. Exit code 0: no problems; 1: problems found; 2: the store cannot be read.")
    p.add_argument("store", metavar="STORE", help="the store's directory")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.set_defaults(fn=_cmd_verify, func=_cmd_verify)
    return p  # type: ignore[no-any-return]


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
