"""Frame snapshots: a frame's whole state as bytes, and back.

Layout (version 2): ``b"AVMF"``, a version byte, the 32-byte digest of the
frame's Code, the state as one canonical value (avm.memory.values), then a
16-byte checksum: the blake3 digest of everything before it, cut to 16 bytes.
The same program fed the same effect results gives byte-identical snapshots.
Version 1 is the same without the checksum; it still restores.

Restoring checks everything: the magic, the version, the checksum, that the
snapshot is for this code, every field's type and range (numbers finite and
within the bounds a running frame can reach), that the outcome is the one its
status implies, and that the stack depth is the one the validator proved for
the pc. A malformed snapshot raises SnapshotError and can never make the
interpreter misbehave, nor any later call on the frame (refund, add_budget).
"""

from __future__ import annotations

import math
from typing import Any

from blake3 import blake3

from avm.errors import SnapshotError
from avm.lang import frame as F
from avm.lang import opcodes as O
from avm.lang.code import Code
from avm.lang.outcomes import BudgetExceeded, Done, Effect, Fault, Stalled
from avm.lang.values import MAX_DEPTH, VMFault, are_values, is_value, measure
from avm.memory.values import decode_value, encode_value

MAGIC = b"AVMF"
VERSION = 2
_UNCHECKED = 1  # the version before the checksum
CHECKSUM = 16  # bytes at the end of a version-2 snapshot
_HEAD = 5 + 32  # magic, version, code digest
_STATUSES = (F.READY, F.WAITING, F.EXHAUSTED, F.DONE, F.FAULTED, F.STALLED)
_OUTCOME_OF = {F.DONE: Done, F.FAULTED: Fault, F.STALLED: Stalled, F.EXHAUSTED: BudgetExceeded}
_MAX_MILLI = 10**15  # a budget or a charge above 1e12 energy is refused where it is made (frame.to_milli)
_MAX_COUNT = 1 << 63  # effects, stall counts and limits, lines


def _checksum(data: bytes) -> bytes:
    return blake3(data).digest()[:CHECKSUM]


def _outcome_to_value(out: Any) -> Any:
    if out is None:
        return None
    if isinstance(out, Done):
        return ["done", out.value]
    if isinstance(out, Fault):
        return ["fault", out.error, out.pc, out.line, out.kind]
    if isinstance(out, Stalled):
        return ["stalled", out.kind, out.count, out.pc, out.line]
    if isinstance(out, BudgetExceeded):
        return ["budget", out.energy_used, out.budget, out.needed, out.pc, out.line]
    raise SnapshotError(f"cannot snapshot outcome {out!r}")


def encode_frame(frame: F.Frame) -> bytes:
    pending: list[Any] | None = None
    if frame.pending is not None:
        p = frame.pending
        pending = [p.kind, list(p.args), p.pc, p.line]
    last_request = None
    if frame.last_request is not None:
        last_request = [frame.last_request[0], list(frame.last_request[1])]
    state = [
        frame.pc, frame.stack, frame.variables, frame.used, frame.budget, frame.status, pending,
        frame.effects, frame.stall_limit, frame.stall_count, last_request, frame.last_result,
        _outcome_to_value(frame.outcome),
    ]
    if frame.in_guard:  # (a 14th field only then: snapshots of frames that use no guard are unchanged)
        state.append(True)
    values = [*frame.stack, *frame.variables.values(), frame.last_result]
    if pending is not None:
        values += pending[1]
    if not are_values(values):  # the same test restore makes; before measure, as it is linear in distinct parts
        raise SnapshotError(f"cannot snapshot this frame: a value is not a VM value nested at most {MAX_DEPTH} levels")
    try:
        measure(state, limit=4 * (1 << 20))
        body = encode_value(state)
    except (VMFault, TypeError, ValueError) as exc:
        raise SnapshotError(f"cannot snapshot this frame: {exc}") from exc
    head = MAGIC + bytes((VERSION,)) + frame.code.digest + body
    return head + _checksum(head)


def _want(cond: bool, what: str) -> None:
    if not cond:
        raise SnapshotError(f"malformed snapshot: {what}")


def _int(v: Any, what: str, lo: int = 0, hi: int = _MAX_COUNT) -> int:
    _want(type(v) is int and lo <= v <= hi, f"{what} out of range")
    return v


def _energy(v: Any, what: str) -> float:
    """An energy figure of an outcome: a finite, non-negative number a frame can reach."""
    _want(type(v) in (int, float) and math.isfinite(v) and 0 <= v <= _MAX_MILLI / 1000, f"{what} out of range")
    return v


