import math

import pytest

import avm
import avm.lang.values
from avm.lang.frame import Frame
from tests.lang.work import work_of


def run(source: str, budget: float = 100.0, **inputs):
    frame = Frame(avm.compile(source), budget=budget, inputs=inputs)
    return frame.run(), frame


def value(source: str, **inputs):
    out, _ = run(source, **inputs)
    assert isinstance(out, avm.Done), out
    return out.value


def fault(source: str, **inputs) -> avm.Fault:
    out, _ = run(source, **inputs)
    assert isinstance(out, avm.Fault), out
    return out


@pytest.mark.parametrize(
    "source, expected",
    [
        ("push 2\npush 3\nadd\nreturn", 5),
        ("push 2\npush 0.5\nmul\nreturn", 1.0),
        ("push 7\npush 2\ndiv\nreturn", 3.5),
        ("push -7\npush 3\nmod\nreturn", 2),
        ("push 5\nneg\nreturn", -5),
        ("push 1\npush 2\nsub\nreturn", -1),
        ('push "ab"\npush "cd"\nadd\nreturn', "abcd"),
        ("push 1\npush 1.0\neq\nreturn", True),
        ("push 1\npush true\neq\nreturn", False),
        ("push null\npush 0\nne\nreturn", True),
        ("push 1\npush 2\nlt\nreturn", True),
        ("push 2\npush 2\nle\nreturn", True),
        ('push "b"\npush "a"\ngt\nreturn', True),
        ("push 1\npush 2\nge\nreturn", False),
        ("push 0\nnot\nreturn", True),
        ('push 1\npush ""\nand\nreturn', False),
        ("push 0\npush x\nor\nreturn", True),
        ("push 1\npush 2\nswap\nsub\nreturn", 1),
        ("push 4\ndup\nmul\nreturn", 16),
        ("push n\npush 1\nconcat\nreturn", "n1"),
        ("push null\npush true\nconcat\nreturn", "nulltrue"),
        ("push 1\npush 2\nlist 2\npush 3\nlist 1\nconcat\nreturn", [1, 2, 3]),
        ("push 1\npush 2\npush 3\nlist 3\nreturn", [1, 2, 3]),
        ("list 0\nreturn", []),
        ("push k\npush 1\npush j\npush 2\nmap 2\nreturn", {"k": 1, "j": 2}),
        ("push 1\npush 2\nlist 2\npush 1\nget\nreturn", 2),
        ("push 1\npush 2\nlist 2\npush -1\nget\nreturn", 2),
        ("push k\npush 1\nmap 1\npush k\nget\nreturn", 1),
        ("push k\npush 1\nmap 1\npush k\npush 2\nset\nreturn", {"k": 2}),
        ("push 1\nlist 1\npush 0\npush 9\nset\nreturn", [9]),
        ("push 1\nlist 1\npush 2\nappend\nlen\nreturn", 2),
        ('push "héllo"\nlen\nreturn', 5),
        ("halt", None),
        ("", None),
        ("push 3\nstore x\nload x\nload x\nmul\nreturn", 9),
        ('push 3\nstore n\npush "n={n} {{literal}}"\nformat\nreturn', "n=3 {literal}"),
        ('push "Hi"\ncall upper 1\nreturn', "HI"),
        ('push "a,b"\npush ","\ncall split 2\nreturn', ["a", "b"]),
        ('push "{\\"a\\": [1, 2.5, null]}"\ncall json_parse 1\nreturn', {"a": [1, 2.5, None]}),
        ('push "(\\\\d+)-(\\\\d+)"\npush "call 555-1234 now"\ncall regex_match 2\nreturn', ["555-1234", "555", "1234"]),
        ("push 2\npush 10\ncall pow 2\nreturn", 1024),
        ("push 9\ncall sqrt 1\nreturn", 3.0),
        ("energy_check 1\nreturn", True),
        ("energy_check 1000\nreturn", False),
        ("push 1\npop\nobserve pc\nreturn", 2),
        ("push 1\nobserve depth\nlist 2\nreturn", [1, 1]),
    ],
)
def test_instruction_semantics(source, expected):
    result = value(source)
    assert result == expected and type(result) is type(expected)


