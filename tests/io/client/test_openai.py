"""OpenAIBackend against a real HTTP server it did not write (the standard library's http.server).

Each test scripts the server's answers (tests/support/http_server.py); the
client's requests go over real sockets, through AVM's own pool.
"""

from __future__ import annotations

import email.utils
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import trio

from avm.errors import LLMError
from avm.io.client.backends import Failure, Reply, parse_chat, retry_after
from avm.io.client.http import ConnectionPool, HTTPError, parse_url
from avm.io.client.openai import OpenAIBackend, split_batch
from tests.support.http_server import Answer, Seen, scripted_server

KEY = "sk-test-SECRET-0123456789abcdef"
HEAD = b'{"model":"m","messages":['
CONV = b'{"role":"user","content":"hi"}'
BODY = (HEAD, CONV)


def completion(text="hi", reason="stop", usage=(3, 1), **extra):
    out = {"id": "c", "object": "chat.completion",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}],
           "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}}
    out.update(extra)
    return out


@contextmanager
def backend(handler: Callable[[Seen], Answer], seen: list[Seen] | None = None, *, tls: ssl.SSLContext | None = None,
            **kw) -> Iterator[OpenAIBackend]:
    kw.setdefault("api_key", KEY)
    with scripted_server(handler, seen=seen, tls=tls) as url:
        yield OpenAIBackend(url, **kw)


