"""The embedded server refuses what OpenAI and vLLM refuse, and takes what they take (real loopback sockets).

Unknown models (404 model_not_found unless the server serves any model), sampling numbers out of OpenAI's
ranges, tool messages without ``tool_call_id``, token-id prompts on /v1/completions, and JSON no parser
should accept. The official ``openai`` client is the client where it can send the request; raw httpx where
the input is malformed on purpose.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import openai
import pytest
import trio

from avm.io.embedded.faults import LLMServerError, ServerSettings
from avm.io.embedded.replies import MAX_TOKEN_ID, prompt_text
from avm.io.embedded.server import serve_llm
from avm.runtime import VM

from .test_server import ROOT, chat, client, conversation, server

__all__ = ["client", "server"]  # the fixtures of test_server.py: the default server and an httpx client of it

HELLO = [{"role": "user", "content": "Tell me about tides"}]
ERROR_FIELDS = {"message", "type", "param", "code"}


async def with_openai(server: Any, call: Any) -> Any:
    """``call(client)`` with the official (synchronous) client, in a thread; an API error is returned."""
    def run() -> Any:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=10.0)
        try:
            return call(client)
        except openai.APIStatusError as exc:
            return exc
        finally:
            client.close()

    return await trio.to_thread.run_sync(run)


def openai_error(r: httpx.Response, status: int) -> dict[str, Any]:
    """The error of an OpenAI-shaped error response with this status."""
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == ERROR_FIELDS and error["type"] == "invalid_request_error", error
    return error


# ---------------------------------------------------------------- 1. models

async def test_an_unknown_model_gets_openais_404_from_the_official_client(server):
    chat_error = await with_openai(server, lambda c: c.chat.completions.create(model="gpt-9", messages=HELLO))
    text_error = await with_openai(server, lambda c: c.completions.create(model="gpt-9", prompt="hi"))
    for error in (chat_error, text_error):
        assert isinstance(error, openai.NotFoundError) and error.status_code == 404
        assert error.code == "model_not_found" and error.type == "invalid_request_error"
        assert "gpt-9" in error.message
    served = await with_openai(server, lambda c: c.chat.completions.create(model="avm-embedded", messages=HELLO))
    assert served.model == "avm-embedded" and served.choices[0].message.content


async def test_an_unknown_model_gets_404_on_every_completion_endpoint(client):
    for path, body in (("/chat/completions", chat(model="gpt-9")),
                       ("/chat/completions", chat(model="gpt-9", stream=True)),
                       ("/completions", {"model": "gpt-9", "prompt": "hi"}),
                       ("/completions", {"model": "gpt-9", "prompt": [1, 2], "stream": True})):
        error = openai_error(await client.post(path, json=body), 404)
        assert error["code"] == "model_not_found" and error["param"] is None, (path, body)
    assert openai_error(await client.get("/models/gpt-9"), 404)["code"] == "model_not_found"
    # vLLM's batch endpoint answers as vLLM does (OpenAIServing._check_model)
    r = await client.post("/chat/completions/batch", json={"model": "gpt-9", "messages": [HELLO]})
    assert r.status_code == 404 and r.json() == {"error": {
        "message": "The model `gpt-9` does not exist.", "type": "NotFoundError", "param": "model", "code": 404}}


async def test_a_bad_body_is_a_400_before_the_model_is_looked_at(client):
    error = openai_error(await client.post("/chat/completions", json={"model": "gpt-9"}), 400)
    assert error["param"] == "messages"


async def test_the_served_models_and_no_model_are_answered(client):
    for body in (chat(), {"messages": HELLO}, {"model": "", "messages": HELLO}):  # omitted or empty: vLLM's rule
        r = await client.post("/chat/completions", json=body)
        assert r.status_code == 200 and r.json()["model"] == "avm-embedded"
    async with serve_llm(models=("a", "b")) as two, httpx.AsyncClient(base_url=two.url) as c:
        for name in ("a", "b"):
            assert (await c.post("/completions", json={"model": name, "prompt": "x"})).json()["model"] == name
        assert (await c.post("/chat/completions", json=chat())).status_code == 404  # avm-embedded: not here


async def test_any_model_serves_and_echoes_every_name():
    async with serve_llm(any_model=True) as server, httpx.AsyncClient(base_url=server.url) as c:
        for path, body in (("/chat/completions", chat(model="gpt-9")), ("/completions", {"model": "gpt-9",
                                                                                         "prompt": "hi"}),
                           ("/chat/completions/batch", {"model": "gpt-9", "messages": [HELLO]})):
            r = await c.post(path, json=body)
            assert r.status_code == 200 and r.json()["model"] == "gpt-9", path
        assert (await c.get("/models/gpt-9")).json()["id"] == "gpt-9"
        assert [m["id"] for m in (await c.get("/models")).json()["data"]] == ["avm-embedded"]
        completion = await with_openai(server, lambda c: c.chat.completions.create(model="any", messages=HELLO))
        assert completion.model == "any"
    with pytest.raises(LLMServerError, match="any_model must be a boolean"):
        ServerSettings(any_model="yes")


async def test_the_vms_own_server_serves_the_model_the_vm_names():
    ask = 'push "Tell me about tides"\nllm\nreturn\n'
    async with VM(model="my-model") as vm:
        reply = await (await vm.spawn(ask, budget=50)).result()
    assert isinstance(reply, str) and reply, reply
    async with VM(llm_server={"models": ["first", "second"]}) as vm:
        assert vm.model == "first"
        reply = await (await vm.spawn(ask, budget=50)).result()
    assert isinstance(reply, str) and reply, reply


def test_serve_llm_any_model_flag():
    help_text = subprocess.run([sys.executable, "-m", "avm", "serve-llm", "--help"], capture_output=True, text=True,
                               cwd=ROOT, timeout=30, check=True).stdout
    assert "--any-model" in help_text
    proc = subprocess.Popen([sys.executable, "-m", "avm", "serve-llm", "--any-model", "--port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = None
        for line in proc.stdout:  # ends if the process dies
            if line.startswith("OPENAI_BASE_URL="):
                url = line.split("=", 1)[1].strip()
                break
        assert url is not None
        r = httpx.post(url + "/chat/completions", json=chat(model="gpt-9"), timeout=10)
        assert r.status_code == 200 and r.json()["model"] == "gpt-9"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


# ---------------------------------------------------------------- 2. sampling numbers

@pytest.mark.parametrize(("name", "value"), [
    ("temperature", 2.5), ("temperature", -0.1), ("temperature", 3), ("top_p", 1.5), ("top_p", -1),
    ("presence_penalty", 2.1), ("frequency_penalty", -3)])
async def test_numbers_outside_openais_ranges_are_400(client, name, value):
    for path, body in (("/chat/completions", chat(**{name: value})),
                       ("/completions", {"model": "avm-embedded", "prompt": "hi", name: value})):
        error = openai_error(await client.post(path, json=body), 400)
        assert error["param"] == name and error["code"] == "invalid_value", error
    r = await client.post("/chat/completions/batch", json={"messages": [HELLO], name: value})
    assert r.status_code == 400 and r.json()["error"]["param"] == name  # vLLM's 400 body


@pytest.mark.parametrize("value", ["0.5", "hot", True, [1], {"t": 1}])
async def test_a_temperature_that_is_not_a_number_is_400(client, value):
    error = openai_error(await client.post("/chat/completions", json=chat(temperature=value)), 400)
    assert error["param"] == "temperature" and error["code"] == "invalid_type"


async def test_the_ends_of_the_ranges_are_accepted(server):
    for temperature in (0, 0.0, 2, 2.0, 1.3):
        completion = await with_openai(server, lambda c, t=temperature: c.chat.completions.create(
            model="avm-embedded", messages=HELLO, temperature=t, top_p=1, presence_penalty=-2, frequency_penalty=2))
        assert completion.choices[0].message.content, temperature
    refused = await with_openai(server, lambda c: c.chat.completions.create(
        model="avm-embedded", messages=HELLO, temperature=2.01))
    assert isinstance(refused, openai.BadRequestError) and refused.param == "temperature"


# ---------------------------------------------------------------- 3. tool messages

async def test_a_tool_message_without_tool_call_id_is_400(server, client):
    messages = conversation(2)  # system, user, assistant (a tool call), tool
    del messages[3]["tool_call_id"]
    error = openai_error(await client.post("/chat/completions", json=chat(messages=messages)), 400)
    assert error["param"] == "messages[3].tool_call_id" and error["code"] == "missing_field"
    messages[3]["tool_call_id"] = 7
    error = openai_error(await client.post("/chat/completions", json=chat(messages=messages)), 400)
    assert error["param"] == "messages[3].tool_call_id" and error["code"] == "invalid_type"
    r = await client.post("/chat/completions/batch", json={"messages": [HELLO, messages]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[1][3].tool_call_id"
    messages[3]["tool_call_id"] = "call_0"
    answered = await with_openai(server, lambda c: c.chat.completions.create(model="avm-embedded",
                                                                              messages=messages))
    assert answered.choices[0].finish_reason in ("stop", "tool_calls")


# ---------------------------------------------------------------- 4. token-id prompts

async def test_token_id_prompts_from_the_official_client(server, client):
    one = await with_openai(server, lambda c: c.completions.create(model="avm-embedded", prompt=[101, 7, 42],
                                                                   max_tokens=30))
    assert one.object == "text_completion" and [c.index for c in one.choices] == [0] and one.choices[0].text
    assert one.usage.prompt_tokens == 3  # the ids, counted exactly
    lists = [[101, 7, 42], [5, 6], [9]]
    many = await with_openai(server, lambda c: c.completions.create(model="avm-embedded", prompt=lists, n=2,
                                                                    max_tokens=30))
    assert [c.index for c in many.choices] == list(range(6))  # n per prompt: index prompt * n + j
    assert many.usage.prompt_tokens == 6
    assert many.choices[0].text == one.choices[0].text  # prompt 0, choice 0: as when sent alone
    for k, ids in enumerate(lists):
        alone = (await client.post("/completions", json={"model": "avm-embedded", "prompt": ids, "n": 2,
                                                         "max_tokens": 30})).json()
        assert [c["text"] for c in alone["choices"]] == [c.text for c in many.choices[2 * k:2 * k + 2]]
    assert len({c.text for c in many.choices}) == 6


async def test_a_token_prompt_reads_as_words_and_its_ids_seed_the_reply(client):
    assert prompt_text([0, 1, 18]) == "river signal river"  # id i reads as _POOL[i % 18]
    assert prompt_text("as is") == "as is"

    async def text(prompt: Any) -> str:
        r = await client.post("/completions", json={"prompt": prompt, "max_tokens": 200})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    assert await text([3, 4, 5]) == await text([3, 4, 5])
    assert await text([3, 4, 5]) != await text([21, 22, 23])  # same words, other ids
    assert await text([3, 4, 5]) != await text(prompt_text([3, 4, 5]))  # a text is not its ids
    r = await client.post("/completions", json={"prompt": [[3, 4], [5]], "stream": True, "max_tokens": 20})
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    assert (await client.post("/completions", json={"prompt": [MAX_TOKEN_ID]})).status_code == 200


@pytest.mark.parametrize(("prompt", "param"), [
    ([], "prompt"), ([[]], "prompt[0]"), ([[1], []], "prompt[1]"), ([-1], "prompt[0]"), ([1, 2.5], "prompt[1]"),
    ([True], "prompt[0]"), ([1, "a"], "prompt[1]"), (["a", 1], "prompt[1]"), ([[1], "a"], "prompt[1]"),
    ([[1, "a"]], "prompt[0][1]"), ([[1, MAX_TOKEN_ID + 1]], "prompt[0][1]"), ([[[1]]], "prompt[0][0]"),
    ([{"a": 1}], "prompt[0]"), ({"a": 1}, "prompt"), (7, "prompt")])
async def test_prompts_of_no_accepted_form_are_400(client, prompt, param):
    error = openai_error(await client.post("/completions", json={"prompt": prompt}), 400)
    assert error["param"] == param, error


# ---------------------------------------------------------------- 5. JSON no parser should take

@pytest.mark.parametrize("raw", [
    b'{"model":"avm-embedded","messages":[{"role":"user","content":"\\ud800"}],"prompt":"\\ud800"}',
    b'{"model":"avm-embedded","messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"model":"avm-embedded","prompt":' + b"[" * 100_000 + b"]" * 100_000 + b"}"], ids=["surrogate", "deep", "deep2"])
async def test_a_lone_surrogate_or_deep_nesting_is_400_on_every_endpoint(client, raw):
    for path in ("/chat/completions", "/completions", "/chat/completions/batch"):
        r = await client.post(path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, (path, r.text[:200])
        assert set(r.json()["error"]) == ERROR_FIELDS
    assert (await client.post("/chat/completions", json=chat())).status_code == 200  # and the server lives on
