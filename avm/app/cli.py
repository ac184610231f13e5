"""The `avm` launcher.

    avm run [SPEC]         run a fleet: the built-in demo, a spec (.toml) or a program (.avm), with the dashboard
                           (--store DIR --resume: continue a run that was killed or interrupted)
    avm compile FILE       print the content id (errors: line, column, caret; exit 2)
    avm disasm FILE        print the disassembly (it compiles back to the same id)
    avm grammar            print the GBNF grammar of the language
    avm serve-llm          run the embedded OpenAI-compatible LLM server (Ctrl+C stops it)
    avm inspect STORE      what a store directory holds: tiers, objects, runs and their agents
    avm inspect STORE AGENT  one agent's journal: every effect it performed, in order
    avm verify STORE       read every object and journal of a store and check them (exit 1 if anything is wrong)
    avm replay STORE AGENT re-run an agent from its journal, no network, no tools: does it reproduce it? (--all)
    avm erase STORE REF    replace an object's content with a tombstone (erasure requests); chains still verify
    avm bench [NAMES]      run the bench scripts and print one table of their figures

A user's mistake (a bad spec, a missing file, a program that does not
compile, an endpoint that cannot be reached or refuses the key) is one line
on stderr and exit code 2; ``--debug`` shows the traceback instead. `avm run`
exits 130 after Ctrl+C (143 after SIGTERM), once the agents are stopped and
the store flushed; with ``--store DIR``, ``avm run SPEC --store DIR --resume``
then goes on from the agents' journals, as it does after a SIGKILL.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

import trio

from avm.errors import AvmError, CompileError
from avm.lang.code import Code
from avm.lang.compiler import compile_source
from avm.lang.disasm import disassemble
from avm.lang.grammar import gbnf
from avm.lang.values import is_value

EXIT_OK = 0
EXIT_FAILED = 1  # the run went, but nothing it needed from the LLM came back
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_TIMEOUT = 124  # stopped by --timeout (as GNU timeout reports it)


class CliError(AvmError):
    """A user error: printed as one line, exit code 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None


