"""`avm run --store` journals every agent; `avm inspect STORE AGENT` shows a journal; `avm verify` checks
every chain. The real CLI in a subprocess, on a real store."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import pytest

import avm
from avm.journal import journals, read_journal

ROOT = Path(__file__).resolve().parent.parent.parent
PROGRAM = 'push "hello"\nllm\npop\npush 0\nsleep\npop\npush 42\nreturn\n'


def avm_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "avm", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, check=False)


def _run(tmp_path: Path, agents: int = 2) -> Path:
    program = tmp_path / "p.avm"
    program.write_text(PROGRAM)
    store = tmp_path / "store"
    done = avm_cmd("run", str(program), "--agents", str(agents), "--store", str(store), "--no-dashboard")
    assert done.returncode == 0, done.stderr
    return store


def test_a_run_with_a_store_journals_every_agent_and_inspect_shows_one(tmp_path: Path) -> None:
    store = _run(tmp_path)
    shown = avm_cmd("inspect", str(store), "2", "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["journal"].endswith("/000000002") and report["problem"] is None
    assert [e["kind"] for e in report["entries"]] == ["start", "llm", "sleep", "end"]
    assert report["entries"][1]["request"] == '["hello"]' and '"value": 42' in report["entries"][-1]["result"]
    table = avm_cmd("inspect", str(store), report["journal"].replace("000000002", "1"))
    assert table.returncode == 0 and "seq" in table.stdout and "sleep" in table.stdout
    assert "2 journals (8 entries)" in avm_cmd("verify", str(store)).stdout


def test_inspect_names_an_agent_that_has_no_journal(tmp_path: Path) -> None:
    store = _run(tmp_path, agents=1)
    for wrong, said in (("7", "agent 7: no journal"), ("x", "expected ID or RUN/ID"),
                        ("nope/1", "no run 'nope'")):
        result = avm_cmd("inspect", str(store), wrong)
        assert result.returncode == 2 and said in result.stderr and result.stderr.count("\n") == 1


def test_verify_names_the_first_broken_link_of_a_journal(tmp_path: Path) -> None:
    store = _run(tmp_path, agents=1)
    with avm.ContentStore(store) as opened:
        (key, head), = journals(opened).items()
        sleep = read_journal(opened, head)[2][0]
    env = lmdb.open(str(store), max_dbs=8)
    with env.begin(write=True, db=env.open_db(b"objects", create=False)) as txn:
        assert txn.delete(sleep)  # the sleep's entry: the end entry now names nothing
    env.close()
    result = avm_cmd("verify", str(store))
    assert result.returncode == 1
    assert f"broken journal: journal {key}: entry {sleep.hex()[:16]} (before seq 3) is missing" in result.stdout
    shown = avm_cmd("inspect", str(store), "1")
    assert shown.returncode == 1 and "problem:" in shown.stdout


SLOW = """
push 0
store i
loop:
load i
push 6
lt
jump_unless out
push "hello"
llm
pop
push 1.0
sleep
pop
load i
push 1
add
store i
jump loop
out:
load name
return
"""


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_a_run_stopped_by_sigterm_or_sigkill_goes_on_with_resume(tmp_path: Path, how: signal.Signals) -> None:
    program = tmp_path / "slow.avm"
    program.write_text(SLOW)
    store = tmp_path / "store"
    args = ["run", str(program), "--agents", "30", "--store", str(store), "--no-dashboard"]
    proc = subprocess.Popen([sys.executable, "-m", "avm", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(3)  # started and journaling; the whole run takes about 6 s after its start
    proc.send_signal(how)
    _, err = proc.communicate(timeout=60)
    if how == signal.SIGTERM:
        assert proc.returncode == 143, err
        assert "interrupted (SIGTERM): agents stopped, store flushed" in err and "--resume" in err
        assert "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    resumed = avm_cmd(*args, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout.splitlines()[-1])
    assert summary["ended"] == {"done": 30} and summary["effects"]["llm"] == 30 * 6
    assert avm_cmd("verify", str(store)).returncode == 0


def test_resume_needs_a_store(tmp_path: Path) -> None:
    program = tmp_path / "p.avm"
    program.write_text(PROGRAM)
    result = avm_cmd("run", str(program), "--resume")
    assert result.returncode == 2 and "--resume needs the store" in result.stderr
    missing = avm_cmd("run", str(program), "--store", str(tmp_path / "new"), "--resume")
    assert missing.returncode == 2 and "no store to resume a run from" in missing.stderr
    assert not (tmp_path / "new").exists()  # (a failed resume makes no store)
    (tmp_path / "empty").mkdir()
    empty = avm_cmd("run", str(program), "--store", str(tmp_path / "empty"), "--resume")
    assert empty.returncode == 2 and "no journaled run to resume" in empty.stderr
    assert "final" not in empty.stderr  # refused before any run started


def test_resume_refuses_another_spec_or_fleet_size(tmp_path: Path) -> None:
    store = _run(tmp_path, agents=2)
    other = avm_cmd("run", str(tmp_path / "p.avm"), "--agents", "3", "--store", str(store), "--resume")
    assert other.returncode == 2 and "was started from" in other.stderr and "p x2" in other.stderr
    demo = avm_cmd("run", "--agents", "2", "--store", str(store), "--resume")
    assert demo.returncode == 2 and "resume it with the same spec and flags" in demo.stderr
    same = avm_cmd("run", str(tmp_path / "p.avm"), "--agents", "2", "--store", str(store), "--resume", "--json")
    assert same.returncode == 0 and json.loads(same.stdout.splitlines()[-1])["ended"] == {"done": 2}