def test_inputs_are_the_initial_variables():
    assert value("load task\ncall upper 1\nreturn", task="sum") == "SUM"


def test_loop_counts_and_energy_is_exact():
    src = "push 0\nstore i\nloop:\nload i\npush 1\nadd\nstore i\nload i\npush 10\nlt\njump_if loop\nload i\nreturn"
    out, frame = run(src)
    assert out == avm.Done(10)
    # push+store, 10 x (load push add store load push lt jump_if), load+return
    per_iter = 100 + 100 + 100 + 100 + 100 + 100 + 100 + 50
    assert frame.energy_used == pytest.approx((200 + 10 * per_iter + 150) / 1000)
    assert frame.used == 200 + 10 * per_iter + 150


@pytest.mark.parametrize(
    "source, kind, line, text",
    [
        ("push 1\npush 0\ndiv\nreturn", "ZeroDivision", 3, "division by zero"),
        ("push 1\npush 0\nmod\nreturn", "ZeroDivision", 3, "modulo by zero"),
        ('push "a"\nmap 0\nadd\nreturn', "TypeError", 3, "cannot add text and map"),
        ("push true\npush 1\nadd\nreturn", "TypeError", 3, "cannot add bool and int"),
        ('push 1\npush "a"\nlt\nreturn', "TypeError", 3, "cannot order int and text"),
        ("load missing\nreturn", "NameError", 1, "undefined variable 'missing'"),
        ("list 0\npush 0\nget\nreturn", "IndexError", 3, "out of range"),
        ("map 0\npush k\nget\nreturn", "KeyError", 3, "no key 'k'"),
        ("push 1\npush 2\nmap 1\nreturn", "TypeError", 3, "map keys are text"),
        ("push 1\nlen\nreturn", "TypeError", 2, "int has no length"),
        ("push false\nassert total must be positive\nhalt", "AssertionFailed", 2, "total must be positive"),
        ('push "{nope}"\nformat\nreturn', "FormatError", 2, "no variable 'nope'"),
        ('push "x"\ncall int 1\nreturn', "ValueError", 2, "cannot convert"),
        ('push "(a)\\\\1"\npush "aa"\ncall regex_match 2\nreturn', "ValueError", 3, "backreferences"),
        ("push -1\nsleep\nreturn", "ValueError", 2, "seconds must be a number >= 0"),
        ("push 1.5\npush x\nsend\nreturn", "TypeError", 3, "target"),
    ],
)
def test_program_errors_become_faults_with_the_line(source, kind, line, text):
    f = fault(source)
    assert (f.kind, f.line) == (kind, line)
    assert text in f.error


def test_runaway_values_are_limited_not_host_crashes():
    # doubling a text 30 times would be a gigabyte
    f = fault('push "ab"\nstore s\nloop:\nload s\nload s\nconcat\nstore s\njump loop')
    assert f.kind == "LimitError"
    # a list that contains itself twice, 40 times over: a DAG with a 2^40 tree
    # (its text form is charged by the part, so the energy runs out first; with energy to spare,
    # the limit on parts stops it)
    doubling = "push 1\nstore x\nloop:\nload x\nload x\nlist 2\nstore x\nload x\ncall text 1\npop\njump loop"
    out, frame = run(doubling)
    assert isinstance(out, avm.BudgetExceeded) and frame.used <= frame.budget
    out, _ = run(doubling, budget=1e6)
    assert isinstance(out, avm.Fault) and out.kind == "LimitError"
    f = fault("push 3\nstore x\nloop:\nload x\nload x\nmul\nstore x\njump loop")
    assert f.kind == "LimitError"


def test_budget_exceeded_keeps_the_frame_intact_and_resumable():
    src = "push 0\nstore i\nloop:\nload i\npush 1\nadd\nstore i\nload i\npush 100\nlt\njump_if loop\nload i\nreturn"
    frame = Frame(avm.compile(src), budget=5.0)
    out = frame.run()
    assert isinstance(out, avm.BudgetExceeded)
    assert frame.used <= frame.budget and frame.used + round(out.needed * 1000) > frame.budget
    assert out.energy_used == frame.energy_used and out.pc == frame.pc
    assert frame.run() is out  # stays exhausted until more budget arrives
    frame.add_budget(1000)
    assert frame.run() == avm.Done(100)


