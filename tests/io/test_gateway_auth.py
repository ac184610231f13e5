"""A refused key is reported once and never retried; the key appears nowhere.

The server is the standard library's http.server, answering every request with 401.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio

from avm.errors import LLMError
from avm.io.client.openai import OpenAIBackend
from avm.io.gateway import Gateway
from avm.io.request import LLMRequest, Message
from tests.support.http_server import Answer, Seen, scripted_server

KEY = "sk-proj-TOPSECRET-9f8e7d6c5b4a39281706"


def req(text: str) -> LLMRequest:
    return LLMRequest("gpt-test", (Message("user", text),), temperature=0)


@contextmanager
def refusing_backend(calls: list[Seen]) -> Iterator[OpenAIBackend]:
    def handler(request: Seen) -> Answer:
        return Answer(401, {"error": {"message": f"Incorrect API key provided: {KEY}",
                                      "type": "invalid_request_error", "code": "invalid_api_key"}})

    with scripted_server(handler, seen=calls) as url:
        yield OpenAIBackend(url, api_key=KEY)


async def test_401_is_reported_once_never_retried_and_later_requests_fail_fast(caplog):
    caplog.set_level(logging.DEBUG)
    calls: list[Seen] = []
    with refusing_backend(calls) as backend:
        async with Gateway(backend, max_retries=5, backoff_s=0.001) as gw:
            with pytest.raises(LLMError) as first:
                await gw.complete(req("one"))
            assert (first.value.kind, first.value.status) == ("auth", 401)
            assert "refused the API key" in str(first.value) and first.value.request.startswith("gpt-test/")
            assert len(calls) == 1
            for text in ("two", "three"):
                with pytest.raises(LLMError) as later:
                    await gw.complete(req(text))
                assert later.value.kind == "auth" and later.value.message == first.value.message
            assert len(calls) == 1  # fail fast: nothing more was sent
            stats = gw.statistics()
    assert stats.retries == 0 and stats.errors_by_kind == {"auth": 3} and stats.http_requests == 1
    reports = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(reports) == 1 and "API key" in reports[0].getMessage()


async def test_requests_waiting_when_the_401_comes_fail_with_it():
    calls: list[Seen] = []
    errors = []
    with refusing_backend(calls) as backend:
        async with Gateway(backend, batch=False, max_connections=1) as gw:

            async def one(i: int) -> None:
                try:
                    await gw.complete(req(f"r{i}"))
                except LLMError as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(one, i)
    assert len(calls) == 1 and len(errors) == 10 and {e.kind for e in errors} == {"auth"}


async def test_the_key_never_appears_in_errors_reprs_statistics_or_logs(caplog):
    caplog.set_level(logging.DEBUG)
    calls: list[Seen] = []
    with refusing_backend(calls) as backend:
        async with Gateway(backend) as gw:
            with pytest.raises(LLMError) as info:
                await gw.complete(req("hello"))
            seen = [str(info.value), repr(info.value), repr(gw), repr(backend), repr(gw.statistics()),
                    repr(gw.settings), caplog.text, str(info.value.__cause__), repr(info.value.__context__)]
    assert calls[0].headers["authorization"] == f"Bearer {KEY}"  # it was sent, where it belongs
    for text in seen:
        assert KEY not in text and "TOPSECRET" not in text