def decode_frame(cls: type[F.Frame], code: Code, data: bytes) -> F.Frame:
    if not isinstance(code, Code):
        raise TypeError(f"restore needs a compiled avm.Code, not {type(code).__name__}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SnapshotError(f"a snapshot is bytes, not {type(data).__name__}")
    data = bytes(data)
    _want(data[:4] == MAGIC, "not a frame snapshot (bad magic)")
    _want(len(data) > _HEAD, "truncated")
    version = data[4]
    if version == VERSION:
        _want(len(data) > _HEAD + CHECKSUM, "truncated")
        body_end = len(data) - CHECKSUM
        _want(_checksum(data[:body_end]) == data[body_end:], "checksum mismatch (damaged bytes)")
    elif version == _UNCHECKED:
        body_end = len(data)
    else:
        raise SnapshotError(f"unknown snapshot version {version}")
    digest = data[5:_HEAD]
    if digest != code.digest:
        raise SnapshotError(f"snapshot is for code {digest.hex()[:16]}, not {code.id[:16]}")
    try:
        state = decode_value(data[_HEAD:body_end])
    except Exception as exc:  # ValueFormatError, and anything a hostile body provokes
        raise SnapshotError(f"malformed snapshot: {exc}") from None
    _want(type(state) is list and (len(state) == 13 or len(state) == 14 and state[13] is True), "wrong shape")
    in_guard = len(state) == 14
    (pc, stack, variables, used, budget, status, pending, effects, stall_limit, stall_count,
     last_request, last_result, outcome) = state[:13]
    n = code.ninstrs
    _want(type(status) is str and status in _STATUSES, f"unknown status {status!r}")
    # A frame that ended on its last instruction (return, halt) has its pc just past it.
    _int(pc, "pc", 0, n if status == F.DONE else n - 1)
    _want(type(stack) is list and are_values(stack), "stack")
    _want(type(variables) is dict and all(type(k) is str for k in variables) and are_values(variables.values()),
          "variables")
    _int(budget, "budget", 0, _MAX_MILLI)
    _int(used, "energy used", 0, budget)
    _int(effects, "effects")
    _int(stall_limit, "stall limit")
    _int(stall_count, "stall count")
    _want(is_value(last_result), "last result")

    f = cls.__new__(cls)
    f.code = code
    f.pc = pc
    f.stack = stack
    f.variables = variables
    f.used = used
    f.budget = budget
    f.status = status
    f.effects = effects
    f.stall_limit = stall_limit
    f.stall_count = stall_count
    f.last_result = last_result
    f.pending = None
    f.last_request = None
    f.outcome = None
    f.memory_limit = None  # not part of the snapshot: the host sets it again
    f.instruction_limit = None  # nor is this
    f.held = 0
    f.allocated = 0
    f.in_guard = in_guard

    if last_request is not None:
        _want(type(last_request) is list and len(last_request) == 2 and type(last_request[0]) is str
              and type(last_request[1]) is list and all(is_value(v) for v in last_request[1]), "last request")
        f.last_request = (last_request[0], tuple(last_request[1]))

    expected = code.depths[pc] if pc < len(code.depths) else -1
    if status == F.WAITING:
        _want(type(pending) is list and len(pending) == 4, "pending effect")
        kind, args, epc, line = pending
        _int(epc, "effect pc", 0, n - 1)
        info = O.OPS[code.decoded()[0][epc]]
        _want(info.effect and info.name == kind and epc + 1 == pc, "pending effect does not match the code")
        _want(type(args) is list and all(is_value(v) for v in args), "effect arguments")
        _want(type(line) is int and line == f.line_at(epc), "effect line")
        f.pending = Effect(kind, tuple(args), epc, line)
        expected -= 1  # the result is not on the stack yet
    else:
        _want(pending is None, "pending effect on a frame that waits for none")
    if status in (F.READY, F.WAITING, F.EXHAUSTED):
        _want(expected >= 0 and len(stack) == expected, "stack depth does not match the code at pc")
    if status in F.TERMINAL or status == F.EXHAUSTED:
        f.outcome = _outcome_from_value(outcome, n)
        _want(type(f.outcome) is _OUTCOME_OF[status], f"a {status} frame with outcome {outcome[0]!r}")
        spent = f.outcome
        if isinstance(spent, BudgetExceeded):  # the frame's own: its budget, and no more used than that
            # (energy used may differ: a refund or a charge while out of energy moves the frame's alone)
            _want(round(spent.budget * 1000) == budget and round(spent.energy_used * 1000) <= budget,
                  "budget outcome does not match the frame's budget")
    else:
        _want(outcome is None, "outcome on a running frame")
    return f


def _outcome_from_value(v: Any, n: int) -> Any:
    _want(type(v) is list and len(v) > 0 and type(v[0]) is str, "outcome")
    tag, *rest = v
    if tag == "done" and len(rest) == 1:
        _want(is_value(rest[0]), "done value")
        return Done(rest[0])
    if tag == "fault" and len(rest) == 4:
        error, pc, line, kind = rest
        _want(type(error) is str and type(kind) is str, "fault")
        return Fault(error, _int(pc, "fault pc", 0, n - 1), _int(line, "fault line"), kind)
    if tag == "stalled" and len(rest) == 4:
        kind, count, pc, line = rest
        _want(type(kind) is str, "stalled")
        return Stalled(kind, _int(count, "count"), _int(pc, "pc", 0, n - 1), _int(line, "line"))
    if tag == "budget" and len(rest) == 5:
        used, budget, needed, pc, line = rest
        return BudgetExceeded(_energy(used, "energy used"), _energy(budget, "budget"), _energy(needed, "needed"),
                              _int(pc, "pc", 0, n - 1), _int(line, "line"))
    raise SnapshotError(f"malformed snapshot: outcome {tag!r}")
