"""The `avm` command, through real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import avm

ROOT = Path(__file__).resolve().parent.parent


def avm_cmd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "avm", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd or ROOT)


def test_compile_prints_the_content_id(tmp_path):
    src = tmp_path / "p.avm"
    src.write_text("push 1\nreturn\n")
    result = avm_cmd("compile", str(src))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == avm.compile("push 1\nreturn").id


def test_compile_error_shows_line_column_caret_and_exits_2(tmp_path):
    src = tmp_path / "bad.avm"
    src.write_text("push 1\npush 2\nadd\nfrob 3\n")
    result = avm_cmd("compile", str(src))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0].endswith("bad.avm:4:1: unknown instruction 'frob'")
    assert lines[1].strip() == "frob 3" and lines[2].strip() == "^"
    assert "Traceback" not in result.stderr


def test_missing_file_is_one_clear_line(tmp_path):
    result = avm_cmd("compile", str(tmp_path / "nope.avm"))
    assert result.returncode == 2
    assert result.stderr.strip().endswith("nope.avm: no such file")


def test_disasm_output_compiles_to_the_same_id(tmp_path):
    src = ROOT / "examples" / "fizzbuzz.avm"
    result = avm_cmd("disasm", str(src))
    assert result.returncode == 0, result.stderr
    (tmp_path / "d.avm").write_text(result.stdout)
    again = avm_cmd("compile", str(tmp_path / "d.avm"))
    assert again.stdout.strip() == avm.compile(src.read_text()).id


def test_grammar_prints_gbnf():
    result = avm_cmd("grammar")
    assert result.returncode == 0 and result.stdout == avm.gbnf()


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["compile", "--help"], ["disasm", "--help"],
                                  ["grammar", "--help"]])
def test_help_everywhere(args):
    result = avm_cmd(*args)
    assert result.returncode == 0 and "usage: avm" in result.stdout


@pytest.mark.parametrize("program, state, text", [
    ("fizzbuzz.avm", "done", "13 14 FizzBuzz"),
    ("wordcount.avm", "done", None),
    # the researcher talks to the embedded LLM, runs the search tool it calls, and returns the final answer
    ("researcher.avm", "done", "FINAL ANSWER"),
])
def test_run_a_program_file_reports_its_result(program, state, text):
    result = avm_cmd("run", f"examples/{program}", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    (only,) = summary["results"]
    assert only["state"] == state and only["energy_used"] > 0
    if text is not None:
        assert text in only["text"]
    plain = avm_cmd("run", f"examples/{program}")
    assert plain.returncode == 0 and f"{Path(program).stem}-0: =" in plain.stdout


def test_unreachable_code_warning_goes_to_stderr(tmp_path):
    src = tmp_path / "w.avm"
    src.write_text("push 1\nreturn\npush 2\nreturn\n")
    result = avm_cmd("compile", str(src))
    assert result.returncode == 0
    assert "w.avm:3: warning: unreachable code" in result.stderr


@pytest.mark.parametrize("command", ["compile", "run"])
def test_a_count_of_thousands_of_digits_is_one_clear_error_exit_2(tmp_path, command):
    src = tmp_path / "huge.avm"
    src.write_text("push 1\ncall upper " + "9" * 5000 + "\nreturn\n")
    result = avm_cmd(command, str(src), "--no-dashboard") if command == "run" else avm_cmd(command, str(src))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].endswith("huge.avm:2:12: bad count '99999999999999999999...': expected an integer from 0 "
                             "to 65536")
    assert all(len(line) < 200 for line in lines)
    assert lines[2].index("^") - 4 == lines[1].index("9") - 4  # the caret under the count
