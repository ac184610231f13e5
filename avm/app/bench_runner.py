"""`avm bench`: run the scripts of the repository's ``bench/`` and print one table of their figures.

    avm bench [NAMES...] [--quick] [--json] [--timeout S]

Each script runs in its own Python process as ``python bench/NAME.py --json``
(so one bench cannot disturb the next one's memory or timing) and prints one
JSON object as its last line of output; the table has a row per figure:
bench, figure, value and target. A script that reports ``targets_met`` (a map
from figure to true or false) gets "met" or "missed" in the target column of
those figures. Nested maps become ``outer.inner`` figures.

``--quick`` passes each script the options that make it short, where it has
them (fewer repeats, a smaller corpus, shorter scenarios; any script with a
``--quick`` option of its own gets that): figures of a quick run are for a
smoke test, not for comparison. A script without such options runs in full.

A script that fails (a non-zero exit, a timeout, no JSON object on its last
line) gets one row saying so, with its exit code and the last line it wrote
to stderr; the others still run, and the exit code is 1. Missed targets are
figures, not failures.

The scripts live in the repository checkout, next to the ``avm`` package
directory; an installed package without its repository has none, which is
reported as one line (exit 2).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

__all__ = ["QUICK_ARGS", "add_bench_parser", "default_bench_dir", "run_benches"]

DEFAULT_TIMEOUT_S = 900.0  # seconds one script may run before it is killed and reported as failed
# Scripts that take longer by design (unless --quick, or --timeout says otherwise): bench/agents.py runs
# four systems at three fleet sizes and two latencies, each run up to 10 minutes.
LONG_TIMEOUT_S: Mapping[str, float] = {"agents": 3 * 3600.0}
# The usual order: the quick ones first. Other scripts follow in name order.
ORDER = ("vm_ops", "memory", "llm_server", "io", "scheduler", "dashboard")
# What --quick passes each script, option by option; an option is passed only if the script's source
# mentions it (so a renamed option does not break the run). Any script mentioning "--quick" gets --quick.
QUICK_ARGS: Mapping[str, tuple[tuple[str, ...], ...]] = {
    "vm_ops": (("--repeats", "1"), ("--scale", "0.1")),
    "memory": (("--conversations", "150"),),
    "llm_server": (("--seconds", "0.5"),),
    "io": (("--tasks", "1000"), ("--calls", "1"), ("--runs", "1"), ("--hits", "5000")),
    "dashboard": (("--rounds", "1"), ("--agents", "200"), ("--turns", "2")),
}
VALUE_CHARS = 60  # longer values (lists) are cut in the table
ERROR_CHARS = 160  # a failure's message (exit code and last stderr line) is cut to this in the table


def _cli_error(message: str) -> Exception:
    from avm.app.cli import CliError  # imported here: avm.app.cli imports this module

    return CliError(message)


def _package_root() -> Path:
    return Path(__file__).resolve().parents[2]  # (avm/app/bench_runner.py: the checkout is three up)


def default_bench_dir() -> Path:
    """Where the bench scripts are: ``bench/`` in the checkout that holds this ``avm`` package."""
    return _package_root() / "bench"


def _is_bench(path: Path) -> bool:
    if path.name.startswith("_") or path.suffix != ".py":
        return False
    try:
        return "--json" in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def _select(bench_dir: Path, names: Sequence[str] | None) -> list[Path]:
    if not bench_dir.is_dir():
        raise _cli_error(f"no bench directory at {bench_dir}: `avm bench` runs the scripts of a checkout of the "
                         "AVM repository (an installed package has none)")
    found = {p.stem: p for p in bench_dir.glob("*.py") if _is_bench(p)}
    if not names:
        if not found:
            raise _cli_error(f"{bench_dir}: no bench scripts (*.py files with a --json option)")
        rank = {name: i for i, name in enumerate(ORDER)}
        return [found[n] for n in sorted(found, key=lambda n: (rank.get(n, len(ORDER)), n))]
    chosen: list[Path] = []
    for raw in names:
        stem = Path(raw).stem if raw.endswith(".py") or "/" in raw else raw
        path = found.get(stem)
        if path is None:
            candidate = bench_dir / f"{stem}.py"
            if not candidate.is_file():
                known = ", ".join(sorted(found)) or "none"
                raise _cli_error(f"no bench named {raw!r} in {bench_dir} (benches: {known})")
            path = candidate
        if path not in chosen:
            chosen.append(path)
    return chosen


def _quick_args(script: Path) -> list[str]:
    try:
        source = script.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    if '"--quick"' in source or "'--quick'" in source:
        return ["--quick"]
    out: list[str] = []
    for option in QUICK_ARGS.get(script.stem, ()):
        if f'"{option[0]}"' in source or f"'{option[0]}'" in source:
            out.extend(option)
    return out


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """End the script and whatever it started (it runs in a session of its own)."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _run_one(script: Path, extra: list[str], timeout_s: float) -> dict[str, Any]:
    root = _package_root()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("PYTHONUNBUFFERED", "1")
    command = [sys.executable, str(script), "--json", *extra]
    result: dict[str, Any] = {"bench": script.stem, "args": ["--json", *extra], "ok": False, "exit_code": None,
                              "seconds": 0.0, "figures": None, "error": None}
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                            errors="replace", cwd=str(script.parent.parent), env=env, stdin=subprocess.DEVNULL,
                            start_new_session=hasattr(os, "killpg"))
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        stdout, stderr = proc.communicate()
        result.update(seconds=round(time.perf_counter() - started, 2), exit_code=proc.returncode,
                      error=f"timed out after {timeout_s:g} s" + (f": {_last_line(stderr)}" if stderr.strip() else ""))
        return result
    except BaseException:  # Ctrl+C or another interruption: do not leave the script running
        _kill_group(proc)
        proc.wait()
        raise
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["exit_code"] = proc.returncode
    if proc.returncode != 0:
        last = _last_line(stderr) or _last_line(stdout) or "no output"
        result["error"] = f"exit code {proc.returncode}: {last}"
        return result
    last = _last_line(stdout)
    try:
        figures = json.loads(last) if last else None
    except ValueError:
        figures = None
    if not isinstance(figures, dict):
        result["error"] = "no JSON object on the last line of its output" + (f": {last[:80]!r}" if last else "")
        return result
    result.update(ok=True, figures=figures)
    return result


