"""The `avm` launcher.

    avm run [FILES...]     compile and run programs (the examples by default)
    avm compile FILE       print the content id (errors: line, column, caret; exit 2)
    avm disasm FILE        print the disassembly (it compiles back to the same id)
    avm grammar            print the GBNF grammar of the language
    avm serve-llm          run the embedded OpenAI-compatible LLM server (Ctrl+C stops it)

`avm run` starts a VM on the embedded LLM server and runs each program as an
agent (granted the offline demo tools of `avm.demo_tools`), then prints how
each ended, its value and the energy it used. (The full launcher, with specs,
fleets and the dashboard, is issue 6.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import trio

from avm.errors import CompileError
from avm.lang.code import Code
from avm.lang.compiler import compile_source
from avm.lang.disasm import disassemble
from avm.lang.grammar import gbnf
from avm.lang.values import render

EXIT_OK = 0
EXIT_USAGE = 2


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


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


def _compile_file(path: str) -> Code:
    source = _read(path)
    try:
        code = compile_source(source)
    except CompileError as exc:
        raise CliError(f"{path}:{exc.line}:{exc.column}: {exc.message}\n    {exc.source_line}\n    "
                       f"{' ' * (exc.column - 1)}^") from None
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


def _example_files() -> list[Path]:
    here = Path(__file__).resolve().parent.parent / "examples"
    return sorted(here.glob("*.avm"))


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
    return inputs


def cmd_run(args: argparse.Namespace) -> int:
    files = [Path(f) for f in args.files] or _example_files()
    if not files:
        raise CliError("no programs to run (and no examples/*.avm found)")
    inputs = _parse_inputs(args.input)
    codes = [(path, _compile_file(str(path))) for path in files]
    results = trio.run(_run_agents, codes, inputs, args.budget)
    for r in results:
        if not args.json:
            print(f"{r['program']:<24} {r['summary']}  [energy {r['energy_used']:g}]")
    if args.json:
        print(json.dumps({"programs": results}))
    return EXIT_OK


async def _run_agents(codes: list[tuple[Path, Code]], inputs: dict[str, Any], budget: float) -> list[dict[str, Any]]:
    from avm.agent import AgentError
    from avm.demo_tools import TOOLS
    from avm.runtime import VM

    out = []
    async with VM(tools=TOOLS) as vm:
        handles = [(path, code, await vm.spawn(code, inputs=inputs, budget=budget, tools=[t.name for t in TOOLS]))
                   for path, code in codes]
        for path, code, h in handles:
            try:
                value = await h.result()
                summary = f"done: {render(value)[:200]}"
            except AgentError as exc:
                summary = f"{exc.state.value}: {exc.detail}"
            out.append({"program": path.name, "id": code.id, "state": h.state.value, "summary": summary,
                        "energy_used": h.energy_used})
    return out


def cmd_serve_llm(args: argparse.Namespace) -> int:
    """Run the embedded LLM server in the foreground until SIGINT or SIGTERM."""
    from avm.io.faults import LLMServerError, ServerSettings
    from avm.io.server import LLMServer, run_server

    try:
        settings = ServerSettings(
            port=args.port, seed=args.seed, latency_ms=args.latency_ms, per_token_ms=args.per_token_ms,
            jitter_ms=args.jitter_ms, jitter=args.jitter, rate_429=args.rate_429, rate_500=args.rate_500,
            rate_timeout=args.rate_timeout, rate_malformed=args.rate_malformed, rate_drop=args.rate_drop,
            retry_after_s=args.retry_after_s, timeout_hold_s=args.timeout_hold_s, final_after=args.final_after,
            models=tuple(args.model) if args.model else ServerSettings().models)
    except LLMServerError as exc:
        raise CliError(str(exc)) from None

    def ready(server: LLMServer) -> None:
        print(f"avm serve-llm: listening on {server.url} (Ctrl+C to stop)", flush=True)
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

    p = sub.add_parser("run", help="compile and run programs (the examples by default)",
                       description="Compile and run agent programs, printing each outcome.")
    p.add_argument("files", nargs="*", metavar="FILE", help="program files (default: examples/*.avm)")
    p.add_argument("--budget", type=float, default=100.0, help="energy budget per program (default 100)")
    p.add_argument("--input", action="append", default=[], metavar="NAME=VALUE",
                   help="an input variable (VALUE is JSON, or else text); repeatable")
    p.add_argument("--json", action="store_true", help="print one JSON summary object")
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
                                   "/v1/chat/completions, /v1/chat/completions/batch, /v1/completions) until "
                                   "Ctrl+C or SIGTERM, with a seeded latency model and fault injection.")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: a free port, printed)")
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
                   help="a model name to list (repeatable; default avm-embedded)")
    p.set_defaults(fn=cmd_serve_llm)
    return parser


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
            raise
        print(f"avm: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return EXIT_OK
