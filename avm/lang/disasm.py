"""The disassembler: Code back to source that compiles to the same id.

Jump targets get labels ``L<index>``; texts are always quoted, with escapes
for the characters a source line cannot hold.
"""

from __future__ import annotations

from typing import Any

from avm.lang import opcodes as O
from avm.lang.code import Code

_PLAIN_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def quote(text: str) -> str:
    out = ['"']
    for ch in text:
        esc = _PLAIN_ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 or ch in "\u2028\u2029\ufeff":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def literal(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is int:
        return str(value)
    if type(value) is float:
        text = repr(value)
        if "e" not in text and "." not in text:  # pragma: no cover - repr always has one
            text += ".0"
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exp = text.split("e")
            text = f"{mantissa}.0e{exp}"
        return text
    return quote(value)


def disassemble(code: Code, *, with_lines: bool = False) -> str:
    instrs = list(code.instructions())
    targets = sorted({ops[0] for info, ops in instrs if info.jumps})
    names = {t: f"L{t}" for t in targets}
    out: list[str] = [f"# avm code {code.id}"]
    for i, (info, operands) in enumerate(instrs):
        if i in names:
            out.append(f"{names[i]}:")
        parts = [info.name]
        for kind, value in zip(info.operands, operands, strict=True):
            if kind == O.CONST:
                parts.append(literal(value))
            elif kind == O.LABEL:
                parts.append(names[value])
            elif kind == O.ENERGY:
                parts.append(f"{value // 1000}.{value % 1000:03d}")
            elif kind == O.MESSAGE:
                parts.append(quote(value))
            else:
                parts.append(str(value))
        text = "    " + " ".join(parts)
        if with_lines and code.lines[i]:
            text = f"{text:<40} # line {code.lines[i]}"
        out.append(text)
    return "\n".join(out) + "\n"
