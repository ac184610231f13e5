"""Offline tools for the examples and the demo: no network, same answer for the same question.

`search` looks the query up in a small built-in corpus of notes (matching
words, best first); `calculate` evaluates arithmetic with + - * / ( ) and
numbers only. They let example agents exercise tool calls anywhere, including
on machines without network access.

Both tools are ``async``: their work is a few microseconds of Python, so they
run on the event loop instead of a worker thread (a sync tool runs in a
thread, and the thread hop would cost more than the work, and its wait would
be charged to the agent as tool time). The plain functions `search_notes` and
`evaluate` do the work and can be called directly.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable
from typing import Annotated

from avm.tools.registry import ToolError, tool

NOTES = (
    "Octopuses have three hearts and blue, copper-based blood.",
    "An octopus can taste with the suckers on its arms.",
    "Tides are driven mostly by the Moon's gravity, and partly by the Sun's.",
    "Spring tides happen near new and full moon, when Sun and Moon line up.",
    "Honey found in ancient tombs was still edible after thousands of years.",
    "Bees communicate the direction of food with a waggle dance.",
    "Glaciers hold about two thirds of the world's fresh water.",
    "Lightning heats the air around it to about five times the Sun's surface temperature.",
    "The speed of light in vacuum is 299,792,458 metres per second.",
    "Python's garbage collector finds reference cycles in generations.",
)
_WORD = re.compile(r"[a-z0-9']+")
_NOTE_WORDS = tuple(frozenset(_WORD.findall(note.lower())) for note in NOTES)


def search_notes(query: str, limit: int = 3) -> str:
    """The notes sharing the most words with the query, best first, one per line."""
    words = set(_WORD.findall(query.lower()))
    scored = sorted(((len(words & note_words), i) for i, note_words in enumerate(_NOTE_WORDS)),
                    key=lambda pair: (-pair[0], pair[1]))
    hits = [NOTES[i] for score, i in scored if score > 0][: max(1, limit)]
    return "\n".join(hits) if hits else f"no notes about {query!r}"


@tool
async def search(query: str, limit: int = 3) -> str:
    """Search the built-in notes; the best matching lines, one per line."""
    return search_notes(query, limit)


_OPS: dict[type, Callable[..., float]] = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
                                          ast.Div: operator.truediv, ast.USub: operator.neg, ast.UAdd: operator.pos}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = node.value
        assert isinstance(value, (int, float))  # (just checked: for the type checker)
        return value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    raise ToolError("only numbers, + - * / and parentheses", "ArgumentError")


def evaluate(expression: str) -> float:
    """The value of an arithmetic expression (numbers, + - * / and parentheses); ToolError otherwise."""
    if len(expression) > 200:
        raise ToolError("expression too long (200 characters at most)", "ArgumentError")
    try:
        return float(_eval(ast.parse(expression, mode="eval")))
    except SyntaxError as exc:
        raise ToolError(f"not arithmetic: {exc.msg}", "ArgumentError") from None
    except ZeroDivisionError:
        raise ToolError("division by zero", "ArithmeticError") from None
    except RecursionError:
        raise ToolError("expression nested too deeply", "ArgumentError") from None


@tool
async def calculate(expression: Annotated[str, {
        "description": "arithmetic on numbers with + - * / and parentheses",
        "examples": ["(12 + 30) / 7", "3.5 * 4 - 2", "100 / (5 + 3)", "2 * (7 - 4.5)", "1250 * 0.08"]}]) -> float:
    """Evaluate arithmetic: numbers, + - * / and parentheses."""
    return evaluate(expression)


TOOLS = (search, calculate)
