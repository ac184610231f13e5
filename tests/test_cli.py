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
    # the researcher talks to the embedded LLM (granted no tools: its answer comes at once; with
    # --tools demo it runs the tools the model calls, see below)
    ("researcher.avm", "done", None),
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


def test_a_program_file_gets_tools_only_when_asked_and_the_inputs_it_is_given(tmp_path):
    bare = json.loads(avm_cmd("run", "examples/researcher.avm", "--json").stdout.strip().splitlines()[-1])
    assert bare["effects"]["tool"] == 0 and bare["tool_calls"] == 0  # no tool schemas sent: no tool calls
    tools = json.loads(avm_cmd("run", "examples/researcher.avm", "--tools", "demo", "--input", "topic=tides",
                               "--json").stdout.strip().splitlines()[-1])
    assert tools["effects"]["tool"] >= 1 and tools["results"][0]["state"] == "done"
    counted = json.loads(avm_cmd("run", "examples/wordcount.avm", "--input", "text=b a b", "--json")
                         .stdout.strip().splitlines()[-1])
    assert counted["results"][0]["value"] == '{"a": 1, "b": 2}'
    wrong = avm_cmd("run", "examples/workers.toml", "--tools", "demo")
    assert wrong.returncode == 2 and "--tools is for a program file" in wrong.stderr


def test_debug_works_after_the_command_and_shows_the_cause(tmp_path):
    result = avm_cmd("run", str(tmp_path / "missing.toml"), "--debug")
    assert result.returncode != 0
    assert "FileNotFoundError" in result.stderr and "CliError" in result.stderr


def test_results_file_has_a_line_per_agent_and_the_summary_says_where(tmp_path):
    out = tmp_path / "results.jsonl"
    result = avm_cmd("run", "--agents", "30", "--no-dashboard", "--results", str(out), "--temperature", "0",
                     "--max-tokens", "64")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert (len(lines) >= 30
            and {"id", "name", "state", "energy_used", "prompt_tokens", "completion_tokens"} <= set(lines[0]))
    assert f"all of them are in {out}" in result.stdout
    assert any(line["prompt_tokens"] > 0 for line in lines)
    assert "tokens" in result.stdout
    bad = avm_cmd("run", "--temperature", "3")
    assert bad.returncode == 2 and "between 0 and 2" in bad.stderr


def test_a_results_file_that_cannot_be_written_is_refused_before_the_run(tmp_path):
    result = avm_cmd("run", "examples/fizzbuzz.avm", "--results", str(tmp_path / "no" / "such" / "dir.jsonl"))
    assert result.returncode == 2 and "--results" in result.stderr and "cannot write" in result.stderr
    assert "run " not in result.stdout  # nothing ran