def test_effects_leave_the_vm_and_resume_pushes_the_result():
    src = ('push "q"\nllm\nstore r\nload r\npush 2\ntool search 2\nstore t\npush bob\npush hi\nsend\npop\n'
           'push 1.5\nrecv\npush 0.1\nsleep\npop\nstore m\npush prog\nmap 0\npush 3\nspawn\npush prog\nnull_in:\n'
           'push null\npush 2\ndelegate\nlist 2\nreturn')
    frame = Frame(avm.compile(src), budget=100)
    seen = []
    answers = {"llm": "reply", "tool": {"ok": 1}, "send": True, "recv": "msg", "sleep": None, "spawn": 7,
               "delegate": "child result"}
    while True:
        out = frame.run()
        if not isinstance(out, avm.Effect):
            break
        seen.append((out.kind, out.args))
        frame.resume(answers[out.kind])
    assert seen == [("llm", ("q",)), ("tool", ("search", ["reply", 2])), ("send", ("bob", "hi")),
                    ("recv", (1.5,)), ("sleep", (0.1,)), ("spawn", ("prog", {}, 3)),
                    ("delegate", ("prog", None, 2))]
    assert out == avm.Done([7, "child result"])
    assert frame.effects == 7


def test_run_while_waiting_and_resume_without_effect_are_host_errors():
    frame = Frame(avm.compile('push "q"\nllm\nreturn'))
    with pytest.raises(avm.FrameStateError):
        frame.resume("x")
    assert isinstance(frame.run(), avm.Effect)
    with pytest.raises(avm.FrameStateError):
        frame.run()
    with pytest.raises(TypeError):
        frame.resume(object())
    frame.resume("answer")
    assert frame.run() == avm.Done("answer")
    assert frame.run() == avm.Done("answer")  # a finished frame keeps its outcome


def test_stalled_after_n_identical_effects_with_identical_results():
    src = 'loop:\npush "same question"\nllm\npop\njump loop'
    frame = Frame(avm.compile(src), budget=1000, stall_limit=4)
    n = 0
    while True:
        out = frame.run()
        if not isinstance(out, avm.Effect):
            break
        n += 1
        frame.resume("same answer")
    assert isinstance(out, avm.Stalled) and out.count == 4 and out.kind == "llm" and n == 4


def test_changing_results_do_not_stall_and_sleep_is_exempt():
    frame = Frame(avm.compile('loop:\npush "q"\nllm\npop\njump loop'), budget=60, stall_limit=3)
    for i in range(8):
        assert isinstance(frame.run(), avm.Effect)
        frame.resume(f"answer {i}")
    frame = Frame(avm.compile("loop:\npush 1\nsleep\npop\njump loop"), budget=60, stall_limit=3)
    for _ in range(8):
        assert isinstance(frame.run(), avm.Effect)
        frame.resume(None)



def test_the_same_big_value_delivered_twice_is_no_error_and_a_small_one_still_stalls():
    # 4 Mi parts in two shared levels: comparing it once raised LimitError outside the interpreter.
    inner = [1] * 64
    big = [inner] * 65536
    frame = Frame(avm.compile("loop:\npush null\nrecv\npop\njump loop"), budget=60, stall_limit=3)
    for _ in range(4):
        assert isinstance(frame.run(), avm.Effect)
        frame.resume(big)  # too big to compare: counted as different, so never a stall
    assert frame.stall_count == 1
    for _ in range(2):
        assert isinstance(frame.run(), avm.Effect)
        frame.resume([inner] * 1000)
    assert isinstance(frame.run(), avm.Effect)
    frame.resume([inner] * 1000)
    assert isinstance(frame.run(), avm.Stalled)



