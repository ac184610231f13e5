"""`avm bench` (avm.app.bench_runner) against a tiny fake bench directory: the real benches are not run here."""

from __future__ import annotations

import argparse
import json
import os
import textwrap
import time
from pathlib import Path

import pytest
from rich.console import Console

from avm.app.bench_runner import add_bench_parser, default_bench_dir, run_benches
from avm.app.cli import CliError

GOOD = '''
    import argparse, json
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    print("fast: 12.5 us per op (target <= 20 us)")
    if args.json:
        print(json.dumps({"op_us": 12.5, "ops_per_s": 80000, "rss_bytes": 4096, "rounds": [1.5, 2.5],
                          "gc_seconds": {"spawn": 0.01}, "python": "3.x",
                          "targets_met": {"op_us": True, "rss_bytes": False}}))
'''
FAILS = '''
    import sys
    print("starting --json run")
    print("Traceback (most recent call last):", file=sys.stderr)
    print("RuntimeError: the server did not start", file=sys.stderr)
    sys.exit(3)
'''
NO_JSON = '''
    # accepts --json but forgets to print the object
    print("all done")
'''
QUICKABLE = '''
    import argparse, json
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    print(json.dumps({"repeats": args.repeats, "scale": args.scale}))
'''
OWN_QUICK = '''
    import argparse, json
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps({"quick": args.quick}))
'''
SLOW = '''
    import subprocess, sys, time  # --json
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    open(sys.argv[0] + ".pid", "w").write(str(server.pid))
    time.sleep(60)
'''
HELPER = '''
    # a module the scripts share: not a bench (it has no JSON option)
    X = 1
'''


