"""`avm run` end to end, through real subprocesses: the demo, specs, programs, errors, Ctrl+C."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import avm
from avm.app.launcher import summary_lines

ROOT = Path(__file__).resolve().parent.parent


def avm_cmd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "avm", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def summary_of(result: subprocess.CompletedProcess[str]) -> dict:
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr
    return json.loads(lines[-1])


def test_the_demo_with_50_agents_end_to_end():
    result = avm_cmd("run", "--agents", "50", "--no-dashboard", "--json")
    assert result.returncode == 0, result.stderr
    summary = summary_of(result)
    assert summary["spec"] == "<built-in demo>" and not summary["interrupted"]
    assert summary["live"] == 0
    host_spawned = summary["agents"] - summary["effects"]["spawn"] - summary["effects"]["delegate"]
    assert host_spawned == 50 and summary["spawned_by_agents"] == summary["agents"] - 50
    line = summary_lines(summary)[0]
    assert f"50 agents (+{summary['spawned_by_agents']:,} spawned by their programs)" in line
    assert sum(summary["ended"].values()) == summary["agents"]
    assert summary["ended"].get("done", 0) >= 0.9 * summary["agents"]
    assert "failed" not in summary["ended"]
    # every part of AVM was exercised: LLM turns, tools, messages, children
    effects = summary["effects"]
    assert effects["llm"] > 2 * 50 and effects["tool"] > 0 and effects["send"] > 0 and effects["delegate"] > 0
    assert summary["tool_calls"] > 0 and summary["tool_errors"] == 0  # the model fills calculate with arithmetic
    # every demo agent is granted tools, and vLLM's batch endpoint renders none: each request goes alone
    assert summary["llm_requests"] >= effects["llm"] and summary["http_requests"] == summary["llm_requests"]
    assert 0 < summary["energy_used"] <= summary["energy_budget"]
    assert summary["dedup_ratio"] > 1  # the shared prompt is stored once
    # the plain progress line went to stderr, the JSON alone to stdout
    assert "[" in result.stderr and "agents" in result.stderr
    assert len(result.stdout.strip().splitlines()) == 1


def test_every_example_spec_runs_as_it_is(tmp_path):
    for spec in sorted((ROOT / "examples").glob("*.toml")):
        result = avm_cmd("run", str(spec), "--no-dashboard", "--json")
        assert result.returncode == 0, (spec.name, result.stderr)
        summary = summary_of(result)
        assert summary["spec"] == str(spec) and summary["live"] == 0
        assert summary["ended"].get("done", 0) >= 1, (spec.name, summary["ended"])
        assert "failed" not in summary["ended"], (spec.name, summary["recent_faults"])


def test_a_program_file_with_agents_inputs_and_a_store_then_inspect(tmp_path):
    store = tmp_path / "store"
    result = avm_cmd("run", "examples/fizzbuzz.avm", "--agents", "3", "--store", str(store), "--json")
    assert result.returncode == 0, result.stderr
    summary = summary_of(result)
    assert summary["ended"] == {"done": 3}
    run_id = summary["run_id"]
    text = avm_cmd("run", "examples/fizzbuzz.avm", "--store", str(store))  # plain summary lines, not JSON
    assert text.returncode == 0 and "1 done" in text.stdout and f"avm inspect {store}" in text.stdout
    report = avm_cmd("inspect", str(store), "--json")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert run_id in json.dumps(data)


@pytest.mark.parametrize("args, message", [
    (["run", "no-such-spec.toml"], "no-such-spec.toml: cannot read the spec"),
    (["run", "no-such-program.avm"], "no-such-program.avm: no such file"),
    (["run", "--agents", "0"], "must be at least 1"),
    (["run", "--agents", "x"], "expected a whole number"),
    (["run", "examples/fizzbuzz.avm", "--budget", "1e300"], "--budget: must be a positive number up to 1e+12"),
    (["run", "examples/fizzbuzz.avm", "--agents", "2000000"], "--agents: "),
    (["run", "examples/fizzbuzz.avm", "--input", "x=" + "[" * 150 + "]" * 150], "--input x: not a VM value"),
    (["run", "examples/fizzbuzz.avm", "--llm", "http://[::1/v1", "--model", "m"], "http://[::1/v1"),
])
def test_user_errors_are_one_line_and_exit_2(args, message):
    result = avm_cmd(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_odd_program_names_and_ref_values_in_the_summary(tmp_path):
    (tmp_path / "résumé 1.avm").write_text("load helper\nreturn\n")
    (tmp_path / "helper.avm").write_text("push 1\nreturn\n")
    result = avm_cmd("run", str(tmp_path / "résumé 1.avm"), "--json")
    assert result.returncode == 0, result.stderr
    assert summary_of(result)["results"][0]["name"] == "r_sum__1-0"
    spec = tmp_path / "refs.toml"
    spec.write_text('[agents.a]\nprogram = "résumé 1.avm"\nprograms = { helper = "helper.avm" }\n')
    result = avm_cmd("run", str(spec), "--json")
    assert result.returncode == 0, result.stderr
    (only,) = summary_of(result)["results"]
    helper_ref = avm.ContentStore().put(avm.compile("push 1\nreturn\n").to_bytes())  # as VM.program_ref stores it
    assert only["state"] == "done" and only["value"] == "ref:" + helper_ref.hex()


def test_spec_mistakes_name_the_file_and_the_place(tmp_path):
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text('[agents.a]\nprogram = "p.avm\n')
    result = avm_cmd("run", str(bad_toml))
    assert result.returncode == 2 and f"{bad_toml}: line 2" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    (tmp_path / "p.avm").write_text("push 1\nfrobnicate\nreturn\n")
    spec = tmp_path / "spec.toml"
    spec.write_text('[agents.a]\nprogram = "p.avm"\n')
    result = avm_cmd("run", str(spec))
    assert result.returncode == 2 and "p.avm:2:" in result.stderr and "Traceback" not in result.stderr

    (tmp_path / "p.avm").write_text("push 1\nreturn\n")
    spec.write_text('[agents.a]\nprogram = "missing.avm"\n')
    result = avm_cmd("run", str(spec))
    assert result.returncode == 2 and "missing.avm" in result.stderr

    result = avm_cmd("--debug", "run", str(spec))  # --debug shows the traceback instead
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_an_unreachable_endpoint_is_one_line_exit_2():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = avm_cmd("run", "examples/fizzbuzz.avm", "--llm", f"http://127.0.0.1:{port}/v1", "--model", "m")
    assert result.returncode == 2, result.stderr
    assert f"http://127.0.0.1:{port}/v1:" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


class _Refuses(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server spelling
        body = b'{"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}'
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


def test_an_endpoint_that_refuses_the_key_is_one_line_exit_2():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuses)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        env_key = {"OPENAI_API_KEY": "sk-test-not-a-real-key-123456"}
        result = subprocess.run([sys.executable, "-m", "avm", "run", "examples/fizzbuzz.avm", "--llm", url,
                                 "--model", "m"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                                env={**os.environ, **env_key})
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 2
    assert "refused the API key (401)" in result.stderr and "OPENAI_API_KEY" in result.stderr
    assert "sk-test-not-a-real-key-123456" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


SLOW_SPEC = """
description = "agents that wait on each other for a long time"
[vm]
hibernate_after_s = 0.2
[agents.waiter]
program = "waiter.avm"
count = 40
budget = 5
"""


@pytest.mark.parametrize("on_exit", ["cancel", "wait"])
def test_sigint_cancels_flushes_prints_the_summary_and_exits_130(tmp_path, on_exit):
    (tmp_path / "waiter.avm").write_text("push 600\nrecv\nreturn\n")
    spec = tmp_path / "slow.toml"
    spec.write_text(SLOW_SPEC.replace("[vm]\n", f'[vm]\non_exit = "{on_exit}"\n'))
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "avm", "run", str(spec), "--store", str(store), "--json",
                             "--no-dashboard", "--progress-every", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        seen = ""
        while "live 40" not in seen:  # wait until every agent is up and waiting
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            seen += proc.stderr.readline()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["interrupted"] is True and summary["ended"] == {"cancelled": 40}
    assert summary["completions"] == 40 and summary["live"] == 0
    # nothing stored is lost: every agent's record and the run's summary are in the store
    with avm.ContentStore(str(store)) as s:
        records = s.names(f"agents/{summary['run_id']}/")
        assert len(records) == 40
        assert {s.get_value(ref)["state"] for ref in records.values()} == {"cancelled"}
        assert s.get_value(s.lookup(f"runs/{summary['run_id']}"))["interrupted"] is True


def _completion(text: str) -> dict:
    return {"id": "c", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}


HELLO = 'push "hello"\nllm\nreturn\n'


def test_openai_base_url_is_honoured_and_named_on_the_first_line(tmp_path):
    from tests.support.http_server import Answer, scripted_server

    program = tmp_path / "hello.avm"
    program.write_text(HELLO)
    seen: list = []

    def handler(request):
        if request.path.endswith("/batch"):  # as OpenAI's API: no such endpoint (the client then goes singly)
            return Answer(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
        return Answer(200, {"data": []}) if request.method == "GET" else Answer(200, _completion("hi there"))

    with scripted_server(handler, seen=seen) as url:
        env = {**os.environ, "OPENAI_BASE_URL": url, "OPENAI_MODEL": "m", "OPENAI_API_KEY": "sk-test-123456"}
        result = subprocess.run([sys.executable, "-m", "avm", "run", str(program), "--agents", "2", "--no-dashboard",
                                 "--json"], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == f"avm run: LLM endpoint {url} (from OPENAI_BASE_URL), model m"
    assert summary_of(result)["ended"] == {"done": 2}
    assert [r.path for r in seen].count("/v1/chat/completions") == 2


def test_an_endpoint_without_a_model_names_the_model_flag():
    result = avm_cmd("run", "examples/fizzbuzz.avm", "--llm", "http://127.0.0.1:9/v1")
    env_model = os.environ.get("OPENAI_MODEL")
    if env_model:
        pytest.skip("OPENAI_MODEL is set in this environment")
    assert result.returncode == 2 and "--model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_busy_endpoint_is_probed_again_and_a_run_where_every_call_fails_exits_1(tmp_path):
    from tests.support.http_server import Answer, scripted_server

    program = tmp_path / "hello.avm"
    program.write_text(HELLO)
    probes = iter([Answer(503, {"error": {"message": "warming up"}}, headers={"retry-after": "0"}),
                   Answer(429, {"error": {"message": "busy"}}, headers={"retry-after-ms": "50"})])

    def handler(request):
        if request.method == "GET":
            return next(probes, Answer(200, {"data": []}))
        return Answer(400, {"error": {"message": "this model does not exist", "type": "invalid_request_error"}})

    with scripted_server(handler) as url:
        result = subprocess.run([sys.executable, "-m", "avm", "run", str(program), "--agents", "3", "--llm", url,
                                 "--model", "nope", "--no-dashboard", "--json"], capture_output=True, text=True,
                                timeout=60, cwd=ROOT)
    assert result.returncode == 1, result.stderr
    assert "warming up" in result.stderr and "busy" in result.stderr  # the probe said why it waited
    assert "every LLM call failed (3)" in result.stderr and "this model does not exist" in result.stderr
    summary = summary_of(result)
    assert summary["llm_errors_by_kind"] == {"bad_request": 3}
    assert "this model does not exist" in summary["llm_first_errors"]["bad_request"]


def test_the_summary_shows_what_was_retried_in_a_run_that_succeeded(tmp_path):
    from tests.support.http_server import Answer, scripted_server

    program = tmp_path / "hello.avm"
    program.write_text(HELLO)
    posts = iter([Answer(500, {"error": {"message": "overloaded, try again"}}),
                  Answer(429, {"error": {"message": "slow down"}}, headers={"retry-after": "0"})])
    reply = {"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}

    def handler(request):
        if request.method == "GET":
            return Answer(200, {"data": []})
        return next(posts, Answer(200, reply))

    with scripted_server(handler) as url:
        result = subprocess.run([sys.executable, "-m", "avm", "run", str(program), "--agents", "1", "--llm", url,
                                 "--model", "m", "--no-dashboard", "--json"], capture_output=True, text=True,
                                timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    summary = summary_of(result)
    assert summary["llm_errors_by_kind"] == {} and summary["llm_retries"] == 2
    assert summary["llm_retries_by_kind"] == {"server": 1, "rate_limit": 1}
    assert "overloaded, try again" in summary["llm_first_retries"]["server"]


def test_llm_connections_bounds_the_requests_in_flight(tmp_path):
    program = tmp_path / "hello.avm"
    program.write_text(HELLO)
    result = avm_cmd("run", str(program), "--agents", "20", "--llm-connections", "3", "--no-dashboard", "--json")
    assert result.returncode == 0, result.stderr
    summary = summary_of(result)
    assert summary["ended"] == {"done": 20} and 1 <= summary["http_connections_max"] <= 3
    assert result.stderr.splitlines()[0].startswith("avm run: LLM endpoint the embedded server")
