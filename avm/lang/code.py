"""`Code`: a compiled program.

A Code holds compact bytecode (one opcode byte, then each operand as an
unsigned LEB128 varint), a constant pool, a line table and a content id.

The canonical encoding, whose blake3 is the id, is

    b"AVMC" version:u8 uvarint(nconsts) const* uvarint(ninstrs) uvarint(nbytes) bytecode

where a constant is a tag byte and its payload (null, false, true, int as a
zig-zag varint, float as 8 big-endian IEEE bytes, text as uvarint length and
UTF-8). Line numbers and label names are not part of it: the same program
written with other comments, blank lines, spacing or label names has the same
id. `to_bytes()` appends the line table; `Code.from_bytes` checks everything it
reads, so a Code loaded from a store is as safe to run as a compiled one.
"""

from __future__ import annotations

import struct
from typing import Any, Iterator

import blake3

from avm.errors import ProgramError
from avm.lang import opcodes as O
from avm.lang.builtins import lookup as lookup_builtin
from avm.lang.validate import validate

MAGIC = b"AVMC"
VERSION = 1
MAX_INSTRUCTIONS = 1_000_000

_T_NULL, _T_FALSE, _T_TRUE, _T_INT, _T_FLOAT, _T_TEXT = range(6)


class CodeFormatError(ProgramError, ValueError):
    """Bytes that are not a valid encoded Code."""


def put_uvarint(out: bytearray, n: int) -> None:
    if n < 0:
        raise ValueError("uvarint of a negative number")
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def get_uvarint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    shift = 0
    result = 0
    while True:
        if pos >= len(data):
            raise CodeFormatError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 7 * 160:
            raise CodeFormatError("varint too long")


def const_key(value: Any) -> tuple[int, Any]:
    """Identity of a constant in the pool: true is not 1, 0.0 is not 0 or -0.0."""
    if value is None:
        return (_T_NULL, None)
    if value is False:
        return (_T_FALSE, None)
    if value is True:
        return (_T_TRUE, None)
    if type(value) is int:
        return (_T_INT, value)
    if type(value) is float:
        return (_T_FLOAT, struct.pack(">d", value))
    if type(value) is str:
        return (_T_TEXT, value)
    raise TypeError(f"a constant must be null, bool, int, float or text, not {type(value).__name__}")


def _encode_const(out: bytearray, value: Any) -> None:
    tag, payload = const_key(value)
    out.append(tag)
    if tag == _T_INT:
        put_uvarint(out, (payload << 1) if payload >= 0 else ((-payload << 1) - 1))
    elif tag == _T_FLOAT:
        out += payload
    elif tag == _T_TEXT:
        raw = payload.encode("utf-8")
        put_uvarint(out, len(raw))
        out += raw


def _decode_const(data: bytes, pos: int) -> tuple[Any, int]:
    if pos >= len(data):
        raise CodeFormatError("truncated constant pool")
    tag = data[pos]
    pos += 1
    if tag == _T_NULL:
        return None, pos
    if tag == _T_FALSE:
        return False, pos
    if tag == _T_TRUE:
        return True, pos
    if tag == _T_INT:
        z, pos = get_uvarint(data, pos)
        return (z >> 1) if not z & 1 else -((z + 1) >> 1), pos
    if tag == _T_FLOAT:
        if pos + 8 > len(data):
            raise CodeFormatError("truncated float constant")
        return struct.unpack(">d", data[pos : pos + 8])[0], pos + 8
    if tag == _T_TEXT:
        n, pos = get_uvarint(data, pos)
        if pos + n > len(data):
            raise CodeFormatError("truncated text constant")
        try:
            return bytes(data[pos : pos + n]).decode("utf-8"), pos + n
        except UnicodeDecodeError as exc:
            raise CodeFormatError(f"text constant is not UTF-8: {exc}") from None
    raise CodeFormatError(f"unknown constant tag {tag}")


