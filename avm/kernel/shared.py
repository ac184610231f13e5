"""What agents share, kept once: programs, system prompt templates, tool grants and their specs.

Each is a ref in the store (a program once per distinct code, a template once
per distinct text, the specs once per distinct grant), remembered here by what
the host passed, so a fleet of 10,000 agents from one spec costs one lookup
per spawn. `request` builds an agent's LLM request from these refs and its
conversation: the rendered prompt and the request live only while it is out.
"""

from __future__ import annotations

from typing import Any

from avm.conversation import placeholders
from avm.errors import NotFound
from avm.io.request import Filled, LLMRequest, Message
from avm.kernel.record import Agent
from avm.kernel.settings import VMError, VMSettings, check_grant
from avm.lang.code import Code, CodeFormatError
from avm.lang.compiler import compile_source
from avm.lang.values import render
from avm.memory.ref import Ref
from avm.memory.store import ContentStore
from avm.tools.registry import ToolRegistry

_CACHE_CAP = 1024  # distinct sources, prompts and grants remembered
_NO_TOOLS: frozenset[str] = frozenset()


class Shared:
    def __init__(self, store: ContentStore, tools: ToolRegistry, settings: VMSettings):
        self.store = store
        self.tools = tools
        self.settings = settings
        self.model = ""  # set when the gateway is opened
        self._sources: dict[str, Code] = {}
        self._stored_code: set[str] = set()
        self._prompts: dict[Any, tuple[Ref, tuple[str, ...], str, Message]] = {}
        self._grants: dict[frozenset[str], Ref | None] = {}
        self._grant_sets: dict[tuple[Any, ...], frozenset[str]] = {}

    def code(self, program: Any) -> Code:
        """A program (source text, a Code or a stored Code's ref) as a Code, stored."""
        if isinstance(program, Code):
            code = program
        elif isinstance(program, Ref):
            try:
                code = Code.from_bytes(self.store.get(program))
            except NotFound:
                raise VMError(f"no program {program.hex()} in the store") from None
            except CodeFormatError as exc:
                raise VMError(f"object {program.hex()} is not a program: {exc}") from None
        elif type(program) is str:
            code = self._sources.get(program)  # type: ignore[assignment]
            if code is None:
                code = compile_source(program)
                if len(self._sources) >= _CACHE_CAP:
                    self._sources.clear()
                self._sources[program] = code
        else:
            raise VMError(f"a program is source text, a Code or a Ref, not {type(program).__name__}")
        if code.id not in self._stored_code:
            self.store.put(code.to_bytes())
            self._stored_code.add(code.id)
        return code

    def system_ref(self, system: str | Ref | None) -> Ref | None:
        if system is None:
            return None
        entry = self._prompts.get(system)
        if entry is None:
            if isinstance(system, Ref):
                try:
                    text = self.store.get(system).decode("utf-8")
                except (NotFound, UnicodeDecodeError) as exc:
                    raise VMError(f"system prompt {system.hex()}: {exc}") from None
                ref = system
            elif type(system) is str:
                text = system
                ref = self.store.put(text.encode("utf-8", "surrogatepass"))
            else:
                raise VMError(f"a system prompt is text or a Ref, not {type(system).__name__}")
            if len(self._prompts) >= _CACHE_CAP:
                self._prompts.clear()
            entry = (ref, placeholders(text), text, Message("system", ref))
            self._prompts[system] = entry
            self._prompts[ref] = entry
        return entry[0]

    def grant(self, tools: Any) -> frozenset[str]:
        """The checked grant, one shared frozenset per distinct grant (agents hold it, so share it)."""
        if not tools:
            return _NO_TOOLS
        if isinstance(tools, str):
            raise VMError(f"tools is a list of tool names, not the text {tools!r}")
        key = tools if type(tools) is tuple else tuple(tools)
        grant = self._grant_sets.get(key)
        if grant is None:
            grant = check_grant(self.tools, key)
            grant = next((g for g in self._grants if g == grant), grant)
            if len(self._grant_sets) >= _CACHE_CAP:
                self._grant_sets.clear()
            self._grant_sets[key] = grant
        return grant

    def tools_ref(self, granted: frozenset[str]) -> Ref | None:
        if granted in self._grants:
            return self._grants[granted]
        ref = self.store.put_value(self.tools.specs(granted)) if granted else None
        if len(self._grants) >= _CACHE_CAP:
            self._grants.clear()
        self._grants[granted] = ref
        return ref

    def request(self, agent: Agent, conversation: list[Message | Ref]) -> LLMRequest:
        messages: tuple[Message | Ref, ...]
        if agent.system is not None:
            ref, names, text, message = self._prompts.get(agent.system) or self._prompt_entry(agent.system)
            inputs = agent.inputs
            if names and inputs and any(n in inputs for n in names):  # type: ignore[operator]
                # the shared template and this agent's values: the wire encoder sends the template's pieces
                # with the values between them, so no agent holds a rendered copy of the prompt
                message = Message("system", Filled(text, ref, {n: v if type(v) is str else render(v)
                                                               for n in names if n in inputs  # type: ignore[operator]
                                                               for v in (inputs[n],)}))  # type: ignore[index]
            messages = (message, *conversation)
        else:
            messages = tuple(conversation)
        s = self.settings
        return LLMRequest(self.model, messages, temperature=s.temperature, max_tokens=s.max_tokens,
                          tools=agent.tools_ref)

    def _prompt_entry(self, ref: Ref) -> tuple[Ref, tuple[str, ...], str, Message]:
        self.system_ref(ref)  # evicted from the cache: read it back from the store
        return self._prompts[ref]