def _write(directory: Path, **scripts: str) -> Path:
    directory.mkdir(exist_ok=True)
    for name, source in scripts.items():
        (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return directory


@pytest.fixture
def bench_dir(tmp_path):
    return _write(tmp_path / "bench", good=GOOD, fails=FAILS, no_json=NO_JSON, _common=HELPER, helper=HELPER)


def _run(**kwargs) -> tuple[int, str]:
    console = Console(record=True, width=200, file=open(os.devnull, "w"))
    try:
        code = run_benches(console=console, **kwargs)
    finally:
        console.file.close()
    return code, console.export_text()


def _rows(out: str) -> dict[tuple[str, str], list[str]]:
    rows = {}
    for line in out.splitlines()[2:]:
        cells = line.split()
        if len(cells) >= 2:
            rows[(cells[0], cells[1])] = cells[2:]
    return rows


def test_every_bench_runs_and_a_failure_is_a_row_and_exit_1(bench_dir, capsys):
    code, out = _run(bench_dir=bench_dir)
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == "avm bench" and lines[1].split() == ["bench", "figure", "value", "target"]
    rows = _rows(out)
    assert rows[("good", "op_us")] == ["12.5", "met"]
    assert rows[("good", "rss_bytes")] == ["4,096", "missed"]
    assert rows[("good", "ops_per_s")] == ["80,000"]
    assert rows[("good", "gc_seconds.spawn")] == ["0.01"]
    assert rows[("good", "rounds")] == ["[1.5,", "2.5]"]
    assert ("good", "targets_met") not in rows
    failed = next(line for line in lines if line.startswith("fails "))
    assert "FAILED" in failed and "exit code 3: RuntimeError: the server did not start" in failed
    no_json = next(line for line in lines if line.startswith("no_json "))
    assert "FAILED" in no_json and "no JSON object on the last line" in no_json and "all done" in no_json
    assert not any(line.startswith(("helper", "_common")) for line in lines)  # not benches
    progress = capsys.readouterr().err
    assert "avm bench: good: ok in" in progress and "avm bench: fails: FAILED (exit code 3" in progress


def test_only_the_named_benches_in_the_given_order(bench_dir):
    code, out = _run(names=["good.py"], bench_dir=bench_dir)
    assert code == 1  # (it ran, and missed its rss_bytes target)
    assert {bench for bench, _ in _rows(out)} == {"good"}
    code, out = _run(names=["no_json", "good", "no_json"], bench_dir=bench_dir)
    assert code == 1
    benches = [line.split()[0] for line in out.splitlines()[2:]]
    assert benches[0] == "no_json" and benches.count("no_json") == 1


def test_json_output_is_one_object(bench_dir):
    code, out = _run(as_json=True, bench_dir=bench_dir)
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False and report["quick"] is False
    by_name = {b["bench"]: b for b in report["benches"]}
    assert set(by_name) == {"good", "fails", "no_json"}
    assert by_name["good"]["ok"] and by_name["good"]["figures"]["targets_met"] == {"op_us": True, "rss_bytes": False}
    assert by_name["good"]["args"] == ["--json"]
    assert by_name["fails"]["exit_code"] == 3 and by_name["fails"]["figures"] is None
    assert by_name["no_json"]["exit_code"] == 0 and not by_name["no_json"]["ok"]


def test_quick_passes_only_the_options_a_script_has(tmp_path):
    directory = _write(tmp_path / "bench", vm_ops=QUICKABLE, memory=OWN_QUICK, good=GOOD)
    code, out = _run(as_json=True, quick=True, bench_dir=directory)
    assert code == 1 and json.loads(out)["targets_missed"] == {"good": ["rss_bytes"]}
    by_name = {b["bench"]: b for b in json.loads(out)["benches"]}
    assert by_name["vm_ops"]["figures"] == {"repeats": 1, "scale": 0.1}  # QUICK_ARGS["vm_ops"]
    assert by_name["memory"]["args"] == ["--json", "--quick"]  # its own --quick wins
    assert by_name["good"]["args"] == ["--json"]  # nothing known for it
    code, out = _run(as_json=True, bench_dir=directory)
    assert {b["bench"]: b for b in json.loads(out)["benches"]}["vm_ops"]["figures"] == {"repeats": 5, "scale": 1.0}


def test_a_script_past_its_timeout_is_killed_and_reported(tmp_path):
    directory = _write(tmp_path / "bench", slow=SLOW, good=GOOD)
    code, out = _run(bench_dir=directory, timeout_s=1.0)
    assert code == 1
    slow = next(line for line in out.splitlines() if line.startswith("slow "))
    assert "FAILED" in slow and "timed out after 1 s" in slow
    assert _rows(out)[("good", "op_us")] == ["12.5", "met"]  # the next one still ran
    # what the script started (a server, say) went with it
    pid = int((directory / "slow.py.pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the process table
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def test_user_errors_are_one_line(tmp_path, bench_dir):
    with pytest.raises(CliError, match=r"no bench directory at .*missing.*checkout") as info:
        run_benches(bench_dir=tmp_path / "missing")
    assert "\n" not in str(info.value)
    with pytest.raises(CliError, match=r"no bench named 'nope' in .* \(benches: fails, good, no_json\)"):
        run_benches(["nope"], bench_dir=bench_dir)
    with pytest.raises(CliError, match=r"--timeout 0: must be"):
        run_benches(bench_dir=bench_dir, timeout_s=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CliError, match="no bench scripts"):
        run_benches(bench_dir=tmp_path / "empty")


def test_the_checkout_has_the_bench_scripts():
    names = {p.stem for p in default_bench_dir().glob("*.py")}
    assert {"vm_ops", "memory", "scheduler", "io", "llm_server"} <= names


def test_parser_helper_registers_bench():
    parser = argparse.ArgumentParser(prog="avm")
    add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "vm_ops", "memory", "--quick", "--json", "--timeout", "30"])
    assert args.names == ["vm_ops", "memory"] and args.quick and args.json and args.timeout == 30
    assert args.fn is args.func
    args = parser.parse_args(["bench"])
    assert args.names == [] and not args.quick and args.timeout is None  # (each script its default)


def test_a_target_missed_shows_in_the_target_column_and_exits_1(tmp_path, capsys):
    verdict = '''
        import json  # --json
        print(json.dumps({"cost_fraction": 0.0285, "target_fraction": 0.02, "ok": False}))
    '''
    met = '''
        import json  # --json
        print(json.dumps({"op_us": 1.0, "targets_met": {"op_us": {"met": True, "target": "<= 20"}}}))
    '''
    code, out = _run(bench_dir=_write(tmp_path / "bench", verdict=verdict))
    assert code == 1
    assert _rows(out)[("verdict", "ok")] == ["false", "missed"]
    assert "avm bench: verdict: target missed: ok" in capsys.readouterr().err
    code, out = _run(bench_dir=_write(tmp_path / "bench2", met=met))
    assert code == 0 and _rows(out)[("met", "op_us")] == ["1", "met", "(<=", "20)"]
