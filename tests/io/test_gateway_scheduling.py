"""Queueing, priorities with aging, backpressure, retries and timeouts, on trio's MockClock.

A scripted backend stands in for the server here: these are properties of the
gateway's own logic, checked in virtual time.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence

import pytest
import trio

from avm.errors import LLMError
from avm.io.client.backends import Failure, Reply
from avm.io.gateway import Gateway, GatewaySettings
from avm.io.request import LLMRequest, Message, Usage
from avm.memory import ContentStore, hash_bytes


class ScriptedBackend:
    """Answers after ``delay`` virtual seconds; ``script(name, attempt)`` may return a Failure instead."""

    def __init__(self, delay: float = 1.0, *, batch: bool = True, connections: int = 8,
                 script: Callable[[str, int], Failure | None] | None = None):
        self.delay = delay
        self.supports_batch = batch
        self.max_connections = connections
        self.script = script
        self.calls: list[tuple[float, list[str]]] = []  # (time, request names) per HTTP request
        self.attempts: dict[str, list[float]] = {}
        self.in_flight: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.closed = False

    def _outcome(self, body: bytes) -> tuple[str, str, Reply | Failure]:
        data = json.loads(body)
        name = data["messages"][-1]["content"]
        times = self.attempts.setdefault(name, [])
        times.append(trio.current_time())
        failure = self.script(name, len(times)) if self.script else None
        return name, data["model"], failure or Reply(f"re: {name}", "stop", Usage(3, 2))

    async def _run(self, bodies: Sequence[bytes]) -> list[Reply | Failure]:
        outcomes = [self._outcome(b) for b in bodies]
        self.calls.append((trio.current_time(), [name for name, _, _ in outcomes]))
        for _, model, _ in outcomes:
            self.in_flight[model] = self.in_flight.get(model, 0) + 1
            self.in_flight["*"] = self.in_flight.get("*", 0) + 1
            for key in (model, "*"):
                self.peak[key] = max(self.peak.get(key, 0), self.in_flight[key])
        try:
            await trio.sleep(self.delay)
        finally:
            for _, model, _ in outcomes:
                self.in_flight[model] -= 1
                self.in_flight["*"] -= 1
        return [outcome for _, _, outcome in outcomes]

    async def send(self, body: Sequence[bytes]) -> Reply:
        outcome = (await self._run([b"".join(body) + b"]}"]))[0]
        if isinstance(outcome, Failure):
            raise outcome
        return outcome

    send_stream = send

    async def send_batch(self, head: bytes, conversations: Sequence[bytes]) -> list[Reply | Failure]:
        return await self._run([head + b"".join(c) + b"]}" for c in conversations])

    def connections(self) -> tuple[int, int]:
        return 0, 0

    async def aclose(self) -> None:
        self.closed = True


def req(name: str, model: str = "m", **kw) -> LLMRequest:
    return LLMRequest(model, (Message("user", name),), **kw)


async def test_interactive_requests_go_before_background_ones(autojump_clock):
    backend = ScriptedBackend(delay=1.0, batch=False, connections=1)
    async with Gateway(backend, aging_s=1000.0) as gw:

        async def one(name: str, priority: int) -> None:
            await gw.complete(req(name), priority=priority)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "first", 1)  # takes the only slot
            await trio.sleep(0.1)
            for name, priority in [("bg", 2), ("normal", 1), ("urgent", 0)]:
                nursery.start_soon(one, name, priority)
                await trio.sleep(0.01)
    assert [names[0] for _, names in backend.calls] == ["first", "urgent", "normal", "bg"]
    assert backend.closed


async def test_a_stream_of_interactive_requests_cannot_starve_a_background_one(autojump_clock):
    """Arrivals (4/s) outpace service (2/s), so the interactive queue only grows; aging still serves `bg`."""
    backend = ScriptedBackend(delay=0.5, batch=False, connections=1)
    finished: dict[str, float] = {}
    async with Gateway(backend, aging_s=1.0, request_timeout_s=None) as gw:

        async def one(name: str, priority: int) -> None:
            await gw.complete(req(name), priority=priority)
            finished[name] = trio.current_time()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "bg", 2)
            for i in range(40):
                nursery.start_soon(one, f"i{i}", 0)
                await trio.sleep(0.25)
    order = [names[0] for _, names in backend.calls]
    # bg ranks as an interactive request arriving 2 * aging_s = 2 s later: after i0..i8 (arrived before 2 s)
    assert order.index("bg") <= 10
    assert all(finished["bg"] < finished[f"i{i}"] for i in range(9, 40))


async def test_requests_gather_into_batches_within_the_window(autojump_clock):
    backend = ScriptedBackend(delay=1.0)
    async with Gateway(backend, batch_size=4, batch_window_s=0.005) as gw:
        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(gw.complete, req(f"a{i}"))
            await trio.sleep(0.001)
            nursery.start_soon(gw.complete, req("late"))
        stats = gw.statistics()
    sizes = [len(names) for _, names in backend.calls]
    assert sizes == [4, 3]  # a full batch at once; the rest when a new 5 ms window closed, with the late one
    assert backend.calls[1][0] - backend.calls[0][0] == pytest.approx(0.005, abs=1e-6)
    assert (stats.batches, stats.batch_size_max, stats.batch_size_mean) == (2, 4, 3.5)


async def test_in_flight_limits_hold_globally_and_per_model(autojump_clock):
    backend = ScriptedBackend(delay=1.0)
    settings = GatewaySettings(batch_size=2, max_in_flight=5, max_in_flight_per_model=3, batch_window_s=0)
    finished: dict[str, float] = {}
    async with Gateway(backend, settings=settings) as gw:

        async def one(name: str, model: str) -> None:
            await gw.complete(req(name, model))
            finished[name] = trio.current_time()

        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(one, f"a{i}", "model-a")
            await trio.sleep(0.01)
            nursery.start_soon(one, "b0", "model-b")
        stats = gw.statistics()
    assert backend.peak["model-a"] == 3 and backend.peak["*"] <= 5
    assert finished["b0"] == pytest.approx(1.01)  # model-a's backlog does not hold model-b back
    assert stats.in_flight == 0 and stats.queued == 0


async def test_retries_back_off_exponentially_with_jitter(autojump_clock):
    backend = ScriptedBackend(delay=0.0, script=lambda name, n: Failure("connection", "reset") if n <= 3 else None)
    async with Gateway(backend, backoff_s=1.0, seed=1) as gw:
        reply = await gw.complete(req("flaky"))
        stats = gw.statistics()
    times = backend.attempts["flaky"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert reply.text == "re: flaky" and stats.retries == 3 and len(times) == 4
    for gap, base in zip(gaps, (1.0, 2.0, 4.0), strict=True):
        assert base / 2 <= gap <= base


async def test_retry_after_is_honoured_and_capped(autojump_clock):
    def script(name: str, attempt: int) -> Failure | None:
        if attempt == 1:
            return Failure("rate_limit", "429", status=429, retry_after=5.0 if name == "polite" else 1000.0)
        return None

    backend = ScriptedBackend(delay=0.0, script=script)
    async with Gateway(backend, backoff_s=0.01, retry_after_max_s=30.0, batch_window_s=0) as gw:
        await gw.complete(req("polite"))
        await gw.complete(req("greedy"))
    for name, expected in (("polite", 5.0), ("greedy", 30.0)):
        first, second = backend.attempts[name]
        assert second - first == pytest.approx(expected)


async def test_retryable_failures_give_up_after_max_retries_and_others_at_once(autojump_clock):
    def script(name: str, attempt: int) -> Failure:
        if name == "down":
            return Failure("server", "server error (503): overloaded", status=503)
        return Failure("bad_request", "the server refused the request (400): bad", status=400)

    backend = ScriptedBackend(delay=0.0, script=script)
    async with Gateway(backend, max_retries=2, backoff_s=0.1) as gw:
        with pytest.raises(LLMError, match=r"overloaded \(after 3 attempts\)") as info:
            await gw.complete(req("down"))
        assert (info.value.kind, info.value.status) == ("server", 503)
        with pytest.raises(LLMError) as info:
            await gw.complete(req("refused"))
        assert (info.value.kind, info.value.status) == ("bad_request", 400)
        assert gw.statistics().errors_by_kind == {"server": 1, "bad_request": 1}
    assert len(backend.attempts["down"]) == 3 and len(backend.attempts["refused"]) == 1


async def test_one_failed_batch_item_fails_only_its_request(autojump_clock):
    backend = ScriptedBackend(delay=0.1,
                              script=lambda name, n: Failure("bad_request", "refused") if name == "x2" else None)
    results: dict[str, object] = {}
    async with Gateway(backend, batch_size=8) as gw:

        async def one(name: str) -> None:
            try:
                results[name] = (await gw.complete(req(name))).text
            except LLMError as exc:
                results[name] = exc

        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(one, f"x{i}")
    assert len(backend.calls) == 1
    error = results.pop("x2")
    assert isinstance(error, LLMError) and error.kind == "bad_request" and error.request.startswith("m/")
    assert results == {f"x{i}": f"re: x{i}" for i in (0, 1, 3, 4)}


async def test_waiters_of_a_coalesced_request_all_get_its_error(autojump_clock):
    backend = ScriptedBackend(delay=0.5, script=lambda name, n: Failure("bad_request", "no such model", status=404))
    errors = []
    async with Gateway(backend) as gw:

        async def one() -> None:
            with pytest.raises(LLMError) as info:
                await gw.complete(req("same", temperature=0))
            errors.append(info.value)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(one)
        assert gw.statistics().coalesced == 4
    assert len(backend.attempts["same"]) == 1
    assert len(errors) == 5 and all(e.kind == "bad_request" and e.status == 404 for e in errors)


async def test_an_abandoned_queued_request_is_never_sent(autojump_clock):
    backend = ScriptedBackend(delay=10.0, batch=False, connections=1)
    async with Gateway(backend) as gw:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gw.complete, req("slow"))
            await trio.sleep(0.1)
            with pytest.raises(LLMError, match="no reply within 1 s"):
                await gw.complete(req("impatient"), timeout=1.0)
        stats = gw.statistics()
    assert "impatient" not in backend.attempts and stats.queued == 0 and stats.sent == 1


async def test_a_bug_while_sending_fails_that_send_only_and_the_gateway_goes_on(autojump_clock, caplog):
    class Buggy(ScriptedBackend):
        async def send_batch(self, head, conversations):
            if any(b"boom" in b"".join(c) for c in conversations):
                raise RuntimeError("a bug in the backend")
            return await super().send_batch(head, conversations)

    errors = []
    async with Gateway(Buggy(delay=0.1), batch_size=2, batch_window_s=0.01) as gw:

        async def one(name: str) -> None:
            try:
                await gw.complete(req(name))
            except LLMError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "boom")
            nursery.start_soon(one, "bystander")  # in the same batch: that send failed for both
        assert (await gw.complete(req("after"))).text == "re: after"
    assert [e.kind for e in errors] == ["internal", "internal"] and "see the log" in str(errors[0])
    assert "a bug in the backend" in caplog.text


async def test_leaving_the_gateway_fails_what_still_waits(autojump_clock):
    backend = ScriptedBackend(delay=100.0)
    errors = []

    async def waiter(gw: Gateway) -> None:
        try:
            await gw.complete(req("never"))
        except LLMError as exc:
            errors.append(exc)

    async with trio.open_nursery() as outer, Gateway(backend) as gw:
        outer.start_soon(waiter, gw)
        await trio.sleep(1.0)
    assert errors[0].kind == "cancelled" and backend.closed
    with pytest.raises(LLMError, match="not running"):
        await gw.complete(req("late"))


async def test_settings_are_checked():
    with pytest.raises(LLMError, match="batch_size"):
        GatewaySettings(batch_size=0)
    with pytest.raises(LLMError, match="unknown gateway settings: batchsize"):
        Gateway(ScriptedBackend(), batchsize=3)
    with pytest.raises(ValueError, match="priority"):
        await Gateway(ScriptedBackend()).complete(req("x"), priority=5)


async def test_a_bug_in_the_batcher_fails_what_waits_and_the_batcher_goes_on(autojump_clock, caplog):
    gw = Gateway(ScriptedBackend(delay=0.1))
    pick = gw._pick
    calls = []

    def broken_once():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in the batcher")
        return pick()

    gw._pick = broken_once  # type: ignore[method-assign]
    async with gw:
        with pytest.raises(LLMError, match="internal error") as info:
            await gw.complete(req("first"))
        assert info.value.kind == "internal" and info.value.request.startswith("m/")
        assert (await gw.complete(req("second"))).text == "re: second"
    assert "a bug in the batcher" in caplog.text
    with pytest.raises(LLMError, match="runs once"):
        async with gw:
            pass


async def test_requests_that_cannot_be_sent_are_bad_request_errors_naming_them():
    missing = hash_bytes(b"never stored")
    async with Gateway(ScriptedBackend(), store=ContentStore()) as gw:
        request = LLMRequest("m", (Message("user", missing),))
        with pytest.raises(LLMError, match=missing.short) as info:
            await gw.complete(request)
        assert info.value.kind == "bad_request" and info.value.request == f"m/{request.cache_key().hex()[:12]}"
        with pytest.raises(LLMError) as info:
            await gw.complete(LLMRequest("m", (Message("user", "x"),), temperature=9))
        assert info.value.kind == "bad_request" and info.value.request == "m/?"
        assert gw.statistics().errors_by_kind == {"bad_request": 2} and gw.statistics().sent == 0
