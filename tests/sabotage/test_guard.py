"""Guarded sections: code that must run in order. The validator refuses any way into the middle of one at
compile time; the VM faults at run time when a frame gets there anyway (a forged snapshot, a moved pc)."""

from __future__ import annotations

import pytest

import avm
from avm.lang import snapshot as S
from avm.memory.values import decode_value, encode_value

GUARDED = """
push 0
store total
guard
push "pay"
push 10
tool charge 2
store receipt
load total
push 10
add
store total
end_guard
load total
return
"""


def test_a_guarded_section_runs_in_order_through_its_effects() -> None:
    frame = avm.Frame(avm.compile(GUARDED))
    effect = frame.run()
    assert isinstance(effect, avm.Effect) and effect.kind == "tool" and frame.in_guard
    frame.resume("ok")
    assert frame.run() == avm.Done(10) and not frame.in_guard


@pytest.mark.parametrize(("source", "line", "message"), [
    ("push true\njump_if inside\nguard\npush 1\ninside:\npop\nend_guard\nhalt\n", 2,
     "jump into the middle of a guarded section"),
    ("guard\npush true\njump_if out\nend_guard\nout:\nhalt\n", 3, "jump out of the guarded section"),
    ("guard\nguard\nend_guard\nend_guard\nhalt\n", 2, "sections do not nest"),
    ("guard\npush 1\npop\n", 1, "guard without an end_guard"),
    ("push 1\npop\nend_guard\nhalt\n", 3, "end_guard without a guard"),
    ("guard\npush 1\nreturn\nend_guard\nhalt\n", 3, "return inside a guarded section"),
    ("top:\nguard\npush true\njump_if top\nend_guard\nhalt\n", 4, "jump back to the guard"),
])
def test_the_validator_refuses_every_way_into_or_out_of_a_section(source: str, line: int, message: str) -> None:
    with pytest.raises(avm.CompileError, match=message) as info:
        avm.compile(source)
    assert info.value.line == line


def test_a_jump_to_the_guard_itself_enters_the_section_properly() -> None:
    source = "push true\njump_if start\nhalt\nstart:\nguard\npush 5\nend_guard\nreturn\n"
    assert avm.Frame(avm.compile(source)).run() == avm.Done(5)


def test_a_frame_brought_into_the_middle_of_a_section_faults_at_its_end() -> None:
    code = avm.compile(GUARDED)
    frame = avm.Frame(code)
    assert isinstance(frame.run(), avm.Effect)  # waiting on the tool, inside the section
    data = frame.snapshot()
    # forge the snapshot: the same frame, without the mark that it passed the guard (checksum made again)
    head = S.MAGIC + bytes((S.VERSION,)) + code.digest
    state = decode_value(data[len(head):-S.CHECKSUM])
    assert state[13] is True
    forged = head + encode_value(state[:13])
    forged += S._checksum(forged)
    moved = avm.Frame.restore(code, forged)
    moved.resume("ok")
    out = moved.run()
    assert isinstance(out, avm.Fault) and out.kind == "GuardError" and out.line == 13
    assert "end_guard reached without its guard" in out.error
    restored = avm.Frame.restore(code, data)  # the true snapshot keeps the mark, and runs to the end
    restored.resume("ok")
    assert restored.run() == avm.Done(10)


def test_a_moved_program_counter_is_caught_by_the_vm() -> None:
    code = avm.compile(GUARDED)
    frame = avm.Frame(code, inputs={"total": 0})
    frame.pc = 7  # `load total` inside the section: as if something had jumped there
    out = frame.run()
    assert isinstance(out, avm.Fault) and out.kind == "GuardError"


def test_snapshots_of_frames_outside_sections_are_unchanged() -> None:
    code = avm.compile('push "x"\nllm\nreturn\n')
    frame = avm.Frame(code)
    frame.run()
    assert len(decode_value(frame.snapshot()[len(S.MAGIC) + 1 + 32:-S.CHECKSUM])) == 13


def test_the_block_compiler_keeps_the_same_guard() -> None:
    from avm.lang.blocks import run_blocks

    code = avm.compile(GUARDED)
    f1, f2 = avm.Frame(code), avm.Frame(code)
    assert f1.run() == run_blocks(f2) and f1.in_guard and f2.in_guard
    f1.resume("ok")
    f2.resume("ok")
    assert f1.run() == run_blocks(f2) == avm.Done(10)
    moved = avm.Frame(code, inputs={"total": 0})
    moved.pc = 7
    out = run_blocks(moved)
    assert isinstance(out, avm.Fault) and out.kind == "GuardError"
