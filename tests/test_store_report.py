"""`avm inspect STORE` (avm.app.store_report) on a real store written by a VM that records its agents."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio
from rich.console import Console

import avm
from avm.app.bench_runner import add_bench_parser
from avm.app.cli import CliError
from avm.runtime import VM, AgentError
from avm.app.store_report import add_inspect_parser, inspect_store, load_report
from tests.agent_programs import COUNT

ROOT = Path(__file__).resolve().parent.parent

FAULT = "push 1\npush 0\nmod\nreturn\n"
QUOTED = 'push "say \\"hi\\"\\nthen go"\nreturn\n'
SLEEP_FOREVER = "push 1000\nsleep\nhalt\n"
DELEGATE = "load prog\npush null\npush 10\ndelegate\nreturn\n"


async def _record_runs(path: Path) -> dict[str, object]:
    store = avm.ContentStore(str(path))
    try:
        async with VM(store=store, record_agents=True) as vm:
            counter = await vm.spawn(COUNT, inputs={"n": 10}, budget=100, name="counter")
            quoted = await vm.spawn(QUOTED, name="quoted")
            faulty = await vm.spawn(FAULT, name="divider")
            broke = await vm.spawn(COUNT, inputs={"n": 1000}, budget=5)
            parent = await vm.spawn(DELEGATE, inputs={"prog": "push 6\npush 7\nmul\nreturn\n"}, budget=50)
            sleeper = await vm.spawn(SLEEP_FOREVER, budget=5)
            assert await counter.result() == 10
            assert await quoted.result() == 'say "hi"\nthen go'
            assert await parent.result() == 42
            for h in (faulty, broke):
                with pytest.raises(AgentError):
                    await h.result()
            first = vm.run_id
            energies = {h.id: h.energy_used for h in (counter, quoted, faulty, broke, parent)}
        # leaving the VM cancelled the sleeper, and recorded it
        energies[sleeper.id] = sleeper.energy_used
        async with VM(store=store, record_agents=True) as vm:
            assert await (await vm.spawn("push 5\nreturn", name="five")).result() == 5
            second = vm.run_id
        summary = {"programs": 1, "dedup_ratio": 3.5, "note": "second run"}
        store.bind(f"runs/{second}", store.put_value(summary))
    finally:
        store.close()
    assert first < second
    return {"first": first, "second": second, "energies": energies, "sleeper": sleeper.id, "parent": parent.id}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    path = tmp_path_factory.mktemp("inspect") / "store"
    info = trio.run(_record_runs, path)
    return path, info


def _render(path: Path, *, terminal: bool = False, **options) -> tuple[int, str]:
    console = Console(record=True, width=240, force_terminal=terminal, color_system=None, file=open(os.devnull, "w"))
    try:
        code = inspect_store(path, console=console, **options)
    finally:
        console.file.close()
    return code, console.export_text()


def _fingerprint(path: Path) -> tuple[str, int]:
    data = path / "data.mdb"
    return hashlib.sha256(data.read_bytes()).hexdigest(), data.stat().st_mtime_ns


# --- the report ------------------------------------------------------------------------------------


def test_plain_report_lists_tiers_runs_and_agents(recorded):
    path, info = recorded
    code, out = _render(path)
    assert code == 0
    assert "┃" not in out and "│" not in out  # not a terminal: plain columns
    lines = out.splitlines()
    assert lines[0] == f"AVM store {path}"
    cold = next(line for line in lines if line.startswith("cold "))
    assert cold.split()[1] != "0"  # objects were stored
    assert "names: 9 (agents 8, runs 1)" in out
    assert f"dedup ratio: 3.50x (reported by run {info['second']})" in out  # from the run's summary map
    first = next(line for line in lines if line.startswith(str(info["first"])))
    assert "7" in first.split()[1]  # 7 agents: six spawned and one delegated child
    for part in ("done 4", "budget_exceeded 1", "cancelled 1", "failed 1"):
        assert part in first
    summary = lines.index(f"run {info['second']} summary (runs/{info['second']})")
    assert [line.split(None, 1) for line in lines[summary + 1:summary + 5]] == [
        ["key", "value"], ["dedup_ratio", "3.5"], ["note", '"second run"'], ["programs", "1"]]
    # the agents table: both runs, newest first, so the second run's agent leads
    assert "agents: 8 of 8" in out
    header = next(i for i, line in enumerate(lines) if line.startswith("run ") and "value or error" in line)
    rows = lines[header + 1:header + 9]
    assert rows[0].startswith(str(info["second"])) and "five" in rows[0]
    divider = next(r for r in rows if "divider" in r)
    assert "failed" in divider and "line 3: ZeroDivision: modulo by zero" in divider
    quoted = next(r for r in rows if "quoted" in r)
    assert '"say \\"hi\\"\\nthen go"' in quoted  # one line, the text quoted
    broke = next(r for r in rows if "budget_exceeded" in r)
    assert "5 / 5" in broke and "needed" in broke


def test_top_agents_by_energy_and_totals(recorded):
    path, info = recorded
    report = load_report(path, run=info["first"])
    (run,) = report["runs"]
    energies = info["energies"]
    ranked = [a["id"] for a in run["top_agents"]]
    assert len(ranked) == 5
    assert [a["energy_used"] for a in run["top_agents"]] == sorted((a["energy_used"] for a in run["top_agents"]),
                                                                  reverse=True)
    assert ranked[0] == max(energies, key=energies.get)
    child = next(a for a in report["agents"] if a["parent"] == info["parent"])
    assert child["state"] == "done" and child["value"] == 42
    # a child's energy counts in its parent's, and its budget comes out of the parent's:
    # the totals add up the six agents the host spawned
    assert run["energy_used"] == pytest.approx(sum(energies.values()), abs=1e-3)
    assert run["energy_budget"] == pytest.approx(100 + 100 + 100 + 5 + 50 + 5)


def test_rich_tables_on_a_terminal(recorded):
    path, _ = recorded
    code, out = _render(path, terminal=True)
    assert code == 0
    assert "┃ tier" in out and "│ cold" in out
    assert "divider" in out and "modulo by zero" in out


def test_json_is_one_object_with_the_same_data(recorded):
    path, info = recorded
    code, out = _render(path, as_json=True, limit=0)
    assert code == 0
    report = json.loads(out)
    assert report == json.loads(json.dumps(load_report(path, limit=0)))
    assert [r["run"] for r in report["runs"]] == [info["second"], info["first"]]
    assert report["runs"][1]["by_state"] == {"done": 4, "budget_exceeded": 1, "cancelled": 1, "failed": 1}
    assert report["runs"][0]["summary"] == {"programs": 1, "dedup_ratio": 3.5, "note": "second run"}
    assert report["agents_matching"] == len(report["agents"]) == 8
    assert {t["name"] for t in report["tiers"]} == {"hot", "warm", "cold"}
    cold = next(t for t in report["tiers"] if t["name"] == "cold")
    assert cold["objects"] == report["unique_objects"] > 0 and cold["raw_bytes"] == report["unique_bytes"]
    sleeper = next(a for a in report["agents"] if a["run"] == info["first"] and a["id"] == info["sleeper"])
    assert sleeper["state"] == "cancelled"
    assert set(sleeper) == {"run", "id", "name", "parent", "program", "state", "value", "error", "energy_used",
                            "budget"}


def test_filters_by_run_prefix_and_state_and_limit(recorded):
    path, info = recorded
    first = str(info["first"])
    report = load_report(path, run=first, state="DONE", limit=0)
    assert [r["run"] for r in report["runs"]] == [first]
    assert {a["state"] for a in report["agents"]} == {"done"} and len(report["agents"]) == 4
    second = str(info["second"])
    common = len(os.path.commonprefix([first, second]))
    assert load_report(path, run=second[:common + 1])["filters"]["run"] == second  # a unique prefix
    limited = load_report(path, limit=2)
    assert len(limited["agents"]) == 2 and limited["agents_matching"] == 8 and limited["agents_left_out"] == 6
    _, out = _render(path, limit=2)
    assert "agents: 2 of 8 (--limit 0 shows all)" in out
    _, out = _render(path, state="stalled")
    assert "agents: 0 of 0 (state stalled)" in out


def test_inspecting_changes_nothing_durable(recorded):
    path, _ = recorded
    before = _fingerprint(path)
    _render(path)
    _render(path, as_json=True)
    assert _fingerprint(path) == before
    assert sorted(os.listdir(path)) == ["data.mdb", "lock.mdb"]


def test_a_store_open_in_another_process_can_be_inspected(tmp_path):
    path = tmp_path / "live"
    writer = textwrap.dedent("""
        import sys, avm
        store = avm.ContentStore(sys.argv[1])
        record = {"id": 1, "name": "w", "parent": None, "program": "00", "state": "done", "value": "ok",
                  "error": None, "energy_used": 1.5, "budget": 10.0}
        store.bind("agents/20990101T000000-000001/000000001", store.put_value(record))
        store.flush()
        print("ready", flush=True)
        sys.stdin.readline()
        store.put_value({"late": True})
        store.close()
        print("closed", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        report = load_report(path)
        assert report["runs"][0]["run"] == "20990101T000000-000001"
        assert report["agents"][0]["value"] == "ok"
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "closed"  # the writer was not disturbed
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
    assert proc.returncode == 0


def test_a_store_without_records_says_how_to_get_them(tmp_path):
    with avm.ContentStore(str(tmp_path / "plain")) as store:
        store.put(b"some bytes")
    code, out = _render(tmp_path / "plain")
    assert code == 0 and "no runs recorded" in out and "record_agents=True" in out
    assert "agents: 0 of 0" in out


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "file", "empty", "foreign", "not lmdb"])
def test_what_is_not_a_store_is_one_clear_error_and_left_alone(tmp_path, kind):
    path = tmp_path / "target"
    expected = {"missing": "no such directory", "file": "not a directory", "empty": "empty directory",
                "foreign": r"not an AVM store \(it holds notes\.txt\)", "not lmdb": "not an AVM store"}[kind]
    if kind == "file":
        path.write_text("hello")
    elif kind != "missing":
        path.mkdir()
        if kind == "foreign":
            (path / "notes.txt").write_text("x")
        elif kind == "not lmdb":
            (path / "data.mdb").write_bytes(b"\0" * 100)
    before = sorted(os.listdir(path)) if path.is_dir() else None
    with pytest.raises(CliError, match=expected) as info:
        inspect_store(path, console=Console(file=open(os.devnull, "w")))
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert path.exists() == (kind != "missing")  # never created
    if before is not None:
        assert sorted(os.listdir(path)) == before  # nothing written


