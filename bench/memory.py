"""Micro benchmarks of the content-addressed store (avm.memory).

Run ``python bench/memory.py`` for readable lines, ``--json`` to also print
one JSON object as the last line. Everything is generated here from fixed
seeds; nothing is downloaded and no public text is copied.

The compression corpus is synthetic: a seeded generator writes agent
conversations in the shape of OpenAI chat-completions messages (system /
user / assistant / tool roles; assistant ``tool_calls`` with JSON-encoded
``arguments``; tool results as JSON strings) for a tool-using research and
coding agent. Tool results mimic what such tools return: web search hits,
source files, shell output (test runs, listings, logs), SQL rows and HTTP
JSON bodies, with realistic sizes (a few hundred bytes to ~16 KB). Each
message is one object, as the VM stores them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import string
import sys
import tempfile
import time
from typing import Any, Callable

try:
    from avm.memory import ContentStore, Ref
except ModuleNotFoundError:  # run from a checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from avm.memory import ContentStore, Ref

# --------------------------------------------------------------------------
# The corpus generator
# --------------------------------------------------------------------------

_WORDS = """
the of and to in is that for it as with was on be by this are or from at an which
have not but they has were their one all we can been more if will would there
when what so who about into than them some could these other its two then time
only do may any first new use also like how our out most over after should such
data file function value system error result test request user model agent tool
query server cache memory process thread queue message response token budget task
plan step search source code change issue config build run check output input
report summary table column row record index update latest version release note
performance latency throughput cost rate limit retry timeout failure success
analysis review design module package service client handler event stream batch
network storage disk record log metric trace span window context prompt answer
question reason evidence claim paper study author dataset benchmark baseline
increase decrease improve reduce compare measure estimate observe suggest show
because however therefore although while since unless whether each every both
several many few large small fast slow recent previous next current final main
important relevant specific general simple complex clear likely possible different
""".split()

_NAMES = ["parse_config", "load_dataset", "fetch_page", "compute_score", "merge_results",
          "validate_input", "retry_request", "build_index", "flush_buffer", "render_report",
          "normalize_text", "split_batches", "open_session", "close_session", "handle_event"]
_MODULES = ["core", "utils", "storage", "client", "scheduler", "metrics", "parser", "api", "models"]
_DOMAINS = ["docs.example.org", "blog.example.com", "research.example.net", "news.example.io",
            "wiki.example.org", "forum.example.dev", "data.example.gov", "papers.example.edu"]
_TOOLS = [
    {"name": "search_web", "description": "Search the web and return the top results.",
     "parameters": {"type": "object", "properties": {"query": {"type": "string"},
                    "max_results": {"type": "integer"}}, "required": ["query"]}},
    {"name": "read_file", "description": "Read a text file from the workspace.",
     "parameters": {"type": "object", "properties": {"path": {"type": "string"},
                    "start_line": {"type": "integer"}, "end_line": {"type": "integer"}}, "required": ["path"]}},
    {"name": "run_shell", "description": "Run a shell command in the sandbox.",
     "parameters": {"type": "object", "properties": {"command": {"type": "string"},
                    "timeout_s": {"type": "number"}}, "required": ["command"]}},
    {"name": "query_db", "description": "Run a read-only SQL query.",
     "parameters": {"type": "object", "properties": {"sql": {"type": "string"}}, "required": ["sql"]}},
    {"name": "http_get", "description": "GET a URL and return status, headers and body.",
     "parameters": {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]}},
]


class CorpusGenerator:
    """Seeded generator of chat-completions style agent conversations."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        # Zipf-like word weights: frequent words first, as in real text.
        self.weights = [1.0 / (rank + 1.5) for rank in range(len(_WORDS))]

    def words(self, n: int) -> str:
        return " ".join(self.rng.choices(_WORDS, self.weights, k=n))

    def sentence(self) -> str:
        text = self.words(self.rng.randint(6, 22))
        return text[0].upper() + text[1:] + self.rng.choice([".", ".", ".", "?", ":"])

    def paragraph(self, sentences: int) -> str:
        return " ".join(self.sentence() for _ in range(sentences))

    def ident(self, n: int = 24) -> str:
        return "".join(self.rng.choices(string.ascii_letters + string.digits, k=n))

    def url(self) -> str:
        slug = "-".join(self.rng.choices(_WORDS[40:], k=self.rng.randint(2, 5)))
        return f"https://{self.rng.choice(_DOMAINS)}/{self.rng.choice(['post', 'docs', 'a', 'wiki'])}/{slug}"

    def path(self) -> str:
        return f"src/{self.rng.choice(_MODULES)}/{self.rng.choice(_NAMES).split('_')[1]}.py"

    def code(self, functions: int) -> str:
        lines = [f'"""{self.sentence()}"""', "", "from __future__ import annotations", "",
                 f"import {self.rng.choice(['json', 'os', 'time', 'logging'])}", ""]
        for _ in range(functions):
            name = self.rng.choice(_NAMES)
            args = ", ".join(self.rng.sample(["data", "config", "limit", "timeout", "path", "items"], 2))
            lines += ["", f"def {name}({args}):", f'    """{self.sentence()}"""']
            for _ in range(self.rng.randint(3, 12)):
                var = self.rng.choice(["result", "count", "value", "batch", "entry", "total"])
                op = self.rng.choice([f"{var} = {self.rng.choice(_NAMES)}({self.rng.choice(['data', 'config', 'items'])})",
                                      f"if {var} is None:\n        return {self.rng.randint(0, 99)}",
                                      f"for item in {self.rng.choice(['items', 'data', 'batch'])}:",
                                      f"    {var} += len(item)",
                                      f"# {self.words(self.rng.randint(4, 10))}",
                                      f"logger.debug(\"{self.words(3)} %s\", {var})"])
                lines.append("    " + op)
            lines.append(f"    return {self.rng.choice(['result', 'count', 'None', 'value'])}")
        return "\n".join(lines)

    def tool_call(self) -> tuple[str, dict[str, Any]]:
        name = self.rng.choice([t["name"] for t in _TOOLS])
        if name == "search_web":
            args: dict[str, Any] = {"query": self.words(self.rng.randint(3, 8)), "max_results": self.rng.choice([5, 8, 10])}
        elif name == "read_file":
            start = self.rng.randint(1, 200)
            args = {"path": self.path(), "start_line": start, "end_line": start + self.rng.randint(40, 200)}
        elif name == "run_shell":
            args = {"command": self.rng.choice(["pytest -q tests/", "ls -la src/", "git log --oneline -n 20",
                                                "grep -rn TODO src/", "python -m build", "df -h"])}
        elif name == "query_db":
            args = {"sql": f"SELECT id, name, status, created_at, amount FROM {self.rng.choice(['orders', 'jobs', 'users'])} "
                           f"WHERE status = '{self.rng.choice(['open', 'failed', 'done'])}' LIMIT {self.rng.choice([10, 25, 50])}"}
        else:
            args = {"url": self.url()}
        return name, args

    def tool_result(self, name: str, args: dict[str, Any]) -> str:
        rng = self.rng
        if name == "search_web":
            hits = [{"title": self.sentence()[:-1], "url": self.url(), "snippet": self.paragraph(rng.randint(1, 3)),
                     "published": f"20{rng.randint(18, 25)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"}
                    for _ in range(args.get("max_results", 5))]
            return json.dumps({"query": args["query"], "results": hits})
        if name == "read_file":
            return json.dumps({"path": args["path"], "start_line": args["start_line"], "content": self.code(rng.randint(1, 5))})
        if name == "run_shell":
            if args["command"].startswith("pytest"):
                lines = [f"tests/test_{rng.choice(_NAMES)}.py::test_{rng.choice(_NAMES)} "
                         f"{rng.choice(['PASSED', 'PASSED', 'PASSED', 'FAILED', 'SKIPPED'])}" for _ in range(rng.randint(10, 80))]
                lines.append(f"{rng.randint(10, 300)} passed, {rng.randint(0, 5)} failed in {rng.uniform(0.5, 40):.2f}s")
            elif args["command"].startswith("git"):
                lines = [f"{self.ident(7).lower()} {self.sentence()[:-1]}" for _ in range(20)]
            elif args["command"].startswith("ls"):
                lines = [f"-rw-r--r-- 1 agent agent {rng.randint(100, 90000):>6} Mar {rng.randint(1, 28):>2} "
                         f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d} {rng.choice(_NAMES)}.py" for _ in range(rng.randint(5, 40))]
            else:
                lines = [f"src/{rng.choice(_MODULES)}/{rng.choice(_NAMES)}.py:{rng.randint(1, 900)}: # TODO {self.words(6)}"
                         for _ in range(rng.randint(3, 30))]
            return json.dumps({"exit_code": rng.choice([0, 0, 0, 1]), "stdout": "\n".join(lines), "stderr": ""})
        if name == "query_db":
            rows = [[rng.randint(1000, 99999), f"{rng.choice(_NAMES)}-{rng.randint(1, 999)}", rng.choice(["open", "failed", "done"]),
                     f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z",
                     round(rng.uniform(1, 5000), 2)] for _ in range(rng.randint(3, 50))]
            return json.dumps({"columns": ["id", "name", "status", "created_at", "amount"], "rows": rows})
        body = {"id": self.ident(12), "items": [{"key": rng.choice(_WORDS), "value": rng.randint(0, 10**6),
                                                 "updated": f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"}
                                                for _ in range(rng.randint(2, 30))], "next": None}
        return json.dumps({"status": 200, "headers": {"content-type": "application/json", "x-request-id": self.ident(16)},
                           "body": json.dumps(body)})

    def conversation(self, system: str) -> list[dict[str, Any]]:
        rng = self.rng
        messages: list[dict[str, Any]] = [{"role": "system", "content": system},
                                          {"role": "user", "content": self.paragraph(rng.randint(1, 6))}]
        for _ in range(rng.randint(2, 8)):
            calls = []
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                name, args = self.tool_call()
                calls.append((f"call_{self.ident()}", name, args))
            messages.append({"role": "assistant", "content": self.paragraph(1) if rng.random() < 0.4 else None,
                             "tool_calls": [{"id": cid, "type": "function",
                                             "function": {"name": name, "arguments": json.dumps(args)}}
                                            for cid, name, args in calls]})
            for cid, name, args in calls:
                messages.append({"role": "tool", "tool_call_id": cid, "content": self.tool_result(name, args)})
        messages.append({"role": "assistant", "content": self.paragraph(rng.randint(2, 10))})
        return messages


def make_corpus(conversations: int, seed: int = 7) -> list[bytes]:
    """Every message of ``conversations`` conversations, JSON-encoded, in order."""
    gen = CorpusGenerator(seed)
    systems = [f"You are agent {i}. " + gen.paragraph(30) for i in range(5)]
    out = []
    for i in range(conversations):
        out += [json.dumps(m).encode() for m in gen.conversation(systems[i % len(systems)])]
    return out
