"""Offline tools for the examples and the demo: no network, same answer for the same question.

`search` looks the query up in a small built-in corpus of notes (matching
words, best first); `calculate` evaluates arithmetic with + - * / ( ) and
numbers only. They let example agents exercise tool calls anywhere, including
on machines without network access.
"""

from __future__ import annotations

import ast
import operator
import re

from avm.io.tools import ToolError, tool

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


@tool
def search(query: str, limit: int = 3) -> str:
    """Search the built-in notes; the best matching lines, one per line."""
    words = set(_WORD.findall(query.lower()))
    scored = sorted(((len(words & set(_WORD.findall(note.lower()))), i) for i, note in enumerate(NOTES)),
                    key=lambda pair: (-pair[0], pair[1]))
    hits = [NOTES[i] for score, i in scored if score > 0][: max(1, limit)]
    return "\n".join(hits) if hits else f"no notes about {query!r}"


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.USub: operator.neg, ast.UAdd: operator.pos}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    raise ToolError("only numbers, + - * / and parentheses", "ArgumentError")


@tool
def calculate(expression: str) -> float:
    """Evaluate arithmetic: numbers, + - * / and parentheses."""
    if len(expression) > 200:
        raise ToolError("expression too long (200 characters at most)", "ArgumentError")
    try:
        return float(_eval(ast.parse(expression, mode="eval")))
    except SyntaxError as exc:
        raise ToolError(f"not arithmetic: {exc.msg}", "ArgumentError") from None
    except ZeroDivisionError:
        raise ToolError("division by zero", "ArithmeticError") from None


TOOLS = (search, calculate)