def test_bad_options_are_one_clear_error(recorded):
    path, _ = recorded
    with pytest.raises(CliError, match=r"--state 'sleepy': not an agent state \(one of ready, .*done"):
        load_report(path, state="sleepy")
    with pytest.raises(CliError, match=r"--run 'nope': no such run in .* \(runs: "):
        load_report(path, run="nope")
    with pytest.raises(CliError, match=r"--run '2': ambiguous"):
        load_report(path, run="2")
    with pytest.raises(CliError, match=r"--limit -1: must be"):
        load_report(path, limit=-1)


# --- the launcher ------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avm")
    sub = parser.add_subparsers(dest="command")
    add_inspect_parser(sub)
    add_bench_parser(sub)
    return parser


def test_parser_helpers_register_inspect_and_bench(recorded, capsys):
    path, info = recorded
    args = _parser().parse_args(["inspect", str(path), "--run", info["first"], "--state", "failed", "--json"])
    assert args.func is args.fn
    assert args.fn(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert [a["name"] for a in report["agents"]] == ["divider"]
    args = _parser().parse_args(["inspect", str(path / "nope")])
    with pytest.raises(CliError, match="no such directory"):
        args.fn(args)
    bench = _parser().parse_args(["bench", "vm_ops", "--quick", "--json"])
    assert bench.names == ["vm_ops"] and bench.quick and bench.json and callable(bench.fn)


def _cli_has_inspect() -> bool:
    from avm.app.cli import build_parser

    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return any("inspect" in a.choices for a in actions)


@pytest.mark.skipif(not _cli_has_inspect(), reason="avm.app.cli does not register `inspect` yet")
def test_python_m_avm_inspect(recorded, tmp_path):
    path, info = recorded

    def avm_cmd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "avm", *args], capture_output=True, text=True, timeout=60,
                              cwd=ROOT)

    result = avm_cmd("inspect", str(path), "--limit", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"AVM store {path}\n") and "│" not in result.stdout  # a pipe: plain text
    assert "agents: 3 of 8 (--limit 0 shows all)" in result.stdout
    result = avm_cmd("inspect", str(path), "--json", "--state", "cancelled")
    assert result.returncode == 0 and json.loads(result.stdout)["agents"][0]["id"] == info["sleeper"]
    for bad in (str(tmp_path / "missing"), str(ROOT / "README.md")):
        result = avm_cmd("inspect", bad)
        assert result.returncode == 2 and result.stdout == ""
        assert len(result.stderr.strip().splitlines()) == 1 and bad in result.stderr
        assert "Traceback" not in result.stderr


