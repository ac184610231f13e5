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
from collections.abc import Callable
from typing import Any

try:
    from avm.memory import ContentStore, Ref
except ModuleNotFoundError:  # run from a checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from avm.memory import ContentStore, Ref

# --------------------------------------------------------------------------
# The corpus generator
# --------------------------------------------------------------------------

# A small English grammar (own word lists) so that text has the phrase-level
# statistics of prose (determiners, prepositions, inflections), not word salad.
_DET = ["the", "the", "the", "a", "this", "each", "our", "their", "every", "that"]
_ADJ = """new previous current final main large small slow fast recent relevant specific
simple complex clear likely possible different important default missing stale local remote
cached expensive cheap partial complete invalid valid unexpected stable flaky""".split()
_NOUN = """data file function value system error result test request user model agent tool
query server cache memory process thread queue message response token budget task plan step
search source code change issue config build output input report summary table column row
record index version release note latency throughput cost limit retry timeout failure
analysis review design module package service client handler event stream batch network disk
log metric trace window context prompt answer question reason evidence paper study author
dataset benchmark baseline schema endpoint deployment branch commit dependency""".split()
_VERB = [("return", "returns", "returned"), ("use", "uses", "used"), ("show", "shows", "shown"),
         ("improve", "improves", "improved"), ("reduce", "reduces", "reduced"), ("check", "checks", "checked"),
         ("update", "updates", "updated"), ("load", "loads", "loaded"), ("call", "calls", "called"),
         ("compare", "compares", "compared"), ("measure", "measures", "measured"), ("read", "reads", "read"),
         ("write", "writes", "written"), ("find", "finds", "found"), ("break", "breaks", "broken"),
         ("fix", "fixes", "fixed"), ("cover", "covers", "covered"), ("handle", "handles", "handled"),
         ("cause", "causes", "caused"), ("need", "needs", "needed"), ("skip", "skips", "skipped")]
_PREP = ["in", "of", "for", "from", "with", "on", "after", "before", "during", "without", "by", "to"]
_CONJ = ["because", "but", "so", "although", "while", "and", "since", "unless", "when", "which means"]
_OPENERS = ["", "", "", "", "I think ", "It looks like ", "Next, ", "So far, ", "Based on the results, ",
            "To confirm, ", "As expected, ", "However, ", "In short, ", "Note that "]
