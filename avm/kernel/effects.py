"""The effect table: one handler per effect kind, built from `opcodes.EFFECT_KINDS`.

A handler performs its effect for one agent and returns an `Outcome`; it never
touches the frame (the trap applies the outcome). ``llm`` is two halves the
trap calls around its own await of the gateway (`llm_request`, `llm_reply`):
an agent waiting for its reply then holds no handler frame, which at 10,000
agents is memory (DESIGN.md, "one await point per agent").
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from avm.conversation import (
    MessageError,
    reply_message,
    reply_value,
    store_turn,
    to_messages,
)
from avm.errors import InternalError
from avm.io.request import LLMRequest, LLMResponse
from avm.kernel.outcome import Outcome, faulted
from avm.kernel.record import Agent, child_result
from avm.lang.opcodes import EFFECT_KINDS
from avm.lang.outcomes import Effect
from avm.scheduler.states import TERMINAL
from avm.tools.registry import ToolDenied, error_value

if TYPE_CHECKING:
    from avm.kernel.kernel import Kernel

Handler = Callable[["Kernel", Agent, Effect], Awaitable[Outcome]]


def llm_request(kernel: Kernel, agent: Agent, effect: Effect) -> LLMRequest | Outcome:
    """An llm effect's request: the program's message(s) joined to the conversation, the turn before
    them stored (an Outcome with a fault if they are not messages)."""
    try:
        messages = to_messages(effect.args[0])
    except MessageError as exc:
        return faulted("MessageError", str(exc))
    conversation = agent.conversation
    if conversation is None:
        conversation = agent.conversation = []
    conversation.extend(messages)
    store_turn(conversation, kernel.store)
    return kernel.shared.request(agent, conversation)


def llm_reply(kernel: Kernel, agent: Agent, response: LLMResponse) -> Outcome:
    """A reply's outcome: the value the program resumes with, its tokens' energy, the message to append.

    The model proposes, the VM decides: a tool call naming a tool the agent was not granted (a prompt
    injection's favourite) is taken out of the reply, its value and its conversation alike, and listed
    under ``refused_tool_calls`` in the value, so the program sees it was refused and never runs it."""
    usage = response.usage
    kernel.prompt_tokens += usage.prompt_tokens
    kernel.completion_tokens += usage.completion_tokens
    agent.prompt_tokens += usage.prompt_tokens
    agent.completion_tokens += usage.completion_tokens
    settings = kernel.settings
    text, calls = response.text, response.tool_calls
    refused = None
    if calls:
        granted = agent.granted
        if any(_call_name(call) not in granted for call in calls):
            refused = [{"id": str(call.get("id", "")) if isinstance(call, dict) else "", "name": _call_name(call),
                        "error": f"the model called {_call_name(call)!r}, a tool this agent was not granted: "
                                 f"refused"}
                       for call in calls if _call_name(call) not in granted]
            calls = tuple(call for call in calls if _call_name(call) in granted)
            kernel.tool_injections += 1
    value = reply_value(text, calls)
    if refused is not None:
        if type(value) is not dict:
            value = {"text": text or None, "tool_calls": []}
        value["refused_tool_calls"] = refused
    return Outcome(value, charge=usage.prompt_tokens * settings.energy_per_prompt_token
                   + usage.completion_tokens * settings.energy_per_completion_token,
                   reply=reply_message(text if text or calls else "", calls))


def _call_name(call: Any) -> str:
    function = call.get("function") if isinstance(call, dict) else None
    return str(function.get("name", "")) if isinstance(function, dict) else ""


async def _llm(kernel: Kernel, agent: Agent, effect: Effect) -> Outcome:  # pragma: no cover - the trap inlines it
    raise InternalError("the trap performs llm effects itself")


async def _tool(kernel: Kernel, agent: Agent, effect: Effect) -> Outcome:
    name, arguments = effect.args
    kernel.note_tool_call(agent, name, arguments)
    journal = kernel.journal
    key = None
    if journal is not None and name in agent.granted and name in kernel.tools:
        key = journal.call_key(agent)
        if kernel.tools.get(name).side_effects:
            await journal.intent(agent, effect)  # committed before the call: never made twice
    try:
        result = await kernel.tools.invoke(name, arguments, agent.granted, key=key)
    except ToolDenied as exc:
        return faulted("ToolDenied", str(exc))
    return Outcome(result.value, charge=result.seconds * kernel.settings.energy_per_tool_second)


async def _send(kernel: Kernel, agent: Agent, effect: Effect) -> Outcome:
    target, message = effect.args
    other = kernel.agents.get(target) if type(target) is int else kernel.names.get(target)
    if other is None or other.state in TERMINAL:
        how = "has ended" if other is not None else "does not exist"
        return Outcome(error_value("send", "NoSuchAgent", f"send: agent {target!r} {how}"))
    kernel.messages += 1
    key = f"{agent.id}/{agent.step()}" if kernel.journal is not None else None
    return Outcome(await kernel.deliver(other, message, key))


async def _recv(kernel: Kernel, agent: Agent, effect: Effect) -> Outcome:
    timeout = effect.args[0]
    mailbox = kernel.box(agent)
    found, message = mailbox.take()
    if found:
        return Outcome(message)
    if timeout is not None and timeout <= 0:
        return Outcome(None, timeout=True)
    now = trio.current_time()
    deadline = math.inf if timeout is None else now + timeout
    idle = kernel.settings.hibernate_after_s
    if idle is not None and deadline > now + idle:
        found, message = await mailbox.receive(now + idle)
        if found:
            return Outcome(message)
        if kernel.store_snapshot(agent):
            return Outcome(hibernate=deadline)
        # a frame that cannot be a snapshot (a value too deep to encode, a store that refuses it)
        # stays awake in its recv
    found, message = await mailbox.receive(deadline)
    return Outcome(message) if found else Outcome(None, timeout=True)


async def _sleep(kernel: Kernel, agent: Agent, effect: Effect) -> Outcome:
    await trio.sleep(effect.args[0])
    return Outcome(None)


async def _spawn(kernel: Kernel, agent: Agent, effect: Effect) -> Outcome:
    child = kernel.spawn_child(agent, effect)
    if type(child) is not Agent:
        return Outcome(child)  # an error value
    return Outcome(child.id, transfer=child.child_budget, child=child)


async def _delegate(kernel: Kernel, agent: Agent, effect: Effect) -> Outcome:
    child = kernel.spawn_child(agent, effect)
    if type(child) is not Agent:
        return Outcome(child)
    agent.lent = child.child_budget  # shown in energy_used while the parent waits; the trap charges it
    try:
        while child.state not in TERMINAL:
            if child.done is None:
                child.done = trio.Event()
            await child.done.wait()
    except trio.Cancelled:
        kernel.cancel(child)  # a delegate is the parent's work: it does not outlive the wait
        raise
    return Outcome(child_result(child), transfer=agent.lent, child=child)


_HANDLERS: dict[str, Handler] = {
    "llm": _llm, "tool": _tool, "send": _send, "recv": _recv, "spawn": _spawn, "delegate": _delegate,
    "sleep": _sleep,
}
if set(_HANDLERS) != set(EFFECT_KINDS):  # pragma: no cover - an effect instruction added without a handler
    raise ImportError(f"effect handlers {sorted(_HANDLERS)} do not match the effect kinds {sorted(EFFECT_KINDS)}")

# The table the trap dispatches through, indexed by kind; the order of EFFECT_KINDS.
HANDLERS: dict[str, Handler] = {kind: _HANDLERS[kind] for kind in EFFECT_KINDS}