def test_odd_records_are_reported_not_fatal(tmp_path):
    with avm.ContentStore(str(tmp_path / "odd")) as store:
        store.bind("agents/r1/not-a-number", store.put_value({"id": 1}))
        store.bind("agents/r1/000000001", store.put_value("not a map"))
        store.bind("agents/r1/000000003", store.put(b"\x00 not an encoded value"))
        store.bind("agents/r1/000000002", store.put_value({"state": 3, "name": 7, "energy_used": "x",
                                                          "value": float("nan"), "budget": None}))
        store.bind("runs/r1", store.put_value(["a", "list", avm.Ref(b"\x01" * 32)]))
    code, out = _render(tmp_path / "odd")
    assert code == 0
    assert "3 agent or run names could not be read: agents/r1/" in out
    row = next(line for line in out.splitlines() if line.startswith(" 2 "))
    assert row.split()[:4] == ["2", "7", "3", "?"]  # an energy that is not a number
    assert 'run r1 summary: ["a", "list", "ref:0101' in out  # not a map: one line
    report = load_report(tmp_path / "odd")
    by_id = {a["id"]: a for a in report["agents"]}
    assert by_id[2]["value"] == "nan" and report["runs"][0]["summary"][2] == "ref:" + "01" * 32
    # records that cannot be used still count as agents of their run (the name without an id cannot)
    assert by_id[1]["state"] == by_id[3]["state"] == "unreadable" and report["runs"][0]["agents"] == 3
    assert "not a map" in by_id[1]["error"] and "not a value" in by_id[3]["error"]
    assert report["damaged_objects"] == 0  # odd, not damaged: exit code 0
    json.dumps(report, allow_nan=False)  # plain JSON throughout
