"""AVM: a green-thread agent virtual machine.

Public names are re-exported here explicitly; ``__all__`` is sorted.
"""

from avm.bindings import RunResults, run_agents, run_agents_async
from avm.errors import (
    AvmError,
    CompileError,
    CorruptObject,
    InternalError,
    LLMError,
    NotFound,
    ProgramError,
    SnapshotError,
    StoreError,
    StoreFormatError,
)
from avm.lang.code import Code, CodeFormatError
from avm.lang.compiler import compile_source as compile
from avm.lang.disasm import disassemble
from avm.lang.frame import Frame, FrameStateError
from avm.lang.grammar import gbnf
from avm.lang.outcomes import (
    BudgetExceeded,
    Done,
    Effect,
    Fault,
    Outcome,
    Preempted,
    Stalled,
)
from avm.memory import (
    ContentStore,
    Ref,
    StoreStatistics,
    TierStatistics,
    ValueFormatError,
)
from avm.runtime import VM, AgentError, AgentHandle, VMError, VMSettings, VMStatistics
from avm.scheduler.states import AgentState
from avm.scheduler.supervision import RestartPolicy
from avm.tools.registry import Tool, ToolDenied, ToolError, ToolRegistry, idempotency_key, tool

__version__ = "0.1.0"

__all__ = [
    "AgentError",
    "AgentHandle",
    "AgentState",
    "AvmError",
    "BudgetExceeded",
    "Code",
    "CodeFormatError",
    "CompileError",
    "ContentStore",
    "CorruptObject",
    "Done",
    "Effect",
    "Fault",
    "Frame",
    "FrameStateError",
    "InternalError",
    "LLMError",
    "NotFound",
    "Outcome",
    "Preempted",
    "ProgramError",
    "Ref",
    "RestartPolicy",
    "RunResults",
    "SnapshotError",
    "Stalled",
    "StoreError",
    "StoreFormatError",
    "StoreStatistics",
    "TierStatistics",
    "Tool",
    "ToolDenied",
    "ToolError",
    "ToolRegistry",
    "VM",
    "VMError",
    "VMSettings",
    "VMStatistics",
    "ValueFormatError",
    "compile",
    "disassemble",
    "gbnf",
    "idempotency_key",
    "run_agents",
    "run_agents_async",
    "tool",
]