def test_format_parses_a_template_in_one_pass():
    # "{{" x 524,288 took seconds per call: each part searched the rest of the template for "}".
    template = "{{" * 65536 + "{n}" + "}}" * 65536 + "{n}"
    frame = Frame(avm.compile("load t\nformat\nreturn"), budget=100_000, inputs={"t": template, "n": 7})
    out, work = work_of(frame.run)
    assert out == avm.Done("{" * 65536 + "7" + "}" * 65536 + "7")
    assert work["builtins"] < 100  # was two searches per doubled brace
    for bad, error in (("{{{", "unclosed placeholder at position 2"), ("{{}}}", "unmatched '}' at position 4"),
                       ("a{b{c}", "no variable 'b{c'"), ("{}", "no variable ''")):
        out = Frame(avm.compile("load t\nformat\nreturn"), budget=10, inputs={"t": bad}).run()
        assert isinstance(out, avm.Fault) and error in out.error, (bad, out)



def test_json_parse_refuses_an_integer_past_the_vms_integer_limit():
    limit = avm.lang.values.MAX_INT_BITS
    err = fault(f'push "[{"9" * 3000}]"\ncall json_parse 1\nreturn')
    assert err.kind == "LimitError" and f"exceeds the limit of {limit}" in err.error
    assert value(f'push "{2 ** limit - 1}"\ncall json_parse 1\nreturn') == 2 ** limit - 1
    assert fault(f'push "{-(2 ** limit)}"\ncall json_parse 1\nreturn').kind == "LimitError"


def test_the_any_byte_escape_is_refused_in_patterns():
    # RE2's \C matches one byte of a character's UTF-8: "." and "\C" gave different, broken matches.
    for call in ("regex_match", "regex_find_all"):
        err = fault(f'push "a\\\\C"\npush "\u00e9"\ncall {call} 2\nreturn')
        assert err.kind == "ValueError" and "\\C (any byte) is not supported" in err.error
    assert value('push "\\\\\\\\C"\npush "a\\\\C"\ncall regex_match 2\nreturn') == ["\\C"]  # an escaped backslash, a C


def test_charge_never_exceeds_budget():
    frame = Frame(avm.compile('push "q"\nllm\nreturn'), budget=10)
    frame.run()
    assert frame.charge(2.0)
    assert frame.energy_used == pytest.approx(7.1)
    frame.resume("r")
    assert not frame.charge(5.0)
    assert frame.used == frame.budget
    out = frame.run()
    assert isinstance(out, avm.BudgetExceeded)
    frame.add_budget(1)
    assert frame.run() == avm.Done("r")


def test_bad_construction_is_refused_clearly():
    code = avm.compile("halt")
    with pytest.raises(TypeError):
        Frame("halt")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Frame(code, budget=-1)
    with pytest.raises(ValueError):
        Frame(code, budget=math.nan)
    with pytest.raises(TypeError):
        Frame(code, inputs={"x": object()})
    with pytest.raises(TypeError):
        Frame(code, inputs={1: 2})  # type: ignore[dict-item]


def test_refs_are_values():
    from avm.memory.ref import hash_bytes

    ref = hash_bytes(b"prompt")
    out, _ = run("load r\ncall type 1\nload r\nlist 2\nreturn", r=ref)
    assert out == avm.Done(["ref", ref])


def test_unknown_builtin_known_only_at_run_time_is_a_fault():
    from avm.lang import opcodes as O

    # Bytecode loaded from elsewhere may name a builtin this VM does not have.
    made = avm.Code(bytes([O.PUSH, 0, O.CALL, 1, 1, O.RETURN]), (1, "from_the_future"), (1, 2, 3), 3)
    code = avm.Code.from_bytes(made.to_bytes())
    out = Frame(code).run()
    assert isinstance(out, avm.Fault) and out.kind == "NameError" and out.line == 2
    assert "unknown builtin 'from_the_future'" in out.error


def test_finished_frames_snapshot_and_restore_with_their_outcome():
    code = avm.compile("push 1\npush 0\ndiv\nreturn")
    frame = Frame(code)
    out = frame.run()
    again = Frame.restore(code, frame.snapshot())
    assert again.run() == out and again.used == frame.used


