"""Source text to `Code`.

The language is line-based assembly:

    # a comment; blank lines are ignored
    loop:                     # a label, on its own line
        load i                # one instruction per line
        push 1
        add
        store i
        load i
        push 10
        lt
        jump_if loop          # jumps name labels, never addresses
    load i
    return

Operands of `push`: an int (``-12``), a float (``2.5``, ``1e-3``), ``true``,
``false``, ``null``, a bare word (``hello``, text), or a quoted text with the
escapes ``\\n \\t \\r \\" \\\\`` and ``\\uXXXX``. `assert` takes the rest of the
line as its message (bare words, white space folded, or one quoted text).

Execution that reaches the end of the program halts with result null; the
compiler makes that explicit with a final `halt`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from avm.errors import CompileError
from avm.lang import opcodes as O
from avm.lang.builtins import lookup as lookup_builtin
from avm.lang.code import MAX_INSTRUCTIONS, Code, const_key, put_uvarint
from avm.lang.validate import validate

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
TOOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
BARE_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.:/\-]*\Z")
INT = re.compile(r"-?[0-9]+\Z")
FLOAT = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?\Z")
COUNT_RE = re.compile(r"[0-9]+\Z")
MAX_COUNT = 1 << 16
_COUNT_DIGITS = 20  # longer counts are refused unread (leading zeros and all)
MAX_INT_DIGITS = 300  # integer literals stay well inside the VM's 1024-bit integers
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


@dataclass(slots=True)
class Token:
    text: str  # the value: a word as written, or a string's decoded text
    column: int  # 1-based column where the token starts
    quoted: bool


class _Line:
    """One source line split into tokens, with errors located on it."""

    def __init__(self, number: int, raw: str):
        self.number = number
        self.raw = raw
        self.tokens: list[Token] = []
        self.rest_start = 0  # index into raw where the first operand starts

    def error(self, message: str, column: int = 1) -> CompileError:
        return CompileError(message, self.number, column, self.raw)


def tokenize(line: _Line) -> None:
    raw = line.raw
    i = 0
    n = len(raw)
    while i < n:
        ch = raw[i]
        if ch in " \t":
            i += 1
            continue
        if ch == "#":
            break
        start = i
        if ch == '"':
            i += 1
            buf: list[str] = []
            while True:
                if i >= n:
                    raise line.error("unterminated string", start + 1)
                ch = raw[i]
                if ch == '"':
                    i += 1
                    break
                if ch == "\\":
                    if i + 1 >= n:
                        raise line.error("unterminated string", start + 1)
                    esc = raw[i + 1]
                    if esc in _ESCAPES:
                        buf.append(_ESCAPES[esc])
                        i += 2
                    elif esc == "u":
                        digits = raw[i + 2 : i + 6]
                        if len(digits) != 4 or not all(c in "0123456789abcdefABCDEF" for c in digits):
                            raise line.error("bad escape: \\u needs four hex digits", i + 1)
                        code = int(digits, 16)
                        if 0xD800 <= code <= 0xDBFF and raw[i + 6 : i + 8] == "\\u":  # a pair, as JSON writes one
                            low = raw[i + 8 : i + 12]
                            if len(low) == 4 and all(c in "0123456789abcdefABCDEF" for c in low) \
                                    and 0xDC00 <= int(low, 16) <= 0xDFFF:
                                buf.append(chr(0x10000 + ((code - 0xD800) << 10) + (int(low, 16) - 0xDC00)))
                                i += 12
                                continue
                        if 0xD800 <= code <= 0xDFFF:
                            raise line.error("bad escape: a lone surrogate is not text", i + 1)
                        buf.append(chr(code))
                        i += 6
                    else:
                        raise line.error(f"bad escape \\{esc}", i + 1)
                else:
                    buf.append(ch)
                    i += 1
            if i < n and raw[i] not in " \t#":
                raise line.error("expected white space after a string", i + 1)
            line.tokens.append(Token("".join(buf), start + 1, True))
        else:
            while i < n and raw[i] not in ' \t#"':
                i += 1
            line.tokens.append(Token(raw[start:i], start + 1, False))


def _refuse_surrogates(line: _Line) -> None:
    """Text holds Unicode scalar values only: a lone surrogate anywhere in the source is an error."""
    for column, ch in enumerate(line.raw, start=1):
        if "\ud800" <= ch <= "\udfff":
            shown = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in line.raw)  # printable
            raise CompileError(f"a lone surrogate (U+{ord(ch):04X}) is not text: source is Unicode scalar values",
                               line.number, column, shown)


def parse_literal(tok: Token, line: _Line) -> Any:
    """The value of a `push` operand."""
    if tok.quoted:
        return tok.text
    word = tok.text
    if word == "true":
        return True
    if word == "false":
        return False
    if word == "null":
        return None
    if INT.match(word):
        if len(word.lstrip("-")) > MAX_INT_DIGITS:
            raise line.error(f"number {word[:20]}... is out of range (at most {MAX_INT_DIGITS} digits)", tok.column)
        return int(word)
    if FLOAT.match(word):
        value = float(word)
        if not math.isfinite(value):
            raise line.error(f"number {word} is out of range", tok.column)
        return value
    if BARE_WORD.match(word):
        return word
    raise line.error(f"bad operand {word!r}: expected a number, true, false, null, a word or a quoted text", tok.column)


@dataclass(slots=True)
class _Instr:
    info: O.OpInfo
    operands: list[Any]  # resolved values; LABEL holds the label name until resolved
    line: _Line
    column: int
    label_column: int = 0


def compile_source(source: str) -> Code:
    """Compile source text; raise CompileError (with line, column and caret) on the first error."""
    if not isinstance(source, str):
        raise TypeError(f"source must be text, not {type(source).__name__}")
    instrs: list[_Instr] = []
    labels: dict[str, int] = {}
    label_lines: dict[str, _Line] = {}
    last_line: _Line | None = None
    for number, raw in enumerate(source.split("\n"), start=1):
        raw = raw.rstrip("\r")
        line = _Line(number, raw)
        if not raw.isascii():
            _refuse_surrogates(line)
        tokenize(line)
        if not line.tokens:
            continue
        last_line = line
        head = line.tokens[0]
        if not head.quoted and head.text.endswith(":"):
            name = head.text[:-1]
            if not IDENT.match(name):
                raise line.error(f"bad label name {name!r}", head.column)
            if len(line.tokens) > 1:
                raise line.error("a label must be on its own line", line.tokens[1].column)
            if name in labels:
                first = label_lines[name].number
                raise line.error(f"duplicate label {name!r} (first defined on line {first})", head.column)
            labels[name] = len(instrs)
            label_lines[name] = line
            continue
        if head.quoted:
            raise line.error("expected an instruction, found a string", head.column)
        info = O.BY_NAME.get(head.text)
        if info is None:
            hint = ""
            if head.text.lower() in O.BY_NAME:
                hint = f" (did you mean {head.text.lower()!r}?)"
            raise line.error(f"unknown instruction {head.text!r}{hint}", head.column)
        instrs.append(_parse_operands(info, line))
        if len(instrs) > MAX_INSTRUCTIONS:
            raise line.error(f"program longer than {MAX_INSTRUCTIONS} instructions")

    # Execution that reaches the end halts: make it explicit (and give labels at the end a target).
    if not instrs or not instrs[-1].info.ends or any(t == len(instrs) for t in labels.values()):
        end_line = last_line or _Line(1, "")
        instrs.append(_Instr(O.OPS[O.HALT], [], end_line, 1))

    # Resolve labels.
    for ins in instrs:
        if ins.info.jumps:
            name = ins.operands[0]
            if name not in labels:
                raise ins.line.error(f"undefined label {name!r}", ins.label_column)
            ins.operands[0] = labels[name]

    # Validate.
    names_at = {index: name for name, index in labels.items()}

    def error_at(message: str, index: int) -> CompileError:
        ins = instrs[index]
        return ins.line.error(message, ins.column)

    lines = [ins.line.number for ins in instrs]
    result = validate([(ins.info, tuple(ins.operands)) for ins in instrs], lines, error_at, names_at)

    # Encode.
    consts: list[Any] = []
    index_of: dict[tuple[int, Any], int] = {}

    def const(value: Any) -> int:
        key = const_key(value)
        i = index_of.get(key)
        if i is None:
            i = index_of[key] = len(consts)
            consts.append(value)
        return i

    out = bytearray()
    for ins in instrs:
        out.append(ins.info.code)
        for kind, value in zip(ins.info.operands, ins.operands, strict=True):
            if kind in (O.CONST, O.NAME, O.BUILTIN, O.TOOL, O.MESSAGE):
                put_uvarint(out, const(value))
            elif kind == O.FIELD:
                put_uvarint(out, O.OBSERVE_FIELDS.index(value))
            else:
                put_uvarint(out, value)
    return Code(bytes(out), tuple(consts), tuple(lines), len(instrs), tuple(result.warnings), result.max_stack,
                tuple(result.depths))


def _parse_operands(info: O.OpInfo, line: _Line) -> _Instr:
    head, *rest = line.tokens
    ins = _Instr(info, [], line, head.column)
    if info.operands == (O.MESSAGE,):
        ins.operands.append(_message(rest, line))
        return ins
    want = len(info.operands)
    if len(rest) != want:
        where = rest[want].column if len(rest) > want else len(line.raw.rstrip()) + 1
        plural = "s" if want != 1 else ""
        raise line.error(f"{info.name} takes {want} operand{plural}, got {len(rest)}", where)
    for kind, tok in zip(info.operands, rest, strict=True):
        ins.operands.append(_operand(info, kind, tok, line, ins))
    if info.code == O.CALL:
        b = lookup_builtin(ins.operands[0])
        argc = ins.operands[1]
        if b is None:
            raise line.error(f"unknown builtin {ins.operands[0]!r}", rest[0].column)
        if not b.min_args <= argc <= b.max_args:
            expect = str(b.min_args) if b.min_args == b.max_args else f"{b.min_args} to {b.max_args}"
            noun = "argument" if b.max_args == 1 else "arguments"
            raise line.error(f"builtin {b.name} takes {expect} {noun}, not {argc}", rest[1].column)
    return ins


def _operand(info: O.OpInfo, kind: str, tok: Token, line: _Line, ins: _Instr) -> Any:
    if kind == O.CONST:
        return parse_literal(tok, line)
    if tok.quoted:
        raise line.error(f"{info.name}: expected a {kind}, found a quoted text", tok.column)
    word = tok.text
    if kind in (O.NAME, O.BUILTIN):
        if not IDENT.match(word):
            raise line.error(f"bad {kind} {word!r}", tok.column)
        return word
    if kind == O.LABEL:
        if not IDENT.match(word):
            raise line.error(f"bad label {word!r}", tok.column)
        ins.label_column = tok.column
        return word
    if kind == O.TOOL:
        if not TOOL_NAME.match(word):
            raise line.error(f"bad tool name {word!r}", tok.column)
        return word
    if kind == O.COUNT:
        # the length first: int() refuses (ValueError) a string of more than 4,300 digits
        if not COUNT_RE.match(word) or len(word) > _COUNT_DIGITS or int(word) > MAX_COUNT:
            shown = word if len(word) <= 20 else word[:20] + "..."
            raise line.error(f"bad count {shown!r}: expected an integer from 0 to {MAX_COUNT}", tok.column)
        return int(word)
    if kind == O.ENERGY:
        if not FLOAT.match(word) or word.startswith("-"):
            raise line.error(f"bad energy {word!r}: expected a non-negative number", tok.column)
        value = float(word)
        if not math.isfinite(value) or value > 1e12:
            raise line.error(f"energy {word} is out of range", tok.column)
        return int(round(value * 1000))
    if kind == O.FIELD:
        if word not in O.OBSERVE_FIELDS:
            raise line.error(f"unknown observe field {word!r}: one of {', '.join(O.OBSERVE_FIELDS)}", tok.column)
        return word
    raise AssertionError(kind)  # pragma: no cover


def _message(rest: list[Token], line: _Line) -> str:
    if not rest:
        return ""
    if len(rest) == 1 and rest[0].quoted:
        return rest[0].text
    for tok in rest:
        if tok.quoted:
            raise line.error("assert takes bare words or one quoted text", tok.column)
    return " ".join(tok.text for tok in rest)
