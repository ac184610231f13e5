"""Random sentences from the GBNF grammar must compile, or fail only for
reasons a context-free grammar cannot express."""

from __future__ import annotations

import random
import re

import pytest

import avm

SEMANTIC = ("undefined label", "duplicate label", "stack underflow", "inconsistent stack depth",
            "builtin", "out of range", "guard")


class Gbnf:
    """A small GBNF reader and random generator: rules, alternation, sequences,
    "literals", [classes], (groups) and the postfixes * + ?."""

    TOKEN = re.compile(r'\s*(?:(?P<lit>"(?:\\.|[^"\\])*")|(?P<cls>\[(?:\\.|[^\]\\])*\])|(?P<name>[A-Za-z][\w-]*)'
                       r"|(?P<op>[()|*+?]))")

    def __init__(self, text: str):
        self.rules: dict[str, list] = {}
        body = []
        for line in text.splitlines():
            if line.strip().startswith("#") or not line.strip():
                continue
            if "::=" in line:
                body.append(line)
            else:
                body[-1] += " " + line
        for rule in body:
            name, _, expr = rule.partition("::=")
            self.tokens = self._lex(expr)
            self.pos = 0
            self.rules[name.strip()] = self._alt()
            assert self.pos == len(self.tokens), f"trailing tokens in rule {name}"

    def _lex(self, expr: str) -> list[tuple[str, str]]:
        out, pos = [], 0
        expr = expr.rstrip()
        while pos < len(expr):
            m = self.TOKEN.match(expr, pos)
            assert m, f"cannot read grammar at {expr[pos:]!r}"
            pos = m.end()
            kind = m.lastgroup
            out.append((kind, m.group(kind)))
        return out

    def _alt(self):
        alts = [self._seq()]
        while self.pos < len(self.tokens) and self.tokens[self.pos] == ("op", "|"):
            self.pos += 1
            alts.append(self._seq())
        return ("alt", alts)

    def _seq(self):
        items = []
        while self.pos < len(self.tokens) and self.tokens[self.pos][1] not in ("|", ")"):
            kind, text = self.tokens[self.pos]
            self.pos += 1
            if text == "(":
                item = self._alt()
                assert self.tokens[self.pos] == ("op", ")")
                self.pos += 1
            elif kind == "lit":
                item = ("lit", self._unescape(text[1:-1]))
            elif kind == "cls":
                item = ("cls", text)
            else:
                item = ("ref", text)
            while self.pos < len(self.tokens) and self.tokens[self.pos][1] in "*+?":
                item = ("rep", self.tokens[self.pos][1], item)
                self.pos += 1
            items.append(item)
        return ("seq", items)

    @staticmethod
    def _unescape(s: str) -> str:
        return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m.group(1), m.group(1)), s)

    def _chars(self, cls: str) -> tuple[bool, list[str]]:
        inner = cls[1:-1]
        negate = inner.startswith("^")
        if negate:
            inner = inner[1:]
        chars, i = [], 0
        while i < len(inner):
            ch = inner[i]
            if ch == "\\":
                ch = self._unescape(inner[i : i + 2])
                i += 2
            else:
                i += 1
            if i < len(inner) - 1 and inner[i] == "-":
                end = inner[i + 1]
                chars.extend(chr(c) for c in range(ord(ch), ord(end) + 1))
                i += 2
            else:
                chars.append(ch)
        return negate, chars

    def generate(self, rng: random.Random, node=("ref", "root"), depth=0) -> str:
        kind = node[0]
        if kind == "ref":
            return self.generate(rng, self.rules[node[1]], depth + 1)
        if kind == "lit":
            return node[1]
        if kind == "cls":
            negate, chars = self._chars(node[1])
            if negate:
                pool = [c for c in 'abcXYZ019 _-.:/"\\#{}é€' if c not in chars]
                return rng.choice(pool)
            return rng.choice(chars)
        if kind == "seq":
            return "".join(self.generate(rng, item, depth) for item in node[1])
        if kind == "alt":
            return self.generate(rng, rng.choice(node[1]), depth)
        _, op, item = node
        limit = 0 if depth > 12 else 6
        lo = 1 if op == "+" else 0
        hi = 1 if op == "?" else max(lo, rng.randint(0, limit))
        return "".join(self.generate(rng, item, depth + 1) for _ in range(rng.randint(lo, hi)))


def test_grammar_covers_every_instruction():
    text = avm.gbnf()
    from avm.lang import opcodes as O

    for info in O.OPS:
        assert f'"{info.name}"' in text
    assert text.startswith("# AVM") and "root ::=" in text


@pytest.mark.parametrize("seed", range(4))
def test_random_sentences_from_the_grammar_compile(seed):
    grammar = Gbnf(avm.gbnf())
    rng = random.Random(seed)
    compiled = semantic = 0
    for _ in range(300):
        source = grammar.generate(rng)
        try:
            avm.compile(source)
            compiled += 1
        except avm.CompileError as exc:
            assert any(reason in exc.message for reason in SEMANTIC), (exc, source)
            semantic += 1
    assert compiled > 0  # stack-balanced sentences are common enough to see