async def test_a_reply_is_parsed_and_the_key_goes_only_in_the_header():
    seen: list[Seen] = []
    with backend(lambda r: Answer(200, completion("Hello", usage=(5, 2))), seen) as b:
        reply = await b.send(BODY)
        assert KEY not in repr(b) and "key=set" in repr(b)
        await b.aclose()
    assert reply == Reply("Hello", "stop", reply.usage, ())
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (5, 2)
    assert (seen[0].method, seen[0].path) == ("POST", "/v1/chat/completions")
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"
    assert seen[0].json() == {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_base_url_and_key_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://env.test/v1/")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    b = OpenAIBackend()
    assert b.base_url == "http://env.test/v1" and KEY not in repr(b)
    monkeypatch.delenv("OPENAI_BASE_URL")
    with pytest.raises(LLMError, match="OPENAI_BASE_URL") as info:
        OpenAIBackend()
    assert info.value.kind == "config"
    with pytest.raises(LLMError, match="not an http") as info:
        OpenAIBackend("llm.test/v1")  # no scheme
    assert info.value.kind == "config"


async def test_a_thousand_concurrent_requests_hold_a_thousand_connections():
    """One request per connection (HTTP/1.1): R in flight need R connections, and the pool opens them.

    The server answers none until all 1,000 wait in it at once (a barrier; no clock), so
    requests sent in turns would fail when the barrier gives up."""
    seen: list[Seen] = []
    together = threading.Barrier(1000, timeout=60)  # the timeout is only a hang guard

    def handler(request: Seen) -> Answer:
        together.wait()
        return Answer(200, completion(request.json()["messages"][0]["content"]))

    with backend(handler, seen, max_connections=1000) as b:
        replies: dict[int, str] = {}

        async def one(i: int) -> None:
            replies[i] = (await b.send((HEAD, b'{"role":"user","content":"%d"}' % i))).text

        async with trio.open_nursery() as nursery:
            for i in range(1000):
                nursery.start_soon(one, i)
        assert replies == {i: str(i) for i in range(1000)}
        assert b.connections() == (1000, 1000)
        # ... and they are kept alive: a second round opens none
        async with trio.open_nursery() as nursery:
            for i in range(1000):
                nursery.start_soon(one, i)
        assert b.connections() == (1000, 1000) and len(seen) == 2000
        await b.aclose()


async def test_the_connection_limit_holds_and_requests_wait_for_a_free_one():
    with backend(lambda r: Answer(200, completion(), delay=0.05), max_connections=3) as b:
        async with trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(b.send, BODY)
        assert b.connections() == (3, 3)


def slots_all_free(b: OpenAIBackend) -> bool:
    """No request holds a slot of the pool (each path of a request gives its slot back)."""
    return all(host.slots.value == b._pool.max_connections for host in b._pool._hosts.values())


async def test_a_kept_alive_connection_the_server_closed_is_replaced_and_the_request_goes_through():
    seen: list[Seen] = []
    with backend(lambda r: Answer(200, completion(), silent_close=True), seen) as b:
        for _ in range(3):
            assert (await b.send(BODY)).text == "hi"
            await trio.sleep(0.05)  # the server closes its side meanwhile
        assert b.connections()[0] == 3 and len(seen) == 3 and slots_all_free(b)



async def test_a_sent_body_is_given_up_and_a_kept_alive_connection_that_then_closes_is_a_retryable_failure():
    """The pieces of a list body are dropped once written (a waiting request holds none of them), so a
    kept-alive connection the server closes after reading the request cannot be sent on again by the
    pool: the request fails as a connection failure, which the gateway retries (encoding it again)."""
    seen: list[Seen] = []
    answers = iter([Answer(200, completion()), Answer(drop=True), Answer(200, completion("again"))])
    with backend(lambda r: next(answers), seen) as b:
        body = [HEAD, CONV]
        assert (await b.send(body)).text == "hi"
        assert body == []  # given up once written
        with pytest.raises(Failure) as info:
            await b.send([HEAD, CONV])
        assert info.value.kind == "connection" and info.value.retryable
        assert (await b.send(BODY)).text == "again"  # a new connection
        assert slots_all_free(b)
    assert [r.body for r in seen] == [HEAD + CONV + b"]}"] * 3


async def test_https_with_the_trust_store_of_ssl_cert_file(tmp_path, monkeypatch):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    seen: list[Seen] = []
    with scripted_server(lambda r: Answer(200, completion("secure")), tls=server_context, seen=seen) as url:
        assert url.startswith("https://")
        untrusted = OpenAIBackend(url, api_key=KEY)  # the system's store does not know this CA
        with pytest.raises(Failure) as info:
            await untrusted.send(BODY)
        assert info.value.kind == "connection" and "certificate" in info.value.message.lower()
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        trusted = OpenAIBackend(url, api_key=KEY)
        assert (await trusted.send(BODY)).text == "secure"
        assert (await trusted.send(BODY)).text == "secure"
        assert trusted.connections() == (1, 1)  # kept alive over TLS too
    assert seen[-1].headers["authorization"] == f"Bearer {KEY}"


async def test_401_is_an_auth_failure_whose_message_never_holds_the_key():
    message = f"Incorrect API key provided: {KEY}. Also sk-abcd1234."
    with backend(lambda r: Answer(401, {"error": {"message": message, "type": "invalid_request_error",
                                                  "code": "invalid_api_key"}})) as b:
        with pytest.raises(Failure) as info:
            await b.send(BODY)
    failure = info.value
    assert failure.kind == "auth" and failure.status == 401 and not failure.retryable
    assert "Incorrect API key" in failure.message
    assert KEY not in failure.message and "sk-abcd1234" not in failure.message and KEY not in str(failure)


@pytest.mark.parametrize("status, headers, kind, after", [
    (429, {"retry-after-ms": "250", "retry-after": "1"}, "rate_limit", 0.25),
    (429, {"retry-after": "2"}, "rate_limit", 2.0),
    (429, {}, "rate_limit", None),
    (503, {"retry-after": "1.5"}, "server", 1.5),
    (500, {}, "server", None),
    (408, {}, "timeout", None),
    (400, {}, "bad_request", None),
    (404, {}, "bad_request", None),
    (403, {}, "auth", None),
])
async def test_statuses_become_failures_with_their_retry_after(status, headers, kind, after):
    with backend(lambda r: Answer(status, b"<html>nope</html>", headers=headers)) as b:
        with pytest.raises(Failure) as info:
            await b.send(BODY)
    assert (info.value.kind, info.value.status, info.value.retry_after) == (kind, status, after)
    assert info.value.retryable == (kind in ("rate_limit", "server", "timeout"))


def test_retry_after_reads_seconds_milliseconds_and_dates():
    assert retry_after({"retry-after-ms": "1500"}) == 1.5
    assert retry_after({"retry-after-ms": "soon", "retry-after": "3"}) == 3.0
    assert retry_after({"retry-after": "-1"}) is None
    assert retry_after({"retry-after": "whenever"}) is None
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= retry_after({"retry-after": date}) <= 31
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert retry_after({"retry-after": past}) == 0.0


@pytest.mark.parametrize("body, message", [
    (b"{not json", "not JSON"),
    (b"[]", "not a JSON object"),
    (b'{"choices": []}', "no choices"),
    (b'{"choices": [{"index": 0}]}', "no message"),
    (b'{"choices": [{"message": {"content": "x"}}]}', "finish_reason"),
    (b'{"choices": [{"message": {"content": 7}, "finish_reason": "stop"}]}', "not text"),
    (b'{"choices": [{"message": {"content": "x", "tool_calls": "f"}, "finish_reason": "stop"}]}', "tool_calls"),
    (b'{"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": "3"}}',
     "usage"),
])
async def test_malformed_bodies_are_malformed_failures_retried_like_a_5xx(body, message):
    with backend(lambda r: Answer(200, body)) as b:
        with pytest.raises(Failure, match=message) as info:
            await b.send(BODY)
    assert info.value.kind == "malformed" and info.value.retryable


def test_missing_usage_counts_zero_and_null_content_is_empty_text():
    reply = parse_chat({"choices": [{"message": {"content": None, "tool_calls": [{"id": "1"}]},
                                     "finish_reason": "tool_calls"}]})
    assert (reply.text, reply.usage.total_tokens, reply.tool_calls) == ("", 0, ({"id": "1"},))


async def test_connection_failures_are_connection_failures_without_the_key():
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    b = OpenAIBackend(f"http://127.0.0.1:{port}/v1", api_key=KEY)
    with pytest.raises(Failure) as info:
        await b.send(BODY)
    assert info.value.kind == "connection" and info.value.retryable and KEY not in info.value.message
    with backend(lambda r: Answer(drop=True)) as dropping:
        with pytest.raises(Failure) as info:
            await dropping.send(BODY)
    assert info.value.kind == "connection" and "closed" in info.value.message


async def test_a_batch_is_one_request_in_vllms_format_and_each_choice_finds_its_request():
    seen: list[Seen] = []
    reply = {"id": "b", "object": "chat.completion", "model": "m",
             "choices": [  # out of order, as a server may send them; choice 2 is missing
                 {"index": 1, "message": {"role": "assistant", "content": "second one"}, "finish_reason": "stop"},
                 {"index": 0, "message": {"role": "assistant", "content": "first"}, "finish_reason": "length"},
                 {"index": 3, "message": {"role": "assistant"}}],
             "usage": {"prompt_tokens": 40, "completion_tokens": 17, "total_tokens": 57}}
    head = b'{"model":"m","temperature":0.0,"messages":['
    convs = [[CONV], [b'{"role":"user","content":"a much longer question here"}'], [CONV], [CONV]]
    with backend(lambda r: Answer(200, reply), seen) as b:
        out = await b.send_batch(head, convs)
    assert len(seen) == 1 and seen[0].path == "/v1/chat/completions/batch"
    sent = seen[0].json()
    assert sent == {"model": "m", "temperature": 0.0, "messages": [[json.loads(c[0])] for c in convs]}
    assert isinstance(out[0], Reply) and (out[0].text, out[0].finish_reason) == ("first", "length")
    assert isinstance(out[1], Reply) and out[1].text == "second one"
    assert isinstance(out[2], Failure) and out[2].kind == "malformed" and "no choice 2" in out[2].message
    assert isinstance(out[3], Failure) and out[3].kind == "malformed"
    replies = [r for r in out if isinstance(r, Reply)]
    assert sum(r.usage.prompt_tokens for r in replies) <= 40 and out[1].usage.prompt_tokens > out[0].usage.prompt_tokens


def test_batch_usage_is_shared_out_exactly():
    choices = [{"index": i, "message": {"content": "x" * (i + 1)}, "finish_reason": "stop"} for i in range(3)]
    out = split_batch({"choices": choices, "usage": {"prompt_tokens": 100, "completion_tokens": 10}},
                      [[b"a" * 10], [b"b" * 5, b"b" * 15], [b"c" * 70]])
    assert [r.usage.prompt_tokens for r in out] == [10, 20, 70]
    assert sum(r.usage.completion_tokens for r in out) == 10
    with pytest.raises(Failure, match="not a JSON object"):
        split_batch([], [[b"x"]])
    with pytest.raises(Failure) as info:
        split_batch({"error": {"message": "n must be 1", "type": "BadRequestError"}}, [[b"x"]])
    assert "n must be 1" in info.value.message


@pytest.mark.parametrize("status", [404, 405, 400, 422, 500])
async def test_a_server_that_refuses_the_first_batch_turns_batching_off_in_auto_mode(status):
    with backend(lambda r: Answer(status, {"error": {"message": "no such thing"}})) as b:
        assert b.supports_batch
        with pytest.raises(Failure) as info:
            await b.send_batch(HEAD, [[CONV], [CONV]])
    assert info.value.kind == "unsupported" and not b.supports_batch


async def test_after_a_batch_was_accepted_a_refused_batch_is_that_batches_failure():
    answers = iter([Answer(200, completion("ok")), Answer(400, {"error": {"message": "bad item"}})])
    with backend(lambda r: next(answers)) as b:
        await b.send_batch(HEAD, [[CONV]])
        with pytest.raises(Failure) as info:
            await b.send_batch(HEAD, [[CONV], [CONV]])
    assert info.value.kind == "bad_request" and b.supports_batch


async def test_forced_and_disabled_batching():
    with backend(lambda r: Answer(404, {"error": {"message": "unknown URL"}}), batch=True) as forced:
        with pytest.raises(Failure) as info:
            await forced.send_batch(HEAD, [[CONV], [CONV]])
    assert info.value.kind == "bad_request" and forced.supports_batch
    assert not OpenAIBackend("http://x.test/v1", batch=False).supports_batch


def sse(*events: object, done: bool = True) -> bytes:
    out = b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in events)
    return out + (b"data: [DONE]\n\n" if done else b"")


