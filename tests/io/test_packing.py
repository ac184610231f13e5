"""Packed bytes (`avm.io.packing`): what agents keep for their whole life, before and after the
process's dictionary is trained, from any thread."""

from __future__ import annotations

import json
import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avm.io import packing
from avm.io.packing import PACK_MIN_BYTES, pack, unpack
from avm.io.request import LLMRequest, Message, PackedCalls, ToolCalls
from avm.io.wire import tool_calls
from avm.memory.dictionary import DictionaryTrainer


@pytest.fixture
def fresh(monkeypatch):
    """The process's packing as at start-up: no dictionary yet (other tests may have trained one on
    their own data, which is kept for the process's life, as it is meant to be)."""
    monkeypatch.setattr(packing, "_dicts", [None])
    monkeypatch.setattr(packing, "_trainer", DictionaryTrainer(packing._TRAINER_SETTINGS))
    monkeypatch.setattr(packing, "_local", threading.local())


def _result(rng: random.Random) -> bytes:
    tool = rng.choice(["search_code", "read_file", "git_log"])
    lines = "".join(f"  line {i}: {tool} matched {rng.randrange(10**6)} in src/m{rng.randrange(90)}.py\n"
                    for i in range(rng.randrange(3, 12)))
    return json.dumps({"role": "tool", "content": f"{tool}:\n{lines}",
                       "tool_call_id": f"call_{rng.getrandbits(96):024x}"}).encode()


def test_packing_round_trips_before_and_after_the_dictionary_and_the_dictionary_packs_alike_messages_smaller(fresh):
    rng = random.Random(7)
    samples = [_result(rng) for _ in range(3000)]
    packed = [pack(s) for s in samples]
    assert len(packing._dicts) == 3, "trained on the first 512 samples, and again on the 2,048 after"
    assert all(p is not None and unpack(p) == s for p, s in zip(packed, samples, strict=True))
    late = [p for p in packed[-400:] if p is not None]
    assert {p[0] for p in late} == {2}  # packed with the latest dictionary
    more = [_result(rng) for _ in range(6000)]
    again = [pack(s) for s in more]
    assert len(packing._dicts) == packing._MAX_DICTS  # three trained, then no more
    assert all(p is not None and unpack(p) == s for p, s in zip(packed + again, samples + more, strict=True))
    plain = packing._compressor(None)
    assert sum(map(len, late)) * 2 < sum(len(plain(s)) for s in samples[-500:])  # at least twice as small


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(st.binary(max_size=600), st.text(max_size=600).map(str.encode),
                      st.integers(0, 40).map(lambda n: b'{"role":"tool","content":"' + b"ok " * n + b'"}')))
def test_pack_is_none_or_smaller_by_a_quarter_and_unpacks_exactly(data):
    packed = pack(data)
    if packed is None:
        return
    assert len(data) >= PACK_MIN_BYTES and len(packed) * 4 <= len(data) * 3
    assert unpack(packed) == data


def test_packing_works_from_many_threads_at_once(fresh):
    rng = random.Random(3)
    samples = [_result(rng) for _ in range(400)]  # 4 x 400 samples: the dictionary is trained on the way
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for s in samples:
                p = pack(s)
                assert p is None or unpack(p) == s
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(packing._dicts) == 2  # 1,600 samples: one training


def test_packed_tool_calls_equal_and_hash_as_the_same_calls_kept_plain():
    calls = [{"id": f"call_{i:024x}", "type": "function",
              "function": {"name": "search_code", "arguments": json.dumps({"query": "tides " * 8})}}
             for i in range(3)]
    packed = tool_calls(calls)
    plain = ToolCalls(packed.json())
    assert type(packed) is PackedCalls and len(packed) < len(plain)
    assert packed.calls() == plain.calls() == calls
    assert packed == plain and plain == packed and not (packed != plain) and hash(packed) == hash(plain)
    a, b = Message("assistant", None, tool_calls=packed), Message("assistant", None, tool_calls=plain)
    assert a == b and hash(a) == hash(b)
    assert LLMRequest("m", (a,)).cache_key() == LLMRequest("m", (b,)).cache_key()