def test_arithmetic_overflow_is_a_fault_not_a_host_error():
    # 2**1100 is a legal int (grown by additions), too large to mix with a float
    src = ("push 1\nstore x\npush 0\nstore i\nloop:\nload x\nload x\nadd\nstore x\nload i\npush 1\nadd\nstore i\n"
           "load i\npush 1100\nlt\njump_if loop\nload x\npush 0.5\nadd\nreturn")
    out, _ = run(src, budget=10_000)
    assert isinstance(out, avm.Fault) and out.kind == "ArithmeticError" and out.line == 20


# --- text holds Unicode scalar values only ---


def test_json_parse_of_a_lone_surrogate_escape_faults():
    code = avm.compile('push "[\\"a\\\\ud800\\"]"\ncall json_parse 1\nreturn')
    out = Frame(code, budget=10).run()
    assert isinstance(out, avm.Fault) and out.kind == "ValueError" and "U+D800" in out.error
    keyed = avm.compile('push "{\\"\\\\udc00\\": 1}"\ncall json_parse 1\nreturn')
    assert "U+DC00" in Frame(keyed, budget=10).run().error
    paired = avm.compile('push "\\"\\\\ud83d\\\\ude00\\""\ncall json_parse 1\nreturn')
    assert Frame(paired, budget=10).run() == avm.Done("\U0001f600")


def test_inputs_with_a_lone_surrogate_are_refused():
    with pytest.raises(ValueError, match="lone surrogate"):
        Frame(avm.compile("halt"), inputs={"x": ["ok", {"k": "\udfff"}]})


def test_an_effect_result_with_a_lone_surrogate_faults_at_the_effect():
    code = avm.compile('push "q"\nllm\nreturn')
    frame = Frame(code, budget=10)
    assert isinstance(frame.run(), avm.Effect)
    frame.resume({"text": "a\ud800"})
    out = frame.run()
    assert isinstance(out, avm.Fault) and out.line == 2 and "llm: a lone surrogate (U+D800)" in out.error
    assert frame.stack == []


def test_resuming_with_a_shared_text_reads_it_once():
    # 8,192 references to one non-ASCII text once froze the VM re-encoding it for each (unmetered).
    text = "é" * (1 << 16)
    shared = [[text] * 64 for _ in range(128)]  # distinct lists, one text
    frame = Frame(avm.compile("push null\nrecv\nreturn"), budget=10)
    frame.run()
    _, work = work_of(frame.resume, shared)
    assert work["encodes"] == 1
    assert frame.run() == avm.Done(shared)
    mixed = [[text, "ok\ud800"][i % 2] for i in range(1000)]
    assert avm.lang.values.lone_surrogate(mixed) == "U+D800"  # a distinct text is still read


def test_inputs_check_each_distinct_text_once():
    text = "ü" * 4096
    _, work = work_of(Frame, avm.compile("halt"), 10, {"a": [[text] * 8192, {"k": [text, text]}]})
    assert work["encodes"] == 1


def test_a_value_that_shares_its_parts_is_checked_in_linear_work():
    # Each level holds the one below twice: 2**levels paths, levels + 1 distinct containers.
    levels = 16
    x = 0
    for _ in range(levels):
        x = [x, x]
    frame = Frame(avm.compile("push null\nrecv\nreturn"), budget=10)
    frame.run()
    _, work = work_of(frame.resume, x)
    assert work["calls"] < 8 * levels  # was 2**17 calls of is_value
    assert frame.run() == avm.Done(x)


def test_load_or_gives_the_variable_if_it_is_set_else_the_default():
    code = avm.compile('push "tides"\nload_or topic\nreturn\n')
    assert Frame(code, budget=10).run().value == "tides"
    assert Frame(code, budget=10, inputs={"topic": "bees"}).run().value == "bees"
    assert Frame(code, budget=10, inputs={"topic": None}).run().value is None  # set, to null
    code = avm.compile('push 1\nstore x\npush 2\nload_or x\nreturn\n')
    assert Frame(code, budget=10).run().value == 1
