"""Embedding AVM in Python: a batch of agents with `avm.run_agents`, then the async API.

Runs offline: with no ``llm=`` AVM starts its embedded LLM server. Run it
with ``python examples/embedding.py``.
"""

from __future__ import annotations

import trio

import avm

# Ask the model about {topic}; while it answers with tool calls, run the call
# and hand the tool's result back; return the final text.
RESEARCHER = """
    push "Research {topic} in one line."
    format
turn:
    llm
    store reply
    load reply
    call type 1
    push "map"
    ne
    jump_if done
    load reply
    push "tool_calls"
    get
    push 0
    get
    store call
    push "role"
    push "tool"
    push "tool_call_id"
    load call
    push "id"
    get
    push "content"
    load call
    push "arguments"
    get
    tool lookup 1
    map 3
    jump turn
done:
    load reply
    return
"""

# Wait for a message and answer it.
GREETER = """
    push null
    recv
    store who
    push "hello, {who}"
    format
    return
"""


@avm.tool
def lookup(topic: str) -> str:
    """Look a topic up in the team's notes."""
    return f"our notes on {topic}"


def batch() -> None:
    inputs = [{"topic": "tides", "name": "Ada"}, {"topic": "comets", "name": "Bo"}, {"name": "Cy"}]
    results = avm.run_agents(RESEARCHER, inputs, system="You are {name}, a careful researcher.",
                             tools=[lookup], budget=100.0)
    for entry, result, energy in zip(inputs, results, results.energy_used, strict=True):
        if isinstance(result, avm.AgentError):  # Cy has no topic: the `format` fails
            print(f"{entry['name']}: {result.state}: {result.detail}")
        else:
            print(f"{entry['name']}: {result} ({energy:.1f} energy)")


async def conversation() -> None:
    async with avm.VM() as vm:
        greeter = await vm.spawn(GREETER, budget=10.0)
        await greeter.send("world")
        print(f"greeter: {await greeter.result()}")


if __name__ == "__main__":
    batch()
    trio.run(conversation)