_WORDS = _ADJ + _NOUN + [v[0] for v in _VERB] + _PREP

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
        # Zipf-like weights for the few places that pick loose words.
        self.weights = [1.0 / (rank + 1.5) for rank in range(len(_WORDS))]

    def words(self, n: int) -> str:
        return " ".join(self.rng.choices(_WORDS, self.weights[: len(_WORDS)], k=n))

    def noun_phrase(self) -> str:
        rng = self.rng
        parts = [rng.choice(_DET)]
        if rng.random() < 0.4:
            parts.append(rng.choice(_ADJ))
        noun = rng.choice(_NOUN)
        parts.append(noun + ("es" if noun.endswith("s") else "s") if rng.random() < 0.25 else noun)
        if rng.random() < 0.25:
            parts += [rng.choice(_PREP), rng.choice(_DET), rng.choice(_NOUN)]
        return " ".join(parts)

    def clause(self) -> str:
        rng = self.rng
        base, third, past = rng.choice(_VERB)
        form = rng.random()
        if form < 0.4:
            verb = third
        elif form < 0.6:
            verb = f"{rng.choice(['was', 'is', 'has been', 'will be'])} {past} by"
        elif form < 0.8:
            verb = f"{rng.choice(['should', 'can', 'will', 'does not', 'might'])} {base}"
        else:
            verb = f"{rng.choice(['has', 'had'])} {past}"
        text = f"{self.noun_phrase()} {verb} {self.noun_phrase()}"
        if rng.random() < 0.3:
            text += f" {rng.choice(_PREP)} {self.noun_phrase()}"
        return text

    def sentence(self) -> str:
        rng = self.rng
        text = rng.choice(_OPENERS) + self.clause()
        if rng.random() < 0.35:
            text += f" {rng.choice(_CONJ)} {self.clause()}"
        if rng.random() < 0.15:
            text += f" ({rng.randint(2, 98)}% of {rng.randint(10, 5000)} {rng.choice(_NOUN)}s)"
        return text[0].upper() + text[1:] + rng.choice([".", ".", ".", ".", "?", ":"])

    def paragraph(self, sentences: int) -> str:
        return " ".join(self.sentence() for _ in range(sentences))

    def ident(self, n: int = 24) -> str:
        return "".join(self.rng.choices(string.ascii_letters + string.digits, k=n))

    def url(self) -> str:
        slug = "-".join(self.rng.choices(_WORDS[40:], k=self.rng.randint(2, 5)))
        return f"https://{self.rng.choice(_DOMAINS)}/{self.rng.choice(['post', 'docs', 'api/v2', 'wiki'])}/{slug}"

    def path(self) -> str:
        return f"src/{self.rng.choice(_MODULES)}/{self.rng.choice(_NAMES).split('_')[1]}.py"

    def code(self, n_lines: int) -> str:
        """About ``n_lines`` lines of plausible Python."""
        rng = self.rng
        lines = [f'"""{self.sentence()}"""', "", "from __future__ import annotations", "",
                 f"import {rng.choice(['json', 'os', 'time', 'logging'])}", "", "logger = logging.getLogger(__name__)"]
        while len(lines) < n_lines:
            name = rng.choice(_NAMES)
            args = ", ".join(rng.sample(["data", "config", "limit", "timeout", "path", "items"], rng.randint(1, 3)))
            lines += ["", "", f"def {name}({args}):", f'    """{self.sentence()}"""']
            for _ in range(rng.randint(3, 14)):
                var = rng.choice(["result", "count", "value", "batch", "entry", "total"])
                lines.append("    " + rng.choice([
                    f"{var} = {rng.choice(_NAMES)}({rng.choice(['data', 'config', 'items'])})",
                    f"if {var} is None:\n        return {rng.randint(0, 99)}",
                    f"for item in {rng.choice(['items', 'data', 'batch'])}:\n        {var} += len(item)",
                    f"# {self.clause()}",
                    f"logger.debug(\"{rng.choice(_NOUN)} %s\", {var})",
                    f"raise ValueError(f\"{self.clause()}: {{{var}!r}}\")"]))
            lines.append(f"    return {rng.choice(['result', 'count', 'None', 'value'])}")
        return "\n".join(lines)

    def page(self) -> str:
        """A fetched web page, converted to markdown as agent browsers do."""
        rng = self.rng
        parts = [f"# {self.sentence()[:-1]}", "",
                 f"*{rng.choice(['Updated', 'Published'])} 2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}*", ""]
        for _ in range(rng.randint(2, 7)):
            parts += [f"## {self.noun_phrase().capitalize()}", ""]
            for _ in range(rng.randint(1, 4)):
                parts += [self.paragraph(rng.randint(2, 6)), ""]
            if rng.random() < 0.3:
                parts += ["```python", self.code(rng.randint(6, 20)), "```", ""]
            if rng.random() < 0.3:
                parts += [f"- [{self.noun_phrase()}]({self.url()})" for _ in range(rng.randint(2, 6))] + [""]
        return "\n".join(parts)

    def tool_call(self) -> tuple[str, dict[str, Any]]:
        name = self.rng.choice([t["name"] for t in _TOOLS])
        if name == "search_web":
            args: dict[str, Any] = {"query": self.words(self.rng.randint(3, 8)),
                                    "max_results": self.rng.choice([5, 8, 10])}
        elif name == "read_file":
            start = self.rng.randint(1, 200)
            args = {"path": self.path(), "start_line": start, "end_line": start + self.rng.randint(40, 200)}
        elif name == "run_shell":
            args = {"command": self.rng.choice(["pytest -q tests/", "ls -la src/", "git log --oneline -n 20",
                                                "grep -rn TODO src/", "python -m build", "df -h"])}
        elif name == "query_db":
            table = self.rng.choice(["orders", "jobs", "users"])
            status = self.rng.choice(["open", "failed", "done"])
            limit = self.rng.choice([10, 25, 50])
            args = {"sql": f"SELECT id, name, status, created_at, amount FROM {table} "
                           f"WHERE status = '{status}' LIMIT {limit}"}
        else:
            args = {"url": self.url()}
        return name, args

    def tool_result(self, name: str, args: dict[str, Any]) -> str:
        rng = self.rng
        if name == "search_web":
            hits = [{"title": self.sentence()[:-1], "url": self.url(), "snippet": self.paragraph(rng.randint(1, 2)),
                     "published": f"20{rng.randint(18, 25)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"}
                    for _ in range(args.get("max_results", 5))]
            return json.dumps({"query": args["query"], "results": hits})
        if name == "read_file":
            content = self.code(args["end_line"] - args["start_line"])
            return json.dumps({"path": args["path"], "start_line": args["start_line"], "content": content})
        if name == "run_shell":
            if args["command"].startswith("pytest"):
                outcomes = ["PASSED", "PASSED", "PASSED", "FAILED", "SKIPPED"]
                lines = [f"tests/test_{rng.choice(_NAMES)}.py::test_{rng.choice(_NAMES)} {rng.choice(outcomes)}"
                         for _ in range(rng.randint(10, 80))]
                lines.append(f"{rng.randint(10, 300)} passed, {rng.randint(0, 5)} failed in "
                             f"{rng.uniform(0.5, 40):.2f}s")
            elif args["command"].startswith("git"):
                lines = [f"{self.ident(7).lower()} {self.sentence()[:-1]}" for _ in range(20)]
            elif args["command"].startswith("ls"):
                lines = [f"-rw-r--r-- 1 agent agent {rng.randint(100, 90000):>6} Mar {rng.randint(1, 28):>2} "
                         f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d} {rng.choice(_NAMES)}.py"
                         for _ in range(rng.randint(5, 40))]
            else:
                lines = [f"src/{rng.choice(_MODULES)}/{rng.choice(_NAMES)}.py:{rng.randint(1, 900)}: "
                         f"# TODO {self.words(6)}" for _ in range(rng.randint(3, 30))]
            return json.dumps({"exit_code": rng.choice([0, 0, 0, 1]), "stdout": "\n".join(lines), "stderr": ""})
        if name == "query_db":
            rows = [[rng.randint(1000, 99999), f"{rng.choice(_NAMES)}-{rng.randint(1, 999)}",
                     rng.choice(["open", "failed", "done"]),
                     f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
                     f"T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z",
                     round(rng.uniform(1, 5000), 2)] for _ in range(rng.randint(3, 50))]
            return json.dumps({"columns": ["id", "name", "status", "created_at", "amount"], "rows": rows})
        if "/api/" not in args["url"]:
            return json.dumps({"status": 200, "url": args["url"], "content_type": "text/markdown", "text": self.page()})
        body = {"id": self.ident(12), "items": [{"key": rng.choice(_WORDS), "value": rng.randint(0, 10**6),
                                                 "updated": f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"}
                                                for _ in range(rng.randint(2, 30))], "next": None}
        return json.dumps({"status": 200,
                           "headers": {"content-type": "application/json", "x-request-id": self.ident(16)},
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


# --------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------


def _per_op_us(fn: Callable[[Ref], object], refs: list[Ref], rounds: int) -> float:
    """Best-of-``rounds`` microseconds per call of ``fn`` over ``refs``."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for ref in refs:
            fn(ref)
        best = min(best, time.perf_counter() - start)
    return best / len(refs) * 1e6


def _put_all(store: ContentStore, objects: list[bytes]) -> tuple[list[Ref], float]:
    put = store.put
    start = time.perf_counter()
    refs = [put(obj) for obj in objects]
    store.flush()
    return refs, time.perf_counter() - start


def bench_tiers(objects: list[bytes], workdir: str) -> dict[str, float]:
    """Put and get rates with every object in the hot, the warm or the cold tier."""
    out: dict[str, float] = {}
    sample = objects[:5000]
    # hot: everything fits
    store = ContentStore(hot_bytes=1 << 30)
    refs, took = _put_all(store, objects)
    out["hot_put_per_s"] = len(objects) / took
    out["hot_get_us"] = _per_op_us(store.get, refs, rounds=7)
    assert store.statistics().hot.objects >= len(set(refs))  # plus any trained dictionary
    store.close()
    # warm: hot disabled, so puts compress into warm and gets decompress + verify
    store = ContentStore(hot_bytes=0)
    refs, took = _put_all(store, objects)
    out["warm_put_per_s"] = len(objects) / took
    out["warm_get_us"] = _per_op_us(store.get, refs[: len(sample)], rounds=3)
    stats = store.statistics()
    assert stats.warm.hits >= 3 * len(sample) and stats.hot.objects == 0
    store.close()
    # cold: hot and warm disabled; puts batch into LMDB, gets read LMDB + decode + verify
    path = os.path.join(workdir, "cold")
    with ContentStore(path, hot_bytes=0, warm_bytes=0) as store:
        refs, took = _put_all(store, objects)
        out["cold_put_per_s"] = len(objects) / took
    with ContentStore(path, hot_bytes=0, warm_bytes=0) as store:
        out["cold_get_us"] = _per_op_us(store.get, refs[: len(sample)], rounds=3)
        assert store.statistics().cold.hits >= 3 * len(sample)
    return out


def bench_default_put(objects: list[bytes], workdir: str) -> float:
    """Puts per second into a store with default settings and a path, flush included."""
    with ContentStore(os.path.join(workdir, "default")) as store:
        _, took = _put_all(store, objects)
    return len(objects) / took


def bench_dedup(workdir: str, agents: int = 1000, **settings: Any) -> dict[str, float]:
    """1,000 agents putting the same 50 KB system prompt and 20 KB tool spec plus their own messages."""
    gen = CorpusGenerator(seed=99)
    prompt = ""
    while len(prompt) < 50_000:
        prompt += gen.paragraph(8) + "\n\n"
    system = prompt[:50_000].encode()
    tools = []
    while len(json.dumps(tools)) < 20_000:
        spec = dict(gen.rng.choice(_TOOLS))
        spec = {**spec, "name": f"{spec['name']}_{len(tools)}", "description": gen.paragraph(2)}
        tools.append({"type": "function", "function": spec})
    tool_spec = json.dumps(tools).encode()[:20_000]
    with ContentStore(tempfile.mkdtemp(prefix="dedup-", dir=workdir), **settings) as store:
        for agent in range(agents):
            store.put(system)
            store.put(tool_spec)
            store.put(json.dumps({"role": "user", "content": f"Agent {agent}: " + gen.paragraph(1)}).encode())
            store.put(json.dumps({"role": "assistant", "content": gen.paragraph(2)}).encode())
        store.flush()
        stats = store.statistics()
        mdb = os.path.getsize(os.path.join(store.path or "", "data.mdb"))
    return {"agents": agents, "logical_bytes": stats.logical_bytes, "unique_bytes": stats.unique_bytes,
            "physical_bytes": stats.physical_bytes, "unique_objects": stats.unique_objects,
            "dedup_ratio": stats.dedup_ratio, "lmdb_file_bytes": mdb,
            "physical_over_unique": stats.physical_bytes / stats.unique_bytes}


def bench_compression(corpus: list[bytes]) -> dict[str, float]:
    """Warm-tier compression ratio over the corpus, with and without dictionaries."""
    out: dict[str, float] = {}
    for label, enabled in (("dict", True), ("no_dict", False)):
        store = ContentStore(hot_bytes=0, dict_enabled=enabled)
        for message in corpus:
            store.put(message)
        stats = store.statistics()
        out[label] = stats.warm.compression_ratio
        out[f"{label}_objects"] = stats.warm.objects
        out[f"{label}_raw_bytes"] = stats.warm.raw_bytes
        out[f"{label}_bytes"] = stats.warm.bytes
        out[f"{label}_dictionaries"] = stats.dictionaries
        store.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--conversations", type=int, default=600, help="conversations in the corpus")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    corpus = make_corpus(args.conversations)
    sizes = sorted(map(len, corpus))
    print(f"corpus: {len(corpus):,} chat-completions messages from {args.conversations} synthetic agent "
          f"conversations (seeded generator in bench/memory.py: roles system/user/assistant/tool, tool_calls "
          f"with JSON arguments, tool results from web search, file reads, shell, SQL and HTTP tools); "
          f"{sum(sizes) / 1e6:.1f} MB, median {sizes[len(sizes) // 2]:,} B, p90 {sizes[int(len(sizes) * 0.9)]:,} B, "
          f"max {sizes[-1]:,} B")
    unique = list(dict.fromkeys(corpus))
    workdir = tempfile.mkdtemp(prefix="avm-bench-memory-")
    try:
        tiers = bench_tiers(unique[:20_000], workdir)
        put_per_s = bench_default_put(unique, workdir)
        dedup = bench_dedup(workdir)
        dedup_raw = bench_dedup(workdir, compress_min_bytes=1 << 30)  # compression off: dedup alone
        comp = bench_compression(corpus)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"hot:  get {tiers['hot_get_us']:.2f} us (target <= 2 us), put {tiers['hot_put_per_s']:,.0f}/s")
    print(f"warm: get {tiers['warm_get_us']:.2f} us (zstd decode + blake3 verify), "
          f"put {tiers['warm_put_per_s']:,.0f}/s")
    print(f"cold: get {tiers['cold_get_us']:.2f} us (LMDB read + decode + verify), "
          f"put {tiers['cold_put_per_s']:,.0f}/s (batched transactions, fsync on commit)")
    print(f"put:  {put_per_s:,.0f} puts/s into a default on-disk store (all tiers, flush included)")
    print(f"dedup: {dedup['agents']:,} agents x (50 KB system prompt + 20 KB tool spec + 2 own messages): "
          f"logical {dedup['logical_bytes'] / 1e6:.1f} MB, unique {dedup['unique_bytes'] / 1e6:.2f} MB "
          f"in {dedup['unique_objects']:,} objects, physical {dedup['physical_bytes'] / 1e6:.2f} MB "
          f"(blob bytes; LMDB file {dedup['lmdb_file_bytes'] / 1e6:.2f} MB) -> physical/unique "
          f"{dedup['physical_over_unique']:.3f} (target <= 1.05; {dedup_raw['physical_over_unique']:.3f} with "
          f"compression off), dedup ratio {dedup['dedup_ratio']:.0f}x")
    print(f"compression (warm tier, {comp['dict_objects']:,} distinct messages, "
          f"{comp['dict_raw_bytes'] / 1e6:.1f} MB): {comp['dict']:.2f}:1 with trained dictionaries "
          f"({comp['dict_dictionaries']} trained), {comp['no_dict']:.2f}:1 without (target >= 4:1)")
    elapsed = time.perf_counter() - started
    print(f"total bench time {elapsed:.1f} s")
    if args.json:
        print(json.dumps({
            "hot_get_us": round(tiers["hot_get_us"], 3),
            "warm_get_us": round(tiers["warm_get_us"], 3),
            "cold_get_us": round(tiers["cold_get_us"], 3),
            "put_per_s": round(put_per_s),
            "hot_put_per_s": round(tiers["hot_put_per_s"]),
            "warm_put_per_s": round(tiers["warm_put_per_s"]),
            "cold_put_per_s": round(tiers["cold_put_per_s"]),
            "dedup_physical_over_unique": round(dedup["physical_over_unique"], 4),
            "dedup_physical_over_unique_uncompressed": round(dedup_raw["physical_over_unique"], 4),
            "dedup_ratio": round(dedup["dedup_ratio"], 1),
            "compression_ratio": round(comp["dict"], 3),
            "compression_ratio_no_dict": round(comp["no_dict"], 3),
            "corpus_messages": len(corpus),
            "seconds": round(elapsed, 1),
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