def _positive_float(text: str) -> float:
    value = _number(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _temperature(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 2:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2 (OpenAI's range), not {text}")
    return value


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CliError(f"{path}: is a directory") from None
    except UnicodeDecodeError as exc:
        raise CliError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror}") from None


_SHOWN = 100  # characters of a long source line shown around an error's column


def _clip(line: str, column: int) -> tuple[str, int]:
    """The part of a long source line around ``column`` (marked with ...) and the column in it."""
    if len(line) <= _SHOWN:
        return line, column
    start = max(0, min(column - 1 - _SHOWN // 2, len(line) - _SHOWN))
    head = "..." if start else ""
    tail = "..." if start + _SHOWN < len(line) else ""
    return head + line[start:start + _SHOWN] + tail, column - start + len(head)


def _compile_file(path: str) -> Code:
    source = _read(path)
    try:
        code = compile_source(source)
    except CompileError as exc:
        shown, column = _clip(exc.source_line or "", exc.column)
        raise CliError(f"{path}:{exc.line}:{exc.column}: {exc.message}\n    {shown}\n    "
                       f"{' ' * (column - 1)}^") from None
    for line, message in code.warnings:
        print(f"{path}:{line}: warning: {message}", file=sys.stderr)
    return code


def cmd_compile(args: argparse.Namespace) -> int:
    code = _compile_file(args.file)
    print(code.id)
    return EXIT_OK


def cmd_disasm(args: argparse.Namespace) -> int:
    code = _compile_file(args.file)
    sys.stdout.write(disassemble(code, with_lines=args.lines))
    return EXIT_OK


def cmd_grammar(args: argparse.Namespace) -> int:
    sys.stdout.write(gbnf())
    return EXIT_OK


def _parse_inputs(pairs: Sequence[str]) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise CliError(f"--input {pair!r}: expected NAME=VALUE")
        try:
            inputs[name] = json.loads(raw)
        except ValueError:
            inputs[name] = raw
        except RecursionError:
            raise CliError(f"--input {name}: nested too deeply") from None
        if not is_value(inputs[name]):
            raise CliError(f"--input {name}: not a VM value (nested too deeply, or a number out of range)")
    return inputs


def _program_spec(path: str, inputs: dict[str, Any], tools: str | None) -> Any:
    """A spec of one group running the program file ``path``: granted no tools, or with ``tools`` "demo"
    the offline demo tools (every request then carries their schemas)."""
    from avm.demo.tools import TOOLS
    from avm.app.spec import DEFAULT_BUDGET, AgentGroup, Program, RunSpec

    code = _compile_file(path)
    name = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "_" for c in Path(path).stem) or "agent"
    if not (name[0].isascii() and name[0].isalpha()):
        name = "p_" + name
    granted = TOOLS if tools == "demo" else ()
    group = AgentGroup(name, Program(code, path), 1, tools=tuple(t.name for t in granted),
                       inputs=(inputs,) if inputs else (), budget=DEFAULT_BUDGET)
    return RunSpec(path, (group,), tuple(granted), description=Path(path).name)


def _load_run_spec(args: argparse.Namespace) -> Any:
    from avm.app.spec import SpecError, demo_spec, load_spec

    try:
        if args.spec is None:
            if args.input:
                raise CliError("--input needs a program file: avm run PROGRAM.avm --input NAME=VALUE")
            if args.tools:
                raise CliError("--tools is for a program file (the demo grants its agents the demo tools)")
            spec = demo_spec(args.agents if args.agents is not None else 1000)
            agents = None  # the demo laid itself out for --agents already
        elif args.spec.endswith(".avm"):
            spec = _program_spec(args.spec, _parse_inputs(args.input), args.tools)
            agents = args.agents
        else:
            if args.input:
                raise CliError("--input is for a program file; a spec gives inputs per group")
            if args.tools:
                raise CliError("--tools is for a program file; a spec grants tools per group")
            spec = load_spec(args.spec)
            agents = args.agents
        spec = spec.with_overrides(agents=agents, llm=args.llm, model=args.model, store=args.store,
                                   budget=args.budget)
        if spec.llm is None and os.environ.get("OPENAI_BASE_URL"):  # the OpenAI SDK's convention
            spec = dataclasses.replace(spec, llm=os.environ["OPENAI_BASE_URL"])
        flags = {"llm_connections": args.llm_connections, "temperature": args.temperature,
                 "max_tokens": args.max_tokens}
        given = {name: value for name, value in flags.items() if value is not None}
        if given:  # as the spec's [vm] table would set them
            spec = dataclasses.replace(spec, settings={**spec.settings, **given})
        return spec
    except SpecError as exc:
        raise CliError(str(exc)) from None


def _endpoint(spec: Any, args: argparse.Namespace) -> str:
    """Which LLM endpoint a run uses, and where that came from."""
    if spec.llm is None:
        return "the embedded server (no network; --llm URL or OPENAI_BASE_URL for a real one)"
    if args.llm:
        source = "--llm"
    elif os.environ.get("OPENAI_BASE_URL") == spec.llm:
        source = "OPENAI_BASE_URL"
    else:
        source = spec.source
    return f"{spec.llm} (from {source}), model {spec.model or os.environ.get('OPENAI_MODEL') or '(none)'}"


def cmd_run(args: argparse.Namespace) -> int:
    """Run a spec, a program file or the built-in demo; exit 0, 130 after Ctrl+C, 2 for a user error."""
    from rich.console import Console

    from avm.app.launcher import LaunchError, RunOptions, run_fleet, summary_lines

    spec = _load_run_spec(args)
    if args.no_dashboard:
        display = "lines"
    elif args.json and not sys.stderr.isatty():
        display = "none"
    else:
        display = "auto"
    console = Console(stderr=True)
    if display == "auto" and console.is_terminal and not args.json:  # the live dashboard's preamble
        for line in [f"avm run: {spec.description or spec.source}", *spec.describe()]:
            console.print(line, highlight=False, markup=False)
    try:
        announce = f"avm run: LLM endpoint {_endpoint(spec, args)}" if display != "none" else None
        if args.resume and not args.store:
            raise CliError("--resume needs the store the run journaled into: --store DIR")
        outcome = trio.run(run_fleet, spec, RunOptions(display=display, console=console,
                                                       line_every_s=args.progress_every, announce=announce,
                                                       resume=args.resume, timeout_s=args.timeout,
                                                       results=args.results))
    except LaunchError as exc:
        raise CliError(str(exc)) from None
    except BaseException as exc:  # noqa: B036 - a Ctrl+C before the launcher's handler was in place, or a
        if not _is_keyboard_interrupt(exc):  # second one (from inside trio's nurseries: in an exception group)
            raise
        print("avm run: interrupted again: stopped at once" if args.store is None else
              "avm run: interrupted again: stopped at once (what was committed to the store is kept; --resume "
              "goes on from it)", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(outcome.summary, sort_keys=True, default=str))
    else:
        for line in summary_lines(outcome.summary):
            print(line)
    if outcome.interrupted or outcome.timed_out:
        again = ["avm", *sys.argv[1:]] + ([] if args.resume else ["--resume"])
        then = f", store flushed; `{shlex.join(again)}` goes on" if spec.store else ""
        stopped = outcome.summary.get("by_state", {}).get("cancelled", 0)
        if outcome.interrupted:
            how = "SIGTERM" if outcome.signal == "SIGTERM" else "Ctrl+C"
            print(f"avm run: interrupted ({how}): agents stopped{then}", file=sys.stderr)
            return EXIT_TERMINATED if outcome.signal == "SIGTERM" else EXIT_INTERRUPTED
        print(f"avm run: stopped by --timeout {args.timeout:g}: {stopped:,} agents stopped{then}", file=sys.stderr)
        return EXIT_TIMEOUT
    calls = outcome.summary.get("effects", {}).get("llm", 0)
    if calls and outcome.summary.get("llm_errors", 0) >= calls:
        first = outcome.summary.get("llm_first_errors") or {}
        message = next(iter(first.values()), "see the summary")
        print(f"avm run: every LLM call failed ({calls:,}); the first: {message}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _is_keyboard_interrupt(exc: BaseException) -> bool:
    if isinstance(exc, KeyboardInterrupt):
        return True
    return isinstance(exc, BaseExceptionGroup) and exc.subgroup(KeyboardInterrupt) is not None


def cmd_serve_llm(args: argparse.Namespace) -> int:
    """Run the embedded LLM server in the foreground until SIGINT or SIGTERM."""
    from avm.io.embedded.faults import LLMServerError, ServerSettings
    from avm.io.embedded.server import LLMServer, run_server

    try:
        settings = ServerSettings(
            port=args.port, seed=args.seed, latency_ms=args.latency_ms, per_token_ms=args.per_token_ms,
            jitter_ms=args.jitter_ms, jitter=args.jitter, rate_429=args.rate_429, rate_500=args.rate_500,
            rate_timeout=args.rate_timeout, rate_malformed=args.rate_malformed, rate_drop=args.rate_drop,
            retry_after_s=args.retry_after_s, timeout_hold_s=args.timeout_hold_s, final_after=args.final_after,
            models=tuple(args.model) if args.model else ServerSettings().models, dialect=args.dialect,
            any_model=args.any_model)
    except LLMServerError as exc:
        raise CliError(str(exc)) from None

    from avm.io.client.limits import raise_to_hard

    raise_to_hard()  # a server takes as many connections as its clients open

    def ready(server: LLMServer) -> None:
        print(f"avm serve-llm: listening on {server.url} as a {settings.dialect} server (Ctrl+C to stop)",
              flush=True)
        print(f"OPENAI_BASE_URL={server.url}", flush=True)

    try:
        stats = run_server(settings, on_ready=ready)
    except LLMServerError as exc:
        raise CliError(str(exc)) from None
    except KeyboardInterrupt:  # a Ctrl+C before the signal handlers were in place
        return EXIT_OK
    print(f"avm serve-llm: stopped after {stats.requests} requests on {stats.connections_opened} connections",
          file=sys.stderr)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avm", description="AVM: a green-thread agent virtual machine.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run a fleet of agents: the built-in demo, a spec or a program",
                       description="Run agents in one VM and show the live dashboard: with no SPEC the built-in "
                                   "demo (1,000 agents on the embedded LLM server), else a spec file (TOML, see "
                                   "examples/*.toml) or one program file (.avm). Ctrl+C stops cleanly (exit 130).")
    p.add_argument("spec", nargs="?", metavar="SPEC", help="a spec file (.toml) or a program file (.avm)")
    p.add_argument("--agents", type=_positive_int, metavar="N", help="agents to run (the demo: 1,000; a spec: "
                   "its groups scaled in proportion; a program: N copies)")
    p.add_argument("--llm", metavar="URL", help="an OpenAI-compatible endpoint (default: OPENAI_BASE_URL if set, else "
                   "the embedded server; the key from OPENAI_API_KEY)")
    p.add_argument("--model", metavar="NAME", help="the model (default: the embedded one, or OPENAI_MODEL)")
    p.add_argument("--llm-connections", type=_positive_int, metavar="N",
                   help="LLM requests in flight at once, one HTTP connection each (default 1,024)")
    p.add_argument("--store", metavar="DIR", help="a store directory: the run's objects and a record of every "
                   "agent are kept there (see avm inspect)")
    p.add_argument("--budget", type=_positive_float, metavar="E", help="energy budget of every agent")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN",
                   help="continue the store's newest run (or RUN) after it was killed or interrupted: its agents "
                        "go on from their journals, effects already journaled are not performed again, agents "
                        "that ended are not run again (needs --store)")
    p.add_argument("--tools", choices=("demo",),
                   help="grant a program file's agents the offline demo tools search and calculate (default: "
                        "no tools; a spec grants tools per group)")
    p.add_argument("--temperature", type=_temperature, metavar="T",
                   help="sampling temperature of every LLM request, 0 to 2 (default: the server's). At 0 (or "
                        "with a seed) identical requests may be answered from the cache")
    p.add_argument("--max-tokens", type=_positive_int, metavar="N", help="tokens per LLM reply at most (default 512)")
    p.add_argument("--results", metavar="FILE",
                   help="write one JSON line per agent to FILE at the end: id, name, state, value or error, "
                        "energy, tokens (the summary lists them only for runs of at most 20 agents)")
    p.add_argument("--timeout", type=_positive_float, metavar="S",
                   help="stop the run after S seconds: its agents are stopped as by Ctrl+C (with --store, "
                        "--resume goes on); exit 124")
    p.add_argument("--input", action="append", default=[], metavar="NAME=VALUE",
                   help="an input of a program file's agents (VALUE is JSON, or else text); repeatable")
    p.add_argument("--no-dashboard", action="store_true", help="a plain progress line instead of the dashboard")
    p.add_argument("--progress-every", type=_positive_float, default=5.0, metavar="S", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print one JSON summary object at the end")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("compile", help="compile a program and print its content id",
                       description="Compile FILE and print its content id (blake3 hex).")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(fn=cmd_compile)

    p = sub.add_parser("disasm", help="print the disassembly of a program",
                       description="Compile FILE and print its disassembly, which compiles back to the same id.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--lines", action="store_true", help="annotate each instruction with its source line")
    p.set_defaults(fn=cmd_disasm)

    p = sub.add_parser("grammar", help="print the GBNF grammar of the language",
                       description="Print a GBNF grammar of the agent language (for constrained LLM sampling).")
    p.set_defaults(fn=cmd_grammar)

    p = sub.add_parser("serve-llm", help="run the embedded OpenAI-compatible LLM server",
                       description="Serve deterministic replies on 127.0.0.1 (OpenAI-compatible: /v1/models, "
                                   "/v1/chat/completions, /v1/completions; and as vLLM, its "
                                   "/v1/chat/completions/batch) until Ctrl+C or SIGTERM, with a seeded latency "
                                   "model and fault injection.")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: a free port, printed)")
    p.add_argument("--dialect", choices=("openai", "vllm"), default="vllm",
                   help="the server to play: vllm (default; with vLLM's /v1/chat/completions/batch) or openai "
                        "(OpenAI's API, llama.cpp: no batch endpoint)")
    p.add_argument("--seed", type=int, default=0, help="seed of the latency jitter and fault draws (default 0)")
    p.add_argument("--latency-ms", type=float, default=0.0, metavar="MS", help="fixed latency per request")
    p.add_argument("--per-token-ms", type=float, default=0.0, metavar="MS", help="latency per output token")
    p.add_argument("--jitter-ms", type=float, default=0.0, metavar="MS",
                   help="jitter: uniform in [0, MS], or the lognormal median")
    p.add_argument("--jitter", choices=("uniform", "lognormal"), default="uniform", help="jitter distribution")
    for kind, what in (("429", "answered 429 with Retry-After"), ("500", "answered 500"),
                       ("timeout", "held without an answer, then closed"),
                       ("malformed", "answered 200 with a body that is not JSON"),
                       ("drop", "closed without a response")):
        p.add_argument(f"--rate-{kind}", type=float, default=0.0, metavar="R",
                       help=f"fraction of completion requests {what} (0..1)")
    p.add_argument("--retry-after-s", type=float, default=1.0, metavar="S", help="Retry-After of a 429 (default 1)")
    p.add_argument("--timeout-hold-s", type=float, default=60.0, metavar="S",
                   help="how long a timeout fault holds a request (default 60)")
    p.add_argument("--final-after", type=int, default=3, metavar="N",
                   help="assistant/tool messages after which replies are final answers (default 3)")
    p.add_argument("--model", action="append", default=[], metavar="NAME",
                   help="a model name to serve and list (repeatable; default avm-embedded); a request naming "
                        "another gets 404 model_not_found, as from OpenAI")
    p.add_argument("--any-model", action="store_true",
                   help="serve a request whatever model it names (the name is echoed)")
    p.set_defaults(fn=cmd_serve_llm)

    from avm.app.bench_runner import add_bench_parser
    from avm.app.journal_report import add_erase_parser, add_replay_parser
    from avm.app.store_check import add_verify_parser
    from avm.app.store_report import add_inspect_parser

    add_inspect_parser(sub)
    add_verify_parser(sub)
    add_replay_parser(sub)
    add_erase_parser(sub)
    add_bench_parser(sub)
    for command in sub.choices.values():  # --debug after the command too (its default: the one before it)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the whole traceback of an error, its cause included")
    return parser


def _unsuppressed(exc: BaseException) -> BaseException:
    """``exc`` with every cause in its chain shown (a one-line error raised ``from None`` hides them)."""
    seen = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__suppress_context__ = False
        link = link.__cause__ or link.__context__
    return exc


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.fn(args))
    except CliError as exc:
        if args.debug:
            raise _unsuppressed(exc)  # noqa: B904 - the chain is exc's own, now shown whole
        print(f"avm: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK
