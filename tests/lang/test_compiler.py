import pytest

import avm
from avm.lang import opcodes as O


def compile_error(source: str) -> avm.CompileError:
    with pytest.raises(avm.CompileError) as info:
        avm.compile(source)
    return info.value


def test_same_program_modulo_comments_whitespace_and_labels_has_same_id():
    a = avm.compile("push 1\nstore x\nloop:\nload x\njump_if loop\nhalt\n")
    b = avm.compile("# header\n\n   push   1   # one\n store x\nagain:\n\tload x\n jump_if again\n\nhalt")
    assert a.id == b.id
    assert len(a.id) == 64 and int(a.id, 16) >= 0


def test_different_programs_have_different_ids():
    ids = {avm.compile(src).id for src in ["push 1\nreturn", "push 2\nreturn", "push 1.0\nreturn",
                                            'push "1"\nreturn', "push true\nreturn", "push -0.0\nreturn",
                                            "push 0.0\nreturn"]}
    assert len(ids) == 7


def test_bare_word_and_quoted_text_are_the_same_constant():
    assert avm.compile("push hello\nreturn").id == avm.compile('push "hello"\nreturn').id


def test_bytecode_is_compact_bytes_with_constant_pool_and_line_table():
    code = avm.compile("push 300\npush 300\nadd\n\n\nreturn\n")
    assert isinstance(code.bytecode, bytes)
    assert code.bytecode == bytes([O.PUSH, 0, O.PUSH, 0, O.ADD, O.RETURN])  # opcode byte + varint operands
    assert code.consts == (300,)  # deduplicated
    assert code.lines == (1, 2, 3, 6)
    assert code.max_stack == 2


def test_code_bytes_roundtrip_and_bad_bytes_are_refused():
    code = avm.compile("push 1\nstore a\nload a\nreturn\n")
    again = avm.Code.from_bytes(code.to_bytes())
    assert again.id == code.id and again.lines == code.lines
    for bad in [b"", b"XXXX", code.to_bytes()[:-3], code.to_bytes() + b"\x00\x00"]:
        with pytest.raises(avm.CodeFormatError):
            avm.Code.from_bytes(bad)


def test_from_bytes_runs_the_validator():
    # hand-made bytecode that underflows: a lone `add` then `halt`
    bad = avm.Code(bytes([O.ADD, O.HALT]), (), (), 2)
    with pytest.raises(avm.CodeFormatError, match="underflow"):
        avm.Code.from_bytes(bad.to_bytes())


@pytest.mark.parametrize(
    "source, message, line, column",
    [
        ("push 1\nfrobnicate\n", "unknown instruction 'frobnicate'", 2, 1),
        ("PUSH 1", "did you mean 'push'", 1, 1),
        ("push 12abc\nreturn", "bad operand '12abc'", 1, 6),
        ("list x", "bad count 'x'", 1, 6),
        ("list -1", "bad count", 1, 6),
        ("observe mood", "unknown observe field 'mood'", 1, 9),
        ("energy_check -1", "bad energy", 1, 14),
        ("load 9lives", "bad name", 1, 6),
        ("a:\npush 1\na:\npop\n", "duplicate label 'a' (first defined on line 1)", 3, 1),
        ("jump nowhere", "undefined label 'nowhere'", 1, 6),
        ('push "abc', "unterminated string", 1, 6),
        ('push "abc\\', "unterminated string", 1, 6),
        ('push "a\\qb"', "bad escape \\q", 1, 8),
        ("push", "push takes 1 operand, got 0", 1, 5),
        ("push 1 2", "push takes 1 operand, got 2", 1, 8),
        ("pop 1", "pop takes 0 operands, got 1", 1, 5),
        ("call upper", "call takes 2 operands, got 1", 1, 11),
        ("push 1\ncall nosuch 1", "unknown builtin 'nosuch'", 2, 6),
        ("push 1\ncall upper 2", "builtin upper takes 1 argument, not 2", 2, 12),
        ("loop: push 1", "a label must be on its own line", 1, 7),
        ("push 1e999", "out of range", 1, 6),
        ('"push" 1', "expected an instruction", 1, 1),
    ],
)
def test_compile_errors_carry_line_column_and_caret(source, message, line, column):
    err = compile_error(source)
    assert message in err.message
    assert (err.line, err.column) == (line, column)
    rendered = str(err)
    source_line = source.split("\n")[line - 1]
    assert source_line in rendered
    caret_line = rendered.splitlines()[-1]
    assert caret_line.index("^") - 4 == column - 1


