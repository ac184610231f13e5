"""`avm run` ends: a fleet stuck waiting for messages, --timeout, Ctrl+C once (the last frame shows the
stop) and twice (at once, one line)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.test_cli_run import ROOT, avm_cmd, summary_of


def test_a_fleet_waiting_for_messages_no_one_can_send_ends_stalled_and_says_so(tmp_path: Path) -> None:
    program = tmp_path / "r.avm"
    program.write_text("push null\nrecv\nreturn\n")
    result = avm_cmd("run", str(program), "--agents", "3", "--no-dashboard", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "3 stalled" in result.stdout
    assert "waited for a message no live agent could send" in result.stdout
    summary = summary_of(avm_cmd("run", str(program), "--agents", "3", "--no-dashboard", "--json", timeout=60))
    assert summary["ended"] == {"stalled": 3} and summary["deadlocked"] == 3


def test_timeout_stops_the_run_and_resume_goes_on(tmp_path: Path) -> None:
    program = tmp_path / "s.avm"
    program.write_text("push 2\nsleep\npop\npush 7\nreturn\n")
    store = tmp_path / "store"
    started = time.monotonic()
    result = avm_cmd("run", str(program), "--agents", "3", "--no-dashboard", "--json", "--store", str(store),
                     "--timeout", "0.5", timeout=60)
    assert result.returncode == 124, result.stderr
    assert time.monotonic() - started < 30
    assert "stopped by --timeout 0.5: 3 agents stopped" in result.stderr and "--resume" in result.stderr
    summary = summary_of(result)
    assert summary["timed_out"] is True and summary["ended"] == {"cancelled": 3}
    again = avm_cmd("run", str(program), "--agents", "3", "--no-dashboard", "--json", "--store", str(store),
                    "--resume", timeout=60)
    assert again.returncode == 0, again.stderr
    assert summary_of(again)["ended"] == {"done": 3}


def _started(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "avm", "run", *args, "--no-dashboard", "--progress-every", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 60
    seen = ""
    while "live 2,000" not in seen:  # every agent up and asleep
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()  # type: ignore[union-attr]
        seen += proc.stderr.readline()  # type: ignore[union-attr]
    return proc, seen


def _interrupted(tmp_path: Path, times: int) -> tuple[subprocess.Popen[str], str]:
    """2,000 agents asleep in a run, then Ctrl+C ``times`` times, 10 ms apart; the process and its stderr."""
    program = tmp_path / "s.avm"
    program.write_text("push 60\nsleep\nreturn\n")
    proc, _ = _started([str(program), "--agents", "2000"])
    try:
        for i in range(times):
            if i:
                time.sleep(0.01)
            proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc, err


def test_one_ctrl_c_draws_the_stop_in_the_last_frame(tmp_path: Path) -> None:
    proc, err = _interrupted(tmp_path, 1)
    assert proc.returncode == 130, err
    last = [line for line in err.splitlines() if line.startswith("[")][-1]
    assert "live 0 (cancelled 2,000)" in last and "final" in last
    assert "interrupted (Ctrl+C): agents stopped" in err and "store flushed" not in err  # (no store)


def test_a_second_ctrl_c_stops_at_once_in_one_line(tmp_path: Path) -> None:
    proc, err = _interrupted(tmp_path, 2)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception" not in err, err
    assert err.strip().splitlines()[-1].startswith("avm run: interrupted")