def _flatten(figures: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _flatten(value, name + ".")
        else:
            yield name, value


def _format(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1e6 else f"{value:,.6g}"
    text = value if isinstance(value, str) else json.dumps(value)
    text = "".join(c if c.isprintable() else " " for c in text)
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 3] + "..."


def _target(met: Any) -> str:
    if isinstance(met, bool):
        return "met" if met else "missed"
    if isinstance(met, dict) and isinstance(met.get("met"), bool):
        text = "met" if met["met"] else "missed"
        return f"{text} ({_format(met['target'])})" if "target" in met else text
    return "" if met is None else _format(met)


def _missed(result: Mapping[str, Any]) -> list[str]:
    """The targets a script that ran reports missed (its ``targets_met``, or ``ok`` false)."""
    if not result["ok"]:
        return []
    figures = result["figures"]
    targets = figures.get("targets_met")
    missed = []
    if isinstance(targets, dict):
        for figure, met in targets.items():
            if met is False or (isinstance(met, dict) and met.get("met") is False):
                missed.append(figure)
    elif targets is False:
        missed.append("targets_met")
    if figures.get("ok") is False and not missed:
        missed.append("ok")
    return missed


def _rows(result: Mapping[str, Any]) -> list[list[str]]:
    name = result["bench"]
    if not result["ok"]:
        error = result["error"]
        return [[name, "FAILED", error if len(error) <= ERROR_CHARS else error[: ERROR_CHARS - 3] + "...", ""]]
    figures = dict(result["figures"])
    targets = figures.pop("targets_met", None)
    rows = []
    for figure, value in _flatten(figures):
        met = targets.get(figure) if isinstance(targets, dict) else None
        if figure == "ok" and isinstance(value, bool):  # the script's own verdict on its targets
            met = value
        rows.append([name, figure, _format(value), _target(met)])
    if isinstance(targets, dict):  # targets of figures the script did not report as such
        rows += [[name, figure, "", _target(met)] for figure, met in targets.items() if figure not in figures]
    elif targets is not None:
        rows.append([name, "targets_met", _format(targets), _target(targets)])
    return rows


def run_benches(names: Sequence[str] | None = None, *, as_json: bool = False, quick: bool = False,
                console: Console | None = None, timeout_s: float | None = None,
                bench_dir: str | os.PathLike[str] | None = None) -> int:
    """Run the bench scripts (all, or those named) and print their figures; the exit code.

    0 when every script ran and reported its targets met, 1 when any failed or
    missed a target (its ``targets_met``, or ``ok`` false), 130 when
    interrupted. User errors (no bench directory, an unknown name, a bad
    timeout) raise `avm.app.cli.CliError`.
    """
    if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float))
                                  or not 0 < timeout_s < math.inf):
        raise _cli_error(f"--timeout {timeout_s!r}: must be a number of seconds > 0")
    where = Path(bench_dir) if bench_dir is not None else default_bench_dir()
    scripts = _select(where, names)
    if console is None:
        console = Console()
    results: list[dict[str, Any]] = []
    interrupted = False
    for script in scripts:
        extra = _quick_args(script) if quick else []
        limit = timeout_s if timeout_s is not None else (
            DEFAULT_TIMEOUT_S if quick else LONG_TIMEOUT_S.get(script.stem, DEFAULT_TIMEOUT_S))
        shown = " ".join([f"{script.parent.name}/{script.name}", "--json", *extra])
        try:
            if console.is_terminal and not as_json:
                with console.status(f"running {shown}"):
                    result = _run_one(script, extra, limit)
            else:
                print(f"avm bench: running {shown}", file=sys.stderr, flush=True)
                result = _run_one(script, extra, limit)
        except KeyboardInterrupt:
            interrupted = True
            print(f"avm bench: interrupted during {script.name}", file=sys.stderr, flush=True)
            break
        results.append(result)
        outcome = "ok" if result["ok"] else f"FAILED ({result['error']})"
        print(f"avm bench: {script.stem}: {outcome} in {result['seconds']:.1f} s", file=sys.stderr, flush=True)

    missed = {r["bench"]: _missed(r) for r in results if _missed(r)}
    ok = all(r["ok"] for r in results) and not interrupted and not missed
    if as_json:
        console.out(json.dumps({"ok": ok, "quick": quick, "targets_missed": missed, "benches": results}),
                    highlight=False)
    else:
        from avm.app.store_report import print_table

        rows = [row for r in results for row in _rows(r)]
        title = "avm bench" + (" (quick: smoke-test figures)" if quick else "")
        print_table(console, title, ["bench", "figure", "value", "target"], rows, right=(2,))
    for bench, figures in missed.items():
        print(f"avm bench: {bench}: target missed: {', '.join(figures)}", file=sys.stderr, flush=True)
    if interrupted:
        return 130
    return 0 if ok else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    return run_benches(args.names or None, as_json=args.json, quick=args.quick, timeout_s=args.timeout)


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``avm bench`` on an argparse subparsers object; the new parser."""
    p = subparsers.add_parser(
        "bench", help="run the bench scripts and print one table of their figures",
        description="Run the scripts of the repository's bench/ directory, each in its own process with "
                    "--json, and print one table: bench, figure, value, target. A failing script, or a "
                    "target missed, is reported in the table and makes the exit code 1.")
    p.add_argument("names", nargs="*", metavar="NAME", help="benches to run (default: all), e.g. vm_ops memory")
    p.add_argument("--quick", action="store_true", help="short runs (smoke-test figures) where a script allows")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help=f"seconds each script may run (default {DEFAULT_TIMEOUT_S:g}; agents: "
                        f"{LONG_TIMEOUT_S['agents']:g} unless --quick)")
    p.set_defaults(fn=_cmd_bench, func=_cmd_bench)
    return p  # type: ignore[no-any-return]