def test_validator_rejects_stack_underflow_on_any_path():
    err = compile_error("push 1\njump_if skip\npush 1\nskip:\npush 2\nadd\nreturn\n")
    # the fall-through path leaves 1 value, the jump path none: depths disagree at skip
    assert "inconsistent stack depth at label 'skip'" in err.message
    err = compile_error("push 1\nadd\n")
    assert "stack underflow: add needs 2 values, only 1" in err.message
    assert err.line == 2


def test_validator_rejects_underflow_reached_only_through_a_jump():
    err = compile_error("jump there\nthere:\npop\n")
    assert "stack underflow" in err.message and err.line == 3


def test_validator_rejects_inconsistent_depth_in_a_loop():
    err = compile_error("top:\npush 1\npush true\njump_if top\nhalt\n")
    assert "inconsistent stack depth" in err.message


def test_unreachable_code_is_a_warning_not_an_error():
    code = avm.compile("push 1\nreturn\npush 2\npop\n")
    assert code.warnings and "unreachable code: 3 instructions" in code.warnings[0][1]
    assert code.warnings[0][0] == 3


def test_falling_off_the_end_halts_explicitly():
    code = avm.compile("push 1\npop\n")
    names = [info.name for info, _ in code.instructions()]
    assert names == ["push", "pop", "halt"]
    assert avm.compile("").ninstrs == 1
    # a label at the very end needs a target: the implicit halt
    assert [i.name for i, _ in avm.compile("jump end\nend:\n").instructions()] == ["jump", "halt"]


def test_escapes_in_quoted_text():
    code = avm.compile('push "a\\n\\"b\\"\\\\ \\t\\u00e9 # not a comment"\nreturn')
    assert code.consts[0] == 'a\n"b"\\ \té # not a comment'


def test_assert_message_is_the_rest_of_the_line():
    code = avm.compile("push true\nassert  the   total is positive   # comment\nhalt")
    assert "the total is positive" in code.consts
    code = avm.compile('push true\nassert "exact  spacing"\nhalt')
    assert "exact  spacing" in code.consts


def test_compile_rejects_non_text():
    with pytest.raises(TypeError):
        avm.compile(b"push 1")  # type: ignore[arg-type]


def test_integer_literals_are_bounded_so_code_always_reloads():
    err = compile_error("push " + "1" * 5000)
    assert "out of range" in err.message
    code = avm.compile("push " + "9" * 300 + "\nreturn")
    assert avm.Code.from_bytes(code.to_bytes()).id == code.id


@pytest.mark.parametrize("source", [
    "push 1\ncall upper {n}\nreturn",
    "push 1\nlist {n}\nreturn",
    "push 1\nmap {n}\nreturn",
    "push 1\ntool search {n}\nreturn",
    "push 1\nlist 0{zeros}1\nreturn",
])
def test_a_count_of_thousands_of_digits_is_a_compile_error(source):
    big = source.format(n="9" * 5000, zeros="0" * 5000)
    err = compile_error(big)
    assert "bad count" in err.message and err.line == 2 and len(err.message) < 120


@pytest.mark.parametrize("source, column", [
    ('push "\ud800"\nreturn', 7),
    ("push 1\nstore x\u00e9\udc00y\n", 9),
    ("# a comment \udfff\nhalt", 13),
    ('push "\ud83d\ude00"\nreturn', 7),  # two surrogates are two lone ones, not a pair, in text
])
def test_a_lone_surrogate_in_source_is_a_compile_error(source, column):
    err = compile_error(source)
    assert "lone surrogate" in err.message and err.column == column
    str(err).encode("utf-8")  # the error itself can be printed



def test_an_escaped_surrogate_pair_is_one_character_and_a_lone_escape_an_error():
    # As JSON (and json_parse) read them: a high surrogate escape followed by a low one is one character.
    assert avm.Frame(avm.compile('push "a\\uD83D\\ude00b"\nreturn')).run() == avm.Done("a\U0001f600b")
    for source, column in (('push "\\ud83d"', 7), ('push "x\\ude00\\ud83d"', 8), ('push "\\ud83d\\u0041"', 7),
                           ('push "\\ud83d\\ud83d\\ude00"', 7), ('push "\\ud83d\\ude0"', 7)):
        err = compile_error(source + "\nreturn")
        assert err.column == column, (source, err)


def test_text_beyond_the_basic_plane_compiles():
    assert avm.Frame(avm.compile('push "\U0001f600"\nreturn')).run() == avm.Done("\U0001f600")
