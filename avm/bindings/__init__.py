"""The Python embedding API: run agents from Python code.

Two ways in, one code path:

- async, for programs that already run trio::

      async with avm.VM(tools=[search]) as vm:      # llm=None: the embedded LLM server
          h = await vm.spawn(code, system="You are {name}.", inputs={"name": "a1"}, tools=["search"])
          value = await h.result()                  # or avm.AgentError naming how it ended

- batch, one program over many inputs, results in input order::

      results = avm.run_agents(code, inputs=[{"topic": "tides"}, ...], tools=[search])

  `run_agents` is synchronous (it calls ``trio.run``, for scripts);
  `run_agents_async` is its twin to await inside a running loop, trio or
  asyncio (a Jupyter notebook). Each element of the result is the agent's
  Done value, or the `avm.AgentError` of an agent that did not finish with
  one (see `RunResults`).
"""

from avm.bindings.agents import RunResults, run_agents_async
from avm.bindings.sync import run_agents

__all__ = ["RunResults", "run_agents", "run_agents_async"]