EVENT_STREAM = {"content-type": "text/event-stream"}


async def test_streaming_asks_for_usage_and_assembles_the_events_as_they_come():
    seen: list[Seen] = []
    events = [{"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
              {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
              {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}}]
    body = sse(*events)
    with backend(lambda r: Answer(200, b"", headers=EVENT_STREAM, chunks=[body[:7], body[7:40], body[40:]]),
                 seen) as b:
        reply = await b.send_stream(BODY)
        again = await b.send_stream(BODY)  # the connection was read to its end: it is reused
        assert b.connections() == (1, 1)
    assert seen[0].json()["stream"] is True and seen[0].json()["stream_options"] == {"include_usage": True}
    assert (reply.text, reply.finish_reason, reply.usage.completion_tokens) == ("Hello", "stop", 2)
    assert again == reply


async def test_stream_edge_cases():
    no_done = sse({"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "length"}]}, done=False)
    cut = sse({"choices": [{"index": 0, "delta": {"content": "x"}}]}, done=False)
    with backend(lambda r: Answer(200, no_done, headers=EVENT_STREAM)) as b:
        assert (await b.send_stream(BODY)).finish_reason == "length"
    with backend(lambda r: Answer(200, cut, headers=EVENT_STREAM)) as b:
        with pytest.raises(Failure, match="ended before") as info:
            await b.send_stream(BODY)
        assert info.value.retryable  # a truncated stream is tried again
    with backend(lambda r: Answer(200, completion("not streamed"))) as b:
        assert (await b.send_stream(BODY)).text == "not streamed"
    with backend(lambda r: Answer(429, {"error": {"message": "slow down"}}, headers={"retry-after-ms": "20"})) as b:
        with pytest.raises(Failure) as info:
            await b.send_stream(BODY)
    assert info.value.kind == "rate_limit" and info.value.retry_after == 0.02


async def test_probe_reports_an_unreachable_server_and_a_refused_key():
    with backend(lambda r: Answer(200, {"data": []})) as b:
        await b.probe()
    with backend(lambda r: Answer(404, {"error": {"message": "no such route"}})) as b:
        await b.probe()  # it answered
    with backend(lambda r: Answer(401, {"error": {"message": "bad key"}})) as b:
        with pytest.raises(Failure) as info:
            await b.probe()
    assert info.value.kind == "auth"


async def test_after_the_first_batch_was_accepted_batches_go_out_together():
    """After the probe, the server answers no batch until all 4 wait in it at once (a barrier; no clock)."""
    together = threading.Barrier(4, timeout=60)  # the timeout is only a hang guard
    batches: list[int] = []

    def handler(request: Seen) -> Answer:
        n = len(request.json()["messages"])
        batches.append(n)
        if len(batches) > 1:  # not the probe
            together.wait()
        return Answer(200, {"choices": [{"index": i, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": str(i)}} for i in range(n)]})

    with backend(handler) as b:
        await b.send_batch(HEAD, [[CONV], [CONV]])  # the probe: alone
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(b.send_batch, HEAD, [[CONV], [CONV]])
    assert batches == [2] * 5  # together (the barrier let them through), not one after another


async def test_a_5xx_without_an_error_body_on_the_first_batch_is_a_passing_failure_not_a_verdict():
    with backend(lambda r: Answer(503, b"Service Unavailable", headers={"content-type": "text/plain"})) as b:
        with pytest.raises(Failure) as info:
            await b.send_batch(HEAD, [[CONV], [CONV]])
    assert info.value.kind == "server" and info.value.retryable and b.supports_batch  # tried again later


async def test_closing_the_pool_ends_a_request_waiting_over_tls_at_once():
    """A request over TLS waits in the pool under a cancel scope (not in its readiness): closing the pool
    ends it too, so closing the gateway ends every request in flight (found by review)."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    with scripted_server(lambda r: Answer(200, completion("late"), delay=5.0), tls=server_context) as url:
        origin, target = parse_url(url + "/chat/completions")
        pool = ConnectionPool(ssl_context=client_context, http2=False)
        errors: list[HTTPError] = []

        async def request() -> None:
            with pytest.raises(HTTPError) as info:
                await pool.request(origin, b"POST", target.encode(), [], (b"{}",))
            errors.append(info.value)
        start = trio.current_time()
        with trio.fail_after(3):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(request)
                await trio.sleep(0.3)
                await pool.aclose()
        assert [e.kind for e in errors] == ["closed"] and trio.current_time() - start < 2
        assert not pool._scopes