class Code:
    """A compiled agent program. Immutable; share one Code among any number of frames."""

    __slots__ = ("bytecode", "consts", "lines", "id", "digest", "warnings", "max_stack", "depths", "ninstrs",
                 "_decoded", "__weakref__")

    bytecode: bytes
    consts: tuple[Any, ...]
    lines: tuple[int, ...]
    id: str
    digest: bytes
    warnings: tuple[tuple[int, str], ...]
    max_stack: int
    depths: tuple[int, ...]
    ninstrs: int

    def __init__(self, bytecode: bytes, consts: tuple[Any, ...], lines: tuple[int, ...], ninstrs: int,
                 warnings: tuple[tuple[int, str], ...] = (), max_stack: int = 0, depths: tuple[int, ...] = ()):
        self.bytecode = bytes(bytecode)
        self.consts = tuple(consts)
        self.ninstrs = ninstrs
        self.lines = tuple(lines) if lines else (0,) * ninstrs
        if len(self.lines) != ninstrs:
            raise CodeFormatError("line table does not match the instructions")
        self.warnings = tuple(warnings)
        self.max_stack = max_stack
        self.depths = tuple(depths)
        self.digest = blake3.blake3(self.canonical()).digest()
        self.id = self.digest.hex()
        self._decoded: tuple[list[int], list[Any], list[int]] | None = None

    # --- encoding ---

    def canonical(self) -> bytes:
        out = bytearray(MAGIC)
        out.append(VERSION)
        put_uvarint(out, len(self.consts))
        for c in self.consts:
            _encode_const(out, c)
        put_uvarint(out, self.ninstrs)
        put_uvarint(out, len(self.bytecode))
        out += self.bytecode
        return bytes(out)

    def to_bytes(self) -> bytes:
        """The canonical encoding followed by the line table."""
        out = bytearray(self.canonical())
        for line in self.lines:
            put_uvarint(out, line)
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> Code:
        """Decode and fully check an encoded Code (raises CodeFormatError)."""
        data = bytes(data)
        if data[:4] != MAGIC:
            raise CodeFormatError("not AVM bytecode (bad magic)")
        if len(data) < 5 or data[4] != VERSION:
            raise CodeFormatError(f"unknown bytecode version {data[4] if len(data) > 4 else None}")
        pos = 5
        nconsts, pos = get_uvarint(data, pos)
        if nconsts > len(data):
            raise CodeFormatError("constant count exceeds the data")
        consts = []
        for _ in range(nconsts):
            value, pos = _decode_const(data, pos)
            consts.append(value)
        ninstrs, pos = get_uvarint(data, pos)
        nbytes, pos = get_uvarint(data, pos)
        if ninstrs > MAX_INSTRUCTIONS or pos + nbytes > len(data):
            raise CodeFormatError("truncated bytecode")
        bytecode = data[pos : pos + nbytes]
        pos += nbytes
        lines: list[int] = []
        if pos < len(data):
            for _ in range(ninstrs):
                line, pos = get_uvarint(data, pos)
                lines.append(line)
            if pos != len(data):
                raise CodeFormatError("trailing bytes after the line table")
        code = cls(bytecode, tuple(consts), tuple(lines), ninstrs)
        instrs = list(code.instructions())  # checks opcodes, operands and constant kinds
        if len(instrs) != ninstrs:
            raise CodeFormatError("instruction count does not match the bytecode")
        try:
            result = validate([(info, ops) for info, ops in instrs], code.lines)
        except Exception as exc:  # a CompileError from the validator
            raise CodeFormatError(f"bytecode fails validation: {exc}") from None
        code.max_stack = result.max_stack
        code.depths = tuple(result.depths)
        code.warnings = tuple(result.warnings)
        return code

    # --- reading ---

    def instructions(self) -> Iterator[tuple[O.OpInfo, tuple[Any, ...]]]:
        """Each instruction as (OpInfo, operands) with operands resolved to values.

        Operands: CONST, NAME, BUILTIN, TOOL and MESSAGE resolve to the constant;
        LABEL to the target instruction index; COUNT to an int; ENERGY to milli-units;
        FIELD to the field name.
        """
        data = self.bytecode
        consts = self.consts
        pos = 0
        n = 0
        while pos < len(data):
            opcode = data[pos]
            pos += 1
            if opcode >= len(O.OPS):
                raise CodeFormatError(f"unknown opcode {opcode} at instruction {n}")
            info = O.OPS[opcode]
            operands: list[Any] = []
            for kind in info.operands:
                raw, pos = get_uvarint(data, pos)
                if kind in (O.CONST, O.NAME, O.BUILTIN, O.TOOL, O.MESSAGE):
                    if raw >= len(consts):
                        raise CodeFormatError(f"constant index {raw} out of range at instruction {n}")
                    value = consts[raw]
                    if kind != O.CONST and type(value) is not str:
                        raise CodeFormatError(f"{info.name} operand must be text at instruction {n}")
                    operands.append(value)
                elif kind == O.LABEL:
                    if raw >= self.ninstrs:
                        raise CodeFormatError(f"jump target {raw} out of range at instruction {n}")
                    operands.append(raw)
                elif kind == O.FIELD:
                    if raw >= len(O.OBSERVE_FIELDS):
                        raise CodeFormatError(f"unknown observe field {raw} at instruction {n}")
                    operands.append(O.OBSERVE_FIELDS[raw])
                else:  # COUNT, ENERGY
                    operands.append(raw)
            yield info, tuple(operands)
            n += 1
            if n > self.ninstrs:
                raise CodeFormatError("more instructions than declared")

    def decoded(self) -> tuple[list[int], list[Any], list[int]]:
        """(opcodes, operands, costs) as parallel lists, for the interpreter.

        The single operand of most instructions is stored as is; `call` stores
        (builtin or None, name, argc) and `tool` stores (name, argc). A call's
        cost includes its builtin's cost. Computed once per Code.
        """
        if self._decoded is None:
            ops: list[int] = []
            args: list[Any] = []
            costs: list[int] = []
            for info, operands in self.instructions():
                cost = info.cost
                if info.code == O.CALL:
                    b = lookup_builtin(operands[0])
                    if b is not None:
                        cost += b.cost
                    arg: Any = (b, operands[0], operands[1])
                elif info.code == O.TOOL_:
                    arg = (operands[0], operands[1])
                elif operands:
                    arg = operands[0]
                else:
                    arg = None
                ops.append(info.code)
                args.append(arg)
                costs.append(cost)
            self._decoded = (ops, args, costs)
        return self._decoded

    def __len__(self) -> int:
        return self.ninstrs

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Code) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"<avm.Code {self.id[:16]} {self.ninstrs} instructions>"
