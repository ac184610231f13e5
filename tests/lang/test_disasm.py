from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import avm
from tests.lang.programs import programs

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_disassembly_compiles_back_to_the_same_id(source):
    code = avm.compile(source)
    again = avm.compile(avm.disassemble(code))
    assert again.id == code.id
    assert again.bytecode == code.bytecode and again.consts == code.consts


@settings(max_examples=200, deadline=None)
@given(st.one_of(texts, st.floats(allow_nan=False, allow_infinity=False), st.integers(-(10**30), 10**30)),
       st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=15))
def test_any_constant_and_message_survive_the_round_trip(value, message):
    from avm.lang.disasm import literal, quote

    source = f"push {literal(value)}\nassert {quote(message)}\nenergy_check 1.25\nhalt\n"
    code = avm.compile(source)
    assert code.consts[0] == value and type(code.consts[0]) is type(value)
    again = avm.compile(avm.disassemble(code))
    assert again.id == code.id


def test_disassembly_is_readable():
    code = avm.compile("start:\npush 1\njump_if start\npush \"a\\nb\"\nreturn\n")
    text = avm.disassemble(code, with_lines=True)
    assert "L0:" in text and "jump_if L0" in text and 'push "a\\nb"' in text and "# line 2" in text
